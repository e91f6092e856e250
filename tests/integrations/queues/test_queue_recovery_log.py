"""A broker that fails every other poll logs its recoveries once a minute, like its failures
(docs/queues.md: "Failures are logged at most once a minute per queue and reason")."""

from __future__ import annotations

import logging

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from integrations.queues.base import Reading
from integrations.queues.source import QueueSource


class Flapping:
    """A probe whose reads fail and succeed in turn."""

    def __init__(self) -> None:
        self.reads = 0

    async def read(self) -> Reading:
        self.reads += 1
        if self.reads % 2:
            raise ConnectionResetError("reset by the broker")
        return Reading(depth=3)

    async def close(self) -> None:
        pass


async def test_a_flapping_broker_logs_its_recoveries_once_a_minute(caplog) -> None:
    source = QueueSource(Config(), Hub(Identity(service="worker")), "redis://127.0.0.1:6379/0?list=jobs")
    source.probe = Flapping()
    with caplog.at_level(logging.INFO, logger="tasklens"):
        for _ in range(40):
            await source.poll()
    recovered = [r.getMessage() for r in caplog.records if "polled again" in r.getMessage()]
    failed = [r.getMessage() for r in caplog.records if "poll failed" in r.getMessage()]
    assert recovered == ["queue jobs: polled again after 1 failed polls"] and len(failed) == 1, caplog.text
    assert source.hub.metrics.get("tasklens.queue.poll_errors", queue="jobs", reason="connection") == 20
