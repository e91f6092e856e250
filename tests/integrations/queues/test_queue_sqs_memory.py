"""What a failed SQS poll leaves behind. The sidecar runs full collections rarely (agent/memory.py), so
the garbage in reference cycles that each failed poll leaves stays until one runs: with a new aiobotocore
session made at every reconnect (its service models, endpoint rules and credential chain, about 25,000
objects in cycles) a stalled endpoint grew the resident size by tens to hundreds of MiB between full
collections. The sessions are now shared and a reconnect makes only new clients."""

from __future__ import annotations

import asyncio
import gc

import aiohttp
import pytest

from integrations.queues.source import QueueSource

POLLS = 20
# objects in cycles one failed poll may leave (the exception, the request's and the client's own cycles):
# about 300 measured with a shared session, over 25,000 with a session per reconnect
MAX_GARBAGE_PER_POLL = 2_000


@pytest.fixture
async def stalled_port():
    """An endpoint that accepts and never answers (a stalled load balancer, a black-holed VPC endpoint)."""
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.mark.usefixtures("aws_env")
async def test_failed_polls_leave_little_garbage_and_no_open_client(config, hub, stalled_port):
    source = QueueSource(config, hub,
                         f"sqs://jobs?region=us-east-1&endpoint=http://127.0.0.1:{stalled_port}&timeout=0.2")
    for _ in range(2):  # the first polls load what is loaded once (modules, the session)
        assert not await source.poll()
    gc.collect()
    gc.disable()
    try:
        for _ in range(POLLS):
            assert not await source.poll()
        # every client of a failed poll was closed (garbage included: nothing has been collected yet)
        open_sessions = [o for o in gc.get_objects() if isinstance(o, aiohttp.ClientSession) and not o.closed]
        garbage = gc.collect()
    finally:
        gc.enable()
    assert hub.metrics.get("tasklens.queue.poll_errors", queue="jobs", reason="timeout") == POLLS + 2
    assert open_sessions == []
    assert garbage / POLLS < MAX_GARBAGE_PER_POLL, garbage
