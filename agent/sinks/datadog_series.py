"""Pure conversion from the data model to Datadog API objects, and their encoding into payloads.

Endpoints and shapes (Datadog API reference):
- `POST /api/v2/series`: `{"series": [{"metric", "type": 1 count | 2 rate | 3 gauge, "interval" (s, for
  count and rate), "points": [{"timestamp": int s, "value": float}], "tags": ["k:v"]}]}`,
  deflate-compressed; at most 512,000 bytes compressed and 5,242,880 bytes decompressed per payload.
- `POST /api/v1/distribution_points`: `{"series": [{"metric", "points": [[ts, [values]]], "tags",
  "type": "distribution"}]}`, deflate-compressed (the only encoding it documents).
- `POST /api/v1/events`: one event per request (`title`, `text` <= 4000 chars, `date_happened` ...).
- `POST /api/v1/check_run`: a JSON array of `{"check", "host_name", "status": 0-3, "tags", ...}`, sent
  uncompressed, within the 512,000 bytes of a payload (the API documents no other bound).

How each kind is typed (as the Datadog agent's DogStatsD does):
- GAUGE -> gauge. COUNT (a StatsD counter summed over `interval`) -> rate = sum / interval, with the
  interval, both in whole seconds (`interval_seconds`: the field is an integer, and rate x interval
  must give the sum back). COUNTER (cumulative) -> the caller turns it into deltas (`deltas.py`), sent as counts.
- HISTOGRAM -> `.max .median .avg .count .<p>percentile` (and `.min .sum` if configured) with the agent's
  weighted rank rule; `.count` is a rate (weighted count / interval), the others gauges.
- DISTRIBUTION -> distribution points. The API takes plain values, so a value with weight w (sample rate
  1/w) is repeated w times (rounded half up); past MAX_EXPANDED values per point, MAX_EXPANDED values at
  evenly spaced ranks (`Points.spread`: the shape is kept, the count becomes approximate).

The intake's rules (names, tags, values, timestamp windows, event and service check fields) are the
constants below and `metric_name`, `normalize_tag`, `in_window`, `event`, `service_check`; the sink
applies them to each point before it joins a payload (docs/datadog.md lists each with its source).
"""

from __future__ import annotations

import functools
import json
import math
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.model import Event, Points, ServiceCheck, Tags, encodable, format_tag

SERIES_PATH = "/api/v2/series"
DISTRIBUTION_PATH = "/api/v1/distribution_points"
EVENTS_PATH = "/api/v1/events"
CHECK_RUN_PATH = "/api/v1/check_run"

COUNT, RATE, GAUGE = 1, 2, 3  # v2 series `type` enum (0 is "unspecified")

MAX_COMPRESSED = 512_000  # bytes per payload, as sent
MAX_DECOMPRESSED = 5_242_880
CHUNK_RAW = 2_000_000  # raw JSON per payload before compression: well inside both limits
MAX_EXPANDED = 10_000  # distribution values per point after applying weights

# The intake's rules, each with its source in docs/datadog.md. A point that breaks one is repaired when
# the intake itself would repair it the same way, else dropped alone and counted with `reason`.
MAX_NAME = 200  # characters in a metric name, suffix (`.95percentile`) included
MAX_TAG = 200  # characters in a tag, after normalisation
MAX_TITLE = 100  # event title
MAX_TEXT = 4000  # event text
MAX_AGGREGATION_KEY = 100
MAX_CHECK_NAME = 200  # ours: the API gives no bound, a metric name's is the natural one
MAX_FIELD = 255  # host names and the like: free text, bounded only to keep payloads small
MAX_OBJECT = 500_000  # bytes of JSON for one series, event or check: alone it still fits a payload
MAX_INTERVAL = 2**31 - 1  # seconds; the API's field is an int64, our flush intervals are far below
# (seconds accepted before, after the intake's clock)
SERIES_WINDOW = (3600.0, 600.0)
EVENT_WINDOW = (18 * 3600.0, 2 * 3600.0)
CHECK_WINDOW = (600.0, 600.0)  # the future bound is ours: the API documents only the past one
SEND_MARGIN = 60.0  # a point must still be inside its window when its request arrives
EVENT_PRIORITIES = frozenset({"normal", "low"})
EVENT_ALERT_TYPES = frozenset({"error", "warning", "info", "success", "user_update", "recommendation", "snapshot"})

_INVALID_NAME = re.compile(r"[^A-Za-z0-9_.]")
_LEADING = re.compile(r"^[^A-Za-z]+")


