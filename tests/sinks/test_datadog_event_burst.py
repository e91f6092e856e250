"""Events go one per request; sent in order with everything else, they went ahead of the metrics of
later flushes: a worker that sends more events than round trips fit in an interval delayed every metric
without bound (0.4, 1.8, 3.1, 4.7, 6.0, 7.3 s for the gauge below; they expire after an hour). Events
now go after everything else that waits.

docs/datadog.md: "Once per TASKLENS_FLUSH_INTERVAL ..., so a StatsD sample reaches Datadog within one
interval"; events are "`/api/v1/events`, one per request". Scaled down: a 1 s interval and an intake
that answers in 50 ms (20 requests an interval), 40 events an interval (with a 10 s interval and a
100 ms round trip to Datadog: 20 events a second, e.g. one per failed job during an incident).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from agent.model import Batch, Event, Kind, Sample
from tests.sinks.intake import Intake, start_intake
from tests.sinks.test_datadog import KEY, make


@pytest.fixture
async def intake() -> AsyncIterator[Intake]:
    async for running in start_intake(Intake(KEY)):
        yield running
        assert running.errors == [], running.errors


async def test_a_burst_of_events_does_not_hold_back_the_metrics(intake: Intake) -> None:
    intake.delay = 0.05  # each answer after 50 ms, as across a region
    sink, hub = make(intake, flush_interval=1.0, datadog_timeout=5.0)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    published: dict[float, float] = {}
    arrived: dict[float, float] = {}

    def look() -> None:
        for _, value, _, _, _ in intake.points("beat"):
            arrived.setdefault(value, time.monotonic())

    try:
        for i in range(6):
            hub.publish(Batch("statsd", [Sample("beat", float(i), Kind.GAUGE)],
                              events=[Event(f"job {i}-{j} failed", "boom") for j in range(40)]))
            published[float(i)] = time.monotonic()
            for _ in range(10):
                await asyncio.sleep(0.1)
                look()
        deadline = time.monotonic() + 30
        while len(arrived) < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            look()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    lags = {v: round(arrived[v] - published[v], 1) if v in arrived else None for v in published}
    # within one interval after it closes (two at most), whatever the events beside it
    assert all(lag is not None and lag <= 2.5 for lag in lags.values()), f"seconds from publish to intake: {lags}"
