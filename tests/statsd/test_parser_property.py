"""Property-based: arbitrary bytes never make the parser or the aggregator raise, and valid lines mixed
into garbage are still counted exactly."""

from __future__ import annotations

import os
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.statsd.flush import Flusher
from agent.statsd import receive
from agent.statsd.receive import Aggregator
from agent.statsd.parser import parse

# STATSD_EXAMPLES=20000 for a longer hunt
SETTINGS = settings(max_examples=int(os.environ.get("STATSD_EXAMPLES", "300")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# garbage that looks like the protocol: made of its own separators and type letters
protocolish = st.lists(
    st.sampled_from([b":", b"|", b"#", b",", b"@", b"\n", b"\r", b"c", b"g", b"ms", b"h", b"s", b"d", b"T", b"_e{",
                     b"_sc|", b"}", b"1", b"-", b".", b"e", b"x", b"c:", b"\xff", b"nan", b"0"]),
    max_size=40,
).map(b"".join)
garbage_line = st.one_of(st.binary(max_size=60), protocolish).filter(lambda b: b"\n" not in b)

# valid counter lines for a few fixed contexts; values are integers so that sums are exact
name = st.sampled_from(["a", "b.c", "jobs.done"])
tags = st.sampled_from(["", "|#env:prod", "|#k:v,bare"])
rate = st.sampled_from([("", 1), ("|@0.5", 2), ("|@0.25", 4)])
valid = st.tuples(name, st.integers(-1000, 1000), rate, tags).map(
    lambda t: (f"{t[0]}:{t[1]}|c{t[2][0]}{t[3]}".encode(), t[0], t[3], t[1] * t[2][1]))


@SETTINGS
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    parsed = parse(data)
    assert sum(parsed.errors.values()) + len(parsed.metrics) + len(parsed.events) + len(parsed.service_checks) == parsed.lines
    agg = Aggregator(max_contexts=50)
    agg.ingest(data)
    agg.ingest(data)  # again: now through the caches
    Flusher(10.0).batch(agg.swap())


@SETTINGS
@given(st.lists(st.one_of(garbage_line, protocolish.filter(lambda b: b"\n" not in b)), max_size=30),
       st.lists(valid, max_size=30), st.randoms(use_true_random=False))
def test_valid_lines_in_garbage_are_counted_exactly(garbage: list[bytes], good: list[tuple], rnd) -> None:
    # garbage lines that happen to be valid counters of our names would change the sums: keep them out
    names = (b"a:", b"b.c:", b"jobs.done:")
    garbage = [g for g in garbage if not g.startswith(names)]
    lines = [g[0] for g in good] + garbage
    rnd.shuffle(lines)
    datagram = b"\n".join(lines)

    expected: dict[tuple[str, str], int] = {}
    for _, n, t, total in good:
        expected[(n, t)] = expected.get((n, t), 0) + total

    agg = Aggregator()
    agg.ingest(datagram)
    batch = Flusher(10.0).batch(agg.swap())
    mine = {(s.name, s.tags) for s in batch.samples}
    got = {}
    for s in batch.samples:
        if s.name in ("a", "b.c", "jobs.done") and s.kind.value == "count":
            key = (s.name, {(): "", (("env", "prod"),): "|#env:prod", (("bare", ""), ("k", "v")): "|#k:v,bare"}[s.tags])
            got[key] = got.get(key, 0) + s.value
    assert got == expected, mine

    parsed = parse(datagram)
    assert sum(1 for m in parsed.metrics if m.head.name in ("a", "b.c", "jobs.done") and m.head.type == "c") == len(good)
    # the aggregator and the pure parser agree on every count
    assert agg.stats.lines == parsed.lines
    assert dict(agg.stats.errors) == dict(parsed.errors)


@SETTINGS
@given(st.lists(st.one_of(st.binary(max_size=300), protocolish, st.lists(valid, max_size=5).map(
    lambda g: b"\n".join(x[0] for x in g))), min_size=1, max_size=8))
def test_datagrams_parsed_together_count_as_parsed_apart(datagrams: list[bytes]) -> None:
    together, apart = Aggregator(), Aggregator()
    together.ingest_many(datagrams)
    for d in datagrams:
        apart.ingest(d)
    assert (together.stats.lines, together.stats.samples, dict(together.stats.errors)) == \
        (apart.stats.lines, apart.stats.samples, dict(apart.stats.errors))
    expected_lines = sum(parse(d).lines for d in datagrams)
    assert together.stats.lines == expected_lines
    a, b = Flusher(10.0).batch(together.swap(1.0), now=1.0), Flusher(10.0).batch(apart.swap(1.0), now=1.0)
    key = lambda s: (s.name, s.tags, s.kind.value, s.timestamp)  # noqa: E731
    assert sorted(map(key, a.samples)) == sorted(map(key, b.samples))
    def value(s):  # histogram values are a multiset: their order within an interval does not matter
        return sorted(zip(s.value.values, s.value.weights)) if hasattr(s.value, "values") else s.value
    assert {key(s): value(s) for s in a.samples} == {key(s): value(s) for s in b.samples}
    assert a.events == b.events and a.service_checks == b.service_checks


gauge_line = st.tuples(st.sampled_from(["g1", "g2"]), st.sampled_from(["1", "2", "3", "-4", "+5", "6:7"]),
                       st.sampled_from(["", "|#a:b"])).map(lambda t: f"{t[0]}:{t[1]}|g{t[2]}".encode())
other_line = st.sampled_from([b"c:1|c", b"c:2|c|@0.5", b"h:1|h", b"h:2|h", b"u:x|s", b"u:y|s", b"_e{1,1}:a|b",
                              b"_e{1,1}:b|c", b"_sc|s|0", b"_sc|s|1", b"t:1|c|T100", b"t:2|c|T200", b"bad", b"g1:x|g"])


@SETTINGS
@given(st.lists(st.lists(st.one_of(gauge_line, other_line), min_size=1, max_size=40).map(b"\n".join),
                min_size=1, max_size=12))
def test_repeated_lines_keep_every_semantic(datagrams: list[bytes]) -> None:
    """Batches with many equal lines take the counted path: last gauge, sums, order of events unchanged."""
    fast, plain = Aggregator(), Aggregator()
    fast.ingest_many(datagrams)
    for d in datagrams:
        for line in d.split(b"\n"):
            plain.ingest(line)  # one line at a time: never counted
    a, b = Flusher(10.0).batch(fast.swap(1.0), now=1.0), Flusher(10.0).batch(plain.swap(1.0), now=1.0)

    def value(s):
        return sorted(zip(s.value.values, s.value.weights)) if hasattr(s.value, "values") else s.value
    samples = lambda batch: sorted((s.name, s.tags, s.kind.value, s.timestamp or 0, repr(value(s))) for s in batch.samples)  # noqa: E731
    assert samples(a) == samples(b)
    assert a.events == b.events and a.service_checks == b.service_checks
    assert [t for t in a.samples if t.timestamp] == [t for t in b.samples if t.timestamp]
    assert dict(fast.stats.errors) == dict(plain.stats.errors) and fast.stats.samples == plain.stats.samples


counted_line = st.one_of(gauge_line, other_line, st.sampled_from(
    [b"", b"\r", b"x:y|c", b"h:1:2:3|h", b"n1:1|c", b"n2:1|c|#a:b", b"n3:1|c", b"n4:1|c|T5", b"_e{9,1}:a|b"]))


@settings(SETTINGS, max_examples=max(10, SETTINGS.max_examples // 3))
@given(st.lists(st.lists(counted_line, min_size=1, max_size=30).map(b"\n".join), min_size=1, max_size=8),
       st.booleans())
def test_samples_read_while_a_batch_is_counted_never_go_down(datagrams: list[bytes], accelerated: bool) -> None:
    """`tasklens_statsd_samples_total` is read by the event loop while the receive thread counts: read
    at every line the aggregator runs, it never goes down (Prometheus would take it for a reset), and
    ends where lines handled one at a time end. The cap is small: refusals are counted too."""
    agg, seen = Aggregator(max_contexts=3, accelerated=accelerated), []

    def trace(frame, event, arg):  # noqa: ANN001, ANN202
        if frame.f_code.co_filename != receive.__file__:
            return None
        seen.append(agg.stats.samples)
        return trace

    sys.settrace(trace)
    try:
        for d in datagrams:
            agg.ingest(d)
    finally:
        sys.settrace(None)
    assert seen == sorted(seen)
    apart = Aggregator(max_contexts=3, accelerated=accelerated)
    for d in datagrams:
        for line in d.split(b"\n"):
            apart.ingest(line)
    assert agg.stats.samples == apart.stats.samples


KEYS = st.text("abkz_.-", min_size=1, max_size=4)
TAG_ITEMS = st.lists(st.one_of(st.builds("{}:{}".format, KEYS, st.text("xy:0", min_size=1, max_size=4)),  # key:value
                               KEYS,  # a bare tag
                               KEYS.map(lambda k: k + ":")),  # no value: no tag
                     max_size=8)


@settings(max_examples=300, deadline=None)
@given(TAG_ITEMS, st.sampled_from([b"c", b"g", b"ms"]))
def test_a_tag_with_a_colon_and_no_value_is_no_tag_in_either_loop(items: list[str], kind: bytes) -> None:
    """`status:` is left out, as statsd_exporter leaves it: kept, it read as the bare tag `status` and was
    exported as `status="true"`, a value no one sent (an outside tester). The same line without those items
    makes the same context, read by the C loop and by the Python loop alike."""
    written = b"m:1|" + kind + b"|#" + ",".join(items).encode()
    without = b"m:1|" + kind + b"|#" + ",".join(i for i in items if not i.partition(":")[1:] == (":", "")).encode()
    contexts = []
    for accelerated in (True, False):
        for line in (written, without):
            agg = Aggregator(accelerated=accelerated)
            agg.ingest(line)
            batch = Flusher(10.0).batch(agg.swap())
            contexts.append([(s.name, s.tags) for s in batch.samples])
    assert contexts[0] == contexts[1] == contexts[2] == contexts[3]
    assert all(value or key in items for sample in contexts[0] for key, value in sample[1])  # empty: bare only
