"""The DogStatsD wire format: bytes in, parsed lines out. Pure functions, no I/O, no state.

`<name>:<value>[:<value>...]|<type>[|@<rate>][|#<tag>,...][|c:<container>][|e:...][|card:...][|T<ts>]`,
events `_e{<title len>,<text len>}:<title>|<text>|...` and service checks `_sc|<name>|<status>|...`.

A metric line is split in two parts that are parsed separately, so that the aggregator can cache the
expensive part: the *head* (name and everything after the first `|`: type, rate, tags, container,
timestamp) repeats for every sample of a context, the *value* changes. Every rejected line raises
`ParseError` with one of `REASONS`; one bad line never affects the others of its datagram.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from agent.model import Event, ServiceCheck, Tags

REASONS = ("malformed_line", "bad_value", "bad_type", "bad_rate", "bad_timestamp", "bad_event",
           "bad_service_check", "too_long", "too_many_tags", "cardinality_limit", "event_limit", "set_limit",
           "timestamp_limit", "value_limit", "overload")

MAX_DATAGRAM = 65536  # bytes; larger Unix datagrams are rejected whole (UDP cannot exceed 65507)
MAX_NAME = 200  # bytes, Datadog's limit for a metric name
MAX_TAG = 200  # bytes per tag, Datadog's limit
# What one line may cost, whatever its datagram: without these, a 64 KiB line of 10,000 one-letter tags
# becomes a context of 10,000 Python objects (~2 MiB), and a line's unknown fields (`|x:<60 KiB>`)
# a 60 KiB key in the head cache. Real clients send a few tags of a few dozen bytes.
MAX_TAGS = 100  # tags per line
MAX_TAGS_BYTES = 4096  # bytes of the `#` field of a line (all its tags)
MAX_TAIL = 8192  # bytes after a metric's value: type, rate, tags, container, unknown fields
# what the C side applies too (`_fast.c`, `_recv.c` export theirs; checked when they are imported)
LIMITS = {"MAX_NAME": MAX_NAME, "MAX_TAG": MAX_TAG, "MAX_TAGS": MAX_TAGS, "MAX_TAGS_BYTES": MAX_TAGS_BYTES,
          "MAX_TAIL": MAX_TAIL, "MAX_DATAGRAM": MAX_DATAGRAM}
MAX_DIGITS = 18  # in a timestamp or an event's lengths: more can only be garbage (and int() of 4,301
                 # digits raises ValueError, float() of 310 OverflowError: never a ParseError)

TYPES = {b"c": "c", b"g": "g", b"ms": "ms", b"h": "h", b"s": "s", b"d": "d"}
EVENT_PREFIX = b"_e{"
CHECK_PREFIX = b"_sc|"


class ParseError(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Head:
    """Everything about a metric line but its value(s): what the aggregator caches per context."""

    name: str
    type: str  # c g ms h s d
    rate: float = 1.0
    tags: Tags = ()
    container: str = ""
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class MetricLine:
    head: Head
    values: tuple[float, ...] = ()  # every type but `s`
    member: bytes = b""  # `s` only
    relative: tuple[bool, ...] = ()  # per value: written with a sign (`+5`, `-5`), for Etsy gauge deltas


@dataclass(slots=True)
class Parsed:
    """What one datagram held."""

    metrics: list[MetricLine] = field(default_factory=list)
    events: list[tuple[Event, str]] = field(default_factory=list)  # with the `c:` container id
    service_checks: list[tuple[ServiceCheck, str]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    lines: int = 0  # non-empty lines, good or bad


def finite(text: bytes) -> float:
    """A finite number as Python writes it (`1`, `-2.5`, `1e3`); NaN and infinities are refused."""
    value = float(text)
    if value - value != 0.0:  # NaN or +-inf
        raise ValueError(text)
    return value


def split_line(line: bytes) -> tuple[bytes, bytes, bytes] | None:
    """`name:value|tail` -> (name, value, tail), or None when a separator is missing.

    The aggregator's fast path does exactly these two `partition` calls; the cache key is (name, tail).
    """
    name, colon, rest = line.partition(b":")
    value, bar, tail = rest.partition(b"|")
    if not colon or not bar:
        return None
    return name, value, tail


def decode(raw: bytes, reason: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ParseError(reason) from None


def parse_tags(raw: bytes, reason: str = "malformed_line") -> Tags:
    """`a:b,c,a:d` -> (("a", "d"), ("c", "")): first position kept, last value wins, empty items skipped.
    A tag with `:` and nothing after it (`status:`) is no tag, as statsd_exporter reads it: an empty value is
    no label in Prometheus, and kept it would read as the bare tag `status` (`status="true"`).

    At most MAX_TAGS items and MAX_TAGS_BYTES bytes, checked before anything is decoded."""
    if len(raw) > MAX_TAGS_BYTES:
        raise ParseError("too_long")
    items = raw.split(b",")
    if len(items) > MAX_TAGS and sum(1 for item in items if item) > MAX_TAGS:
        raise ParseError("too_many_tags")
    tags: dict[str, str] = {}
    for item in items:
        if not item:
            continue
        if len(item) > MAX_TAG:
            raise ParseError("too_long")
        key, colon, value = decode(item, reason).partition(":")
        if key and (value or not colon):
            tags[key] = value
    return tuple(tags.items())


def parse_head(name: bytes, tail: bytes) -> Head:
    """The cacheable part of a metric line: its name and what follows the first `|` after the value."""
    if not name or b"|" in name or name.startswith((EVENT_PREFIX, CHECK_PREFIX)):
        raise ParseError("malformed_line")
    if len(name) > MAX_NAME or len(tail) > MAX_TAIL:
        raise ParseError("too_long")
    fields = tail.removesuffix(b"\r").split(b"|")
    kind = TYPES.get(fields[0])
    if kind is None:
        raise ParseError("bad_type")
    rate, container, timestamp = 1.0, "", None
    tags: Tags = ()
    for f in fields[1:]:
        first = f[:1]
        if first == b"@":
            try:
                rate = float(f[1:])
            except ValueError:
                raise ParseError("bad_rate") from None
            if math.isnan(rate):
                raise ParseError("bad_rate")
            if not 0.0 < rate <= 1.0 or not math.isfinite(1.0 / rate):
                # 0, out of range, or so small that 1/rate overflows: counted as unsampled,
                # never a division by zero or an infinite weight
                rate = 1.0
        elif first == b"#":
            tags = parse_tags(f[1:])
        elif first == b"T":
            if not f[1:].isdigit() or len(f) > MAX_DIGITS + 1:
                raise ParseError("bad_timestamp")
            timestamp = int(f[1:])
        elif f.startswith(b"c:"):
            container = decode(f[2:], "malformed_line")
        # anything else (`e:`, `card:`, future fields, empty fields) is ignored, as DogStatsD does
    return Head(decode(name, "malformed_line"), kind, rate, tags, container, timestamp)


def parse_values(kind: str, raw: bytes) -> tuple[tuple[float, ...], tuple[bool, ...]]:
    """`1:2::3` -> (1.0, 2.0, 3.0): value packing, empty items skipped. Not for sets."""
    if raw and raw.find(b":") < 0:  # one value, the usual case: the same result, without the lists
        # (find, not `in`: on 3.11 `bytes in bytes` first tries the needle as an int, raising and clearing a TypeError)
        try:
            value = finite(raw)
        except ValueError:
            raise ParseError("bad_value") from None
        return (value,), ((raw[:1] in (b"+", b"-"),) if kind == "g" else ())
    items = [v for v in raw.split(b":") if v]
    if not items:
        raise ParseError("bad_value")
    try:
        values = tuple(finite(v) for v in items)
    except ValueError:
        raise ParseError("bad_value") from None
    relative = tuple(v[:1] in (b"+", b"-") for v in items) if kind == "g" else ()
    return values, relative


def parse_metric(line: bytes) -> MetricLine:
    parts = split_line(line)
    if parts is None:
        raise ParseError("malformed_line")
    name, value, tail = parts
    head = parse_head(name, tail)
    if head.type == "s":
        if not value:
            raise ParseError("bad_value")
        return MetricLine(head, member=value)
    values, relative = parse_values(head.type, value)
    return MetricLine(head, values, relative=relative)


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n")


def _common_field(f: bytes, fields: dict[str, object], reason: str) -> None:
    """Fields shared by events and service checks: d: h: #tags c:."""
    if f.startswith(b"d:"):
        if not f[2:].isdigit() or len(f) > MAX_DIGITS + 2:
            raise ParseError(reason)
        fields["timestamp"] = float(int(f[2:]))
    elif f.startswith(b"h:"):
        fields["hostname"] = decode(f[2:], reason)
    elif f.startswith(b"#"):
        fields["tags"] = parse_tags(f[1:], reason)
    elif f.startswith(b"c:"):
        fields["container"] = decode(f[2:], reason)


