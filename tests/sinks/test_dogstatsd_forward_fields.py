"""Forwarded lines read back field for field by a strict model of the Datadog agent's DogStatsD parser.

The model follows datadog-agent's `pkg/dogstatsd` (`parse.go`, `parse_events.go`,
`parse_service_checks.go`): a datagram is split into lines on `\\n` (a trailing `\\r` dropped, as
`bufio.ScanLines` does); every `|` of a metric or service check line ends a field, and a field
starting with `#` replaces the tags, `h:` the host, `d:` the time, `m:` the message, whatever came
before; an event's title and text are cut by their byte lengths; tags split on `,`.
Whatever a worker sends, the agent must read back exactly the enriched tags and the intended fields.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.model import Event, Kind, Sample, ServiceCheck, merge_tags
from agent.sinks.datadog_series import metric_name
from agent.sinks.deltas import CounterDeltas
from agent.sinks.dogstatsd_forward import check_line, event_line, pack, sample_lines

# --- the model of the Datadog agent's parser ------------------------------------------------------


@dataclass
class Parsed:
    kind: str  # "metric", "event", "service_check"
    name: str = ""
    text: str = ""  # event text
    value: str = ""
    type: str = ""
    status: int | None = None
    tags: list[str] | None = None
    hostname: str | None = None
    timestamp: int | None = None
    message: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # k: p: s: t: @ T


def dd_lines(datagram: bytes) -> Iterator[bytes]:
    for line in datagram.split(b"\n"):
        line = line.removesuffix(b"\r")
        if line:
            yield line


def _tags(raw: bytes) -> list[str] | None:
    return raw.decode().split(",") if raw else None


def _fields(rest: bytes | None) -> Iterator[bytes]:
    while rest is not None:
        head, sep, tail = rest.partition(b"|")
        yield head
        rest = tail if sep else None


def _common_field(p: Parsed, f: bytes) -> bool:
    """The fields events and service checks share (`d:`, `h:`, `#`): set on `p`; False for another."""
    if f.startswith(b"d:"):
        p.timestamp = int(f[2:])
    elif f.startswith(b"h:"):
        p.hostname = f[2:].decode()
    elif f.startswith(b"#"):
        p.tags = _tags(f[1:])  # a later `#` field replaces an earlier one, as in the agent
    else:
        return False
    return True


def dd_parse(line: bytes) -> Parsed:
    if line.startswith(b"_e{"):
        header, _, body = line.partition(b":")
        title_len, text_len = (int(n) for n in header[3:-1].split(b","))
        assert title_len > 0 and len(body) >= title_len + text_len + 1, line
        p = Parsed("event", name=body[:title_len].decode().replace("\\n", "\n"),
                   text=body[title_len + 1:title_len + 1 + text_len].decode().replace("\\n", "\n"))
        rest = body[title_len + 1 + text_len + 1:] if len(body) > title_len + 1 + text_len else None
        for f in _fields(rest):
            if not _common_field(p, f) and f[:2] in (b"k:", b"p:", b"s:", b"t:"):
                p.extra[f[:1].decode()] = f[2:].decode()
        return p
    if line.startswith(b"_sc"):
        assert line.count(b"|") >= 2 and len(line) >= 4, line
        fields = _fields(line[4:])
        name = next(fields)
        assert name, line
        p = Parsed("service_check", name=name.decode(), status=int(next(fields)))
        for f in fields:
            if not _common_field(p, f) and f.startswith(b"m:"):
                p.message = f[2:].decode()
        return p
    fields = _fields(line)
    name, _, value = next(fields).partition(b":")
    p = Parsed("metric", name=name.decode(), value=value.decode(), type=next(fields).decode())
    for f in fields:
        if f.startswith(b"#"):
            p.tags = _tags(f[1:])
        elif f[:1] in (b"@", b"T"):
            p.extra[f[:1].decode()] = f[1:].decode()
    return p


# --- what the agent must read back ------------------------------------------------------------------

SEPARATORS = "|,#\n\r"


def field_text(text: str) -> str:
    """Names, hostnames, keys, tag values: each separator becomes `_` (docs/datadog.md)."""
    return "".join("_" if c in SEPARATORS else c for c in text)


def expected_tags(tags: tuple[tuple[str, str], ...]) -> list[str] | None:
    out = []
    for key, value in tags:
        key = "".join("_" if c in SEPARATORS + ":" else c for c in key)
        item = f"{key}:{field_text(value)}" if value else key
        if item:
            out.append(item)
    return out or None


def expected_event_text(text: str) -> str:
    # `\r` dropped; the agent reads a newline for `\n` written as two characters, as from any client
    return text.replace("\r", "").replace("\\n", "\n")


def expected_message(text: str) -> str:
    return text.replace("\r", "").replace("|", "\u00a6").replace("\n", "\\n")


# --- hostile input ----------------------------------------------------------------------------------

HOSTILE = st.text(st.sampled_from(list("|#,:@\n\r\\nmdhTkpst ab¦é_")) | st.characters(exclude_categories=("Cs",)),
                  max_size=24)
TAGS = st.lists(st.tuples(HOSTILE, HOSTILE), max_size=4).map(tuple)
TASK_TAGS = (("service", "orders"), ("env", "prod"), ("task_id", "4f1c"))


@st.composite
def samples(draw: st.DrawFn) -> Sample:
    kind = draw(st.sampled_from([Kind.GAUGE, Kind.COUNT]))
    timestamp = draw(st.none() | st.integers(1, 2**40).map(float))
    tags = merge_tags(TASK_TAGS, draw(TAGS))
    return Sample(draw(HOSTILE), float(draw(st.integers(-10**6, 10**6))), kind, tags,
                  timestamp=timestamp if kind is Kind.GAUGE else None, interval=10.0)


@st.composite
def events(draw: st.DrawFn) -> Event:
    return Event(draw(HOSTILE.filter(lambda t: t.replace("\r", ""))), draw(HOSTILE),
                 merge_tags(TASK_TAGS, draw(TAGS)), timestamp=draw(st.none() | st.integers(1, 2**40)),
                 hostname=draw(st.none() | HOSTILE), aggregation_key=draw(st.none() | HOSTILE),
                 priority=draw(st.none() | st.sampled_from(["low", "normal"])),
                 source_type=draw(st.none() | HOSTILE),
                 alert_type=draw(st.none() | st.sampled_from(["error", "warning", "info", "success"])))


@st.composite
def checks(draw: st.DrawFn) -> ServiceCheck:
    return ServiceCheck(draw(HOSTILE.filter(bool)), draw(st.integers(0, 3)), merge_tags(TASK_TAGS, draw(TAGS)),
                        timestamp=draw(st.none() | st.integers(1, 2**40)), hostname=draw(st.none() | HOSTILE),
                        message=draw(st.none() | HOSTILE))


def read_back(lines: list[str]) -> list[Parsed]:
    datagrams, too_long = pack(lines)
    assert too_long == 0
    parsed = [dd_parse(line) for d in datagrams for line in dd_lines(d)]
    assert len(parsed) == len(lines)  # nothing split a line in two, nothing merged two
    return parsed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(samples(), max_size=4), st.lists(events(), max_size=3), st.lists(checks(), max_size=3))
def test_any_hostile_input_reads_back_as_the_enriched_fields(
        metrics: list[Sample], evs: list[Event], scs: list[ServiceCheck]) -> None:
    lines: list[str] = []
    expected: list[tuple[str, object]] = []
    for s in metrics:
        got = sample_lines(s, CounterDeltas(), 1.0)
        lines += got
        expected += [("metric", s)] * len(got)
    lines += [event_line(e) for e in evs] + [check_line(c) for c in scs]
    expected += [("event", e) for e in evs] + [("service_check", c) for c in scs]
    parsed = read_back(lines)
    for p, (kind, original) in zip(parsed, expected):
        assert p.kind == kind
        if isinstance(original, Sample):
            assert p.name == metric_name(original.name) and p.name
            assert (float(p.value), p.type) == (original.value, "g" if original.kind is Kind.GAUGE else "c")
            assert p.tags == expected_tags(original.tags)
            assert p.extra.get("T") == (None if original.timestamp is None else str(int(original.timestamp)))
            assert "@" not in p.extra
        elif isinstance(original, Event):
            assert (p.name, p.text) == (expected_event_text(original.title), expected_event_text(original.text))
            assert p.tags == expected_tags(original.tags)
            assert p.timestamp == original.timestamp
            assert p.hostname == (field_text(original.hostname) if original.hostname else None)
            for key, value in (("k", original.aggregation_key), ("s", original.source_type),
                               ("p", original.priority), ("t", original.alert_type)):
                assert p.extra.get(key) == (field_text(value) if value else None)
        else:
            assert isinstance(original, ServiceCheck)
            assert (p.name, p.status) == (field_text(original.name), original.status)
            assert p.tags == expected_tags(original.tags)
            assert p.timestamp == original.timestamp
            assert p.hostname == (field_text(original.hostname) if original.hostname else None)
            assert p.message == (expected_message(original.message) if original.message else None)


def test_a_message_cannot_replace_the_tags_host_or_time() -> None:
    check = ServiceCheck("db.up", 2, (("service", "tester"), ("shard", "7")),
                         message="primary lost|#shard:0|h:other-host|d:12345")
    (p,) = read_back([check_line(check)])
    assert p.tags == ["service:tester", "shard:7"]
    assert (p.hostname, p.timestamp) == (None, None)
    assert p.message == "primary lost\u00a6#shard:0\u00a6h:other-host\u00a6d:12345"


def test_tags_keep_their_key_and_value() -> None:
    sample = Sample("m", 1.0, tags=(("a:b", "c"), ("k", "v:w"), ("x#", "y|z,w\n"), ("", "")))
    (p,) = read_back(sample_lines(sample, CounterDeltas(), 1.0))
    assert p.tags == ["a_b:c", "k:v:w", "x_:y_z_w_"]


async def test_a_real_client_s_hostile_message_reaches_the_agent_as_one_field(
        sidecar_factory) -> None:  # type: ignore[no-untyped-def]
    """The tester's case, end to end: the stock client, the sidecar, the forwarded datagram."""
    import socket

    from datadog.dogstatsd import DogStatsd

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        sidecar = sidecar_factory(TASKLENS_DOGSTATSD_FORWARD=f"127.0.0.1:{receiver.getsockname()[1]}",
                                  TASKLENS_FLUSH_INTERVAL="1", TASKLENS_SERVICE="tester")
        await asyncio.to_thread(sidecar.wait_ready)
        statsd = DogStatsd(host="127.0.0.1", port=sidecar.statsd_port, disable_telemetry=True,
                           disable_buffering=True)
        statsd.service_check("db.up", 2, tags=["shard:7"], message="primary lost|#shard:0|h:other-host|d:12345")
        statsd.close_socket()
        found: list[Parsed] = []
        deadline = time.monotonic() + 15
        while not found:
            assert time.monotonic() < deadline, "the service check was never forwarded"
            try:
                datagram = receiver.recv(65536)
            except BlockingIOError:
                await asyncio.sleep(0.02)
                continue
            found = [p for p in map(dd_parse, dd_lines(datagram)) if p.kind == "service_check" and p.name == "db.up"]
        assert await asyncio.to_thread(sidecar.stop) == 0
    (p,) = found
    assert p.tags is not None and "shard:7" in p.tags and "service:tester" in p.tags and "shard:0" not in p.tags
    assert (p.status, p.hostname, p.timestamp) == (2, None, None)
    assert p.message == "primary lost\u00a6#shard:0\u00a6h:other-host\u00a6d:12345"
