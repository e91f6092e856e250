"""How OTLP cuts a flush into requests: at most `max_points_per_request` points and `max_request_bytes`
serialised bytes each, a metric with more points than fit split across requests.

One gauge with 40,000 tag sets once went as one 23.9 MiB request (the cap counted points between
metrics only), over the 20 MiB that Collector-based receivers commonly accept.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from agent.config import Config
from agent.hub import Hub
from agent.model import Batch, Kind, Points, Sample
from agent.sinks.otlp import MAX_POINTS_PER_REQUEST, MAX_REQUEST_BYTES, OtlpSink
from agent.sinks.push import Payload
from tests.sinks.test_otlp import TASK

NOW = 1_800_000_000.0


def sink(temporality: str = "cumulative") -> tuple[OtlpSink, Hub]:
    config = replace(Config(), otlp_endpoint="http://127.0.0.1:9", otlp_compression="none",
                     otlp_temporality=temporality)
    hub = Hub(TASK)
    s = OtlpSink(config, hub, wall=lambda: NOW)
    hub.add_sink(s)
    return s, hub


def points_of(payloads: list[Payload]) -> Counter[tuple[Any, ...]]:
    """Every point sent, with what it belongs to (metric name, type, temporality, monotonic)."""
    out: Counter[tuple[Any, ...]] = Counter()
    for payload in payloads:
        req = ExportMetricsServiceRequest()
        req.ParseFromString(payload.body)
        for metric in (mt for rm in req.resource_metrics for sm in rm.scope_metrics for mt in sm.metrics):
            field = metric.WhichOneof("data")
            data = getattr(metric, field)
            kind = (field, getattr(data, "aggregation_temporality", None), getattr(data, "is_monotonic", None))
            assert data.data_points, metric.name  # a metric without points is invalid
            out.update((metric.name, *kind, p.SerializeToString()) for p in data.data_points)
    return out


def test_one_metric_of_40000_tag_sets_is_split_within_both_caps() -> None:
    s, hub = sink()
    value = "x" * 190
    hub.publish(Batch("statsd", [Sample("requests", float(i), Kind.GAUGE, (("a", f"{i}{value}"), ("b", value)))
                                 for i in range(40_000)]))
    payloads = s.flush()
    assert len(payloads) > 1
    assert all(len(p.body) <= MAX_REQUEST_BYTES and p.points <= MAX_POINTS_PER_REQUEST for p in payloads)
    assert sum(n for (name, *_), n in points_of(payloads).items() if name == "requests") == 40_000
    assert sum(p.points for p in payloads) == sum(points_of(payloads).values())


series = st.tuples(st.sampled_from(["g", "c", "h", "other.g"]), st.integers(0, 3), st.text("ab", max_size=300))


@settings(max_examples=150, deadline=None)
@given(st.lists(series, min_size=1, max_size=60), st.integers(1, 40), st.integers(6000, 30_000),
       st.sampled_from(["cumulative", "delta"]), st.integers(1, 3))
def test_every_request_is_within_both_caps_and_together_they_are_exactly_the_points(
        samples: list[tuple[str, int, str]], max_points: int, max_bytes: int, temporality: str, flushes: int) -> None:
    capped, hub = sink(temporality)
    capped.max_points_per_request, capped.max_request_bytes = max_points, max_bytes
    whole, whole_hub = sink(temporality)
    whole.max_points_per_request, whole.max_request_bytes = 10**9, 10**12
    batch = Batch("statsd", [
        Sample(name, Points((1.0, float(i)), (1.0, 1.0)) if name == "h" else float(i),
               Kind.HISTOGRAM if name == "h" else Kind.COUNT if name == "c" else Kind.GAUGE,
               (("tag", text), ("i", str(i))), interval=10.0)
        for name, i, text in samples])
    for _ in range(flushes):  # delta: each point of a stream once, whatever the cut
        hub.publish(batch)
        whole_hub.publish(batch)
        payloads = capped.flush()
        for p in payloads:
            assert p.points <= max_points and len(p.body) <= max_bytes, (p.points, len(p.body))
        assert points_of(payloads) == points_of(whole.flush())
        assert sum(p.points for p in payloads) == sum(points_of(payloads).values())
    assert hub.metrics.get("tasklens.sink.points_rejected", sink="otlp", reason="too_large") == 0
