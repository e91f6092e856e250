"""Queue probes against what brokers and users may hand them: a stream whose entries are binary
(msgpack, protobuf: the probe only needs an entry's id, and a decoding client refused the rest), and
a PostgreSQL query that asyncpg itself refuses (`$1` without an argument: a `query` error, not a
`connection` one)."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest
import redis.asyncio

from integrations.queues.source import POLL_ERRORS, QueueSource
from tests.integrations.queues.support import port_open

REDIS = "redis://127.0.0.1:6379/0"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.mark.skipif(not port_open(6379), reason="Redis is not running on 127.0.0.1:6379")
@pytest.mark.parametrize("payload", [b"\x80\xffmsgpack\x00", b"\x00" * 64, "ünï".encode(), b""])
async def test_a_stream_group_whose_entries_are_binary_is_read(config, hub, payload: bytes) -> None:
    key = "tasklens_test_" + uuid.uuid4().hex[:10]
    client = redis.asyncio.from_url(REDIS)
    await client.xgroup_create(key, "workers", id="0", mkstream=True)
    await client.xadd(key, {"payload": payload, b"\xfe": b"\xff"})
    source = QueueSource(config, hub, f"{REDIS}?stream={key}&group=workers")
    try:
        assert await source.poll(), source.last_error  # was bad_reply: 'utf-8' codec can't decode byte 0x80
        assert source.last_values["queue.depth"] == 1.0
        assert 0.0 <= source.last_values["queue.oldest_age_seconds"] < 60.0
    finally:
        await source._close()
        await client.delete(key)
        await client.aclose()


@pytest.mark.skipif(not port_open(5432), reason="PostgreSQL is not running on 127.0.0.1:5432")
async def test_a_query_asyncpg_refuses_is_a_query_error(config, hub) -> None:
    source = QueueSource(config, hub, f"{POSTGRES}?name=tasklens_pg&query={quote('SELECT $1::int AS depth')}")
    try:
        assert not await source.poll()
        counted = {r: n for r in POLL_ERRORS if (n := hub.metrics.get("tasklens.queue.poll_errors",
                                                                      queue="tasklens_pg", reason=r))}
        assert counted == {"query": 1}, source.last_error
    finally:
        await source._close()
