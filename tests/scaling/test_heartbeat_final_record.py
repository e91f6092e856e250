"""The heartbeat count ("SampleCount over one minute is the number of running tasks", docs/scaling.md)
and the EMF sink's final record on SIGTERM.

agent/sinks/emf.py promises "`_aws.Timestamp`: set explicitly to the middle of the interval the values
describe, so that a 60-second record lands inside the minute it covers", and docs/scaling.md: "The EMF
sink should stamp each record with a time inside the minute it covers". A task stopped within 30 s
after a regular record got a final record stamped `stop - 30 s`: back inside the minute the regular
record already covered, so CloudWatch counted that task's heartbeat twice in that minute (in a scale-in
or a deployment, every task stopped in the first half of a minute). The final record is now stamped at
the middle of what it covers: from the last record to the stop."""

from __future__ import annotations

import asyncio
import io
import json
import math
import time
from dataclasses import replace

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from agent.scaling.heartbeat import Heartbeat
from agent.sinks.emf import EmfSink

TASK = Identity(service="orders-worker", ecs_cluster="prod", task_id="4f1c2d3e")


async def test_a_task_stopped_just_after_a_record_sends_one_heartbeat_per_minute() -> None:
    # a wall clock 0.3 s before a flush tick (each minute's tick is at :01, the record covering the minute before)
    aligned = math.floor(time.time() / 60) * 60 + 60 * 1000
    shift = (aligned + 1.0 - 0.3) - time.time()
    wall = lambda: time.time() + shift  # noqa: E731

    config = replace(Config(), cloudwatch="emf")
    hub = Hub(TASK)
    out = io.StringIO()
    sink = EmfSink(config, hub, stream=out, wall=wall)
    hub.add_sink(sink)
    Heartbeat(hub).beat()

    stop = asyncio.Event()
    runner = asyncio.create_task(sink.run(stop))
    deadline = time.monotonic() + 5
    while not out.getvalue() and time.monotonic() < deadline:  # the regular record at the tick
        await asyncio.sleep(0.02)
    assert out.getvalue(), "no regular record"
    await asyncio.sleep(0.3)
    stop.set()  # SIGTERM about 0.6 s after the tick: the task stops in the minute after the record's
    await asyncio.wait_for(runner, 5)

    stamps = [d["_aws"]["Timestamp"] for d in map(json.loads, out.getvalue().splitlines())
              if "tasklens_scaling_task_heartbeat" in d]
    assert len(stamps) == 2, stamps  # the regular record and the final one
    minutes = [s // 60_000 for s in stamps]
    # CloudWatch's SampleCount per minute: this one task must count 1 in each minute, never 2
    assert len(set(minutes)) == len(minutes), f"both heartbeats land in minute {minutes[0]}: the task counts twice"
