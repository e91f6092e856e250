"""`queue_backlog_smoothed`, the scaling policy's metric, with a queue polled every minute or two
(docs/scaling.md offers `interval=60` as an alternative to poll sharing). With the default 60 s smoothing
window the metric vanished at `interval=` (or TASKLENS_QUEUE_POLL_INTERVAL) 60 s or more: a window held
one reading, which proves nothing. The window now holds at least 2.5 polls."""

from __future__ import annotations

import asyncio
import random

import pytest

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from integrations.queues.base import Reading
from integrations.queues.source import QueueSource
from tests.support import Recorder


class Steady:
    """A broker whose queue holds 500 messages, always."""

    async def read(self) -> Reading:
        return Reading(depth=500, in_flight=20)

    async def close(self) -> None:
        pass


def run_polls(url: str, config: Config, polls: int, seed: int = 7) -> list[dict[str, float]]:
    hub = Hub(Identity(service="worker"))
    recorder = Recorder()
    hub.add_sink(recorder)
    now = [1000.0]
    source = QueueSource(config, hub, url, clock=lambda: now[0])
    source.probe = Steady()
    random.seed(seed)
    out = []
    for _ in range(polls):
        asyncio.run(source.step())
        out.append({s.name: float(s.value) for s in recorder.last(source.name).samples})
        now[0] += source.next_delay()  # the source's own schedule: interval with its +-10 % jitter
    return out


@pytest.mark.parametrize("interval", [60, 90, 120])
def test_the_policys_metric_is_reported_with_a_queue_polled_every_minute_or_two(interval: int) -> None:
    polls = run_polls(f"sqs://orders?region=eu-west-1&interval={interval}", Config(), polls=30)
    missing = [i for i, p in enumerate(polls[2:], 2) if "queue.backlog_smoothed" not in p]
    # a steady 520-message backlog, polled successfully every time: the smoothed value is there
    assert not missing, f"queue_backlog_smoothed missing in {len(missing)} of {len(polls) - 2} successful polls"


def test_the_policys_metric_with_the_queue_poll_interval_setting() -> None:
    polls = run_polls("redis://127.0.0.1:6379/0?list=jobs", Config(queue_poll_interval=120), polls=20)
    assert all("queue.backlog_smoothed" in p for p in polls[2:]), "missing at TASKLENS_QUEUE_POLL_INTERVAL=120"
    assert polls[-1]["queue.backlog_smoothed"] == 520.0
