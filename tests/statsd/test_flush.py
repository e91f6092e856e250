"""The export side (`agent/statsd/flush.py`): idle counters are exported as zeros until their TTL.

The zeros are kept from one flush to the next rather than made again; a property test holds them to the
rule they follow (docs/statsd.md): every counter exported before, absent from this interval and
exported within the TTL, is a zero, with the tags of its container and the interval of this batch."""

from __future__ import annotations

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
