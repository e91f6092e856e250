"""The push loop (remote_write, OTLP) when the wall clock steps back, as an NTP step or a VM clock
correction does: it once scheduled the next flush on the old wall-clock due time and flushed nothing
for an hour after a one-hour step back."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent.selfmetrics import SelfMetrics
from agent.sinks.push import Outcome, Payload, Pusher
from tests.sinks.stores import until


async def send(session: object, payload: Payload, timeout: float) -> Outcome:
    return Outcome("ok", status="204")


@pytest.mark.parametrize("step", [-3600.0, -5.0, -0.75, -0.15, 3600.0])
async def test_flushes_go_on_at_the_interval_after_the_wall_clock_steps(step: float) -> None:
    offset = [0.0]
    flushes: list[float] = []

    def flush() -> list[Payload]:
        flushes.append(time.monotonic())
        return [Payload(b"x", 1)]

    pusher = Pusher("test", SelfMetrics(), flush=flush, send=send, interval=0.5, max_points=1000,  # type: ignore[arg-type]
                    wall=lambda: time.time() + offset[0])
    stop = asyncio.Event()
    task = asyncio.create_task(pusher.run(stop, None))  # type: ignore[arg-type]
    try:
        await until(lambda: len(flushes) >= 2, 5, "two flushes before the step")
        offset[0] = step
        before = len(flushes)
        await until(lambda: len(flushes) >= before + 3, 5, "three flushes after the step, one per interval")
        gaps = [b - a for a, b in zip(flushes[before - 1:], flushes[before:])]
        # never an hour's wait, and never a tick flushed again (a step back of up to two intervals is
        # waited out: three intervals at most)
        assert all(0.25 < gap < 1.7 for gap in gaps), gaps
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
