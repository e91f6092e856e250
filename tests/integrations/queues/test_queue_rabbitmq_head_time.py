"""RabbitMQ's `head_message_timestamp` is the publisher's AMQP `timestamp`, any 64-bit number: only a plausible
time in seconds gives an age. A timestamp in milliseconds read as an age of 0, one of 0 or below as 56 years,
2**62 as 0; now each leaves out the age (logged), while depth, in-flight and consumers are still reported
(docs/queues.md, RabbitMQ). Messages are published with such timestamps through the real broker's
management API (AMQP clients refuse most of them)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid

import aiohttp
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent.redact import basic_auth
from integrations.queues.base import CLOCK_SKEW as SKEW
from integrations.queues.base import PLAUSIBLE_FROM as YEAR_2000
from integrations.queues.base import ProbeError
from integrations.queues.rabbitmq import head_age, reading_of_management
from integrations.queues.source import QueueSource
from tests.integrations.queues.support import eventually, port_open

AMQP = "amqp://guest:guest@127.0.0.1:5672/"
NOW = 1_796_626_113.0  # the tester's clock, 2026-12-08

pytestmark = pytest.mark.skipif(not port_open(5672), reason="RabbitMQ is not running on 127.0.0.1:5672")


@given(st.one_of(st.integers(-2**65, 2**65), st.integers(YEAR_2000 - 5, int(NOW) + SKEW + 5),
                 st.floats(allow_nan=False, allow_infinity=False),
                 st.floats(YEAR_2000 - 5.0, NOW + SKEW + 5.0)))
@example(int(NOW) * 1000)  # the tester's cases: milliseconds, 0, below 0, 2**62
@example(0)
@example(-5)
@example(2**62)
def test_a_finite_head_timestamp_is_an_age_only_when_it_is_a_time_in_seconds(stamp: int | float) -> None:
    """Any finite number a publisher sets: never an error (the depth stays), an age only for a time from
    2000 to a minute past the sidecar's clock, and then exactly what passed since (0 for one ahead)."""
    doc = {"messages_ready": 3, "messages_unacknowledged": 1, "consumers": 2, "head_message_timestamp": stamp}
    reading = reading_of_management(doc, NOW)
    assert (reading.depth, reading.in_flight, reading.consumers) == (3, 1, 2)
    if YEAR_2000 <= stamp <= NOW + SKEW:
        assert reading.oldest_age_seconds == max(0.0, NOW - stamp)
    else:
        assert reading.oldest_age_seconds is None


@given(st.one_of(st.just(math.nan), st.just(math.inf), st.just(-math.inf), st.text(), st.booleans(),
                 st.integers(10**309, 10**400), st.lists(st.integers(), max_size=2)))
def test_a_head_timestamp_that_is_no_finite_number_is_no_rabbitmq_answer(head: object) -> None:
    with pytest.raises(ProbeError) as raised:
        head_age(head, NOW)
    assert raised.value.reason == "bad_reply"


# timestamps a publisher may set, none of them a time in seconds
IMPLAUSIBLE = {"milliseconds": int(time.time()) * 1000, "zero": 0, "negative": -5, "2**62": 2**62,
               "2**64 - 1": 2**64 - 1, "an hour ahead": int(time.time()) + 3600, "1999": YEAR_2000 - 1}


async def test_a_publishers_implausible_timestamp_leaves_out_only_the_age(config, hub, exported, clock,
                                                                         rabbitmq_management, caplog):
    prefix = "tl-" + uuid.uuid4().hex[:8]
    stamps = {**IMPLAUSIBLE, "two minutes ago": int(time.time()) - 120}
    queues = {kind: f"{prefix}-{i}" for i, kind in enumerate(stamps)}
    sources = {kind: QueueSource(config, hub, f"{AMQP}?queue={queue}&management={rabbitmq_management}",
                                 clock=clock) for kind, queue in queues.items()}
    async with aiohttp.ClientSession(rabbitmq_management, headers={"Authorization": basic_auth("guest", "guest")}) as api:

        async def call(method: str, path: str, body: object = None) -> object:
            async with api.request(method, path, json=body) as response:
                assert response.status < 300, (method, path, response.status, await response.text())
                return await response.json() if method == "GET" else None

        async def head_shown(queue: str) -> bool:  # the API's statistics refresh every few seconds
            doc = await call("GET", f"/api/queues/%2F/{queue}?columns=messages_ready,head_message_timestamp")
            # both: the probe reads the totals too, which may come a refresh after the head's time
            assert isinstance(doc, dict) and doc.get("head_message_timestamp") is not None, (queue, doc)
            assert doc.get("messages_ready") == 3, (queue, doc)
            return True

        try:
            for kind, queue in queues.items():
                await call("PUT", f"/api/queues/%2F/{queue}", {"durable": False})
                for _ in range(3):  # the head and two more: the depth is 3 whatever the head's timestamp
                    await call("POST", "/api/exchanges/%2F/amq.default/publish",
                               {"properties": {"timestamp": stamps[kind]}, "routing_key": queue,
                                "payload": "x", "payload_encoding": "string"})
            await asyncio.gather(*(eventually(lambda q=queue: head_shown(q), timeout=30) for queue in queues.values()))
            with caplog.at_level(logging.WARNING, logger="tasklens"):
                for kind, source in sources.items():
                    assert await source.poll(), (kind, source.last_error)
            got = {kind: exported.queue(queue) for kind, queue in queues.items()}
            assert 120 <= got.pop("two minutes ago").pop("oldest_age_seconds") < 120 + 35
            for kind, values in got.items():
                assert values == {"depth": 3.0, "in_flight": 0.0, "consumers": 0.0}, (kind, values)
                assert f"queue {queues[kind]}: head_message_timestamp {stamps[kind]} is no time" in caplog.text, kind
            assert hub.metrics.total("tasklens.queue.poll_errors") == 0
            for kind, queue in queues.items():  # counted: a publisher's bug, not a failed poll
                assert hub.metrics.get("tasklens.queue.ages_unreadable", queue=queue) == (kind in IMPLAUSIBLE), kind
        finally:
            for source in sources.values():
                await source.probe.close()
            for queue in queues.values():
                await call("DELETE", f"/api/queues/%2F/{queue}")