class Rejected(ValueError):
    """An object the intake would refuse: dropped alone, counted under `reason`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@functools.lru_cache(maxsize=65536)
def metric_name(name: str) -> str:
    """Datadog's rules: ASCII letters, digits, `_` and `.`; starts with a letter; at most 200 characters.

    Other characters become `_` and leading non-letters go, as the intake converts them. Returns "" for
    a name with no letter to start from. Never cut: the caller checks the length with its suffix.
    """
    return _LEADING.sub("", _INVALID_NAME.sub("_", name))


# a tag already in normal form, ASCII only (the usual case): returned as it is, as the agent's fast path
_NORMAL_ASCII_TAG = re.compile(r"[a-z](?:[a-z0-9.:/-]|_(?=[a-z0-9.:/-]))*")


@functools.lru_cache(maxsize=65536)
def normalize_tag(tag: str) -> str:
    """A tag in the form Datadog stores it ("" when nothing is left), as its normaliser does:

    lower case; starts with a letter (leading non-letters go); then letters, decimal digits, `.`, `/`,
    `-`, `:`; any run of other characters (`_` included) becomes one `_`, and is dropped at the end;
    no trailing `:` or `_`; at most 200 characters (Datadog cuts there too).
    """
    if len(tag) <= MAX_TAG and _NORMAL_ASCII_TAG.fullmatch(tag) and not tag.endswith(":"):
        return tag
    out: list[str] = []
    cut = False  # characters to replace with one `_` before the next kept one
    for c in tag:
        low = c.lower()
        if low != c and len(low) == 1 and len(low.encode("utf-8", "surrogatepass")) == len(
                c.encode("utf-8", "surrogatepass")):  # as Datadog: only where the width stays the same
            c = low
        if not (c.isalpha() or (out and (c.isdecimal() or c in "./-:"))):
            cut = bool(out)  # before the first letter: trimmed, not replaced
            continue
        if len(out) + cut + 1 > MAX_TAG:
            break
        if cut:
            out.append("_")
            cut = False
        out.append(c)
    return "".join(out).rstrip(":_")


def tag_key(tag: str) -> str:
    """The key of a normalised tag (a bare tag is its own key, as `merge_tags` takes it)."""
    return tag.partition(":")[0]


NO_KEYS: frozenset[str] = frozenset()


@functools.lru_cache(maxsize=65536)
def tag_list(tags: Tags, unique: frozenset[str] = NO_KEYS) -> list[str]:
    """Normalised `key:value` strings (a bare tag stays bare), without the empty and the repeated ones.

    `unique`: normalised keys that keep one tag, the last (the sidecar's identity keys: `Hub.enrich`
    puts the client's tags after the sidecar's, and a client's `Service:x` or `1service:x` is the
    sidecar's `service` once normalised, as Datadog stores it: the client's wins, as for `service:x`).
    Cached: the same tag sets repeat every flush. Callers must not mutate the returned list.
    """
    out = [t for t in (normalize_tag(format_tag(k, v)) for k, v in tags) if t]
    if unique:
        last = {tag_key(t): i for i, t in enumerate(out) if tag_key(t) in unique}
        out = [t for i, t in enumerate(out) if last.get(tag_key(t), i) == i]
    return list(dict.fromkeys(out))


def in_window(ts: float, now: float, window: tuple[float, float], margin: float = SEND_MARGIN) -> bool:
    """Will the intake still take timestamp `ts` when a request made at `now` arrives?"""
    past, future = window
    return now - past + margin <= ts <= now + future - margin


def text(value: str, limit: int) -> str:
    """Free text for JSON: lone surrogates (undecodable input) replaced, cut to `limit` characters."""
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return encodable(value)[:limit]


def percentile_suffix(p: float) -> str:
    """0.95 -> `95percentile`, 0.999 -> `99_9percentile` (a dot would split the metric name)."""
    return f"{round(p * 100, 4):g}".replace(".", "_") + "percentile"


def histogram_aggregates(points: Points, interval: float, aggregates: Iterable[str],
                         percentiles: Iterable[float]) -> list[tuple[str, float, int]]:
    """(suffix, value, series type) for one interval of a StatsD histogram or timer.

    The Datadog agent's rule (pkg/metrics/histogram.go): sort by value, walk the cumulative weight and
    take the first value whose cumulative weight exceeds the target rank; median target
    floor((count - 1) / 2), percentile p target floor((100p * count - 1) / 100). For 1..10 that gives
    median 5 (the lower middle) and 95percentile 10. Values are kept in their unit (timers stay in ms,
    as in Datadog).
    """
    if not points.values:
        return []
    count, total = points.count, points.total  # total may overflow: that aggregate alone is dropped by the caller
    if not math.isfinite(count) or count <= 0:  # weights that overflow: no rank can be computed
        raise Rejected("not_finite", f"histogram weights sum to {count}")
    rank = points.at_rank  # sorted: a rank is a bisection, not a walk

    out: list[tuple[str, float, int]] = []
    for name in aggregates:
        if name == "max":
            out.append((".max", points.values[-1], GAUGE))
        elif name == "min":
            out.append((".min", points.values[0], GAUGE))
        elif name == "median":
            out.append((".median", rank(math.floor((count - 1) / 2)), GAUGE))
        elif name == "avg":
            out.append((".avg", total / count, GAUGE))
        elif name == "sum":
            out.append((".sum", total, GAUGE))
        elif name == "count":
            out.append((".count", count / interval, RATE))
    for p in sorted(percentiles):
        target = math.floor((round(p * 100, 6) * count - 1) / 100)
        out.append(("." + percentile_suffix(p), rank(target), GAUGE))
    return out


def expand_weights(points: Points, limit: int = MAX_EXPANDED) -> list[float]:
    """Each value repeated by its weight (rounded, at least once) while that makes at most `limit`
    values; past it, `limit` values at evenly spaced ranks (`Points.spread`), each standing for
    `count / limit` samples: the shape of the distribution, in bounded time and size."""
    repeats = [max(1, int(w + 0.5)) for w in points.weights[:limit + 1]]  # half up, not to even
    if sum(repeats) > limit:
        return points.spread(limit)
    out: list[float] = []
    for value, n in zip(points.values, repeats):
        out.extend([float(value)] * n)
    return out


def interval_seconds(interval: float) -> int:
    """The `interval` field of a count or rate: whole seconds (the API's type), at least 1.

    A rate is divided by this, not by the interval it covered, so that value x interval (what Datadog's
    `as_count()` shows) is the count exactly: 300 increments over a 1.5 s flush are 150/s over 2 s.
    """
    if not 0 < interval <= MAX_INTERVAL:  # NaN too
        raise Rejected("invalid", f"interval {interval!r}")
    return max(1, round(interval))


# The JSON of names and tag sets, kept for every live series: above the 100,000 contexts StatsD allows
# by default, since an LRU cache smaller than the set it cycles through misses every time (100,000
# series took 1.0 s a flush with 65,536 entries, 0.18 s with these; +9 MiB held at 100,000).
SERIES_CACHE = 131_072


@functools.lru_cache(maxsize=SERIES_CACHE)
def _json_name(name: str) -> bytes:
    return json.dumps(name).encode()


@functools.lru_cache(maxsize=SERIES_CACHE)
def _json_tags(tags: Tags, unique: frozenset[str]) -> bytes:
    return json.dumps(tag_list(tags, unique), separators=(",", ":")).encode()


def series(name: str, kind: int, value: float, timestamp: float, tags: Tags,
           interval: float | None = None, unique: frozenset[str] = NO_KEYS) -> bytes:
    """One series with one point, as the JSON the intake reads.

    The hot path of the exporter: written directly as bytes, with the name's and tags' JSON cached
    (they repeat every flush), instead of building and serializing a dict per point. The caller has
    checked the name's length, the value (finite: `repr` of a finite float is a JSON number) and the
    timestamp.
    """
    extra = b',"interval":%d' % interval_seconds(interval) if interval is not None else b""
    return b'{"metric":%s,"type":%d,"points":[{"timestamp":%d,"value":%s}],"tags":%s%s}' % (
        _json_name(name), kind, int(timestamp), repr(float(value)).encode(), _json_tags(tags, unique), extra)


def distribution(name: str, values: list[float], timestamp: float, tags: Tags,
                 unique: frozenset[str] = NO_KEYS) -> dict[str, Any]:
    return {"metric": name, "points": [[int(timestamp), values]], "tags": tag_list(tags, unique),
            "type": "distribution"}


def event(e: Event, now: float, margin: float = SEND_MARGIN, unique: frozenset[str] = NO_KEYS) -> dict[str, Any]:
    """The API object for an event; raises `Rejected` for one the intake would refuse.

    Repaired: title, text and aggregation key cut to their documented lengths, an unknown priority or
    alert type left out (the intake's default applies), tags normalised.
    """
    ts = e.timestamp if e.timestamp is not None else now
    if not in_window(ts, now, EVENT_WINDOW, margin):
        raise Rejected("timestamp_out_of_range", f"event {e.title[:50]!r} at {ts!r}")
    title = text(e.title, MAX_TITLE)
    if not title:
        raise Rejected("invalid_event", "event without a title")
    obj: dict[str, Any] = {"title": title, "text": text(e.text, MAX_TEXT), "date_happened": int(ts),
                           "tags": tag_list(e.tags, unique)}
    if e.hostname:
        obj["host"] = text(e.hostname, MAX_FIELD)
    if e.aggregation_key:
        obj["aggregation_key"] = text(e.aggregation_key, MAX_AGGREGATION_KEY)
    if e.priority in EVENT_PRIORITIES:
        obj["priority"] = e.priority
    if e.source_type:
        obj["source_type_name"] = text(e.source_type, MAX_FIELD)
    if e.alert_type in EVENT_ALERT_TYPES:
        obj["alert_type"] = e.alert_type
    return obj


def service_check(c: ServiceCheck, now: float, margin: float = SEND_MARGIN,
                  unique: frozenset[str] = NO_KEYS) -> dict[str, Any]:
    """The API object for a service check; raises `Rejected` for one the intake would refuse.

    Repaired: tags normalised. A message past the 500 characters Datadog shows is taken (and shown cut):
    sent whole.
    """
    ts = c.timestamp if c.timestamp is not None else now
    if not in_window(ts, now, CHECK_WINDOW, margin):
        raise Rejected("timestamp_out_of_range", f"service check {c.name[:50]!r} at {ts!r}")
    name = text(c.name, MAX_CHECK_NAME + 1)
    if not name or len(name) > MAX_CHECK_NAME:
        raise Rejected("invalid_service_check", f"service check name of {len(c.name)} characters")
    if type(c.status) is not int or c.status not in (0, 1, 2, 3):
        raise Rejected("invalid_service_check", f"service check {name[:50]!r} with status {c.status!r}")
    obj: dict[str, Any] = {
        "check": name,
        "host_name": text(c.hostname or "", MAX_FIELD),  # required; a task is not a host, its tags identify it
        "status": c.status,
        "tags": tag_list(c.tags, unique),
        "timestamp": int(ts),
    }
    if c.message:
        obj["message"] = text(c.message, MAX_OBJECT)
    return obj


# --- payloads ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Payload:
    """One request body, ready to send again and again until the intake takes it."""

    path: str
    body: bytes
    encoding: str | None  # Content-Encoding
    points: int  # values it carries (a distribution point counts each of its values)
    expires: float  # Unix time after which the intake would refuse its oldest timestamp


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def encode(path: str, items: Sequence[bytes], points: Sequence[int], stamps: Sequence[float],
           window: tuple[float, float], margin: float = SEND_MARGIN) -> list[Payload]:
    """Pack JSON objects (`items`, carrying `points` each, timestamped `stamps`) into as few payloads as
    the size limits allow.

    A payload expires with its oldest timestamp (the intake refuses it whole after that), so objects
    whose timestamps lie far apart never share one: a backdated point waiting in the buffer cannot take
    current ones down with it. Each payload spans at most a twelfth of the window.
    """
    if not items:
        return []
    past = window[0]
    if path == EVENTS_PATH:  # the v1 events API takes one event per request
        return [Payload(path, item, None, n, ts + past - margin) for item, n, ts in zip(items, points, stamps)]
    newest, spread = max(stamps), past / 12
    if min(stamps) >= newest - spread:  # the usual case: one group
        groups: list[list[int]] = [list(range(len(items)))]
    else:
        buckets: dict[int, list[int]] = {}
        for i, ts in enumerate(stamps):
            buckets.setdefault(int((newest - ts) // spread), []).append(i)
        groups = [buckets[k] for k in sorted(buckets)]
    payloads: list[Payload] = []
    for group in groups:
        if len(groups) == 1:
            g_items, g_points, oldest = items, points, min(stamps)
        else:
            g_items, g_points = [items[i] for i in group], [points[i] for i in group]
            oldest = min(stamps[i] for i in group)
        expires = oldest + past - margin
        # service checks go uncompressed: their raw array is what must fit (a check of MAX_OBJECT fits alone)
        limit = MAX_COMPRESSED - 2 if path == CHECK_RUN_PATH else CHUNK_RAW
        start, size = 0, 0
        for i, item in enumerate(g_items):
            if size and size + len(item) + 1 > limit:
                payloads.extend(_compress(path, g_items[start:i], g_points[start:i], expires))
                start, size = i, 0
            size += len(item) + 1
        payloads.extend(_compress(path, g_items[start:], g_points[start:], expires))
    return payloads


def _compress(path: str, items: Sequence[bytes], points: Sequence[int], expires: float) -> list[Payload]:
    if path == CHECK_RUN_PATH:
        return [Payload(path, b"[" + b",".join(items) + b"]", None, sum(points), expires)]
    raw = b'{"series":[' + b",".join(items) + b"]}"
    body = zlib.compress(raw, 6)
    if len(body) > MAX_COMPRESSED and len(items) > 1:
        half = len(items) // 2
        return (_compress(path, items[:half], points[:half], expires)
                + _compress(path, items[half:], points[half:], expires))
    # one object is at most MAX_OBJECT bytes (the sink checks), so this holds by construction
    return [Payload(path, body, "deflate", sum(points), expires)]