def parse_event(line: bytes) -> tuple[Event, str]:
    """`_e{5,4}:title|text|d:..|h:..|k:..|p:..|s:..|t:..|#tags` (lengths in UTF-8 bytes)."""
    line = line.removesuffix(b"\r")
    close = line.find(b"}:")
    lengths = line[len(EVENT_PREFIX):close].split(b",") if close > 0 else []
    if len(lengths) != 2 or not all(n.isdigit() and len(n) <= MAX_DIGITS for n in lengths):
        raise ParseError("bad_event")
    title_len, text_len = int(lengths[0]), int(lengths[1])
    start = close + 2
    title, sep, text = line[start:start + title_len], line[start + title_len:start + title_len + 1], \
        line[start + title_len + 1:start + title_len + 1 + text_len]
    rest = line[start + title_len + 1 + text_len:]
    if not title or len(title) != title_len or sep != b"|" or len(text) != text_len or rest[:1] not in (b"", b"|"):
        raise ParseError("bad_event")
    fields: dict[str, object] = {}
    for f in rest[1:].split(b"|") if rest else ():
        if f.startswith(b"k:"):
            fields["aggregation_key"] = decode(f[2:], "bad_event")
        elif f.startswith(b"p:"):
            priority = decode(f[2:], "bad_event")
            if priority in ("normal", "low"):
                fields["priority"] = priority
        elif f.startswith(b"s:"):
            fields["source_type"] = decode(f[2:], "bad_event")
        elif f.startswith(b"t:"):
            alert = decode(f[2:], "bad_event")
            if alert in ("error", "warning", "info", "success"):
                fields["alert_type"] = alert
        else:
            _common_field(f, fields, "bad_event")
    container = str(fields.pop("container", ""))
    event = Event(_unescape(decode(title, "bad_event")), _unescape(decode(text, "bad_event")), **fields)  # type: ignore[arg-type]
    return event, container


