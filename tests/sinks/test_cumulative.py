"""The cumulative state the push sinks export (remote_write, OTLP, EMF) follows `/metrics`' counter rule.

Property: whatever StatsD count intervals arrive (negative as `decrement()` sends, zero, huge, a sum
that overflows, NaN), the counter CumulativeState exports equals the `_total` the Prometheus sink
renders, never decreases, stays finite, and every refusal is counted under the same reason.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from agent.model import Batch, Kind, Points, Sample
from agent.selfmetrics import SelfMetrics
from agent.sinks.cumulative import CumulativeState, Histogram
from agent.sinks.prometheus import PrometheusSink

REASONS = ("negative_counter", "non_finite")
counts = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([-5.0, -1.0, -0.0, 0.0, 1.0, 1e308, -1e308, math.inf, -math.inf, math.nan]))


def rendered_total(sink: PrometheusSink) -> float | None:
    """The counter's `_total`, None when it has no series (no interval taken yet)."""
    families = list(text_string_to_metric_families(sink.render().decode()))
    if not families:
        return None
    [family] = families
    [sample] = family.samples
    assert sample.name == "c_total"
    return float(sample.value)


def rejected(metrics: SelfMetrics, sink: str) -> dict[str, float]:
    return {r: metrics.get("tasklens.sink.points_rejected", sink=sink, reason=r) for r in REASONS}


@given(st.lists(counts, min_size=1, max_size=12))
def test_a_summed_count_is_exported_as_on_metrics_never_decreasing_and_finite(intervals: list[float]) -> None:
    metrics = SelfMetrics()
    prometheus = PrometheusSink(metrics)
    state = CumulativeState("otlp", metrics, buckets=())
    last = 0.0
    for value in intervals:
        batch = Batch("statsd", [Sample("c", value, Kind.COUNT, interval=10)])
        prometheus.accept(batch)
        state.accept(batch)
        if not len(state):  # no interval taken yet: no series anywhere (a refused first one makes none)
            assert last == 0.0 and rendered_total(prometheus) is None
            assert rejected(metrics, "otlp") == rejected(metrics, "prometheus")
            continue
        [((name, _), series)] = list(state.items())
        exported = series.value
        assert isinstance(exported, float) and name == "c" and series.kind is Kind.COUNTER
        assert exported == rendered_total(prometheus)
        assert math.isfinite(exported) and exported >= last
        last = exported
        assert rejected(metrics, "otlp") == rejected(metrics, "prometheus")


def test_negative_counts_are_refused_and_counted() -> None:
    metrics = SelfMetrics()
    state = CumulativeState("remote_write", metrics, buckets=())
    for value in (3.0, -5.0, -5.0, 2.0, 1e308, 1e308):
        state.accept(Batch("statsd", [Sample("neg.count", value, Kind.COUNT, interval=10)]))
    [(_, series)] = list(state.items())
    assert series.value == 5.0 + 1e308
    assert rejected(metrics, "remote_write") == {"negative_counter": 2, "non_finite": 1}


def test_a_histogram_whose_sum_would_overflow_keeps_its_last_finite_value() -> None:
    metrics = SelfMetrics()
    state = CumulativeState("otlp", metrics, buckets=(1.0,))
    for _ in range(2):
        state.accept(Batch("statsd", [Sample("h", Points((1e308,), (1.0,)), Kind.HISTOGRAM, interval=10)]))
    [(_, series)] = list(state.items())
    assert isinstance(series.value, Histogram)
    assert (series.value.total, series.value.count, series.value.cumulative()) == (1e308, 1.0, [0.0, 1.0])
    assert rejected(metrics, "otlp")["non_finite"] == 1


# one name and tags: a count, a gauge, a timer's points or a histogram's, any order (`q:1|c` then `q:5|g`)
MIXED = st.lists(st.sampled_from(["count", "gauge", "timer", "histogram"]), min_size=1, max_size=10)


def mixed_sample(kind: str) -> Sample:
    if kind in ("timer", "histogram"):
        return Sample("q", Points((500.0,), (1.0,), milliseconds=kind == "timer"), Kind.HISTOGRAM, interval=10)
    return Sample("q", 1.0, Kind.COUNT if kind == "count" else Kind.GAUGE, interval=10)


@given(MIXED)
def test_the_first_type_keeps_a_series_as_on_metrics(kinds: list[str]) -> None:
    """remote_write and OTLP send what /metrics shows: the first type (a timer's unit too) keeps the
    series, whose counter never restarts at 0 for a gauge line; the others are counted as on /metrics."""
    metrics = SelfMetrics()
    prometheus = PrometheusSink(metrics)
    state = CumulativeState("otlp", metrics, buckets=(1.0,))
    for kind in kinds:
        batch = Batch("statsd", [mixed_sample(kind)])
        prometheus.accept(batch)
        state.accept(batch)
    [(_, series)] = list(state.items())
    kept = [k for k in kinds if k == kinds[0]]
    if kinds[0] == "count":
        assert series.kind is Kind.COUNTER and series.value == len(kept)
    elif kinds[0] == "gauge":
        assert series.kind is Kind.GAUGE and series.value == 1.0
    else:
        assert isinstance(series.value, Histogram) and series.value.count == len(kept)
        assert series.value.total == len(kept) * (0.5 if kinds[0] == "timer" else 500.0)
    conflicts = {sink: metrics.get("tasklens.sink.points_rejected", sink=sink, reason="type_conflict")
                 for sink in ("otlp", "prometheus")}
    assert conflicts == {"otlp": len(kinds) - len(kept), "prometheus": len(kinds) - len(kept)}
    assert state.take_ended() == []


@given(st.text(min_size=1, max_size=20), st.sampled_from(["count", "gauge", "timer", "histogram"]))
def test_a_workers_series_is_refused_by_the_push_sinks_where_metrics_refuses_it(name: str, kind: str) -> None:
    """A worker's name that sanitises into the sidecar's (`queue.depth`, `tasklens.scaling.task.heartbeat`,
    `ecs`) never reaches remote_write, OTLP or EMF either: it shadowed the sidecar's queue depth and
    doubled the heartbeat CloudWatch counts tasks by. The same verdict as /metrics, counted alike."""
    metrics = SelfMetrics()
    prometheus = PrometheusSink(metrics)
    state = CumulativeState("otlp", metrics, buckets=(1.0,))
    for prefix in ("", "queue.", "tasklens_", "ecs-", "queue"):
        sample = mixed_sample(kind)
        batch = Batch("statsd", [Sample(prefix + name, sample.value, sample.kind)])
        prometheus.accept(batch)
        state.accept(batch)
    refused = {sink: metrics.get("tasklens.sink.points_rejected", sink=sink, reason="reserved_name")
               for sink in ("otlp", "prometheus")}
    assert refused["otlp"] == refused["prometheus"] >= 3
    names = {key[0] for key, _ in state.items()}
    assert names <= {name, "queue" + name} and len(names) == 5 - refused["otlp"]
