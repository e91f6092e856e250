"""The C loop (`agent/statsd/_fast.c`) against the Python loop: the same input gives the same batches,
the same counts and the same errors, whatever the input. Plus the cases only the C side has: heads
forgotten in the middle of an interval, and its own bookkeeping."""

from __future__ import annotations

import gc
import os
import socket
from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.model import Batch
from agent.statsd import interval, receive, server
from agent.statsd.flush import Flusher
from agent.statsd.receive import Aggregator

COSTS = (interval.CONTEXT_COST, interval.TAG_REF_COST, interval.PAIR_COST)  # Table.configure's charges
LIMITS = interval.Limits()
SET_LIMITS = (LIMITS.set_members, LIMITS.set_bytes, LIMITS.set_members_per_context, LIMITS.set_bytes_per_context)
SETTINGS = settings(max_examples=int(os.environ.get("STATSD_EXAMPLES", "300")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# value texts: what the C side converts itself, and everything it must leave to Python
number = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.integers(0, 2**60).map(str),  # past 2**53 and past 16 digits: Python's turn
    st.floats(allow_nan=False, allow_infinity=False).map(repr),  # shortest repr: exponents too
    st.tuples(st.integers(-10**20, 10**20), st.integers(0, 25)).map(lambda t: f"{t[0] / 10**t[1]:.{t[1]}f}"),
    st.sampled_from(["-0", "0", "-0.0", ".5", "5.", "-.5", "007", "+5", "1_000", "1e3", "1E-3", "nan", "inf", "-inf",
                     "1e400", "9007199254740993", "0.1", "0.30000000000000004", "123456789012345678", "1.5:2",
                     "1::2", "", ".", "-", " 1", "1 ", "0x10", "١"]),
)
name = st.sampled_from(["a", "b.c", "jobs.done", "x"])
kind = st.sampled_from(["c", "g", "ms", "h", "d", "s"])
tail_extra = st.sampled_from(["", "|@0.5", "|@0.25", "|#env:prod", "|#k:v,bare", "|c:c0ffee", "|@0.5|#env:prod",
                              "\r", "|T100", "|e:x|card:low"])
metric_line = st.tuples(name, number, kind, tail_extra).map(lambda t: f"{t[0]}:{t[1]}|{t[2]}{t[3]}".encode())
other_line = st.sampled_from([b"", b"\r", b"bad", b"a:1", b"a:1|", b"a:1|zz", b"_e{1,1}:a|b", b"_sc|s|0", b"a|b:1|c",
                              b"\xff:1|c", b"a:1|c|@x"])
line = st.one_of(metric_line, metric_line, metric_line, other_line, st.binary(max_size=20).filter(lambda b: b"\n" not in b))
datagram = st.lists(line, min_size=1, max_size=30).map(b"\n".join)


def canonical(batch: Batch) -> list[tuple[object, ...]]:
    """Samples in a comparable form: floats by repr (exact, -0.0), histogram values in their order."""
    def value(s):
        if hasattr(s.value, "values"):
            return repr(list(zip(s.value.values, s.value.weights)))
        return repr(s.value)
    return sorted((s.name, s.tags, s.kind.value, s.timestamp or 0, value(s)) for s in batch.samples)


def stats(agg: Aggregator) -> tuple[object, ...]:
    s = agg.stats
    return s.packets, s.bytes, s.lines, s.samples, dict(+s.errors), s.contexts_dropped, s.events, s.service_checks


def test_the_c_loop_is_built() -> None:
    assert receive.Table is not None, "agent/statsd/_fast.c is not built: `pip install -e .` builds it"
    assert Aggregator()._table is not None
    assert Aggregator(accelerated=False)._table is None


@SETTINGS
@given(st.lists(st.lists(datagram, min_size=1, max_size=6), min_size=1, max_size=3),
       st.booleans(), st.sampled_from([3, 100]))
def test_the_c_loop_and_the_python_loop_agree(intervals: list[list[bytes]], deltas: bool, cap: int) -> None:
    c_side = Aggregator(max_contexts=cap, gauge_deltas=deltas)
    python_side = Aggregator(max_contexts=cap, gauge_deltas=deltas, accelerated=False)
    c_flusher, python_flusher = Flusher(10.0), Flusher(10.0)
    containers = {"c0ffee": (("container_name", "worker"),)}
    for i, datagrams in enumerate(intervals):
        c_side.ingest_many(datagrams)
        for d in datagrams:
            python_side.ingest(d)
        now = 1000.0 + 10 * i
        a = c_flusher.batch(c_side.swap(now), containers, now=now)
        b = python_flusher.batch(python_side.swap(now), containers, now=now)
        assert canonical(a) == canonical(b)
        assert a.events == b.events and a.service_checks == b.service_checks
        assert stats(c_side) == stats(python_side)


def test_heads_forgotten_mid_interval_keep_what_they_accumulated() -> None:
    """A flood of refused names empties the head cache (both sides) in the middle of an interval: the
    sums, values, gauges and sets accumulated so far by the C loop are all still exported."""
    agg = Aggregator(max_contexts=4)
    agg.ingest(b"hits:2|c\nlat:5|ms\nq:7|g\nu:x|s")
    agg.ingest(b"hits:3|c\nlat:6|ms\nu:y|s")
    flood = [b"\n".join(b"oneoff.%d:1|c" % (i * 30 + j) for j in range(30)) for i in range(400)]  # 12,000 names
    agg.ingest_many(flood)
    agg.ingest(b"hits:4|c\nlat:7|ms\nq:8|g")
    batch = Flusher(10.0).batch(agg.swap(1000.0), now=1000.0)
    got = {s.name: s.value for s in batch.samples}
    assert got["hits"] == 9.0 and got["q"] == 8.0 and got["u"] == 2.0
    assert sorted(got["lat"].values) == [5.0, 6.0, 7.0]
    assert agg.stats.contexts_dropped == 12_000 and agg.stats.errors["cardinality_limit"] == 12_000


def test_values_accumulated_in_c_are_not_counted_twice_or_carried_over() -> None:
    agg, flusher = Aggregator(), Flusher(10.0)
    agg.ingest(b"c:1|c\nc:1|c\nh:2|h")
    first = {s.name: s.value for s in flusher.batch(agg.swap(10.0), now=10.0).samples}
    agg.ingest(b"c:5|c")
    second = {s.name: s.value for s in flusher.batch(agg.swap(20.0), now=20.0).samples}
    assert first["c"] == 2.0 and list(first["h"].values) == [2.0]
    assert second == {"c": 5.0}


def test_set_lines_of_a_known_head_stay_in_c_within_the_set_limits() -> None:
    """A set line whose head Python made is handled in C: a known member changes nothing, a new one joins
    the set and is counted in the interval as Python counts it; past a limit, or empty, it is Python's
    (which refuses it and says why), and nothing was added."""
    agg = Aggregator(limits=interval.Limits(set_members=4, set_bytes=1000, set_members_per_context=3,
                                            set_bytes_per_context=12))
    agg.ingest(b"u:alice|s|#k:v")  # Python parses the head; C knows it from now on
    iv, table = agg.interval, agg._table
    (ctx,) = iv.sets
    lines = b"u:alice|s|#k:v\nu:bob|s|#k:v\nu:\xff\x00|s|#k:v"
    assert table.run(lines, 0, iv) == len(lines)
    assert iv.sets[ctx] == {b"alice", b"bob", b"\xff\x00"}
    assert (iv.set_members, iv.set_bytes, iv.set_bytes_of[ctx]) == (3, 10, 10)
    for refused in (b"u:carol|s|#k:v", b"u:|s|#k:v"):  # past 3 members (and 12 bytes); empty
        assert table.run(refused, 0, iv) == 0
    assert table.run(b"u:bob|s|#k:v", 0, iv) == len(b"u:bob|s|#k:v")  # known: never refused
    assert (iv.set_members, iv.set_bytes, len(iv.sets[ctx])) == (3, 10, 3)
    agg.ingest(b"u:carol|s|#k:v\nu:|s|#k:v")
    assert agg.stats.errors == {"set_limit": 1, "bad_value": 1}


def test_the_table_refuses_what_would_lose_data() -> None:
    table = receive.Table()
    slot = interval.Slot(interval.COUNTER)
    table.add(b"a", b"c", slot, None, interval.COUNTER)
    assert len(table) == 1
    with pytest.raises(KeyError):
        table.add(b"a", b"c", slot, None, interval.COUNTER)
    with pytest.raises(ValueError):
        table.add(b"b", b"g", slot, None, interval.DROPPED)
    assert table.run(b"a:2|c\na:3.5|c\nb:1|c\na:1|c", 0, interval.Interval(0.0)) == len(b"a:2|c\na:3.5|c\n")
    with pytest.raises(RuntimeError):
        table.clear()  # accumulated values would be lost
    slots, sums, packs = table.harvest()
    assert (slots, array("d", sums).tolist(), packs, table.take_counts()) == ([slot], [5.5], [None], (2, 0, 0))
    assert table.harvest() == ([], b"", [])
    table.clear()
    assert len(table) == 0 and table.run(b"a:1|c", 0, interval.Interval(0.0)) == 0


def test_drain_reads_what_the_socket_holds_and_counts_too_long_datagrams() -> None:
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with reader, writer:
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        assert server.drain(reader.fileno(), 64) == (b"", 0, 0, 0)  # nothing there: no error
        for datagram in (b"a:1|c", b"", b"x" * 70_000, b"b:2|c\n", b"c:3|c"):
            writer.send(datagram)
        data, packets, size, too_long = server.drain(reader.fileno(), 3)  # at most 3 per call
        assert (data, packets, size, too_long) == (b"a:1|c\n\n", 3, 5 + 0 + 65537, 1)
        assert server.drain(reader.fileno(), 64) == (b"b:2|c\n\nc:3|c\n", 2, 11, 0)
    with pytest.raises(OSError):
        server.drain(reader.fileno(), 64)  # closed: EBADF


def both(*datagrams: bytes, **options: object) -> tuple[dict[str, object], dict[str, object]]:
    """{name: value} of one interval through the C loop and through the Python loop."""
    out = []
    for accelerated in (True, False):
        agg = Aggregator(accelerated=accelerated, **options)  # type: ignore[arg-type]
        for d in datagrams:
            agg.ingest(d)
        batch = Flusher(10.0).batch(agg.swap(1000.0), now=1000.0)
        out.append({s.name: list(s.value.values) if hasattr(s.value, "values") else s.value for s in batch.samples})
    return out[0], out[1]


def test_sums_are_added_in_the_order_of_the_lines_whichever_side_parsed_them() -> None:
    """Float addition is not associative: the first line of a head (parsed in Python) and the others (in
    C) must add up in one sequence, as in the Python loop: 8.7 + 37.0 + 85.6 is 131.29999999999998."""
    c_side, python_side = both(b"x:8.7|c\nx:37.0|c\nx:85.6|c", b"y:0.1|c\ny:0.2:0.3|c\ny:0.7|c")
    assert c_side == python_side
    assert c_side["x"] == 8.7 + 37.0 + 85.6 and c_side["y"] == 0.1 + (0.2 + 0.3) + 0.7


def test_histogram_values_keep_the_order_of_the_lines() -> None:
    c_side, python_side = both(b"h:1|h", b"h:2|h\nh:3:4|h\nh:5|h")
    assert c_side == python_side == {"h": [1.0, 2.0, 3.0, 4.0, 5.0]}


def test_a_full_head_cache_is_emptied_for_the_rest_of_the_batch_too() -> None:
    """When the head cache is emptied in the middle of a datagram, both loops see it emptied at once:
    later lines of the batch meet the context cap the same way."""
    datagram = b"\n".join([b"a:0|c"] * 5 + [b"a:0|c|#t:1", b"a:0|g", b"a:0|c", b"a:0|c|@0.5", b"a:0|g"])
    results = []
    for accelerated in (True, False):
        agg = Aggregator(max_contexts=2, accelerated=accelerated)
        agg._cache_limit = 2  # tiny, to empty it within one datagram
        agg._configure_table()
        agg.ingest(datagram)
        results.append((stats(agg), canonical(Flusher(10.0).batch(agg.swap(1000.0), now=1000.0))))
    assert results[0] == results[1]
    # `a:0|g` found no room under the cap of 2 once: its refusal is remembered apart from the head cache,
    # so emptying the cache (at `a:0|c|@0.5`) does not make it a new refused context
    assert results[0][0][5] == 1 and results[0][0][4] == {"cardinality_limit": 2}


def test_every_head_finds_a_bucket() -> None:
    """Heads are hashed with a random key (SipHash-1-3): 100,000 similar heads all go into the table."""
    table = receive.Table()
    slot = interval.Slot(interval.COUNTER)
    assert all(table.add(b"jobs.%d.done" % i, b"c|#queue:q%d" % (i % 7), slot, None, interval.COUNTER)
               for i in range(100_000))
    assert len(table) == 100_000
    assert table.run(b"jobs.99999.done:3|c|#queue:q4\njobs.5.done:1|c|#queue:q5", 0, interval.Interval(0.0)) == 55


# -- storms: refusals at the cap decided in C, expiry, re-creation ---------------------------------

storm_name = st.sampled_from(["req", "req.x", "é", "_e{x", "a|b"])
storm_tags = st.lists(st.sampled_from(["id:1", "id:2", "id:3", "env:prod", "env:dev", "bare", "bare:", ":v", "",
                                       "id:é", "k:" + "v" * 201]), max_size=4).map(",".join)
storm_tail = st.tuples(st.sampled_from(["c", "g", "ms", "h", "d", "s", "x"]),
                       st.sampled_from(["", "|@0.5", "|@x", "|e:x", "|c:c0ffee", "|c:other", "|T100", "\r", "|",
                                        "|@0.5|e:y", "|#id:1", "|#k:" + "v" * 201, "|c:\xff", "|c:a|c:b", "|@2",
                                        "|@0", "|@1e-400"]),
                       st.booleans(), storm_tags)
storm_line = st.tuples(storm_name, st.integers(0, 30), st.sampled_from(["1", "2.5", "1:2", "", "x", "+1"]),
                       storm_tail).map(
    lambda t: f"{t[0]}{t[1]}:{t[2]}|{t[3][0]}{t[3][1]}{'|#' + t[3][3] if t[3][2] else ''}".encode())
storm_datagram = st.lists(st.one_of(storm_line, storm_line, line), min_size=1, max_size=30).map(b"\n".join)


@SETTINGS
@given(st.lists(st.lists(storm_datagram, min_size=1, max_size=5), min_size=1, max_size=5),
       st.sampled_from([1, 3, 20]), st.booleans(), st.booleans())
def test_the_c_loop_and_the_python_loop_agree_through_storms_expiry_and_re_creation(
        intervals: list[list[bytes]], cap: int, deltas: bool, rules: bool) -> None:
    """Many heads per context (rates, ignored fields, tags given twice or empty), the cap reached, contexts
    expired every other interval and created again: both loops give the same batches and counts, and the
    C side's count of live contexts is the aggregator's."""
    from agent.statsd.mapping import compile_rules
    mapping = compile_rules([{"match": "req*", "name": "mapped", "labels": {"n": "$1"}}]) if rules else ()
    sides = [Aggregator(max_contexts=cap, gauge_deltas=deltas, rules=mapping, accelerated=a) for a in (True, False)]
    flushers = [Flusher(10.0, ttl=15.0), Flusher(10.0, ttl=15.0)]
    for i, datagrams in enumerate(intervals * 2):  # the second round meets what the first left
        now = 1000.0 + 10 * i
        batches = []
        for agg, flusher in zip(sides, flushers):
            if i % 2 == 0:  # nothing sent this interval: the idle contexts reach the TTL
                agg.ingest_many(datagrams)
            batches.append(flusher.batch(agg.swap(now), now=now))
            agg.expire(flusher.expired(now))
        assert canonical(batches[0]) == canonical(batches[1])
        assert stats(sides[0]) == stats(sides[1])
        assert len(sides[0].contexts) == len(sides[1].contexts) == sides[0]._table.live()[0]


@SETTINGS
@given(st.lists(st.lists(storm_datagram, min_size=1, max_size=4), min_size=1, max_size=3),
       st.sampled_from([600, 1400, 3000, 10**6]), st.sampled_from([1, 4, 10**6]), st.sampled_from([2, 5, 10**4]),
       st.booleans())
def test_the_c_loop_makes_contexts_as_python_does_at_the_edges_of_every_limit(
        intervals: list[list[bytes]], context_bytes: int, values: int, heads: int, deltas: bool) -> None:
    """The C loop makes new contexts itself within the room the aggregator gives it (context bytes,
    histogram values, the head cache's entries): at each edge the two loops make and refuse the same
    contexts, keep the same heads and charge the same bytes."""
    limits = interval.Limits(max_contexts=20, context_bytes=context_bytes, histogram_values=values)
    sides = [Aggregator(limits=limits, gauge_deltas=deltas, accelerated=a) for a in (True, False)]
    for agg in sides:
        agg._cache_limit = heads  # a head cache that fills: emptied, both sides, at the same line
        agg._configure_table()
    flushers = [Flusher(10.0, ttl=15.0), Flusher(10.0, ttl=15.0)]
    for i, datagrams in enumerate(intervals * 2):
        now = 1000.0 + 10 * i
        batches = []
        for agg, flusher in zip(sides, flushers):
            if i % 2 == 0:
                agg.ingest_many(datagrams)
            batches.append(flusher.batch(agg.swap(now), now=now))
            agg.expire(flusher.expired(now))
        assert canonical(batches[0]) == canonical(batches[1])
        assert stats(sides[0]) == stats(sides[1])
        assert [len(a.contexts) for a in sides] == [sides[0]._table.live()[0]] * 2
        assert sides[0].held_bytes == sides[1].held_bytes <= context_bytes
        assert len(sides[0]._cache) == len(sides[1]._cache)


def test_a_storm_under_the_cap_is_made_in_c_and_given_its_python_objects_in_one_go_at_the_swap() -> None:
    agg = Aggregator(max_contexts=10_000)
    calls = []
    adopt = agg._adopt
    agg._adopt = lambda table, most=None: (calls.append(table.pending), adopt(table, most))  # type: ignore[method-assign]
    agg.ingest_many(storm("a", 3000) + [b"g1:5|g|#id:1\nh1:2|ms|#id:1"])
    agg.ingest_many(storm("a", 3000) + [b"g1:6|g|#id:1\nh1:3|ms|#id:1"])  # their lines again: in C
    assert calls == [] and len(agg.contexts) == 0 and agg.context_count == 3002 == agg._table.live()[0]
    batch = Flusher(10.0).batch(agg.swap(1000.0), now=1000.0)
    assert calls == [3002] and len(agg.contexts) == 3002
    assert sum(1 for s in batch.samples if s.name == "req" and s.value == 2.0) == 3000
    assert {s.name: s.value for s in batch.samples if s.name == "g1"} == {"g1": 6.0}  # a gauge made in C
    assert any(s.name == "h1" for s in batch.samples)


@SETTINGS
@given(st.lists(st.integers(0, 400), min_size=1, max_size=6), st.integers(1, 10_000))
def test_contexts_adopted_a_few_at_a_time_are_those_adopted_at_once(steps: list[int], context_bytes: int) -> None:
    """`adopt(most)` (the server's, while it has nothing to read) between batches of a storm, against the
    same storm adopted at the swap only: the same contexts, in the same order, within the same limits."""
    limits = interval.Limits(max_contexts=500, context_bytes=context_bytes * 100)
    sides = [Aggregator(limits=limits), Aggregator(limits=limits)]
    for n, most in enumerate(steps):
        for agg in sides:
            agg.ingest_many(storm(f"s{n}-", 300) + [b"g%d:%d|g|#n:%d" % (n, n, n)])
        waiting = sides[0].waiting
        sides[0].adopt(most)
        assert sides[0].waiting == max(0, waiting - most)
        assert sides[0].held_bytes <= limits.context_bytes
    batches = [Flusher(10.0).batch(agg.swap(1000.0), now=1000.0) for agg in sides]
    assert canonical(batches[0]) == canonical(batches[1])
    assert list(sides[0].contexts) == list(sides[1].contexts)
    assert sides[0].held_bytes == sides[1].held_bytes <= limits.context_bytes
    assert stats(sides[0]) == stats(sides[1])


def test_a_storm_adds_nothing_for_the_garbage_collector_to_walk() -> None:
    """The objects the C side makes per context cannot be in a cycle: out of the collector's lists (a
    full collection walked every live context again)."""
    agg = Aggregator(max_contexts=10_000)
    agg.ingest_many(storm("warm", 30))
    gc.collect()
    before = len(gc.get_objects())
    agg.ingest_many(storm("a", 3000))
    agg.adopt()
    assert len(agg.contexts) == 3030
    assert len(gc.get_objects()) - before < 100
    ctx = next(iter(agg.contexts.values()))
    assert not gc.is_tracked(ctx) and not gc.is_tracked(agg._cache[(b"req", b"c|#env:prod,id:warm0")])


def test_an_error_while_adopting_loses_what_the_c_side_held_and_nothing_after(monkeypatch) -> None:
    agg = Aggregator(max_contexts=10_000)
    agg.ingest_many([b"known:1|c"])
    agg.adopt()
    made = []

    def failing(code, ctx, weight=1.0):  # out of memory on the 5th context (the C side calls it)
        if len(made) == 4:
            raise MemoryError
        made.append(ctx)
        return interval.Slot(code, ctx, weight)

    monkeypatch.setattr(receive, "Slot", failing)
    agg.ingest_many(storm("a", 30))
    with pytest.raises(MemoryError):
        agg.adopt()
    monkeypatch.undo()
    assert agg._table.live()[0] == len(agg.contexts) == 1 + 5  # the 5th was in Python's dict already
    assert agg.context_bytes == sum(ctx.cost for ctx in agg.contexts.values())
    assert agg._pool.bytes == sum(map(interval.pair_cost, {kv for c in agg.contexts.values() for kv in c.tags}))
    agg.ingest_many(storm("b", 30) + [b"known:2|c"])
    agg.adopt()
    assert agg._table.live()[0] == len(agg.contexts) == 1 + 5 + 30
    batch = Flusher(10.0).batch(agg.swap(1000.0), now=1000.0)
    assert {s.value for s in batch.samples if s.tags and s.tags[1][1].startswith("b")} == {1.0}
    assert [s.value for s in batch.samples if s.name == "known"] == [2.0]  # the 1 held in C was lost


def storm(prefix: str, n: int) -> list[bytes]:
    return [b"\n".join(b"req:1|c|#env:prod,id:%s%d" % (prefix.encode(), i * 30 + j) for j in range(30))
            for i in range(n // 30)]


def test_at_the_cap_a_storm_is_refused_in_c_without_python_state() -> None:
    agg = Aggregator(max_contexts=100)
    agg.ingest_many(storm("a", 3000))  # 100 contexts, then 2,900 refused heads
    agg.adopt()
    heads, refused = len(agg._cache), agg._table.live()[1]
    assert (agg.context_count, agg.stats.contexts_dropped, agg.stats.errors["cardinality_limit"]) == (100, 2900, 2900)
    assert (heads, refused) == (100, 2900)  # the refusals are remembered in C only
    agg.ingest_many(storm("a", 3000))  # the same lines again: refused by their heads, not counted as new
    assert (agg.stats.contexts_dropped, agg.stats.errors["cardinality_limit"]) == (2900, 5800)
    assert len(agg._cache) == heads and agg.stats.lines == 6000


def test_while_shedding_new_contexts_are_refused_as_overload_and_known_ones_go_on() -> None:
    """`Aggregator.shed`: the receive side is behind, new contexts are refused (in C when it decides, in
    Python otherwise), lines of live contexts are counted; afterwards the refused heads are made."""
    for accelerated in (True, False):
        agg = Aggregator(max_contexts=100, accelerated=accelerated)
        agg.ingest(b"keep:1|c\nkeep:2|ms|#k:v")
        agg.shed(True)
        agg.ingest_many(storm("a", 300) + [b"keep:3|c\nkeep:4|ms|#k:v\nkeep:5|c|@0.5"])
        agg.ingest_many(storm("a", 300))  # again: refused by their heads
        assert (len(agg.contexts), agg.stats.errors) == (2, {"overload": 600}), accelerated
        agg.shed(False)
        agg.ingest_many(storm("a", 300))
        batch = Flusher(10.0).batch(agg.swap(1000.0), now=1000.0)
        assert len(agg.contexts) == 100 and agg.stats.errors == {"overload": 600, "cardinality_limit": 202}
        keep = {(s.name, s.value) for s in batch.samples if s.name == "keep" and not s.tags}
        assert keep == {("keep", 14.0)}, accelerated


def test_at_the_cap_other_heads_of_live_contexts_are_still_accepted() -> None:
    """A refusal in C is only for a context that is not live: another rate, an ignored field, a tag given
    twice or an empty tag item name a live context under another head, and Python finds it."""
    for first in (b"x:1|c|#a:1,b:2", b"x:1|c|#b:2,a:1"):  # the context made from either order
        lines = [first, b"x:1|c|#a:1,b:2|@0.5", b"x:1|c|#a:1,b:2|e:z", b"x:1|c|#a:0,a:1,b:2",
                 b"x:1|c|#a:1,,b:2", b"x:1|c|#b:2,a:1", b"x:1|c|#a:1,b:2", b"x:1|c|#b:2,a:1|c:", b"y:1|c"]
        for accelerated in (True, False):
            agg = Aggregator(max_contexts=1, accelerated=accelerated)
            agg.ingest(b"\n".join(lines))
            batch = Flusher(10.0).batch(agg.swap(1000.0), now=1000.0)
            # tags in another order are the same context (tags are a set): only `y` is refused
            assert [(s.name, s.tags, s.value) for s in batch.samples] == [("x", (("a", "1"), ("b", "2")), 9.0)]
            assert agg.stats.errors == {"cardinality_limit": 1} and agg.stats.contexts_dropped == 1


def test_expiry_keeps_the_heads_of_live_contexts_and_makes_room_again() -> None:
    agg, flusher = Aggregator(max_contexts=100), Flusher(10.0, ttl=15.0)
    agg.ingest(b"keep:1|c\nkeep:2|ms|#k:v")
    agg.ingest_many(storm("a", 300))
    flusher.batch(agg.swap(1000.0), now=1000.0)
    assert len(agg._table) == 100 and agg.stats.contexts_dropped == 202
    agg.ingest(b"keep:1|c\nkeep:2|ms|#k:v")  # only these stay live
    flusher.batch(agg.swap(1010.0), now=1010.0)
    agg.expire(flusher.expired(1020.0))
    agg.swap(1020.0)
    assert len(agg.contexts) == 2 == agg._table.live()[0]
    assert len(agg._table) == 2 and agg._table.live()[1] == 0  # the heads of `keep` stay parsed
    agg.ingest(b"keep:1|c")  # handled in C at once: no parse
    assert agg._table.run(b"keep:1|c", 0, interval.Interval(0.0)) == len(b"keep:1|c")
    agg.ingest_many(storm("a", 300))  # the refused names of before find room now
    assert agg.context_count == 100 and agg.stats.contexts_dropped == 202 + 202
    batch = flusher.batch(agg.swap(1030.0), now=1030.0)
    assert sum(1 for s in batch.samples if s.name == "req" and s.value == 1.0) == 98


def test_refused_heads_are_forgotten_all_at_once_when_they_fill_their_set() -> None:
    """The refused heads (10 at most here) are forgotten together when the set is full: each emptying is a
    new stamp on its buckets, and every 255th zeroes them (`rs_empty`). Over 600 emptyings, a head refused
    since the last one is found (counted without a look), and one refused before it is refused anew."""
    table = receive.Table()
    table.configure(1, True, 10, 1 << 20, 128, False, COSTS, SET_LIMITS)
    table.live_add("x", "c", (), "")  # the cap reached: every new context is refused here
    table.take_counts()

    def run(n: int) -> tuple[int, int, int]:
        line = b"y:1|c|#id:%d" % n
        assert table.run(line, 0, interval.Interval(0.0)) == len(line)
        return table.take_counts()

    for generation in range(600):
        heads = range(generation * 10, generation * 10 + 10)
        assert [run(n) for n in heads] == [(1, 1, 1)] * 10  # new: refused, remembered
        assert [run(n) for n in reversed(heads)] == [(1, 1, 0)] * 10  # found
        if generation == 255:  # the stamp of generation 0 again: its heads' buckets were zeroed, not found
            assert [run(n) for n in range(10)] == [(1, 1, 1)] * 10
    assert run(1) == (1, 1, 1)  # forgotten many emptyings ago
    assert run(5990) == (1, 1, 1)  # the set was full: emptied for head 1, so 5990 is forgotten too
    assert run(1) == (1, 1, 0)


def test_the_table_refuses_a_new_context_at_the_cap_and_leaves_the_rest_to_python() -> None:
    table = receive.Table()
    table.configure(1, True, 10, 1 << 20, 128, False, COSTS, SET_LIMITS)
    table.live_add("x", "c", (("a", "1"),), "")
    new, live_again, not_simple = b"y:1|c|#a:1", b"x:1|c|#a:1|@0.5", b"y:1|c|#a:1,a:2"
    assert table.run(new + b"\n" + new, 0, interval.Interval(0.0)) == len(new) * 2 + 1  # refused, then by its head
    assert table.take_counts() == (2, 2, 1) and table.live() == (1, 1)
    assert table.run(live_again, 0, interval.Interval(0.0)) == 0  # a live context under a new head: Python's
    assert table.run(not_simple, 0, interval.Interval(0.0)) == 0  # a tag given twice: Python's
    assert table.run(b"z:x|c", 0, interval.Interval(0.0)) == 0  # a bad value: Python says which error
    table.configure(1, False, 10, 1 << 20, 128, False, COSTS, SET_LIMITS)  # mapping rules: never decided here
    assert table.run(b"w:1|c", 0, interval.Interval(0.0)) == 0
    assert table.run(new, 0, interval.Interval(0.0)) == len(new)  # but a head refused before is still counted here
    table.forget_refused()
    assert table.run(new, 0, interval.Interval(0.0)) == 0


def test_a_live_context_is_found_under_each_way_of_writing_its_head() -> None:
    """The C side hashes a context's key as its tail written one way (`c|#a:1,bare:|c:c1`): a line written
    that way and one written otherwise (a bare tag, tags or fields in another order, a rate) both find it
    live."""
    table = receive.Table()
    table.configure(1, True, 10, 1 << 20, 128, False, COSTS, SET_LIMITS)
    table.live_add("x", "c", (("a", "1"), ("bare", "")), "c1")
    for live in (b"x:1|c|#a:1,bare|c:c1", b"x:1|c|c:c1|#a:1,bare", b"x:1|c|@0.5|#a:1,bare|c:c1",
                 b"x:1|c|#a:1,,bare|c:c1|e:z", b"x:1|c|#a:1,bare|c:c1|c:", b"x:1|c|#bare,a:1|c:c1",
                 b"x:1|c|c:c1|#bare,a:1"):
        assert table.run(live, 0, interval.Interval(0.0)) == 0, live  # Python's: it finds the live context
    # `bare:` (a `:` and no value) is no tag: Python's to leave out, and never read here as the bare tag
    for empty in (b"x:1|c|#a:1,bare:|c:c1", b"x:1|c|#bare:,a:2|c:c1", b"x:1|c|#a:,b:1"):
        assert table.run(empty, 0, interval.Interval(0.0)) == 0, empty
    for new in (b"x:1|c|#a:1,bare", b"x:1|c|#a:1,bare|c:c2", b"x:1|g|#a:1,bare|c:c1", b"x:1|c|#bare,a:2|c:c1"):
        assert table.run(new, 0, interval.Interval(0.0)) == len(new), new  # refused here
    assert table.take_counts() == (4, 4, 4)


@SETTINGS
@given(storm_line)
def test_a_line_whose_context_is_live_is_never_refused_in_c(line: bytes) -> None:
    """The key hashed from a line (`line_context`) and from the context's strings (`live_add`) agree."""
    table = receive.Table()
    table.configure(1, True, 10, 1 << 20, 128, False, COSTS, SET_LIMITS)
    name, _, rest = line.partition(b":")
    tail = rest.partition(b"|")[2]
    head = table.head(name, tail)
    if head is not None:
        hname, kind, _, tags, container = head
        table.live_add(hname, kind, tuple(sorted(tags)), container)  # as `Aggregator._slot` makes them
    assert table.run(line, 0, interval.Interval(0.0)) == 0 or head is None


@SETTINGS
@given(st.dictionaries(st.text(st.sampled_from("abAB_:é.-"), min_size=1, max_size=3).filter(lambda k: ":" not in k),
                       st.text(st.sampled_from("xy:é"), max_size=2), min_size=1, max_size=6),
       st.randoms(use_true_random=False), st.sampled_from(["c", "ms", "g", "s"]))
def test_tags_in_any_order_name_one_context(tags: dict[str, str], rnd, kind: str) -> None:
    """Tags are a set: every order of a line's tags is the one context, made from whichever order comes
    first, through the C loop and the Python loop alike, also at the cap (found live, not refused)."""
    items = [f"{k}:{v}" if v else k for k, v in tags.items()]
    orders = []
    for _ in range(4):
        rnd.shuffle(items)
        orders.append(",".join(items))
    lines = [f"x:{n + 1}|{kind}|#{order}".encode() for n, order in enumerate(orders)] + [b"other:1|c"]
    for accelerated in (True, False):
        agg = Aggregator(max_contexts=1, accelerated=accelerated)
        agg.ingest(b"\n".join(lines))
        assert agg.context_count == 1 and agg.stats.errors == {"cardinality_limit": 1}, accelerated
        batch = Flusher(10.0).batch(agg.swap(1000.0), now=1000.0)
        assert {s.tags for s in batch.samples} == {tuple(sorted(tags.items()))}, accelerated


def test_after_a_storm_expired_the_c_tables_shrink_and_keep_working() -> None:
    agg, flusher = Aggregator(max_contexts=5000), Flusher(10.0, ttl=15.0)
    agg.ingest(b"keep.c:1|c\nkeep.h:2|h")
    agg.ingest_many(storm("a", 3000))
    flusher.batch(agg.swap(1000.0), now=1000.0)
    agg.ingest(b"keep.c:1|c\nkeep.h:2|h")
    flusher.batch(agg.swap(1010.0), now=1010.0)
    agg.expire(flusher.expired(1020.0))
    agg.swap(1020.0)
    assert len(agg.contexts) == 2 == len(agg._table) == agg._table.live()[0]
    agg.ingest(b"keep.c:3|c\nkeep.h:4|h")  # the heads that stayed, in the shrunk table
    agg.ingest_many(storm("b", 3000))  # and the table grows again
    batch = {(s.name, s.tags): s.value for s in flusher.batch(agg.swap(1030.0), now=1030.0).samples}
    assert batch[("keep.c", ())] == 3.0 and list(batch[("keep.h", ())].values) == [4.0]  # type: ignore[union-attr]
    assert len(agg.contexts) == 3002 == agg._table.live()[0] and len(batch) == 3002


head_text = st.one_of(
    st.tuples(st.sampled_from(["a", "b.c", "_e{x", "x|y", "é", "", "n" * 201]),
              st.lists(st.sampled_from(["c", "g", "ms", "h", "s", "d", "x", "", "@0.5", "@0", "@2", "@-1", "@x", "@1e-3",
                                        "@0.0000001", "#a:1,b", "#a:1,a:2", "#,,:v,k:", "#" + "t," * 101, "#é",
                                        "#k:" + "v" * 201, "c:c1", "c:é", "T12", "e:z", ""]),
                       min_size=1, max_size=4)).map(lambda t: (t[0].encode(), "|".join(t[1]).encode())),
    st.tuples(st.binary(max_size=12), st.binary(max_size=40)),
)


@SETTINGS
@given(head_text)
def test_the_c_side_reads_a_head_as_parse_head_or_leaves_it(head: tuple[bytes, bytes]) -> None:
    from agent.statsd.parser import ParseError, parse_head
    name, tail = head
    simple = receive.Table().head(name, tail)
    if simple is None:
        return  # parse_head's to read (and to refuse)
    try:
        parsed = parse_head(name, tail)
    except ParseError as exc:
        raise AssertionError(f"read in C, refused by parse_head: {exc.reason}") from None
    assert simple == (parsed.name, parsed.type, parsed.rate, parsed.tags, parsed.container)
    assert parsed.timestamp is None


def test_the_c_side_reads_simple_heads_and_leaves_the_others() -> None:
    table = receive.Table()
    assert table.head(b"a", b"ms|@0.5|#k:v,b,,:x,c|c:c1|e:z") == ("a", "ms", 0.5, (("k", "v"), ("b", ""), ("c", "")), "c1")
    assert table.head(b"a", b"c|@2") == ("a", "c", 1.0, (), "")  # out of range: unsampled, as parse_head
    for tail in (b"c|#k:1,k:2", b"c|T5", b"c\r", b"c|#\xc3\xa9", b"c|#a|#b", b"c|c:a|c:b", b"x", b"c|@1e-3",
                 b"c|#k:v,c:"):  # `c:`: no tag, left out by parse_head
        assert table.head(b"a", tail) is None, tail


def test_the_count_of_live_contexts_is_right_in_the_middle_of_an_adoption(monkeypatch) -> None:
    """Another thread (the status page, the self-metrics) may read `context_count` while `adopt` is
    making a batch of contexts (it runs their `__init__`s, so the thread can switch there): it was
    the dict's length plus the contexts waiting, and counted each context adopted so far twice
    (199,681 for 100,000 in an outside test). Read from inside each `Context.__init__` here."""
    agg = Aggregator(max_contexts=10_000)
    agg.ingest_many(storm("a", 3000))
    seen = []

    class Counted(interval.Context):
        __slots__ = ()

        def __init__(self, *args) -> None:
            super().__init__(*args)
            seen.append(agg.context_count)

    monkeypatch.setattr(receive, "Context", Counted)
    agg.adopt()
    assert len(seen) == 3000 and set(seen) == {3000}


# -- heads read by one pass over their separators, tags sorted by their first 8 bytes -------------

# keys equal in their first 8 bytes or more, one the prefix of another, short and long: the sort's
# comparison of the first 8 bytes as a number and its fallback on ties
prefix_key = st.sampled_from(["service", "servicen", "servicename", "servicenamf", "servicename_long_x", "service_a",
                              "s", "a", "request_id", "request_ie", "z" * 9, "z" * 8, "z" * 7, "k\x01", "k"])
prefix_item = st.one_of(st.tuples(prefix_key, st.sampled_from(["v", "", "x:y", "é", "prod", "r" * 12]))
                        .map(lambda t: f"{t[0]}:{t[1]}"), prefix_key, st.sampled_from(["", ":v", "bare:"]))
prefix_field = st.sampled_from(["|@0.5", "|c:c0ffee", "|c:" + "c" * 17, "|e:x", "|@0.25", "|c:é"])
prefix_line = st.tuples(st.sampled_from(["req", "storm.requests", "x"]), st.sampled_from(["c", "ms", "g", "h", "s"]),
                        st.lists(prefix_item, max_size=6), st.lists(prefix_field, max_size=2), st.booleans(),
                        st.randoms(use_true_random=False)).map(
    lambda t: f"{t[0]}:1|{t[1]}{''.join(t[3][:1])}|#{','.join(t[4] and t[5].sample(t[2], len(t[2])) or t[2])}"
              f"{''.join(t[3][1:])}".encode())


@SETTINGS
@given(st.lists(st.lists(prefix_line, min_size=1, max_size=30).map(b"\n".join), min_size=1, max_size=4),
       st.sampled_from([1, 2, 5]))
def test_the_c_loop_and_the_python_loop_agree_on_tags_out_of_key_order_at_the_cap(
        datagrams: list[bytes], cap: int) -> None:
    """Tags out of key order with keys that share their first 8 bytes or more, given twice, empty, without
    a value; containers, rates and ignored fields before or after them: the contexts made below the cap,
    found live at it under another order, and refused, as Python finds and refuses them."""
    sides = [Aggregator(max_contexts=cap, accelerated=a) for a in (True, False)]
    for agg in sides:
        agg.ingest_many(datagrams)
        agg.ingest_many(datagrams)  # again: the heads refused and the contexts made the first time
    batches = [Flusher(10.0).batch(agg.swap(1000.0), now=1000.0) for agg in sides]
    assert canonical(batches[0]) == canonical(batches[1])
    assert stats(sides[0]) == stats(sides[1])


@SETTINGS
@given(prefix_line)
def test_a_line_with_tags_out_of_key_order_is_found_live_in_c(line: bytes) -> None:
    """The key hashed from a line, its tags sorted (`line_context`), is the key of the context's strings."""
    test_a_line_whose_context_is_live_is_never_refused_in_c.hypothesis.inner_test(line)  # type: ignore[attr-defined]
    name, _, rest = line.partition(b":")
    from agent.statsd.parser import ParseError, parse_head
    simple = receive.Table().head(name, rest.partition(b"|")[2])
    if simple is not None:
        try:
            parsed = parse_head(name, rest.partition(b"|")[2])
        except ParseError as exc:
            raise AssertionError(f"read in C, refused by parse_head: {exc.reason}") from None
        assert simple == (parsed.name, parsed.type, parsed.rate, parsed.tags, parsed.container)


# A storm's heads are read from the shape of the head read last for their name when they differ from it
# only inside one tag's value (`fits` in _fast.c). The edits below hit a value or not, keep the value plain
# or put a separator, a `\r`, a non-ASCII byte or too many bytes in it; each head must read, and name its
# context, exactly as a head read alone does.
edit_text = st.one_of(st.text(alphabet="az09_.:|,#@\r é", max_size=6).map(str.encode),
                      st.sampled_from([b"v" * 200, b"v" * 4100, b"\xff"]))


@st.composite
def shaped_heads(draw) -> tuple[bytes, list[bytes]]:
    name = draw(st.sampled_from([b"a", b"storm.requests", b"n" * 60]))
    kind = draw(st.sampled_from(["c", "ms", "g", "h", "s", "d"]))
    tags = draw(st.lists(st.tuples(st.sampled_from(["env", "a", "request_id", "service", "kk_longer_key", ""]),
                                   st.sampled_from([":prod", ":", "", ":r1", ":x:y"])), min_size=0, max_size=5))
    fields = [kind, "#" + ",".join(k + v for k, v in tags)]
    fields += draw(st.lists(st.sampled_from(["@0.5", "c:c1", "e:z", ""]), max_size=2))
    first = fields[0]
    rest = draw(st.permutations(fields[1:]))
    base = "|".join([first, *rest]).encode()
    variants = []
    for _ in range(draw(st.integers(1, 6))):
        text = draw(edit_text)
        if draw(st.booleans()) and b":" in base:  # one tag's value (after a `:`)
            at = draw(st.sampled_from([i + 1 for i, b in enumerate(base) if b == ord(":")]))
            end = at
            while end < len(base) and base[end] not in b",|":
                end += 1
            start, stop = sorted(draw(st.tuples(st.integers(at, end), st.integers(at, end))))
        else:  # anywhere
            start, stop = sorted(draw(st.tuples(st.integers(0, len(base)), st.integers(0, len(base)))))
        variants.append(base[:start] + text + base[stop:])
    return name, [base, *variants]


@SETTINGS
@given(shaped_heads())
def test_a_head_read_from_its_names_shape_reads_as_one_read_alone(heads: tuple[bytes, list[bytes]]) -> None:
    from agent.statsd.parser import ParseError, parse_head
    name, tails = heads
    table = receive.Table()
    for tail in tails:
        alone = receive.Table().head(name, tail)
        assert table.head(name, tail) == alone, tail
        if alone is not None:
            try:
                parsed = parse_head(name, tail)
            except ParseError as exc:
                raise AssertionError(f"read in C, refused by parse_head: {exc.reason}") from None
            assert alone == (parsed.name, parsed.type, parsed.rate, parsed.tags, parsed.container)


@SETTINGS
@given(shaped_heads())
def test_a_line_read_from_its_names_shape_names_its_context(heads: tuple[bytes, list[bytes]]) -> None:
    """At the cap, a line whose head fits its name's shape is refused when its context is not live and
    left to Python when it is: the key spliced from the shape is the key of the context's strings."""
    name, tails = heads
    table = receive.Table()
    table.configure(1, True, 10, 1 << 20, 128, False, COSTS, SET_LIMITS)
    table.live_add("other", "c", (), "")  # the cap is reached
    added = set()
    for tail in tails:
        line = name + b":1|" + tail
        head = receive.Table().head(name, tail)
        if head is None:
            assert table.run(line, 0, interval.Interval(0.0)) == 0, line  # Python's to read
            continue
        hname, kind, _, tags, container = head
        context = (hname, kind, tuple(sorted(tags)), container)
        if context not in added:
            assert table.run(line, 0, interval.Interval(0.0)) == len(line), line  # refused here
            table.forget_refused()
            table.live_add(*context)
            added.add(context)
        assert table.run(line, 0, interval.Interval(0.0)) == 0, line  # live: Python finds it
