"""Aggregation per interval: the spec's semantics table and worked examples, limits, expiry."""

from __future__ import annotations

import math
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.model import Batch, Event, Kind, Points, Sample, ServiceCheck
from agent.statsd.flush import Flusher
from agent.statsd.receive import Aggregator
from agent.statsd.mapping import compile_rules

pytestmark = pytest.mark.usefixtures("both_loops")  # the C loop and the Python loop alike

CONTAINERS = {"c0ffee": (("container_name", "worker"), ("image", "acme/worker"), ("image_tag", "1.2"))}


def flush(agg: Aggregator, flusher: Flusher | None = None, now: float = 1000.0) -> Batch:
    return (flusher or Flusher(10.0)).batch(agg.swap(now), CONTAINERS, now=now)


def run(*datagrams: bytes, **options: object) -> tuple[Batch, Aggregator]:
    agg = Aggregator(**options)  # type: ignore[arg-type]
    for d in datagrams:
        agg.ingest(d)
    return flush(agg), agg


def by_name(batch: Batch) -> dict[str, Sample]:
    out = {s.name: s for s in batch.samples}
    assert len(out) == len(batch.samples), "one sample per name expected in these tests"
    return out


def test_worked_example_histogram_values_1_to_10() -> None:
    batch, _ = run(*(b"h:%d|h" % v for v in range(1, 11)))
    s = by_name(batch)["h"]
    assert s.kind is Kind.HISTOGRAM and s.interval == 10.0
    assert sorted(s.value.values) == [float(v) for v in range(1, 11)]  # type: ignore[union-attr]
    assert list(s.value.weights) == [1.0] * 10  # type: ignore[union-attr]


def test_worked_example_sampled_counter() -> None:
    batch, agg = run(b"x:1|c|@0.5", b"x:1|c|@0.5", b"x:1|c|@0.5")
    assert by_name(batch)["x"] == Sample("x", 6.0, Kind.COUNT, (), None, 10.0)
    assert agg.stats.samples == 3 and agg.stats.lines == 3


def test_one_context_with_two_rates_and_packed_values() -> None:
    batch, agg = run(b"x:1|c|#a:b\nx:2:3|c|@0.25|#a:b\nx:4|c|#a:b|@0.5")
    assert by_name(batch)["x"].value == 1 + (2 + 3) * 4 + 4 * 2  # 29
    assert agg.stats.samples == 4


def test_gauge_last_value_wins_and_signs_set_the_value() -> None:
    batch, _ = run(b"g:10|g\ng:+5|g", b"h:1|g\nh:-3|g")
    gauges = by_name(batch)
    assert gauges["g"].value == 5.0 and gauges["g"].kind is Kind.GAUGE
    assert gauges["h"].value == -3.0


def test_etsy_gauge_deltas_apply_across_intervals() -> None:
    agg = Aggregator(gauge_deltas=True)
    flusher = Flusher(10.0)
    agg.ingest(b"g:10|g\ng:+5|g")
    assert by_name(flush(agg, flusher))["g"].value == 15.0
    agg.ingest(b"g:-20|g")
    assert by_name(flush(agg, flusher, 1010.0))["g"].value == -5.0
    agg.ingest(b"g:+1:+1|g\nnew:-2|g")
    gauges = by_name(flush(agg, flusher, 1020.0))
    assert gauges["g"].value == -3.0 and gauges["new"].value == -2.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(["+", "-", ""]),
                                   st.sampled_from([0.0, 1.0, 1e300, 1.7976931348623157e308, 5e-324])),
                         min_size=1, max_size=3), min_size=1, max_size=8))
def test_gauge_deltas_never_leave_the_finite_range(lines: list[list[tuple[str, float]]]) -> None:
    """Any sequence of values and changes: a line whose changes would make the gauge infinite is refused
    whole (`bad_value`) and the gauge keeps its value; every other line applies as arithmetic says."""
    agg, flusher, expected, refused = Aggregator(gauge_deltas=True), Flusher(10.0), 0.0, 0
    for n, values in enumerate(lines):
        value = expected
        for sign, v in values:
            value = value + (v if sign == "+" else -v) if sign else v
        if math.isfinite(value):
            expected = value
        else:
            refused += 1
        agg.ingest(b"g:" + ":".join(f"{sign}{v!r}" for sign, v in values).encode() + b"|g")
        gauge = by_name(flush(agg, flusher, 1000.0 + 10 * n)).get("g")
        assert (gauge.value if gauge else expected) == expected
    assert agg.stats.errors.get("bad_value", 0) == refused


def test_gauge_only_in_intervals_with_a_sample() -> None:
    agg, flusher = Aggregator(), Flusher(10.0)
    agg.ingest(b"g:1|g")
    assert len(flush(agg, flusher).samples) == 1
    assert flush(agg, flusher, 1010.0).samples == []


