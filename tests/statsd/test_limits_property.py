"""Property-based: the byte and count limits of docs/statsd.md ("Limits") hold for any input, a refused
line costs nothing else (a control counter in the same datagram is counted exactly), and the C loop and
the Python loop refuse exactly the same lines."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.model import Kind
from agent.statsd.flush import Flusher
from agent.statsd.interval import Limits, pair_cost
from agent.statsd.receive import Aggregator
from agent.statsd.parser import MAX_TAG, MAX_TAGS, MAX_TAGS_BYTES, ParseError, parse, parse_line

SETTINGS = settings(max_examples=int(os.environ.get("STATSD_EXAMPLES", "150")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

CONTROL = b"control.jobs:3|c|#ctl:yes"

# tags of every size around the limits: many tiny ones, a few huge ones, some over a tag's own limit
tag = st.one_of(st.text("abz:", min_size=1, max_size=3),
                st.integers(1, MAX_TAG + 20).map(lambda n: "k:" + "v" * n))
tag_list = st.lists(tag, max_size=MAX_TAGS + 60)


def tagged(name: str, value: str, kind: str, tags: list[str]) -> bytes:
    return f"{name}:{value}|{kind}|#{','.join(tags)}".encode()


def within(tags: list[str]) -> bool:
    field = ",".join(tags).encode()
    return len(field) <= MAX_TAGS_BYTES and len(tags) <= MAX_TAGS and all(len(t) <= MAX_TAG for t in tags)


def run_both(datagrams: list[bytes], limits: Limits) -> list[Aggregator]:
    out = []
    for accelerated in (True, False):
        agg = Aggregator(limits=limits, accelerated=accelerated)
        agg.ingest(CONTROL)  # a known context before the storm: its lines must never be refused
        for d in datagrams:
            agg.ingest(d)
        agg.adopt()  # the contexts the C loop made, in `contexts` and `held_bytes` (else at the swap)
        out.append(agg)
    return out


def control_sum(agg: Aggregator) -> float:
    batch = Flusher(10.0).batch(agg.swap())
    return sum(s.value for s in batch.samples if s.name == "control.jobs" and s.kind is Kind.COUNT)  # type: ignore[misc]


@SETTINGS
@given(st.lists(tag_list, min_size=1, max_size=8))
def test_a_line_over_the_tag_limits_is_refused_alone(lines_tags: list[list[str]]) -> None:
    lines = [tagged(f"m{i}", "1", "c", tags) for i, tags in enumerate(lines_tags)]
    datagram = b"\n".join([CONTROL, *lines, CONTROL])
    parsed = parse(datagram)
    for line, tags in zip(lines, lines_tags):
        try:
            item = parse_line(line)
        except ParseError as exc:
            assert not within(tags) and exc.reason in ("too_long", "too_many_tags")
            continue
        assert within(tags)
        assert len(item.head.tags) <= MAX_TAGS  # type: ignore[union-attr]
    refused = sum(1 for tags in lines_tags if not within(tags))
    assert sum(parsed.errors.values()) == refused
    assert len(parsed.metrics) == 2 + len(lines) - refused
    for agg in run_both([datagram], Limits()):
        assert agg.stats.errors.total() == refused
        assert control_sum(agg) == 9.0  # the control line before the storm, and two in the datagram


@SETTINGS
@given(st.lists(st.tuples(st.integers(1, 3000), st.integers(0, 3000), st.integers(0, 30)), max_size=40),
       st.integers(1, 60_000), st.integers(1, 30))
def test_events_never_pass_their_bytes_or_count(sizes: list[tuple[int, int, int]], budget: int, count: int) -> None:
    limits = Limits(event_bytes=budget, events=count)
    datagrams = []
    for title, text, ntags in sizes:
        t, x = "t" * title, "x" * text
        tags = ",".join(f"e{i}:v" for i in range(ntags))
        event = f"_e{{{len(t)},{len(x)}}}:{t}|{x}|#{tags}".encode()
        datagrams.append(b"\n".join([event, CONTROL, b"_sc|check|0|m:" + x.encode()]))
    aggs = run_both(datagrams, limits)
    for agg in aggs:
        iv = agg.interval
        assert iv.event_bytes <= budget and iv.check_bytes <= budget
        assert len(iv.events) <= count and len(iv.service_checks) <= count
        kept = len(iv.events) + len(iv.service_checks)
        assert kept + agg.stats.errors["event_limit"] == 2 * len(sizes)
        assert control_sum(agg) == 3.0 * (len(sizes) + 1)
    assert aggs[0].stats.errors == aggs[1].stats.errors


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 4), st.binary(min_size=1, max_size=300).filter(
           lambda b: b"\n" not in b and b"|" not in b)), max_size=200),
       st.integers(1, 50), st.integers(1, 4000), st.integers(1, 20), st.integers(1, 2000))
def test_sets_never_pass_their_limits(members: list[tuple[int, bytes]], total: int, total_bytes: int,
                                      per_context: int, per_context_bytes: int) -> None:
    limits = Limits(set_members=total, set_bytes=total_bytes, set_members_per_context=per_context,
                    set_bytes_per_context=per_context_bytes)
    datagrams = [b"\n".join([b"users.%d:%s|s|#k:v" % (ctx, member), CONTROL]) for ctx, member in members]
    aggs = run_both(datagrams * 2, limits)  # twice: known members are never refused, nor counted twice
    for agg in aggs:
        iv = agg.interval
        assert iv.set_members == sum(map(len, iv.sets.values())) <= total
        assert iv.set_bytes == sum(len(m) for s in iv.sets.values() for m in s) <= total_bytes
        for ctx, kept in iv.sets.items():
            assert len(kept) <= per_context and sum(map(len, kept)) <= per_context_bytes
            assert iv.set_bytes_of[ctx] == sum(map(len, kept))
        assert control_sum(agg) == 3.0 * (2 * len(members) + 1)
    assert aggs[0].stats.errors == aggs[1].stats.errors
    assert {c.name: s for c, s in aggs[0].interval.sets.items()} == {c.name: s for c, s in aggs[1].interval.sets.items()}


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from([b"h", b"ms", b"d"]), st.integers(0, 3),
                          st.lists(st.integers(-5, 5), min_size=1, max_size=6)), max_size=80),
       st.integers(1, 60))
def test_histogram_values_never_pass_their_count(lines: list[tuple[bytes, int, list[int]]], limit: int) -> None:
    """Packed or one per line, in C or in Python: at most `histogram_values` kept per interval, a line
    refused whole when its values do not all fit, the same lines refused by both loops."""
    datagrams = [b"\n".join([b"lat.%d:%s|%s" % (ctx, b":".join(b"%d" % v for v in values), kind), CONTROL])
                 for kind, ctx, values in lines]
    aggs = run_both(datagrams, Limits(histogram_values=limit))
    kept = []
    for agg in aggs:
        batch = Flusher(10.0).batch(agg.swap(), now=1.0)
        values = {(s.name, s.kind): sorted(s.value.values) for s in batch.samples if s.name.startswith("lat.")}
        assert sum(map(len, values.values())) <= limit
        assert sum(s.value for s in batch.samples if s.name == "control.jobs") == 3.0 * (len(lines) + 1)  # type: ignore[misc]
        kept.append(values)
    assert kept[0] == kept[1]
    assert aggs[0].stats.errors == aggs[1].stats.errors


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 60), st.integers(1, 150)), max_size=120),
       st.integers(1_000, 200_000))
def test_context_bytes_never_pass_their_limit(contexts: list[tuple[int, int, int]], budget: int) -> None:
    limits = Limits(context_bytes=budget)
    datagrams = []
    for i, ntags, size in contexts:
        tags = ",".join(f"t{j}:{'v' * size}" for j in range(ntags))
        datagrams.append(b"\n".join([f"ctx.{i}:1|c|#{tags}".encode(), CONTROL]))
    for agg in run_both(datagrams, limits):
        held = agg.held_bytes
        assert agg.context_bytes == sum(c.cost for c in agg.contexts.values())
        pairs = {kv for c in agg.contexts.values() for kv in c.tags}
        assert held == agg.context_bytes + sum(pair_cost(kv) for kv in pairs)  # each distinct pair once
        # the control context was made before the storm: what it holds may be all that fits
        control = next(iter(agg.contexts.values()))
        assert held <= max(budget, control.cost + sum(map(pair_cost, control.tags)))
        assert control_sum(agg) == 3.0 * (len(contexts) + 1)
