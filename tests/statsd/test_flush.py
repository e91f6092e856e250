"""The export side (`agent/statsd/flush.py`): idle counters are exported as zeros until their TTL.

The zeros are kept from one flush to the next rather than made again; a property test holds them to the
rule they follow (docs/statsd.md): every counter exported before, absent from this interval and
exported within the TTL, is a zero, with the tags of its container and the interval of this batch."""

from __future__ import annotations

import math
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.model import Kind, merge_tags
from agent.statsd.flush import Flusher
from agent.statsd.receive import Aggregator

SETTINGS = settings(max_examples=int(os.environ.get("STATSD_EXAMPLES", "150")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
NAMES = [b"a", b"b|#k:v", b"c|c:c1", b"d|c:c2", b"e|#k:w|c:c1", b"f", b"big"]
CONTAINERS = [{}, {"c1": (("container_name", "one"),)}, {"c1": (("container_name", "uno"),), "c2": (("x", "y"),)}]
# the task's tags (what the hub would add): they change when the identity does (the first ECS poll)
BASES = [(), (("service", "orders"), ("x", "task")), (("service", "orders"), ("task_id", "t2"))]

# one interval: which counters are sent (and whether `big` overflows), the containers' tags, periods,
# the seconds since the last flush, and whether expired contexts are forgotten after it
interval = st.tuples(st.sets(st.sampled_from(range(len(NAMES)))), st.booleans(), st.sampled_from(range(3)),
                     st.sampled_from([1, 1, 2]), st.sampled_from([10.0, 10.0, 40.0]), st.booleans(),
                     st.sampled_from(range(len(BASES))))


@SETTINGS
@given(st.lists(interval, min_size=1, max_size=12))
def test_idle_counters_are_zero_until_their_ttl(intervals: list[tuple[set[int], bool, int, int, float, bool, int]]) -> None:
    agg, flusher = Aggregator(), Flusher(10.0, ttl=30.0)
    exported: dict[str, float] = {}  # name -> when last exported with a value (the reference model)
    now = 1000.0
    for sent, overflow, which, periods, step, expire, task in intervals:
        now += step
        lines = [NAMES[i].replace(b"|", b":1|c|", 1) if b"|" in NAMES[i] else NAMES[i] + b":1|c" for i in sent]
        if 6 in sent and overflow:
            lines = [line for line in lines if not line.startswith(b"big")] + [b"big:1e308|c"] * 2
        agg.ingest(b"\n".join(lines))
        iv = agg.swap(now)
        iv.periods = periods
        containers = CONTAINERS[which]
        batch = flusher.batch(iv, containers, now=now, base=BASES[task])
        values = {NAMES[i].split(b"|")[0].decode() for i in sent}
        got = {}
        for s in batch.samples:
            assert s.kind is Kind.COUNT and s.interval == 10.0 * periods
            assert s.name not in got
            got[s.name] = (s.value, s.tags)
        # the zeros come last, and `idle` says how many (a sink that keeps totals skips them)
        idle = batch.samples[len(batch.samples) - batch.idle:]
        assert all(s.value == 0.0 and s.name not in values for s in idle)
        assert all(s.value != 0.0 for s in batch.samples[:len(batch.samples) - batch.idle])
        expected = {}
        for name in values:
            if not (name == "big" and overflow):
                exported[name] = now
                expected[name] = 1.0
        for name, when in list(exported.items()):
            if name not in values:
                if now - when <= 30.0:
                    expected[name] = 0.0
                else:
                    del exported[name]
        assert {n: v for n, (v, _) in got.items()} == expected
        for name, (_, tags) in got.items():  # the task's, then the containers' tags of this flush, then the client's
            full = next(n for n in NAMES if n.split(b"|")[0].decode() == name)
            container = full.split(b"|c:")[1].decode() if b"|c:" in full else ""
            own = (("k", full.split(b"#k:")[1].split(b"|")[0].decode()),) if b"#k:" in full else ()
            with_container = merge_tags(containers.get(container, ()), own)
            assert tags == merge_tags(BASES[task], with_container)
        if expire:
            gone = flusher.expired(now)
            agg.expire(gone)
            for ctx in gone:
                exported.pop(ctx.name, None)


def test_a_flush_reuses_the_zero_samples_of_idle_counters() -> None:
    agg, flusher = Aggregator(), Flusher(10.0)
    agg.ingest(b"\n".join(b"idle.%d:1|c" % i for i in range(100)))
    flusher.batch(agg.swap(10.0), now=10.0)
    first = flusher.batch(agg.swap(20.0), now=20.0).samples
    second = flusher.batch(agg.swap(30.0), now=30.0).samples
    assert len(first) == len(second) == 100 and all(s.value == 0.0 for s in second)
    assert all(a is b for a, b in zip(first, second))  # the same objects: nothing made per idle counter


def test_a_merge_never_holds_more_than_its_distinct_values() -> None:
    """Values that repeat are merged; past MERGE_MAX distinct values they pass as they are, and the
    count stopped there (4,000,000 distinct values counted at once held 470 MiB)."""
    from agent.statsd import flush

    agg = Aggregator()
    agg.ingest(b"rep:" + b":".join(b"%d" % (i % 10) for i in range(4000)) + b"|ms")
    n, per_line = flush.MERGE_MAX + 1000, 8000  # a line is at most 64 KiB
    for start in range(0, n, per_line):
        agg.ingest(b"all:" + b":".join(b"%d" % i for i in range(start, min(n, start + per_line))) + b"|h")
    points = {s.name: s.value for s in Flusher(10.0).batch(agg.swap(), now=1.0).samples}
    assert sorted(points["rep"].values) == [float(i) for i in range(10)]  # type: ignore[union-attr]
    assert list(points["rep"].weights) == [400.0] * 10  # type: ignore[union-attr]
    assert sorted(points["all"].values) == [float(i) for i in range(n)]  # type: ignore[union-attr]
    assert set(points["all"].weights) == {1.0}  # type: ignore[union-attr]


def test_a_flush_of_a_million_distinct_values_allocates_a_bounded_amount() -> None:
    """The memory a flush takes for one histogram of 1,000,000 distinct values (8 MB of them): the
    merge attempt stops at its bound instead of counting them all (which allocated ~110 MB)."""
    import tracemalloc

    agg = Aggregator()
    n, per_line = 1_000_000, 8000
    for start in range(0, n, per_line):
        agg.ingest(b"all:" + b":".join(b"%d" % i for i in range(start, start + per_line)) + b"|h")
    iv = agg.swap()
    tracemalloc.start()
    try:
        batch = Flusher(10.0).batch(iv, now=1.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(batch.samples[0].value.values) == n  # type: ignore[union-attr]
    assert peak < 48 * 1024**2, peak


def test_two_harvests_of_one_slot_in_an_interval_are_joined_in_order() -> None:
    """The C loop's harvests arrive as bytearrays, kept as they are when a slot has one; a second one
    for the same slot (a harvest before the swap, at an expiry) joins the first."""
    from array import array

    from agent.statsd.interval import Context, Interval, Slot

    slot = Slot(1, Context("h", "h", (), ""), 2.0)
    iv = Interval(0.0)
    for values in ([3.0, 1.0], [2.0]):
        iv.pending.append(([slot], array("d", [0.0]).tobytes(), [bytearray(array("d", values).tobytes())]))
    iv.settle()
    assert list(iv.values[slot]) == [3.0, 1.0, 2.0]
    points = Flusher(10.0).batch(iv, now=1.0).samples[0].value
    assert list(points.values) == [1.0, 2.0, 3.0] and list(points.weights) == [2.0] * 3  # type: ignore[union-attr]


RATE_WEIGHTS = [1.0, 2.0, 10.0, 1 / 0.3, 4.0, 1000.0]
repeating = st.lists(st.one_of(st.sampled_from([0.0, -0.0, 1.0, 2.5, 7.0, 1e-300, -3.0]),
                               st.integers(-20, 20).map(float), st.floats(-1e9, 1e9)), max_size=200)


@SETTINGS
@given(st.lists(st.tuples(repeating, st.sampled_from(RATE_WEIGHTS), st.sampled_from(["array", "harvest"])),
                min_size=1, max_size=4), st.integers(0, 60))
def test_equal_values_merge_to_the_same_result_in_c_and_in_python(parts_drawn, most) -> None:
    """`_fast.merge` and `flush._merged` agree on every input, bit for bit (0.0 and -0.0 are one value,
    the first seen stays; each part adds its count times its weight), and both follow the definition:
    None past `most` distinct values."""
    from array import array

    from agent.statsd import _fast, flush

    parts = [(array("d", values) if form == "array" else memoryview(bytearray(array("d", values))).cast("d"), w)
             for values, w, form in parts_drawn]
    expected: dict[float, float] = {}
    first: dict[float, float] = {}
    for values, w, _ in parts_drawn:
        for v in values:
            first.setdefault(v, v)  # a dict finds -0.0 under 0.0: the first seen is kept
        for v in dict.fromkeys(values):
            expected[v] = expected.get(v, 0.0) + values.count(v) * w
    results = []
    for merge in (_fast.merge, flush._merged):
        out = merge(parts, most)
        if len(expected) > most:
            assert out is None
            continue
        pairs = sorted(zip(memoryview(out[0]).cast("d"), memoryview(out[1]).cast("d")))
        assert pairs == sorted(expected.items())
        assert [math.copysign(1.0, v) for v, _ in pairs] == [math.copysign(1.0, first[v]) for v, _ in pairs]
        results.append(pairs)
    assert not results or results[0] == results[1]


# Lines whose contexts differ but whose series may be one: (line with {v} for the value, own tags, container).
# `c:c1` with c1 unknown resolves to the line without `c:`; with c1 known, to the line that carries c1's tag
# itself; `service:orders` is the task's own tag; a gauge and a set of one name; a timestamped line twice.
SAME_SERIES = [
    (b"jobs:{v}|c", {}, ""), (b"jobs:{v}|c|c:c1", {}, "c1"), (b"jobs:{v}|c|#container_name:one", {"container_name": "one"}, ""),
    (b"jobs:{v}|c|#service:orders", {"service": "orders"}, ""), (b"jobs:{v}|c|#service:orders|c:c1", {"service": "orders"}, "c1"),
    (b"lat:{v}|h", {}, ""), (b"lat:{v}|h|c:c1", {}, "c1"), (b"lat:{v}|h|#container_name:one", {"container_name": "one"}, ""),
    (b"level:{v}|g", {}, ""), (b"level:{v}|g|c:c1", {}, "c1"), (b"level:x{v}|s|c:c1", {}, "c1"),
    (b"then:{v}|c|T1700000000", {}, ""), (b"then:{v}|c|T1700000000|c:c1", {}, "c1"),
]


@SETTINGS
@given(st.booleans(), st.lists(st.lists(st.tuples(st.sampled_from(range(len(SAME_SERIES))), st.integers(1, 9)),
                                        max_size=12), min_size=1, max_size=5))
def test_contexts_that_resolve_to_one_series_are_exported_as_one(known: bool, intervals: list[list[tuple[int, int]]]) -> None:
    """Whatever lines of colliding contexts come in whatever order: one sample per series in every batch,
    counts summed over every line of the series, histogram weights too, a gauge one of its values, and
    an idle counter's series is a zero only when no context of it counted in this interval."""
    containers = {"c1": (("container_name", "one"),)} if known else {}
    base = (("service", "orders"),)
    agg, flusher = Aggregator(), Flusher(10.0, ttl=1e9)
    counted_before: set[frozenset[tuple[str, str]]] = set()
    now = 1000.0
    for lines in intervals:
        now += 10.0
        sent: dict[tuple[str, frozenset[tuple[str, str]]], list[float]] = {}
        for which, v in lines:
            text, own, container = SAME_SERIES[which]
            agg.ingest(text.replace(b"{v}", str(v).encode()))
            tags = dict(base) | dict(containers.get(container, ())) | own
            sent.setdefault((text.split(b":")[0].decode(), frozenset(tags.items())), []).append(float(v))
        batch = flusher.batch(agg.swap(now), containers, now=now, base=base)
        keys = [(s.name, s.kind, s.timestamp, frozenset(s.tags)) for s in batch.samples]
        assert len(keys) == len(set(keys)), "one sample per series"
        got = {(s.name, frozenset(s.tags)): s for s in batch.samples}
        for (name, tags), values in sent.items():
            s = got[(name, tags)]
            if name in ("jobs", "then"):
                assert s.value == sum(values)
            elif name == "lat":
                assert s.value.count == len(values)  # type: ignore[union-attr]
            else:  # one of its gauge values, or the size of its set
                gauges = [v for (w, v) in lines if b"|g" in SAME_SERIES[w][0]]
                members = {v for (w, v) in lines if b"|s" in SAME_SERIES[w][0]}
                assert s.value in gauges or s.value == len(members)
        zeros = {(s.name, frozenset(s.tags)) for s in batch.samples[len(batch.samples) - batch.idle:]}
        counted = {tags for name, tags in sent if name == "jobs"}
        assert zeros == {("jobs", tags) for tags in counted_before - counted}
        assert all(s.value == 0.0 for s in batch.samples[len(batch.samples) - batch.idle:])
        counted_before |= counted
