"""Broker outages against private Redis and NATS servers the tests start (the shared ones stay up):
the poll fails into a gap with a counted error, and the client reconnects when the broker is back."""

from __future__ import annotations

import asyncio

import nats
import pytest
import redis.asyncio

from tests.integrations.queues.support import Server, eventually, private_server
from integrations.queues.source import QueueSource


@pytest.fixture
def redis_server(tmp_path):
    # an append-only file, so that the queue survives the restart
    with private_server("redis-server", lambda binary, port: [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--appendonly", "yes",
            "--appendfsync", "always", "--save", ""]) as server:
        yield server


@pytest.fixture
def nats_server(tmp_path):
    with private_server("nats-server", lambda binary, port: [
            binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path)]) as server:
        yield server


async def outage(source: QueueSource, server: Server, exported, hub, want: dict[str, float],
                 moving: tuple[str, ...] = ()) -> None:
    """Run the source; stop the broker: a gap and counted errors; start it: the same values again.

    `moving` names values that change by themselves (an age): present, but not compared."""
    async def shows(expected):
        values = exported.queue(source.queue)
        assert {k: v for k, v in values.items() if k not in moving} == expected
        assert all(k in values for k in moving) or not expected
        return True

    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    try:
        await eventually(lambda: shows(want))
        await asyncio.to_thread(server.stop)
        await eventually(lambda: shows({}))

        async def counted():
            return sum(hub.metrics.get("tasklens.queue.poll_errors", queue=source.queue, reason=r)
                       for r in ("connection", "timeout")) >= 2
        await eventually(counted)
        await asyncio.to_thread(server.start)
        await eventually(lambda: shows(want), timeout=30)
        assert source.failures == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_redis_outage(config, hub, exported, redis_server):
    r = redis.asyncio.from_url(f"redis://127.0.0.1:{redis_server.port}/0")
    await r.rpush("jobs", *range(5))
    await r.aclose()
    source = QueueSource(config, hub, f"redis://127.0.0.1:{redis_server.port}/0?list=jobs&timeout=1")
    await outage(source, redis_server, exported, hub, {"depth": 5.0})


async def test_nats_outage(config, hub, exported, nats_server):
    url = f"nats://127.0.0.1:{nats_server.port}"
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="JOBS", subjects=["JOBS.>"])  # file storage: survives the restart
    await js.add_consumer("JOBS", durable_name="worker")
    for _ in range(6):
        await js.publish("JOBS.new", b"x")
    await nc.close()
    source = QueueSource(config, hub, f"{url}?stream=JOBS&consumer=worker&timeout=1")
    want = {"depth": 6.0, "in_flight": 0.0, "consumers": 1.0}
    await outage(source, nats_server, exported, hub, want, moving=("oldest_age_seconds",))
