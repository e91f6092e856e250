"""Many heads of one context (a new sample rate or an unknown field in every line): what the open interval
holds is bounded by the contexts and the head cache, not by the number of heads that reached them, and
every line is still counted exactly (docs/statsd.md, "Limits")."""

from __future__ import annotations

import asyncio
import socket
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.statsd import interval, receive
from agent.statsd.flush import Flusher
from agent.statsd.receive import Aggregator
from tests.statsd.test_fast_loop import canonical, stats
from tests.statsd.test_server import start  # noqa: F401  (the fixture: a real server on a real socket)

HEADS = 2_000  # the head cache's entries in the unit tests: emptied every 2,000 new heads


def small(agg: Aggregator, heads: int) -> Aggregator:
    """The head cache of `agg` made small: `heads` first heads, and about as many extra heads (a context's
    others: these storms' heads), as the C table is told."""
    agg._cache_limit = heads
    agg._extra_limit = heads * receive.EXTRA_HEAD_COST
    agg._configure_table()
    return agg


def counter_storm(n: int, first: int = 0) -> list[bytes]:
    """`m:1|c|#t:1|x:<n>`: one counter context, an unknown field (ignored, as DogStatsD does) per line."""
    return [b"m:1|c|#t:1|x:%x" % i for i in range(first, first + n)]


def rate_of(i: int) -> bytes:
    return b"0.%09d" % (100_000_000 + i)


def histogram_storm(n: int, first: int = 0) -> list[bytes]:
    """`h:<i>|h|@0.1000000<i>`: one histogram context, its value and its sample rate distinct per line."""
    return [b"h:%d|h|@%s" % (i, rate_of(i)) for i in range(first, first + n)]


def held_slots(iv: interval.Interval) -> int:
    """The slots the open interval holds: in its dicts and in what the C side handed over."""
    return len(iv.counts) + len(iv.values) + sum(len(slots) for slots, _, _ in iv.pending)


def expected_histogram(n: int) -> list[tuple[float, float]]:
    return [(float(i), 1.0 / float(rate_of(i))) for i in range(n)]


def histogram_points(batch) -> list[tuple[float, float]]:
    (h,) = [s for s in batch.samples if s.name == "h"]
    return sorted(zip(h.value.values, h.value.weights))


@pytest.mark.usefixtures("both_loops")
def test_a_storm_of_heads_of_two_contexts_holds_a_slot_per_context_and_per_cached_head() -> None:
    agg = small(Aggregator(), HEADS)
    lines = counter_storm(20_000) + histogram_storm(20_000)
    most = 0
    for k in range(0, len(lines), 500):
        agg.ingest(b"\n".join(lines[k:k + 500]))
        most = max(most, held_slots(agg.interval))
    assert most <= 2 + HEADS  # before: a slot per head, 40,000
    iv = agg.swap(1000.0)
    batch = Flusher(10.0).batch(iv, now=1000.0)
    (m,) = [s.value for s in batch.samples if s.name == "m"]
    assert m == 20_000.0
    assert histogram_points(batch) == expected_histogram(20_000)  # every value, with its line's weight
    assert agg.stats.lines == agg.stats.samples == 40_000 and not agg.stats.errors


def test_the_c_loop_and_the_python_loop_fold_to_the_same_batch() -> None:
    """Folded counts and values, several sample rates of one context among them, and repeated values (merged
    at the flush, the weight of each value added in order): the same batch from both loops, bit for bit."""
    lines = [b"r:%d|ms|@0.%d" % (i % 7, 1 + i % 9) for i in range(6_000)]  # 63 heads: several folds
    lines += [b"c:0.1|c|@0.%d|x:%d" % (1 + i % 9, i) for i in range(6_000)]
    batches = []
    for accelerated in (True, False):
        agg = small(Aggregator(accelerated=accelerated), 50)
        for k in range(0, len(lines), 700):
            agg.ingest(b"\n".join(lines[k:k + 700]))
        batches.append((stats(agg), canonical(Flusher(10.0).batch(agg.swap(1000.0), now=1000.0))))
    assert batches[0] == batches[1]
    (r,) = [v for name, *_, v in batches[0][1] if name == "r"]
    assert len(eval(r)) == 7  # the 6,000 values merged into the 7 distinct ones, with their summed weights


