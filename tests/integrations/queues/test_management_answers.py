"""Odd answers of a RabbitMQ management API (`management=`): each is a `bad_reply` gap, never a value
on `/metrics` (docs/queues.md), and an answer is read up to 64 KiB, never whole. The management API
here is a local aiohttp server that answers what each test sets; no broker is needed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from integrations.queues.source import POLL_ERRORS, QueueSource

MIB = 1 << 20
QUEUE = b'{"messages_ready": 5, "messages_unacknowledged": 0, "consumers": 1, "head_message_timestamp": %s}'
ODD = {
    "head timestamp NaN": QUEUE % b"NaN",  # was an age of 0 (`max(0.0, now - nan)`)
    "head timestamp Infinity": QUEUE % b"Infinity",
    "head timestamp as text": QUEUE % b'"1700000000"',  # was read with float(): an age of years
    "head timestamp true": QUEUE % b"true",
    "head timestamp past any float": QUEUE % (b"1" + b"0" * 400),
    "nested past what a parser takes": b"[" * 100_000 + b"]" * 100_000,
    "not JSON": b"<html>502 Bad Gateway</html>",
    "64 MiB of whitespace before the object": b" " * (64 * MIB) + QUEUE % b"null",  # was read whole
}


@pytest.fixture
async def management() -> AsyncIterator[tuple[int, dict[str, bytes]]]:
    answer = {"body": QUEUE % b"null"}

    async def queue(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        body = answer["body"]
        try:
            for start in range(0, len(body), MIB):  # streamed, without a length: read until the cap
                await response.write(body[start:start + MIB])
        except ConnectionError:  # the client stopped reading
            pass
        return response

    app = web.Application()
    app.router.add_get("/api/queues/{vhost}/{queue}", queue)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield site._server.sockets[0].getsockname()[1], answer  # type: ignore[union-attr]
    await runner.cleanup()


@pytest.mark.parametrize("kind", list(ODD))
async def test_an_odd_management_answer_is_a_bad_reply_gap(config, hub, management, kind) -> None:
    port, answer = management
    source = QueueSource(config, hub, f"amqp://guest:guest@127.0.0.1:5672/?queue=tasklens_odd"
                                      f"&management=http://127.0.0.1:{port}")
    try:
        assert await source.poll()  # a well-formed answer first: the source works
        assert source.last_values["queue.depth"] == 5.0
        answer["body"] = ODD[kind]
        assert not await source.poll(), f"{kind}: reported {source.last_values}"
        counted = {r: n for r in POLL_ERRORS
                   if (n := hub.metrics.get("tasklens.queue.poll_errors", queue=source.queue, reason=r))}
        assert counted == {"bad_reply": 1}
    finally:
        await source._close()
