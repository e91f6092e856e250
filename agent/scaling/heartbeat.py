"""The task heartbeat: `tasklens.scaling.task_heartbeat` = 1, for CloudWatch to count running tasks.

Every sidecar publishes the same constant series; the EMF sink writes it once per wall-clock minute
(in the first record stamped in it, whatever `TASKLENS_CLOUDWATCH_INTERVAL`) with the dimensions
`ecs_cluster` and `service`, so CloudWatch's `SampleCount` of it over one minute is the number of
running tasks of the service: no Container Insights and no ECS API call (docs/scaling.md
has the arithmetic). In Prometheus, `count by (ecs_cluster, service) (tasklens_scaling_task_heartbeat)`
is the same count, exactly.

The sample is republished every `PERIOD` so that sinks with a time-to-live (Prometheus) keep it, and
at once when the task's identity changes, so that it never waits a period under the pre-poll identity
(the host name as service, no cluster) while every other series already has the task's.
With it go the policy's target and maximum task count when the configuration has them
(`TASKLENS_SCALING_TARGET`, `TASKLENS_SCALING_MAX_TASKS`, set by the Terraform module), so that
dashboards and the "scaled to max and still backing up" alert need nothing else.
"""

from __future__ import annotations

import asyncio

from agent.hub import Hub
from agent.model import Batch, Kind, Sample
from agent.scaling import HEARTBEAT, MAX_TASKS, TARGET

PERIOD = 60.0  # seconds; keeps it in sinks with a TTL (the EMF sink writes the latest value once a minute)


class Heartbeat:
    name = "scaling:heartbeat"

    def __init__(self, hub: Hub, period: float = PERIOD, target: float = 0.0, max_tasks: int = 0) -> None:
        self.hub = hub
        self.period = period
        self.samples = [Sample(HEARTBEAT, 1.0, Kind.GAUGE)]
        self.samples += [Sample(name, float(value), Kind.GAUGE) for name, value in ((TARGET, target),
                                                                                  (MAX_TASKS, max_tasks)) if value]
        self.beats = 0

    def beat(self) -> None:
        self.hub.publish(Batch(self.name, list(self.samples), snapshot=True))
        self.beats += 1

    async def run(self, stop: asyncio.Event) -> None:
        self.hub.on_identity_change(self.beat)
        while not stop.is_set():
            self.beat()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.period)
            except TimeoutError:
                pass

    def status(self) -> dict[str, int]:
        return {"beats": self.beats}
