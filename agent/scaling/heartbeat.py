"""The task heartbeat: `tasklens.scaling.task_heartbeat` = 1, for CloudWatch to count running tasks.

Every sidecar publishes the same constant series; the EMF sink writes it once per 60 s flush with
the dimensions `ecs_cluster` and `service`, so CloudWatch's `SampleCount` of it over one minute is the
number of running tasks of the service: no Container Insights and no ECS API call (docs/scaling.md
has the arithmetic). In Prometheus, `count by (ecs_cluster, service) (tasklens_scaling_task_heartbeat)`
is the same count, exactly.

The sample is republished every `PERIOD` so that sinks with a time-to-live (Prometheus) keep it.
"""

from __future__ import annotations

import asyncio

from agent.hub import Hub
from agent.model import Batch, Kind, Sample
from agent.scaling import HEARTBEAT

PERIOD = 60.0  # seconds; the EMF sink flushes every 60 s and takes the latest value


class Heartbeat:
    name = "scaling:heartbeat"

    def __init__(self, hub: Hub, period: float = PERIOD) -> None:
        self.hub = hub
        self.period = period
        self.beats = 0

    def beat(self) -> None:
        self.hub.publish(Batch(self.name, [Sample(HEARTBEAT, 1.0, Kind.GAUGE)], snapshot=True))
        self.beats += 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.beat()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.period)
            except TimeoutError:
                pass

    def status(self) -> dict[str, int]:
        return {"beats": self.beats}
