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


def rendered_total(sink: PrometheusSink) -> float:
    [family] = text_string_to_metric_families(sink.render().decode())
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


# a histogram point: a timer's (milliseconds) or not, of one of two tag sets, its value
unit_points = st.lists(st.tuples(st.booleans(), st.sampled_from([(), (("queue", "a"),)]),
                                 st.floats(min_value=0.0, max_value=1e6)), min_size=1, max_size=12)


def histogram_sample(ms: bool, tags: tuple[tuple[str, str], ...], value: float) -> Sample:
    kind = Kind.HISTOGRAM if ms else Kind.DISTRIBUTION  # `d` is raw as `h` is
    return Sample("lat", Points((value,), (1.0,), milliseconds=ms), kind, tags, interval=10)


@given(unit_points)
def test_a_stream_never_adds_a_timers_seconds_to_raw_values(points: list[tuple[bool, tuple, float]]) -> None:
    # a timer's points where raw ones were (or the other way) end the stream and start one of their unit
    metrics = SelfMetrics()
    state = CumulativeState("otlp", metrics, buckets=(1.0,))
    expected: dict[tuple, tuple[bool, float]] = {}  # tags -> (unit, sum of the stream)
    ends = 0
    for ms, tags, value in points:
        state.accept(Batch("statsd", [histogram_sample(ms, tags, value)]))
        unit, total = expected.get(tags, (ms, 0.0))
        if unit != ms:
            ends, total = ends + 1, 0.0
        expected[tags] = (ms, total + (value / 1000 if ms else value))
    got = {tags: series.value for (_, tags), series in state.items()}
    assert got.keys() == expected.keys()
    for tags, (ms, total) in expected.items():
        histogram = got[tags]
        assert isinstance(histogram, Histogram) and histogram.milliseconds is ms
        assert math.isclose(histogram.total, total, rel_tol=1e-9)
    assert len(state.take_ended()) == ends
