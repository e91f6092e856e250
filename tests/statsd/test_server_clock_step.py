"""The StatsD receive loop when the wall clock steps back (an NTP step, a VM clock correction): it closed
intervals on wall-clock boundaries and, after a one-hour step back, waited for the old next boundary:
no StatsD interval was published for an hour (and so nothing reached any sink)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import pytest

from agent.config import load
from agent.hub import Hub
from agent.identity import Identity
from agent.selfmetrics import SelfMetrics
from agent.statsd.server import StatsdServer
from tests.support import Recorder, until

pytestmark = pytest.mark.usefixtures("every_receiver")


def send(port: int, line: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(line, ("127.0.0.1", port))


def published(recorder: Recorder, name: str) -> bool:
    return any(s.name == name for b in recorder.batches if b.source == "statsd" for s in b.samples)


@contextlib.asynccontextmanager
async def running_server(offset: list[float], sink: Recorder) -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A StatsD server with 1 s intervals, on a wall clock `offset[0]` away from the real one, publishing
    to `sink`: its UDP port, and the event that stops it."""
    config = load({"TASKLENS_STATSD_ADDR": "127.0.0.1:0", "TASKLENS_FLUSH_INTERVAL": "1"})
    hub = Hub(Identity(service="orders"), SelfMetrics())
    hub.add_sink(sink)
    server = StatsdServer(config, hub, wall=lambda: time.time() + offset[0])
    await server.start()
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    try:
        yield server.udp_addresses[0][1], stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("step", [-3600.0, -30.0])
async def test_intervals_close_at_the_interval_after_the_wall_clock_steps_back(step: float) -> None:
    offset = [0.0]
    recorder = Recorder()
    async with running_server(offset, recorder) as (port, _):
        send(port, b"before.step:1|c")
        await until(lambda: published(recorder, "before.step"), 5, "an interval before the step")
        offset[0] = step
        await asyncio.sleep(0.1)  # the loop sees the new time before the line arrives
        send(port, b"after.step:1|c")
        await until(lambda: published(recorder, "after.step"), 5, "an interval closed after the step")


@pytest.mark.parametrize("step", [-0.3, -1.5])
async def test_a_step_back_of_up_to_two_intervals_closes_no_interval_twice(step: float) -> None:
    """The boundary from now, after a step back of up to two intervals, is one already closed: a second
    interval of a fraction of a second would follow. Such a step is waited out."""
    offset = [0.0]
    closed: list[float] = []

    class Times(Recorder):
        def accept(self, batch):  # type: ignore[no-untyped-def]
            if batch.source == "statsd":
                closed.append(time.monotonic())
            super().accept(batch)

    async with running_server(offset, Times()) as (port, stop):
        async def steady() -> None:
            while not stop.is_set():
                send(port, b"steady:1|c")
                await asyncio.sleep(0.05)
        sender = asyncio.create_task(steady())
        try:
            await until(lambda: len(closed) >= 1, 5, "an interval before the step")
            await asyncio.sleep(0.05)
            offset[0] = step
            before = len(closed)
            await until(lambda: len(closed) >= before + 3, 8, "three intervals after the step")
            gaps = [b - a for a, b in zip(closed[before - 1:], closed[before:])]  # before the final one
            assert all(gap > 0.5 for gap in gaps), gaps
        finally:
            stop.set()
            await sender