def test_set_counts_distinct_members_per_interval() -> None:
    agg, flusher = Aggregator(), Flusher(10.0)
    agg.ingest(b"u:a|s\nu:b|s\nu:a|s|@0.5\nu:a:b|s")
    assert by_name(flush(agg, flusher))["u"] == Sample("u", 3.0, Kind.GAUGE)
    agg.ingest(b"u:z|s")
    assert by_name(flush(agg, flusher, 1010.0))["u"].value == 1.0


def test_histogram_weights_and_timer_units() -> None:
    batch, _ = run(b"t:100|ms|@0.5\nt:200:300|ms\nd:1.5|d|@0.25\nh:7|h")
    s = by_name(batch)
    t = s["t"].value
    assert isinstance(t, Points) and t.milliseconds
    assert sorted(zip(t.values, t.weights)) == [(100.0, 2.0), (200.0, 1.0), (300.0, 1.0)]
    assert s["d"].kind is Kind.DISTRIBUTION and s["d"].value == Points(array("d", [1.5]), array("d", [4.0]))
    assert s["h"].kind is Kind.HISTOGRAM and not s["h"].value.milliseconds  # type: ignore[union-attr]


def test_timestamped_lines_are_not_aggregated() -> None:
    batch, _ = run(b"c:2|c|@0.5|T1700000000\nc:3|c|T1700000010\ng:7|g|T1700000005\nc:1|c")
    samples = sorted(batch.samples, key=lambda s: (s.timestamp or 0, s.name))
    assert samples == [
        Sample("c", 1.0, Kind.COUNT, (), None, 10.0),
        Sample("c", 4.0, Kind.COUNT, (), 1700000000.0, 10.0),
        Sample("g", 7.0, Kind.GAUGE, (), 1700000005.0, None),
        Sample("c", 3.0, Kind.COUNT, (), 1700000010.0, 10.0),
    ]


def test_idle_counters_report_zero_until_their_ttl() -> None:
    agg, flusher = Aggregator(), Flusher(10.0, ttl=30.0)
    agg.ingest(b"x:5|c|#a:b")
    assert [s.value for s in flush(agg, flusher, 1000.0).samples] == [5.0]
    assert flush(agg, flusher, 1010.0).samples == [Sample("x", 0.0, Kind.COUNT, (("a", "b"),), None, 10.0)]
    assert [s.value for s in flush(agg, flusher, 1030.0).samples] == [0.0]
    assert flush(agg, flusher, 1031.0).samples == []  # idle for more than 30 s


def test_container_tags_for_c_field_under_client_tags() -> None:
    batch, _ = run(b"x:1|c|c:c0ffee|#image_tag:override,k:v\ny:1|c|c:unknown\n"
                   b"_e{1,1}:t|x|c:c0ffee\n_sc|s|0|c:c0ffee|#k:v")
    s = by_name(batch)
    assert s["x"].tags == (("container_name", "worker"), ("image", "acme/worker"), ("image_tag", "override"), ("k", "v"))
    assert s["y"].tags == ()
    assert batch.events == [Event("t", "x", CONTAINERS["c0ffee"])]
    assert batch.service_checks == [ServiceCheck("s", 0, CONTAINERS["c0ffee"] + (("k", "v"),))]


def test_bad_lines_are_counted_and_never_spoil_the_datagram() -> None:
    batch, agg = run(b"a:1|c\nb:x|c\nc:1|q\na:2|c\nu:|s\nz:1|c|@x\nz:1|c|Tx\n_e{9,9}:x|y\n_sc|a|7\n" + b"n" * 201 + b":1|c\nno")
    assert by_name(batch)["a"].value == 3.0
    assert dict(agg.stats.errors) == {"bad_value": 2, "bad_type": 1, "bad_rate": 1, "bad_timestamp": 1, "bad_event": 1,
                                      "bad_service_check": 1, "too_long": 1, "malformed_line": 1}
    assert agg.stats.lines == 11 and agg.stats.samples == 2


def test_errors_are_counted_again_when_cached() -> None:
    agg = Aggregator()
    for _ in range(3):
        agg.ingest(b"x:1|q\ny:abc|c\ny:1|c")
    assert dict(agg.stats.errors) == {"bad_type": 3, "bad_value": 3}
    assert flush(agg).samples[0].value == 3.0


def test_context_cap_drops_new_contexts_and_keeps_existing_ones() -> None:
    agg = Aggregator(max_contexts=2)
    agg.ingest(b"a:1|c\nb:1|g\nc:1|c\na:1|c\nc:1|c\nb:2|g\na:1|c|#new:tag")
    s = by_name(flush(agg))
    assert s["a"].value == 2.0 and s["b"].value == 2.0 and "c" not in s
    assert agg.stats.errors["cardinality_limit"] == 3 and agg.stats.contexts_dropped == 2
    assert len(agg.contexts) == 2


