"""A beanstalkd peer that keeps sending bytes and never a line end (another protocol that keeps talking).
The probe's blocking client waits for a line end with a timeout per read, not per reply: the poll's
thread (and its connection's lock) were held for ever, and every later poll and close parked one more
thread of the event loop's default executor, which other parts of the sidecar share (the StatsD stats,
the EMF sink, remote_write signing, the container stats, the profiler's scans). A poll that times out
now ends its thread's read, and a thread waits for the lock no longer than a poll may last. A peer that
sends fast (a line with no end, a huge body) is refused at the reply bound: a `bad_reply` at once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
import time

import pytest

from integrations.queues.beanstalkd import MAX_REPLY
from integrations.queues.source import QueueSource


class Trickle:
    """A TCP server that accepts and then sends one byte (never a line end) every 0.1 s."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                pass
            for conn in list(self.conns):
                try:
                    conn.send(b"x")
                except OSError:
                    self.conns.remove(conn)
            time.sleep(0.1)
        for conn in self.conns:
            conn.close()
        self.sock.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


async def test_a_peer_that_keeps_talking_never_holds_a_thread_past_the_poll(config, hub) -> None:
    loop = asyncio.get_running_loop()
    executor = concurrent.futures.ThreadPoolExecutor(4)  # the default is min(32, cpus + 4): 5 or 6 on a small task
    loop.set_default_executor(executor)
    server = Trickle()
    try:
        source = QueueSource(config, hub, f"beanstalk://127.0.0.1:{server.port}/tasklens_tube?timeout=0.5")
        for _ in range(3):
            started = time.monotonic()
            assert not await source.poll()
            assert time.monotonic() - started < 3.0  # the poll's timeout, and a close that does not wait
        await asyncio.sleep(1.0)
        assert not source.probe._lock.locked(), "a poll's thread still holds the connection after its timeout"
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 1), 3.0) == 1  # the executor is free
        assert hub.metrics.get("tasklens.queue.poll_errors", queue="tasklens_tube", reason="timeout") >= 1
    finally:
        await source._close()
        server.close()
        executor.shutdown(wait=False, cancel_futures=True)


FLOOD = 8 * 1024 * 1024  # the client held it all until the poll's timeout (bounded here: a test machine's memory)
HANDSHAKE = {b"use": b"USING tasklens_tube\r\n", b"watch": b"WATCHING 2\r\n", b"ignore": b"WATCHING 1\r\n"}


async def flooding_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: bytes) -> None:
    """Speaks beanstalkd's handshake, then answers `stats-tube` with `reply` and FLOOD bytes without a line
    end (the connection is kept open)."""
    try:
        while line := await reader.readline():
            command = line.split()[0]
            if command in HANDSHAKE:
                writer.write(HANDSHAKE[command])
                continue
            writer.write(reply)
            for _ in range(FLOOD // 65536):
                writer.write(b"x" * 65536)
                await writer.drain()
    except ConnectionError:  # the client hung up: what this test wants
        pass
    finally:
        writer.close()


@pytest.mark.parametrize("reply", [b"", b"OK 100000000\r\n"], ids=["line_without_end", "huge_body"])
async def test_a_reply_past_its_bound_is_a_bad_reply_at_once(config, hub, reply: bytes) -> None:
    server = await asyncio.start_server(lambda r, w: flooding_peer(r, w, reply), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    source = QueueSource(config, hub, f"beanstalk://127.0.0.1:{port}/tasklens_tube?timeout=10")
    try:
        started = time.monotonic()
        assert not await source.poll()
        assert time.monotonic() - started < 4.0, "the client read on until the poll's timeout"
        assert hub.metrics.get("tasklens.queue.poll_errors", queue="tasklens_tube", reason="bad_reply") == 1
        assert f"over {MAX_REPLY}" in source.status()["last_error"]
    finally:
        await source._close()
        server.close()
        await server.wait_closed()
