"""A "Redis" that answers with more than any poll needs: a bulk string of 100 MB, an array of millions of
elements, a line with no end. Each poll read it all and kept it (100 MB more per poll, not given back at
its timeout). Now a reply is refused at `MAX_REPLY` bytes as it is read: a `bad_reply` at once, and the
memory stays where it was. The real Redis's answers to every kind of key pass (tests/.../test_queue_redis.py)."""

from __future__ import annotations

import asyncio
import time

import psutil
import pytest

from integrations.queues.redis import MAX_REPLY
from integrations.queues.source import QueueSource

FLOOD = 64 * 1024 * 1024  # what the peer sends after its reply's head, at most (a test machine's memory)


async def read_command(reader: asyncio.StreamReader) -> list[bytes]:
    """One command as a client sends it: `*<n>` and n bulk strings."""
    count = int((await reader.readuntil(b"\r\n"))[1:-2])
    args = []
    for _ in range(count):
        size = int((await reader.readuntil(b"\r\n"))[1:-2])
        args.append((await reader.readexactly(size + 2))[:-2])
    return args


def flooding_redis(head: bytes, unit: bytes, hello: bool):
    """Answers the first command with `head`, then `unit` over and over, FLOOD bytes at most. Without
    `hello`, a `HELLO` is refused as an unknown command first, as Redis before 6 and some proxies do
    (redis-py then falls back to RESP2, with a parser of its own)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (await read_command(reader))[0].upper() == b"HELLO" and not hello:
                writer.write(b"-ERR unknown command 'HELLO'\r\n")
            writer.write(head)
            chunk = unit * max(1, 65536 // len(unit))
            for _ in range(FLOOD // len(chunk)):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):  # the client hung up: what this test wants
            pass
        finally:
            writer.close()
    return handle


@pytest.mark.parametrize("head, unit", [
    (b"$100000000\r\n", b"x"),  # a bulk string of 100 MB
    (b"*100000000\r\n", b":1\r\n"),  # an array of 100 million numbers
    (b"*3\r\n$" + str(MAX_REPLY).encode() + b"\r\n", b"y"),  # each element within the bound, not the sum
], ids=["bulk", "array", "elements"])
@pytest.mark.parametrize("hello", [True, False], ids=["hello", "no_hello"])
async def test_a_reply_past_its_bound_is_a_bad_reply_at_once(config, hub, head: bytes, unit: bytes, hello: bool) -> None:
    server = await asyncio.start_server(flooding_redis(head, unit, hello), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    source = QueueSource(config, hub, f"redis://127.0.0.1:{port}/0?list=jobs&timeout=30")
    rss = psutil.Process().memory_info().rss
    try:
        for _ in range(3):
            started = time.monotonic()
            assert not await source.poll()
            assert time.monotonic() - started < 10.0, "the client read on until the poll's timeout"
        assert hub.metrics.get("tasklens.queue.poll_errors", queue="jobs", reason="bad_reply") == 3
        assert f"over {MAX_REPLY}" in source.status()["last_error"]
        assert psutil.Process().memory_info().rss - rss < 3 * MAX_REPLY + 32 * 2**20
    finally:
        await source._close()
        server.close()
        await server.wait_closed()