def test_idle_contexts_expire_and_free_the_cap() -> None:
    agg, flusher = Aggregator(max_contexts=2), Flusher(10.0, ttl=30.0)
    agg.ingest(b"old:1|g\nkeep:1|c")
    flush(agg, flusher, 1000.0)
    agg.ingest(b"keep:1|c\nnew:1|g")  # refused: the cap is reached
    flush(agg, flusher, 1020.0)
    agg.ingest(b"keep:1|c")
    flush(agg, flusher, 1040.0)
    expired = flusher.expired(1040.0)
    assert [c.name for c in expired] == ["old"]
    agg.expire(expired)
    flush(agg, flusher, 1050.0)  # applied at the swap
    assert sorted(k[0] for k in agg.contexts) == ["keep"]
    agg.ingest(b"new:5|g")
    assert by_name(flush(agg, flusher, 1060.0))["new"].value == 5.0


def test_expiry_spares_a_context_that_came_back_meanwhile() -> None:
    agg, flusher = Aggregator(), Flusher(10.0, ttl=5.0)
    agg.ingest(b"g:1|g")
    flush(agg, flusher, 1000.0)
    agg.ingest(b"g:2|g")  # in the interval being swapped out when the expiry is applied
    agg.expire(flusher.expired(1010.0))
    assert by_name(flush(agg, flusher, 1010.0))["g"].value == 2.0
    assert [k[0] for k in agg.contexts] == ["g"]


def test_mapping_rules_name_and_label_contexts() -> None:
    rules = compile_rules([{"match": "jobs.*.processed", "name": "jobs_processed", "labels": {"queue": "$1"}}])
    batch, _ = run(b"jobs.orders.processed:2|c\njobs.billing.processed:1|c|#queue:x,k:v\njobs.orders.processed:1|c\nother:1|c",
                   rules=rules)
    samples = {(s.name, s.tags): s.value for s in batch.samples}
    assert samples == {
        ("jobs_processed", (("queue", "orders"),)): 3.0,
        ("jobs_processed", (("k", "v"), ("queue", "billing"))): 1.0,  # the rule wins over the client
        ("other", ()): 1.0,
    }


def test_events_and_service_checks_pass_through() -> None:
    batch, agg = run(b"_e{5,4}:title|text|#a:b\n_sc|db|1|m:slow")
    assert batch.events == [Event("title", "text", (("a", "b"),))]
    assert batch.service_checks == [ServiceCheck("db", 1, message="slow")]
    assert agg.stats.events == 1 and agg.stats.service_checks == 1 and agg.stats.samples == 0


def test_datagram_over_64_kib_is_one_too_long_error() -> None:
    _, agg = run(b"x:1|c\n" * 11000)
    assert dict(agg.stats.errors) == {"too_long": 1} and agg.stats.lines == 1


def test_repeated_histogram_values_are_merged_with_their_weights() -> None:
    agg = Aggregator()
    agg.ingest_many([b"\n".join(b"t:%d|ms" % (i % 10) for i in range(2000)), b"t:3|ms|@0.5\nt:11|ms|@0.5"])
    points = by_name(flush(agg))["t"].value
    assert isinstance(points, Points) and points.milliseconds
    merged = dict(zip(points.values, points.weights))
    # 0..9 two hundred times each, and 3 and 11 sampled at 0.5 (weight 2)
    assert merged == {**{float(v): 200.0 for v in range(10)}, 3.0: 202.0, 11.0: 2.0}


def test_distinct_histogram_values_are_kept_and_merging_is_retried_later() -> None:
    agg, flusher = Aggregator(), Flusher(10.0)
    for now in range(1000, 1000 + 17 * 10, 10):
        agg.ingest(b"\n".join(b"d:%d.5|d" % i for i in range(1100)))
        points = by_name(flush(agg, flusher, float(now)))["d"].value
        assert sorted(points.values) == [i + 0.5 for i in range(1100)] and set(points.weights) == {1.0}  # type: ignore[union-attr]
    ctx = next(iter(agg.contexts.values()))
    assert ctx.merge == 0  # tried at the first flush, then 16 flushes without trying: tried again next time


def test_a_counter_sum_that_overflows_is_dropped_and_counted() -> None:
    agg, flusher = Aggregator(), Flusher(10.0)
    agg.ingest(b"big:1e308|c\nbig:1e308|c\nstamped:1e308|c|@0.5|T1700000000\nok:1|c")
    batch = flush(agg, flusher)
    assert [(s.name, s.value) for s in batch.samples] == [("ok", 1.0)]
    assert flusher.overflows == 2 and not agg.stats.errors
