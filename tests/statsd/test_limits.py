"""Each byte and count limit of docs/statsd.md ("Limits") at its boundary, with both loops (C and
Python): the last value allowed is accepted, one more is refused and counted under its reason, and
the lines around it are kept."""

from __future__ import annotations

import pytest

from agent.model import Kind
from agent.statsd.flush import Flusher
from agent.statsd.interval import CONTEXT_COST, PAIR_COST, TAG_REF_COST, Limits
from agent.statsd.receive import Aggregator
from agent.statsd.parser import MAX_TAGS, MAX_TAGS_BYTES, MAX_TAIL

pytestmark = pytest.mark.usefixtures("both_loops")

CONTROL = b"control:1|c"


def run(datagram: bytes, limits: Limits | None = None) -> Aggregator:
    agg = Aggregator(limits=limits or Limits())
    agg.ingest(CONTROL)  # known before: the C loop handles its later lines
    agg.ingest(b"\n".join([CONTROL, datagram, CONTROL]))
    agg.adopt()  # the contexts the C loop made, in `contexts` and `held_bytes` (else at the swap)
    return agg


def control(agg: Aggregator) -> float:
    batch = Flusher(10.0).batch(agg.swap())
    return next(s.value for s in batch.samples if s.name == "control" and s.kind is Kind.COUNT)  # type: ignore[return-value]


@pytest.mark.parametrize(("count", "errors"), [(MAX_TAGS, {}), (MAX_TAGS + 1, {"too_many_tags": 1})])
def test_tags_per_line(count: int, errors: dict[str, int]) -> None:
    tags = ",".join(f"t{i}" for i in range(count))
    agg = run(f"m:1|c|#{tags}".encode())
    assert dict(agg.stats.errors) == errors
    assert control(agg) == 3.0


@pytest.mark.parametrize(("size", "errors"), [(MAX_TAGS_BYTES, {}), (MAX_TAGS_BYTES + 1, {"too_long": 1})])
def test_tag_bytes_per_line(size: int, errors: dict[str, int]) -> None:
    tags = ",".join(["a" * 99] * 50)  # 4,999 bytes: cut to `size`
    field = (tags[:size - 1] + "z") if size <= len(tags) else tags
    assert len(field) == size
    agg = run(f"m:1|c|#{field}".encode())
    assert dict(agg.stats.errors) == errors


@pytest.mark.parametrize(("size", "errors"), [(MAX_TAIL, {}), (MAX_TAIL + 1, {"too_long": 1})])
def test_bytes_after_the_value(size: int, errors: dict[str, int]) -> None:
    tail = b"c|x:" + b"u" * (size - 4)  # an unknown field: ignored, but it is held in the head cache
    agg = run(b"m:1|" + tail)
    assert dict(agg.stats.errors) == errors
    assert control(agg) == 3.0


def test_context_bytes_refuse_new_contexts_and_keep_the_old_ones() -> None:
    # each context: name "n<i>" (2 bytes) + one unique pair ("k", "<i>": 2 bytes)
    each = 2 + CONTEXT_COST + TAG_REF_COST + 1 + 1 + PAIR_COST
    control_cost = len("control") + CONTEXT_COST
    agg = run(b"\n".join(b"n%d:1|c|#k:%d" % (i, i) for i in range(10)),
              Limits(context_bytes=control_cost + 4 * each))
    assert len(agg.contexts) == 5  # the control context and 4 more
    assert agg.held_bytes == control_cost + 4 * each
    assert agg.stats.errors == {"cardinality_limit": 6} and agg.stats.contexts_dropped == 6
    assert control(agg) == 3.0


@pytest.mark.parametrize("tail", [b"c", b"c|T1700000000", b"g|T1700000000", b"c|#a:b|T1", b"h|T1", b"c|@0.5"])
def test_a_refused_head_is_one_dropped_context_while_remembered(tail: bytes) -> None:
    """Every line of a head refused at the cap is counted as refused; the context once. A timestamped
    head too: its values are exported apart, but its refusal is the head's like any other."""
    agg = run(b"\n".join([b"new:1|" + tail] * 5), Limits(max_contexts=1))
    assert agg.stats.errors == {"cardinality_limit": 5}
    assert agg.stats.contexts_dropped == 1
    assert control(agg) == 3.0


def test_a_shared_tag_is_charged_once() -> None:
    agg = run(b"\n".join(b"n%d:1|c|#env:prod" % i for i in range(10)))
    pair = len("env") + len("prod") + PAIR_COST
    assert agg.held_bytes == len("control") + CONTEXT_COST + 10 * (2 + CONTEXT_COST + TAG_REF_COST) + pair


