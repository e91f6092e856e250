"""A series whose first point is refused is never made: on `/metrics` a histogram of `1e308|h` twice (a
sum that is not finite) showed `_count 0`, `_sum 0` and held its family's name and type for the TTL;
remote_write, OTLP and EMF (`CumulativeState`) kept such a series too. And a timer's sum is in seconds:
`1e308|ms` twice is 2e305 s, finite, although its sum in milliseconds is not."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from agent.model import Batch, Kind, Points, Sample
from agent.selfmetrics import SelfMetrics
from agent.sinks.cumulative import CumulativeState, Histogram
from agent.sinks.prometheus import PrometheusSink
from agent.statsd.flush import Flusher
from agent.statsd.receive import Aggregator


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scrape(sink: PrometheusSink) -> dict[str, float]:
    """The worker's samples on /metrics by name (buckets by `name{le}`)."""
    out = {}
    for family in text_string_to_metric_families(sink.render().decode()):
        for s in family.samples:
            if not s.name.startswith(("tasklens_", "ecs_")):
                out[s.name + (f"{{{s.labels['le']}}}" if "le" in s.labels else "")] = s.value
    return out


def flushed(*lines: bytes) -> Batch:
    agg = Aggregator()
    for line in lines:
        agg.ingest(line)
    return Flusher(10.0).batch(agg.swap(1000.0), now=1000.0)


def sinks() -> tuple[SelfMetrics, PrometheusSink, CumulativeState]:
    metrics = SelfMetrics()
    return metrics, PrometheusSink(metrics, buckets=(1.0,)), CumulativeState("otlp", metrics, buckets=(1.0,))


def rejected(metrics: SelfMetrics, sink: str, reason: str) -> float:
    return metrics.get("tasklens.sink.points_rejected", sink=sink, reason=reason)


def test_a_histogram_whose_first_point_is_refused_is_not_made_and_its_name_stays_free() -> None:
    metrics, prometheus, state = sinks()
    for sink in (prometheus, state):
        sink.accept(flushed(b"hz.h:1e308|h", b"hz.h:1e308|h", b"hz.c:-1|c"))
    assert scrape(prometheus) == {} and prometheus.live == 0 and prometheus.label_bytes == 0
    assert list(state.items()) == []
    for sink in ("prometheus", "otlp"):
        assert rejected(metrics, sink, "non_finite") == 1 and rejected(metrics, sink, "negative_counter") == 1
    for sink in (prometheus, state):  # the names are free for any type
        sink.accept(flushed(b"hz.h:2|g", b"hz.c:3|g"))
    assert scrape(prometheus) == {"hz_h": 2.0, "hz_c": 3.0}
    assert {name: series.value for (name, _), series in state.items()} == {"hz.h": 2.0, "hz.c": 3.0}
    assert rejected(metrics, "prometheus", "type_conflict") == rejected(metrics, "otlp", "type_conflict") == 0


def test_a_timer_sum_that_overflows_in_milliseconds_but_not_in_seconds_is_taken() -> None:
    for lines, total, count in (([b"hz.t:1e308|ms"] * 2, 2e305, 2.0),
                                ([b"hz.t:1e308|ms|@0.5", b"hz.t:1e308|ms"], 3e305, 3.0),  # weights of two rates
                                ([b"hz.t:1e308:1e308:1e308|ms|@0.25"], 12e305, 12.0)):
        metrics, prometheus, state = sinks()
        for sink in (prometheus, state):
            sink.accept(flushed(*lines))
        got = scrape(prometheus)
        assert math.isclose(got["hz_t_sum"], total) and got["hz_t_count"] == count
        assert got["hz_t_bucket{+Inf}"] == count and got["hz_t_bucket{1.0}"] == 0.0
        [(_, series)] = list(state.items())
        assert isinstance(series.value, Histogram) and math.isclose(series.value.total, total)
        assert rejected(metrics, "prometheus", "non_finite") == rejected(metrics, "otlp", "non_finite") == 0
    _, prometheus, _ = sinks()
    prometheus.accept(flushed(*[b"hz.t:1e308|ms"] * 20_000))  # 2e309 s: not finite in seconds either
    assert scrape(prometheus) == {}


POINTS = {  # a first point each sink takes, or refuses (and why)
    "count": Sample("x", 1.0, Kind.COUNT, interval=10), "negative": Sample("x", -1.0, Kind.COUNT, interval=10),
    "overflow": Sample("x", 1e308, Kind.COUNT, interval=10), "gauge": Sample("x", 5.0),
    "histogram": Sample("x", Points((1.0,), (1.0,)), Kind.HISTOGRAM),
    "huge_histogram": Sample("x", Points((1e308, 1e308), (1.0, 1.0)), Kind.HISTOGRAM),
}


@given(st.lists(st.sampled_from(sorted(POINTS)), min_size=1, max_size=8))
def test_a_series_exists_exactly_when_a_point_of_it_was_taken(sent: list[str]) -> None:
    metrics, prometheus, state = sinks()
    clock = Clock()
    prometheus.clock = state.clock = clock

    def refused(sink: str) -> int:
        return int(sum(rejected(metrics, sink, r) for r in ("negative_counter", "non_finite", "type_conflict")))

    for n, which in enumerate(sent, 1):
        clock.now += 1.0
        for sink in (prometheus, state):
            sink.accept(Batch("statsd", [POINTS[which]]))
        taken = n - refused("prometheus")  # a taken point makes the series; nothing ends it before its TTL
        assert prometheus.live == int(taken > 0) and bool(scrape(prometheus)) == (taken > 0)
        assert len(state) == int(n - refused("otlp") > 0)
    live = prometheus.live
    clock.now += 10_000.0
    assert prometheus.expire() == live and state.expire() == len(list(state.take_ended()))
    assert prometheus.live == 0 and prometheus.label_bytes == 0 and len(state) == 0
