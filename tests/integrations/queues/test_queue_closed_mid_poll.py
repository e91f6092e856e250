"""A connection the server closes (FIN) or resets (RST) while a poll waits for its answer is counted as
`connection` at once, for every broker with a long-lived connection: nats-py does not fail a pending
request when its connection closes, so the NATS poll waited out its whole timeout and was counted as
`timeout`.

The real brokers, behind a loopback proxy that holds their answers back while the test cuts the
connection (a load balancer's idle timeout, a broker restart, a network reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator

import aio_pika
import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from tests.integrations.queues.support import port_open
from integrations.queues.source import POLL_ERRORS, QueueSource

TIMEOUT = 10.0  # the poll's: a closed connection must fail well within it
PROMPT = 4.0  # generous on a shared 2-core machine, still far from TIMEOUT

UPSTREAM = {"redis": 6379, "rabbitmq": 5672, "nats": 4222}


class MidPollProxy:
    """Forwards loopback connections to a broker; `hold()` keeps the broker's answers back (and sets
    `asked` when the client sends a request meanwhile), `cut(reset)` closes every client connection."""

    def __init__(self, kind: str) -> None:
        self.kind, self.upstream = kind, UPSTREAM[kind]
        self.holding = False
        self.asked = asyncio.Event()
        self.clients: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self.clients.append(writer)
        try:
            await asyncio.gather(self._pipe(reader, up_writer, to_broker=True),
                                 self._pipe(up_reader, writer, to_broker=False))
        finally:
            up_writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, to_broker: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self.holding:
                    if to_broker:
                        self.asked.set()
                    else:
                        continue  # the answer never reaches the client
                writer.write(data)
                await writer.drain()
        writer.close()

    def hold(self) -> None:
        self.holding = True
        self.asked.clear()

    def cut(self, reset: bool) -> None:
        for writer in self.clients:
            sock = writer.get_extra_info("socket")
            if reset and sock is not None:  # linger 0: close sends RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self.clients.clear()

    async def close(self) -> None:
        self.cut(reset=False)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def proxy(request) -> AsyncIterator[MidPollProxy]:
    kind = request.param
    if not port_open(UPSTREAM[kind]):
        pytest.skip(f"{kind} is not running on 127.0.0.1:{UPSTREAM[kind]}")
    proxy = MidPollProxy(kind)
    yield proxy
    await proxy.close()


@contextlib.asynccontextmanager
async def queue_url(kind: str, port: int, unique: str) -> AsyncIterator[str]:
    """A URL of an existing (empty) queue of `kind`, through the proxy on `port`."""
    if kind == "redis":
        yield f"redis://127.0.0.1:{port}/0?list={unique}"
    elif kind == "rabbitmq":
        connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
        channel = await connection.channel()
        await channel.declare_queue(unique, auto_delete=False)
        try:
            yield f"amqp://guest:guest@127.0.0.1:{port}/?queue={unique}"
        finally:
            await channel.queue_delete(unique)
            await connection.close()
    else:
        nc = await nats.connect("nats://127.0.0.1:4222")
        js = nc.jetstream()
        stream = unique.replace("-", "_").upper()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        await js.add_consumer(stream, ConsumerConfig(durable_name="worker", ack_policy=AckPolicy.EXPLICIT))
        try:
            yield f"nats://127.0.0.1:{port}?stream={stream}&consumer=worker"
        finally:
            await js.delete_stream(stream)
            await nc.close()


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
@pytest.mark.parametrize("proxy", list(UPSTREAM), indirect=True)
async def test_connection_closed_during_a_poll_is_connection_at_once(config, hub, unique, proxy, reset):
    port = await proxy.start()
    async with queue_url(proxy.kind, port, unique) as url:
        source = QueueSource(config, hub, f"{url}&timeout={TIMEOUT:g}")
        try:
            assert await source.poll(), source.last_error  # connected: the next poll reuses the connection
            proxy.hold()
            poll = asyncio.ensure_future(source.poll())
            await asyncio.wait_for(proxy.asked.wait(), PROMPT)  # the poll's request is on its way
            started = time.monotonic()
            proxy.cut(reset)
            assert not await poll
            elapsed = time.monotonic() - started
            counted = {r: n for r in POLL_ERRORS
                       if (n := hub.metrics.get("tasklens.queue.poll_errors", queue=source.queue, reason=r))}
            assert counted == {"connection": 1}, (counted, source.last_error)
            assert elapsed < PROMPT, source.last_error
        finally:
            await source._close()
