"""Points refused only by a push sink are logged, once a minute per sink and reason, besides being
counted: `heavy:1|h|@1e-20` weighs 1e20, past OTLP's uint64 bucket counts (`count_overflow`), and was
once counted in `tasklens_sink_points_rejected_total` with no word in the log (EMF logs its refusals)."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from agent.config import Config
from agent.hub import Hub
from agent.model import Batch, Kind, Points, Sample
from agent.sinks.otlp import OtlpSink
from agent.sinks.remote_write import RemoteWriteSink
from tests.sinks.test_otlp import TASK


def lines(caplog: pytest.LogCaptureFixture, reason: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"({reason})" in r.getMessage()]


def test_an_otlp_count_overflow_is_logged_once_and_counted_each_time(caplog: pytest.LogCaptureFixture) -> None:
    config = replace(Config(), otlp_endpoint="http://127.0.0.1:9", otlp_compression="none")
    hub = Hub(TASK)
    sink = OtlpSink(config, hub)
    hub.add_sink(sink)
    with caplog.at_level(logging.WARNING, "tasklens"):
        for _ in range(5):
            hub.publish(Batch("statsd", [Sample("heavy", Points((1.0,), (1e20,)), Kind.HISTOGRAM, interval=10.0)]))
            sink.flush()
    assert hub.metrics.get("tasklens.sink.points_rejected", sink="otlp", reason="count_overflow") == 5
    (line,) = lines(caplog, "count_overflow")
    assert line.startswith("otlp: ") and "'heavy'" in line


@pytest.mark.parametrize("kind", ["otlp", "remote_write"])
def test_refusals_of_the_cumulative_state_are_logged_per_sink_and_reason(
        kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """`decrement()` sends `x:-1|c`: a cumulative counter cannot go down (`negative_counter`)."""
    config = replace(Config(), otlp_endpoint="http://127.0.0.1:9", remote_write_url="http://127.0.0.1:9/w")
    hub = Hub(TASK)
    sink = OtlpSink(config, hub) if kind == "otlp" else RemoteWriteSink(config, hub)
    hub.add_sink(sink)
    with caplog.at_level(logging.WARNING, "tasklens"):
        for i in range(100):
            hub.publish(Batch("statsd", [Sample("jobs.left", -1.0, Kind.COUNT, interval=10.0),
                                         Sample(f"bad.{i}", float("nan"), Kind.GAUGE)]))
    assert hub.metrics.get("tasklens.sink.points_rejected", sink=kind, reason="negative_counter") == 100
    assert hub.metrics.get("tasklens.sink.points_rejected", sink=kind, reason="non_finite") == 100
    (negative,) = lines(caplog, "negative_counter")
    (nan,) = lines(caplog, "non_finite")
    assert negative.startswith(f"{kind}: ") and "'jobs.left'" in negative
    assert nan.startswith(f"{kind}: ") and "'bad.0'" in nan
