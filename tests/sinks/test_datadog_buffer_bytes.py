"""The Datadog buffer is bounded by bytes as well as points: during an outage, events and service
checks (one point each, kilobytes of uncompressed JSON) were buffered without a byte bound, ~4 MiB a
flush until their 18 h expiry, far below the 2,000,000-point bound (docs/guarantees.md: "Memory is
bounded by bytes")."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Event, ServiceCheck
from agent.sinks.datadog import DatadogSink

KEY = "0123456789abcdef0123456789abcdef"
MIB = 1 << 20


def make() -> DatadogSink:
    # the default bounds; an intake that never answers: the sender is not run
    config = replace(Config(), dd_api_key=KEY, dd_url="http://127.0.0.1:9", flush_interval=10.0)
    hub = Hub(Identity(service="orders-worker", env="prod"))
    sink = DatadogSink(config, hub)
    hub.add_sink(sink)
    hub.pull = list  # type: ignore[method-assign]
    return sink


TEXT = "Traceback (most recent call last): " + "x" * 3965  # a stack trace
FLOODS = {
    # what one 10 s interval may hold within TASKLENS_STATSD_MAX_EVENT_BYTES (4 MiB): ~900 such events
    "events": lambda flush: Batch("statsd", events=[Event(f"job {flush}-{i} failed", TEXT) for i in range(900)]),
    # a service check message is sent whole (one 64 KiB datagram)
    "service checks": lambda flush: Batch("statsd", service_checks=[
        ServiceCheck(f"db.up.{i}", 2, message="m" * 60_000) for i in range(60)]),
}


@pytest.mark.parametrize("kind", list(FLOODS))
def test_an_outage_buffers_at_most_the_byte_bound(kind: str) -> None:
    sink = make()
    newest = 0
    for flush in range(20):  # over three minutes of outage
        before = sum(len(p.body) for p in sink.pending())
        sink.hub.publish(FLOODS[kind](flush))
        sink.flush()
        newest = sum(len(p.body) for p in sink.pending()) - before if flush == 0 else newest
    held = sum(len(p.body) for p in sink.pending())
    limit = sink.config.datadog_buffer_bytes
    assert held <= limit + newest, f"{held / MIB:.0f} MiB buffered"  # the newest flush is always kept whole
    assert sink.status()["buffered_bytes"] == held
    assert sink.metrics.get("tasklens.exporter.points_dropped", exporter="datadog", reason="buffer_full") > 0
