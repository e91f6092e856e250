"""The EMF loop after the wall clock steps back (an NTP step, a VM's clock corrected): it schedules on
wall-clock due times, and it waited out the whole step (an hour back: no record for an hour)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from agent.config import Config
from agent.hub import Hub
from agent.model import Batch, Sample
from agent.sinks.emf import EmfSink
from tests.sinks.stores import until
from tests.sinks.test_emf import TASK


@contextlib.asynccontextmanager
async def running_emf(offset: list[float]) -> AsyncIterator[io.StringIO]:
    """An EMF sink of one queue gauge, every 0.2 s, on a wall clock `offset[0]` away from the real one;
    its records as they are written."""
    config = replace(Config(), cloudwatch="emf", cloudwatch_interval=0.2)
    hub, out = Hub(TASK), io.StringIO()
    sink = EmfSink(config, hub, stream=out, wall=lambda: time.time() + offset[0])
    hub.add_sink(sink)
    hub.publish(Batch("queue:orders", [Sample("queue.depth", 3.0, tags=(("queue", "orders"),))], snapshot=True))
    stop = asyncio.Event()
    runner = asyncio.create_task(sink.run(stop))
    try:
        await until(lambda: len(out.getvalue().splitlines()) >= 2, 5, "two records")
        yield out
    finally:
        stop.set()
        await asyncio.wait_for(runner, 5)


async def test_records_go_on_at_the_interval_after_the_wall_clock_steps_back_an_hour() -> None:
    offset = [0.0]
    async with running_emf(offset) as out:
        offset[0] = -3600.0
        n = len(out.getvalue().splitlines())
        await until(lambda: len(out.getvalue().splitlines()) >= n + 3, 5, "three records after the step")


@pytest.mark.parametrize("step", [-0.06, -0.3])
async def test_a_step_back_of_up_to_two_intervals_writes_no_record_twice(step: float) -> None:
    """A record stamped as one already written adds a datapoint to that minute's SampleCount."""
    offset = [0.0]
    async with running_emf(offset) as out:
        offset[0] = step
        n = len(out.getvalue().splitlines())
        await until(lambda: len(out.getvalue().splitlines()) >= n + 4, 5, "four records after the step")
    stamps = [json.loads(line)["_aws"]["Timestamp"] for line in out.getvalue().splitlines()][:-1]  # the final one
    assert len(stamps) == len(set(stamps)), stamps
