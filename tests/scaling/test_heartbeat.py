"""The task heartbeat carries the task's identity as soon as the first ECS poll has it: republished
at the change, not a period (60 s) later under the pre-poll identity (host name as service, no cluster)."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from agent.scaling.heartbeat import Heartbeat
from agent.sinks.prometheus import PrometheusSink
from agent.sources.ecs import EcsSource
from tests.sources.ecs_helpers import MetadataServer, load
from tests.support import until


def heartbeat_labels(sink: PrometheusSink) -> list[dict[str, str]]:
    text = sink.render().decode()
    return [s.labels for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "tasklens_scaling_task_heartbeat"]


async def test_the_heartbeat_has_the_ecs_identity_right_after_the_first_poll() -> None:
    hub = Hub(Identity(service="ip-10-0-0-1"))  # before the first poll: what the configuration says
    prometheus = PrometheusSink(hub.metrics)
    hub.add_sink(prometheus)
    heartbeat = Heartbeat(hub)  # the default period, 60 s: nothing but the change can republish it
    metadata = MetadataServer()
    metadata.serve(load("fargate-2023.task"), load("fargate-2023.stats"))
    await metadata.start()
    source = EcsSource(Config(service=""), hub, metadata.url)
    stop = asyncio.Event()
    running = asyncio.create_task(heartbeat.run(stop))
    try:
        await until(lambda: heartbeat.beats == 1, what="the first beat")
        assert heartbeat_labels(prometheus) == [{"service": "ip-10-0-0-1"}]
        assert await source.poll_once()
        identity = hub.identity
        assert identity.ecs_cluster == "akira-fargate-check-cluster" and identity.service != "ip-10-0-0-1"
        [labels] = heartbeat_labels(prometheus)
        assert labels["ecs_cluster"] == identity.ecs_cluster and labels["service"] == identity.service
        assert labels["task_id"] == identity.task_id and heartbeat.beats == 2
        assert await source.poll_once()  # the same identity again: no extra beat
        assert heartbeat.beats == 2
    finally:
        stop.set()
        await running
        await source.aclose()
        await metadata.stop()