def test_expired_contexts_make_room_again() -> None:
    limits = Limits(context_bytes=len("control") + CONTEXT_COST + 4 * (2 + CONTEXT_COST + TAG_REF_COST + 2 + PAIR_COST))
    agg = Aggregator(limits=limits)
    agg.ingest(CONTROL)
    agg.ingest(b"\n".join(b"a%d:1|c|#k:%d" % (i, i) for i in range(4)))
    agg.ingest(b"b0:1|c|#k:9")
    assert agg.stats.contexts_dropped == 1
    agg.swap()
    agg.ingest(CONTROL)  # the control context stays live
    agg.expire([c for c in agg.contexts.values() if c.name != "control"])
    agg.swap()
    agg.ingest(b"\n".join(b"b%d:1|c|#k:%d" % (i, i + 5) for i in range(4)))  # new pairs, as long
    assert agg.stats.contexts_dropped == 1  # the pairs of the forgotten contexts were dropped too
    agg.adopt()
    assert sorted(c.name for c in agg.contexts.values()) == ["b0", "b1", "b2", "b3", "control"]


def test_events_and_service_checks_past_their_bytes_are_refused_alone() -> None:
    event = b"_e{5,1000}:title|" + b"x" * 1000
    check = b"_sc|check|0|m:" + b"y" * 1000
    # each is charged its text plus 512 bytes (about 1,517): three of each fit in 4,800 (each kind its own)
    agg = run(b"\n".join([event, check] * 5), Limits(event_bytes=3 * 1600))
    assert len(agg.interval.events) == len(agg.interval.service_checks) == 3
    assert agg.stats.errors == {"event_limit": 4}
    assert agg.stats.events == agg.stats.service_checks == 3
    assert control(agg) == 3.0


def test_a_burst_of_events_never_refuses_a_service_check() -> None:
    """Events and service checks have a byte budget each: a worker's burst of events past its budget cost the
    interval's service checks (health signals) theirs (an outside tester: 9 of 10 checks refused)."""
    events = [b"_e{1,1}:t|x|#i:%d" % i for i in range(100)]
    checks = [b"_sc|check%d|0" % i for i in range(10)]
    agg = run(b"\n".join(events + checks), Limits(event_bytes=20 * 720))
    assert len(agg.interval.service_checks) == 10 and agg.stats.service_checks == 10
    assert 0 < len(agg.interval.events) < 100 and agg.stats.errors == {"event_limit": 100 - len(agg.interval.events)}


def test_events_past_their_count_are_refused() -> None:
    agg = run(b"\n".join([b"_e{1,1}:t|x"] * 5), Limits(events=2))
    assert len(agg.interval.events) == 2 and agg.stats.errors == {"event_limit": 3}


def test_set_members_past_their_limits_are_refused_and_known_ones_kept() -> None:
    limits = Limits(set_members=5, set_bytes=1000, set_members_per_context=3, set_bytes_per_context=1000)
    lines = [b"u:%d|s" % i for i in range(4)] + [b"v:%d|s" % i for i in range(4)] + [b"u:0|s"]
    agg = run(b"\n".join(lines), limits)
    sets = {c.name: m for c, m in agg.interval.sets.items()}
    assert sets == {"u": {b"0", b"1", b"2"}, "v": {b"0", b"1"}}
    assert agg.stats.errors == {"set_limit": 3}  # u:3 (the set's own count), v:2 and v:3 (all sets)
    assert control(agg) == 3.0


def test_set_member_bytes_are_limited_per_set_and_in_all() -> None:
    limits = Limits(set_bytes=250, set_bytes_per_context=150)
    lines = [b"u:" + bytes([97 + i]) * 100 + b"|s" for i in range(2)] + [b"v:" + bytes([97 + i]) * 100 + b"|s" for i in range(3)]
    agg = run(b"\n".join(lines), limits)
    assert agg.interval.set_bytes == 200
    assert {c.name: len(m) for c, m in agg.interval.sets.items()} == {"u": 1, "v": 1}
    assert agg.stats.errors == {"set_limit": 3}


def test_timestamped_lines_past_their_count_are_refused() -> None:
    agg = run(b"\n".join(b"t:%d|c|T1700000000" % i for i in range(1, 6)), Limits(timestamped=3))
    assert [v for _, v, _ in agg.interval.timestamped] == [1.0, 2.0, 3.0]
    assert agg.stats.errors == {"timestamp_limit": 2}
    assert control(agg) == 3.0


def test_histogram_values_past_their_count_are_refused_packed_or_not() -> None:
    """Every value is kept (8 bytes): past `histogram_values` in an interval a line is refused whole,
    whether its values are packed or one per line, and whichever loop (C or Python) reads it."""
    agg = Aggregator(limits=Limits(histogram_values=7))
    lines = [b"h:1:2:3|h", b"h:4|h", b"h:4|h", b"h:4|h", b"t:5|ms", b"h:6|h", b"h:7:8|h", b"t:9|ms"]
    agg.ingest(b"\n".join(lines))
    assert agg.stats.errors == {"value_limit": 3}
    batch = Flusher(10.0).batch(agg.swap(), now=1.0)
    values = {s.name: sorted(s.value.values) for s in batch.samples}  # type: ignore[union-attr]
    assert values == {"h": [1.0, 2.0, 3.0, 4.0, 4.0, 4.0], "t": [5.0]}
    agg.ingest(b"\n".join(lines[:3]))  # a new interval: room again
    assert agg.stats.errors == {"value_limit": 3}