def parse_service_check(line: bytes) -> tuple[ServiceCheck, str]:
    """`_sc|name|status|d:..|h:..|#tags|m:message`; `m:` comes last and may contain `|`."""
    line = line.removesuffix(b"\r")
    body, sep, message = line[len(CHECK_PREFIX):].partition(b"|m:")
    parts = body.split(b"|")
    if len(parts) < 2 or not parts[0] or parts[1] not in (b"0", b"1", b"2", b"3"):
        raise ParseError("bad_service_check")
    if len(parts[0]) > MAX_NAME:
        raise ParseError("too_long")
    fields: dict[str, object] = {}
    for f in parts[2:]:
        _common_field(f, fields, "bad_service_check")
    if sep:
        fields["message"] = _unescape(decode(message, "bad_service_check"))
    container = str(fields.pop("container", ""))
    check = ServiceCheck(decode(parts[0], "bad_service_check"), int(parts[1]), **fields)  # type: ignore[arg-type]
    return check, container


def parse_line(line: bytes) -> MetricLine | tuple[Event, str] | tuple[ServiceCheck, str] | None:
    """One line: a metric, an (event, container), a (service check, container), or None when empty."""
    if not line or line == b"\r":
        return None
    if line.startswith(EVENT_PREFIX):
        return parse_event(line)
    if line.startswith(CHECK_PREFIX):
        return parse_service_check(line)
    return parse_metric(line)


def parse(datagram: bytes) -> Parsed:
    """Every line of a datagram; bad lines are counted by reason and skipped."""
    out = Parsed()
    if len(datagram) > MAX_DATAGRAM:
        out.errors["too_long"] += 1
        return out
    for line in datagram.split(b"\n"):
        try:
            item = parse_line(line)
        except ParseError as exc:
            out.lines += 1
            out.errors[exc.reason] += 1
            continue
        if item is None:
            continue
        out.lines += 1
        if isinstance(item, MetricLine):
            out.metrics.append(item)
        elif isinstance(item[0], Event):
            out.events.append((item[0], item[1]))
        else:
            out.service_checks.append((item[0], item[1]))
    return out
