"""Pure conversion from the data model to Datadog API objects, and their encoding into payloads.

Endpoints and shapes (Datadog API reference):
- `POST /api/v2/series`: `{"series": [{"metric", "type": 1 count | 2 rate | 3 gauge, "interval" (s, for
  count and rate), "points": [{"timestamp": int s, "value": float}], "tags": ["k:v"]}]}`,
  deflate-compressed; at most 512,000 bytes compressed and 5,242,880 bytes decompressed per payload.
- `POST /api/v1/distribution_points`: `{"series": [{"metric", "points": [[ts, [values]]], "tags",
  "type": "distribution"}]}`, deflate-compressed (the only encoding it documents).
- `POST /api/v1/events`: one event per request (`title`, `text` <= 4000 chars, `date_happened` ...).
- `POST /api/v1/check_run`: a JSON array of `{"check", "host_name", "status": 0-3, "tags", ...}`.

How each kind is typed (as the Datadog agent's DogStatsD does):
- GAUGE -> gauge. COUNT (a StatsD counter summed over `interval`) -> rate = sum / interval, with the
  interval. COUNTER (cumulative) -> the caller turns it into deltas (`deltas.py`), sent as counts.
- HISTOGRAM -> `.max .median .avg .count .<p>percentile` (and `.min .sum` if configured) with the agent's
  weighted rank rule; `.count` is a rate (weighted count / interval), the others gauges.
- DISTRIBUTION -> distribution points. The API takes plain values, so a value with weight w (sample rate
  1/w) is repeated w times (rounded half up); past MAX_EXPANDED values per point the weights are scaled down (the
  shape is kept, the count becomes approximate).
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

from agent.model import Event, Points, ServiceCheck, Tags, format_tag

SERIES_PATH = "/api/v2/series"
DISTRIBUTION_PATH = "/api/v1/distribution_points"
EVENTS_PATH = "/api/v1/events"
CHECK_RUN_PATH = "/api/v1/check_run"

COUNT, RATE, GAUGE = 1, 2, 3  # v2 series `type` enum (0 is "unspecified")

MAX_COMPRESSED = 512_000  # bytes per payload, as sent
MAX_DECOMPRESSED = 5_242_880
CHUNK_RAW = 2_000_000  # raw JSON per payload before compression: well inside both limits
MAX_EXPANDED = 10_000  # distribution values per point after applying weights
MAX_NAME = 200
MAX_TAG = 200

_INVALID_NAME = re.compile(r"[^A-Za-z0-9_.]")
_LEADING = re.compile(r"^[^A-Za-z]+")


@functools.lru_cache(maxsize=65536)
def metric_name(name: str) -> str:
    """Datadog's rules: ASCII letters, digits, `_` and `.`; starts with a letter; at most 200 chars.

    Returns "" for a name with no letter to start from (the caller drops and counts it).
    """
    return _LEADING.sub("", _INVALID_NAME.sub("_", name))[:MAX_NAME]


@functools.lru_cache(maxsize=65536)
def tag_list(tags: Tags) -> list[str]:
    """`key:value` strings (a bare tag stays bare). Cached: the same tag sets repeat every flush.

    Callers must not mutate the returned list.
    """
    return [format_tag(k, v)[:MAX_TAG] for k, v in tags]


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
    pairs = sorted(zip(points.values, points.weights))
    if not pairs:
        return []
    count = sum(w for _, w in pairs)
    total = sum(v * w for v, w in pairs)

    def rank(target: float) -> float:
        running = 0.0
        for value, weight in pairs:
            running += weight
            if running > target:
                return value
        return pairs[-1][0]

    out: list[tuple[str, float, int]] = []
    for name in aggregates:
        if name == "max":
            out.append((".max", pairs[-1][0], GAUGE))
        elif name == "min":
            out.append((".min", pairs[0][0], GAUGE))
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
    """Each value repeated by its weight (rounded, at least once), scaled down past `limit` values."""
    weights = [max(1.0, w) for w in points.weights]
    total = sum(weights)
    scale = limit / total if total > limit else 1.0
    out: list[float] = []
    for value, weight in zip(points.values, weights):
        out.extend([float(value)] * max(1, int(weight * scale + 0.5)))  # half up, not to even
    return out


def interval_seconds(interval: float) -> int:
    """The API wants whole seconds; a sub-second test interval still needs a valid (>= 1) field."""
    return max(1, round(interval))


@functools.lru_cache(maxsize=65536)
def _json_name(name: str) -> bytes:
    return json.dumps(name).encode()


@functools.lru_cache(maxsize=65536)
def _json_tags(tags: Tags) -> bytes:
    return json.dumps(tag_list(tags), separators=(",", ":")).encode()


def series(name: str, kind: int, value: float, timestamp: float, tags: Tags,
           interval: float | None = None) -> bytes:
    """One series with one point, as the JSON the intake reads.

    The hot path of the exporter: written directly as bytes, with the name's and tags' JSON cached
    (they repeat every flush), instead of building and serializing a dict per point. `value` must be
    finite (the caller checks): `repr` of a finite float is a JSON number.
    """
    extra = b',"interval":%d' % interval_seconds(interval) if interval is not None else b""
    return b'{"metric":%s,"type":%d,"points":[{"timestamp":%d,"value":%s}],"tags":%s%s}' % (
        _json_name(name), kind, int(timestamp), repr(float(value)).encode(), _json_tags(tags), extra)


def distribution(name: str, values: list[float], timestamp: float, tags: Tags) -> dict[str, Any]:
    return {"metric": name, "points": [[int(timestamp), values]], "tags": tag_list(tags), "type": "distribution"}


def event(e: Event, now: float) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "title": e.title[:100],
        "text": e.text[:4000],
        "date_happened": int(e.timestamp if e.timestamp is not None else now),
        "tags": tag_list(e.tags),
    }
    for key, value in (("host", e.hostname), ("aggregation_key", e.aggregation_key and e.aggregation_key[:100]),
                       ("priority", e.priority), ("source_type_name", e.source_type), ("alert_type", e.alert_type)):
        if value:
            obj[key] = value
    return obj


def service_check(c: ServiceCheck, now: float) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "check": c.name,
        "host_name": c.hostname or "",  # required; a task is not a host, its tags identify it
        "status": c.status,
        "tags": tag_list(c.tags),
        "timestamp": int(c.timestamp if c.timestamp is not None else now),
    }
    if c.message:
        obj["message"] = c.message
    return obj


# --- payloads ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Payload:
    """One request body, ready to send again and again until the intake takes it."""

    path: str
    body: bytes
    encoding: str | None  # Content-Encoding
    points: int  # values it carries (a distribution point counts each of its values)
    expires: float  # Unix time after which the intake would refuse its timestamps


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def encode(path: str, items: Sequence[bytes], points: Sequence[int], expires: float) -> list[Payload]:
    """Pack JSON objects (`items`, carrying `points` each) into as few payloads as the size limits allow."""
    if not items:
        return []
    if path == EVENTS_PATH:  # the v1 events API takes one event per request
        return [Payload(path, item, None, n, expires) for item, n in zip(items, points)]
    payloads: list[Payload] = []
    start, size = 0, 0
    for i, item in enumerate(items):
        if size and size + len(item) + 1 > CHUNK_RAW:
            payloads.extend(_compress(path, items[start:i], points[start:i], expires))
            start, size = i, 0
        size += len(item) + 1
    payloads.extend(_compress(path, items[start:], points[start:], expires))
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
    # a single object over the limit is sent anyway: the intake's 413 is counted, not retried
    return [Payload(path, body, "deflate", sum(points), expires)]