@pytest.mark.usefixtures("both_loops")
def test_folding_keeps_the_histogram_value_limit() -> None:
    """The value limit counts values as before: folding moves them, it neither frees nor takes room."""
    limits = interval.Limits(histogram_values=5_000)
    agg = small(Aggregator(limits=limits), 100)
    for k in range(0, 8_000, 400):
        agg.ingest(b"\n".join(histogram_storm(400, k)))
    assert agg.stats.errors == {"value_limit": 3_000}
    batch = Flusher(10.0).batch(agg.swap(1000.0), now=1000.0)
    assert histogram_points(batch) == expected_histogram(5_000)


async def test_a_head_storm_through_the_server_keeps_memory_bounded_and_counts_every_line(start, every_receiver) -> None:  # noqa: F811
    """The tester's storm, scaled down: one counter and one histogram context, a new head in every line, sent
    over UDP to the real server with a cap of 2,500 contexts (a head cache of 10,000 entries). What the
    process allocates while the interval is open (tracemalloc: the C table's memory too) stays within what
    the extra heads are charged (here 10,000 of them) and the contexts' values; before, the interval kept
    every forgotten head's slot and buffer (120,000 heads: 20-24 MiB here before, 4-6 MiB with the fold)."""
    r = await start(TASKLENS_STATSD_MAX_CONTEXTS="2500", TASKLENS_FLUSH_INTERVAL="3600")
    agg = r.server.aggregator
    assert agg._cache_limit == 10_000
    agg._extra_limit = 10_000 * receive.EXTRA_HEAD_COST  # before any line: 32 MiB by default
    n = 60_000  # lines of each context
    lines = [line for pair in zip(counter_storm(n), histogram_storm(n)) for line in pair]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for k in range(0, len(lines), 40 * 50):  # 40 datagrams, then wait for them: no kernel drop
                for d in range(k, min(k + 2000, len(lines)), 50):
                    s.sendto(b"\n".join(lines[d:d + 50]), ("127.0.0.1", r.port))
                await r.wait_lines(min(k + 2000, len(lines)), timeout=60)
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # the extra heads at most as charged (each key twice and 1,024 bytes) and 16 bytes per histogram value
    assert held < agg._extra_limit + 16 * n + 2 * 2**20, f"{held / 2**20:.1f} MiB held by the open interval"
    await r.server.flush()
    await asyncio.sleep(0)
    batches = [b for b in r.recorder.batches if b.source == "statsd"]
    counts = [s.value for b in batches for s in b.samples if s.name == "m" and s.value]
    assert sum(counts) == n
    points = sorted(p for b in batches for s in b.samples if s.name == "h" for p in zip(s.value.values, s.value.weights))
    assert points == expected_histogram(n)
    assert agg.stats.lines == 2 * n and not agg.stats.errors


def test_a_reset_of_many_extra_heads_hands_the_memory_back(monkeypatch: pytest.MonkeyPatch) -> None:
    released = []
    monkeypatch.setattr(receive, "release_freed_memory", lambda: released.append(True))
    agg = Aggregator()
    agg.ingest(b"\n".join(counter_storm(receive.BURST + 2)))  # a first head, BURST + 1 extra ones
    agg._extra_limit = agg._extra_bytes  # full
    assert released == [] and len(agg._extras) == receive.BURST + 1
    agg.ingest(b"\n".join(counter_storm(1, receive.BURST + 2)))  # emptied of its extra heads for this one
    assert released == [True] and len(agg._cache) == 2 and len(agg._extras) == 1
    assert sum(agg.interval.counts.values()) == receive.BURST + 2  # the forgotten heads' counts, folded (the new one: in C)


@pytest.mark.usefixtures("both_loops")
def test_a_storm_of_extra_heads_leaves_the_first_heads_of_the_other_contexts_cached() -> None:
    """The extra heads (a context's heads beyond its first) are bounded and forgotten apart: a head storm of
    one context never empties the first heads of the others (before, it emptied the whole head cache every
    4 x the context cap heads, and each live context's next line was parsed again)."""
    agg = Aggregator()
    agg._extra_limit = 100 * receive.EXTRA_HEAD_COST
    known = b"\n".join(b"c%d:1|c|#k:v" % i for i in range(500))
    agg.ingest(known)
    for k in range(0, 3_000, 300):
        agg.ingest(b"\n".join(counter_storm(300, k)))  # about 30 x the extra heads' bound
    assert all((b"c%d" % i, b"c|#k:v") in agg._cache for i in range(500)) and len(agg._extras) <= 100
    if agg._table is not None:  # and on the C side: their lines never leave the C loop
        assert agg._table.run(known, 0, agg.interval) == len(known)
    else:
        agg.ingest(known)
    agg.ingest(known)
    batch = {s.name: s.value for s in Flusher(10.0).batch(agg.swap(1000.0), now=1000.0).samples}
    assert batch["m"] == 3_000 and all(batch[f"c{i}"] == 3 for i in range(500))
    assert agg.stats.lines == 4_500 and not agg.stats.errors


