"""Shared polling (`TASKLENS_QUEUE_POLL_SHARE`): a simulated service of SQS sidecars with distinct task
ids, read with the real client from moto's server, whose own request recording counts the
`GetQueueAttributes` calls that reached it."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from dataclasses import replace
from pathlib import Path

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Config, ConfigError, load
from agent.hub import Hub
from agent.identity import Identity
from agent.sinks.prometheus import PrometheusSink
from integrations.queues.source import QueueSource, shared_slot
from tests.integrations.queues.support import Clock, Exported, Server
from tests.support import free_port

pytestmark = pytest.mark.usefixtures("aws_env")

TASKS = 8
ROUNDS = 16
INTERVAL = 15.0


@pytest.fixture
def recording_moto(tmp_path: Path):
    """A private moto server that records every request it serves (moto's own recorder)."""
    binary = Path(sys.executable).with_name("moto_server")
    if not binary.exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    env = dict(os.environ, MOTO_RECORDER_FILEPATH=str(tmp_path / "recording"))
    server = Server([str(binary), "-H", "127.0.0.1", "-p", str(port)], port, env=env)
    server.start(60.0)
    yield port
    server.stop()


def moto_api(port: int, action: str) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/recorder/{action}", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.read().decode()


def get_queue_attributes_calls(port: int) -> int:
    """GetQueueAttributes requests moto served since the recording started (JSON or query protocol)."""
    calls = 0
    for line in moto_api(port, "download-recording").splitlines():
        entry = json.loads(line)
        target = {k.lower(): v for k, v in entry["headers"].items()}.get("x-amz-target", "")
        calls += target.endswith(".GetQueueAttributes") or "Action=GetQueueAttributes" in str(entry.get("body"))
    return calls


def service(config: Config, url: str, clock: Clock) -> list[tuple[QueueSource, Exported]]:
    """TASKS sidecars of one service: each its own hub (distinct task id) and Prometheus sink."""
    sidecars = []
    for i in range(TASKS):
        hub = Hub(Identity(service="worker", env="test", ecs_cluster="c1", task_id=f"{i:08x}-task-{i}"))
        sink = PrometheusSink(hub.metrics, hub.pull)
        hub.add_sink(sink)
        sidecars.append((QueueSource(config, hub, url, clock=clock), Exported(sink)))
    return sidecars


@pytest.mark.parametrize("share", [1, 4])
async def test_a_service_makes_one_call_in_share_per_interval(recording_moto: int, share: int, tmp_path: Path):
    port = recording_moto
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}")
    queue_url = sqs.create_queue(QueueName="orders")["QueueUrl"]
    for i in range(7):
        sqs.send_message(QueueUrl=queue_url, MessageBody=f"m{i}")
    clock = Clock()
    config = Config(queue_poll_interval=INTERVAL, queue_poll_share=share, scaling_smoothing_window=60.0)
    sidecars = service(config, f"sqs://orders?region=us-east-1&endpoint=http://127.0.0.1:{port}", clock)
    moto_api(port, "reset-recording")
    moto_api(port, "start-recording")
    for _ in range(ROUNDS):  # what each sidecar's run() loop does once per interval
        for source, exported in sidecars:
            await source.step()
            # never a gap: every interval shows the (possibly held) reading and, once the window has
            # history, the smoothed backlog the scaling policy needs
            assert exported.queue("orders")["depth"] == 7.0
        clock.advance(INTERVAL)
    moto_api(port, "stop-recording")
    for source, _ in sidecars:
        assert source.hub.metrics.get("tasklens.queue.poll_errors", queue="orders", reason="error") == 0
        samples = {s.name: s.value for s in source.backlog.samples(7.0, 0.0, None, clock(), (), 0.0)}
        assert samples["queue.backlog_smoothed"] == 7.0
        await source.probe.close()

    calls = get_queue_attributes_calls(port)
    polls = [int(s.hub.metrics.get("tasklens.queue.polls", queue="orders")) for s, _ in sidecars]
    skipped = [s.skipped for s, _ in sidecars]
    assert calls == sum(polls)  # every poll is exactly one billed call, and nothing else calls
    assert [p + k for p, k in zip(polls, skipped)] == [ROUNDS] * TASKS
    if share == 1:
        assert calls == TASKS * ROUNDS and not any(skipped)
    else:
        # each task: its first interval, then one in `share` (its phase from the task id)
        for source, _ in sidecars:
            phase = source.phase()
            expected = 1 + sum(1 for slot in range(1, ROUNDS) if (slot + phase) % share == 0)
            assert source.hub.metrics.get("tasklens.queue.polls", queue="orders") == expected
        assert TASKS * (ROUNDS // share) <= calls <= TASKS * (ROUNDS // share + 1), calls
        assert len({s.phase() for s, _ in sidecars}) > 1  # distinct task ids spread over the slots


async def test_a_failure_is_a_gap_and_then_polled_every_interval(moto_port: int, unique: str):
    clock = Clock()
    config = Config(queue_poll_interval=INTERVAL, queue_poll_share=4)
    [(source, exported)] = service(config, f"sqs://{unique}?region=us-east-1&endpoint=http://127.0.0.1:{moto_port}",
                                   clock)[:1]
    for _ in range(3):  # the queue does not exist yet: every interval polls, each a gap
        await source.step()
        assert exported.queue(unique) == {}
    assert source.skipped == 0
    assert source.hub.metrics.get("tasklens.queue.poll_errors", queue=unique, reason="not_found") == 3
    boto3.client("sqs", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{moto_port}").create_queue(
        QueueName=unique)
    await source.step()
    assert exported.queue(unique)["depth"] == 0.0
    for _ in range(8):
        await source.step()
    assert source.skipped == 6  # back to one interval in four
    await source.probe.close()


def test_the_share_is_validated_naming_the_variable():
    assert load({"TASKLENS_QUEUE_POLL_SHARE": "8"}).queue_poll_share == 8
    assert load({}).queue_poll_share == 1
    for bad in ("0", "-1", "1001", "1/8", "x", "2.5"):
        with pytest.raises(ConfigError, match="TASKLENS_QUEUE_POLL_SHARE"):
            load({"TASKLENS_QUEUE_POLL_SHARE": bad})


@settings(max_examples=200, deadline=None)
@given(share=st.integers(1, 1000), task_id=st.text(max_size=40), rounds=st.integers(1, 3000))
def test_every_task_polls_once_in_share_intervals(share: int, task_id: str, rounds: int):
    """Whatever the task id: its phase is one of the `share` slots and it polls exactly one interval in
    every `share` in a row, so a held reading is never more than share - 1 intervals old."""
    source = QueueSource(replace(Config(), queue_poll_share=share), Hub(Identity(service="worker", task_id=task_id)),
                         "redis://127.0.0.1:6379/0?list=q")
    phase = source.phase()
    assert 0 <= phase < share
    polled = [slot for slot in range(rounds) if shared_slot(slot, phase, share)]
    assert polled == list(range((share - phase) % share, rounds, share))
    assert len(polled) in (rounds // share, rounds // share + 1)
