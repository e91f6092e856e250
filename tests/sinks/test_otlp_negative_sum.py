"""OTLP histograms and `sum`: the proto says sum "should only be filled out when measuring non-negative
discrete events"; negative events can be recorded, but then without a sum. A histogram of negative
values (`temp.delta:-5|h`) was sent with a (negative) sum."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from agent.config import Config
from agent.hub import Hub
from agent.model import Batch, Kind, Points, Sample
from agent.sinks.otlp import OtlpSink
from tests.sinks.test_otlp import TASK


def points(sink: OtlpSink) -> dict[str, Any]:
    """One flush: the histogram point of each metric."""
    out = {}
    for payload in sink.flush():
        req = ExportMetricsServiceRequest()
        req.ParseFromString(payload.body)
        for m in (m for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics):
            if m.WhichOneof("data") == "histogram":
                (out[m.name],) = m.histogram.data_points
    return out


@pytest.mark.parametrize("temporality", ["cumulative", "delta"])
def test_no_sum_once_a_negative_value_is_recorded(temporality: str) -> None:
    hub = Hub(TASK)
    sink = OtlpSink(replace(Config(), otlp_endpoint="http://127.0.0.1:9", otlp_compression="none",
                            otlp_temporality=temporality), hub)
    hub.add_sink(sink)
    hub.publish(Batch("statsd", [Sample("size", Points((2.0, 3.0), (1.0, 1.0)), Kind.HISTOGRAM, interval=10.0),
                                 Sample("temp.delta", Points((-5.0, -7.0, 3.0), (1.0, 1.0, 1.0)), Kind.HISTOGRAM,
                                        interval=10.0)]))
    flushed = points(sink)
    size, temp = flushed["size"], flushed["temp.delta"]
    assert size.HasField("sum") and size.sum == 5.0 and size.count == 2
    assert not temp.HasField("sum") and temp.count == 3
    # later values of the stream are all positive: its cumulative sum still holds the negative ones
    hub.publish(Batch("statsd", [Sample("temp.delta", Points((1.0,), (1.0,)), Kind.HISTOGRAM, interval=10.0)]))
    temp = points(sink)["temp.delta"]
    assert not temp.HasField("sum") and temp.count == (4 if temporality == "cumulative" else 1)