@pytest.mark.usefixtures("both_loops")
def test_a_few_sample_rates_per_context_stay_cached() -> None:
    """2,000 contexts with 10 sample rates each, at the default bounds: 20,000 heads, parsed once."""
    agg = Aggregator()
    lines = [b"\n".join(b"t%d:%d|ms|@0.%d" % (i, r, r) for i in range(k, k + 100) for r in range(1, 11))
             for k in range(0, 2_000, 100)]
    agg.ingest_many(lines)
    assert len(agg._cache) == 20_000 and len(agg._extras) == 18_000
    cached = dict(agg._cache)
    agg.ingest_many(lines)
    assert agg._cache == cached and not agg.interval.folds  # nothing parsed again, nothing forgotten


def test_a_weight_per_value_merges_alike_in_c_and_in_python() -> None:
    """A folded slot's values with a weight each (`Interval.fold`): `_fast.merge` and `flush._merged` give the
    same distinct values and summed weights, bit for bit, each weight added in the order of the values."""
    import random
    from array import array

    from agent.statsd import _fast, flush

    rnd = random.Random(7)
    for _ in range(200):
        parts = []
        for _ in range(rnd.randint(1, 4)):
            values = array("d", (float(rnd.randint(-5, 5)) for _ in range(rnd.randint(0, 60))))
            weight = rnd.choice([1.0, 2.0, 1 / 0.3])
            parts.append((values, weight if rnd.random() < 0.5 else
                          array("d", (1 / rnd.choice([0.1, 0.3, 0.7, 1.0]) for _ in values))))
        expected: dict[float, float] = {}
        for values, weight in parts:
            if isinstance(weight, float):
                for v in dict.fromkeys(values):
                    expected[v] = expected.get(v, 0.0) + values.count(v) * weight
            else:
                for v, w in zip(values, weight):
                    expected[v] = expected.get(v, 0.0) + w
        most = rnd.randint(0, 12)
        for merge in (_fast.merge, flush._merged):
            out = merge(parts, most)
            if len(expected) > most:
                assert out is None
            else:
                assert sorted(zip(memoryview(out[0]).cast("d"), memoryview(out[1]).cast("d"))) == sorted(expected.items())
    with pytest.raises(ValueError):
        _fast.merge([(array("d", [1.0, 2.0]), array("d", [1.0]))], 10)  # a weight per value, or none


@pytest.mark.parametrize("accelerated", [True, False], ids=["c_loop", "python_loop"])
@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["first", "extra", "swap"]), st.integers(1, 40)), max_size=12),
       rates=st.lists(st.sampled_from(["0.5", "0.25", "1"]), min_size=1, max_size=3))
def test_every_histogram_value_is_counted_with_its_weight_across_partial_folds(
        accelerated: bool, steps: list[tuple[str, int]], rates: list[str]) -> None:
    """A context's first head stays cached while its extra heads are forgotten and folded (their bound
    made small): lines of the first head after a fold must join the interval with their weights. The fold
    once reused the first head's slot, whose later values then had no weight: the histogram was dropped
    whole, or (1,024 values and more) the flush failed and lost the interval."""
    agg = Aggregator(accelerated=accelerated)
    agg._extra_limit = 10 * receive.EXTRA_HEAD_COST
    expected, got, n = 0.0, 0.0, 0
    for what, count in steps:
        if what == "swap":
            got += _weights(agg, 1000.0 + n)
            n += 1
            continue
        if what == "first":
            lines = [b"h:3|h"] * count * 40  # past 1,024 values: the flush merges them
            expected += len(lines)
        else:
            lines = [b"h:2|h|@%s|x:%d" % (rates[i % len(rates)].encode(), i) for i in range(count)]
            expected += sum(1 / float(rates[i % len(rates)]) for i in range(count))
        agg.ingest(b"\n".join(lines))
    got += _weights(agg, 1000.0 + n)
    assert got == pytest.approx(expected)


def _weights(agg: Aggregator, now: float) -> float:
    batch = Flusher(10.0).batch(agg.swap(now), now=now)
    points = [s.value for s in batch.samples if s.name == "h"]
    assert all(p.valid for p in points)
    return sum(sum(p.weights) for p in points)
