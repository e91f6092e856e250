"""RabbitMQ on 127.0.0.1:5672 (guest/guest): AMQP passive declare, and the management API."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import aio_pika
import pytest

from agent.config import ConfigError
from tests.integrations.queues.support import check_drain, eventually, port_open
from integrations.queues.source import QueueSource

AMQP = "amqp://guest:guest@127.0.0.1:5672/"

pytestmark = pytest.mark.skipif(not port_open(5672), reason="RabbitMQ is not running on 127.0.0.1:5672")


@pytest.fixture
async def channel(unique):
    connection = await aio_pika.connect(AMQP)
    ch = await connection.channel()
    ch.test_connection = connection
    yield ch
    await connection.close()
    cleanup = await aio_pika.connect(AMQP)
    await (await cleanup.channel()).queue_delete(unique)
    await cleanup.close()


async def fill(channel, queue_name: str, ready: int, unacked: int, enqueued_at: datetime | None = None):
    """Publish ready + unacked messages, then let a consumer (prefetch = unacked) hold `unacked` of them."""
    await channel.declare_queue(queue_name)
    for i in range(ready + unacked):
        await channel.default_exchange.publish(
            aio_pika.Message(f"m{i}".encode(), timestamp=enqueued_at), routing_key=queue_name)
    consumer_channel = await channel.test_connection.channel()
    await consumer_channel.set_qos(prefetch_count=unacked)
    held = []
    consumer_queue = await consumer_channel.get_queue(queue_name)
    async def hold(message):
        held.append(message)

    await consumer_queue.consume(hold, no_ack=False)
    await eventually(lambda: _true(len(held) == unacked))
    return held


async def _true(value):
    return value


async def test_amqp_passive_declare_reports_ready_and_consumers(config, hub, exported, channel, clock, unique):
    await fill(channel, unique, ready=5, unacked=2)
    source = QueueSource(config, hub, f"{AMQP}?queue={unique}", clock=clock)
    assert await source.poll(), source.last_error
    # AMQP knows nothing about unacked messages or age: those are left out, not 0
    assert exported.queue(unique) == {"depth": 5.0, "consumers": 1.0}
    assert exported.labels("queue_depth", unique)["queue_type"] == "rabbitmq"
    await source.probe.close()


async def test_management_api_adds_unacked_and_age(config, hub, exported, channel, clock, unique,
                                                    rabbitmq_management):
    two_minutes_ago = datetime.fromtimestamp(int(time.time()) - 120, timezone.utc)
    await fill(channel, unique, ready=5, unacked=2, enqueued_at=two_minutes_ago)
    source = QueueSource(config, hub, f"{AMQP}%2F?queue={unique}&management={rabbitmq_management}", clock=clock)

    async def complete():  # the API's numbers refresh every few seconds, the head's timestamp with them or later
        assert await source.poll(), source.last_error
        values = exported.queue(unique)
        assert values.get("depth") == 5.0 and values.get("in_flight") == 2.0, values
        assert "oldest_age_seconds" in values, values
        return values

    values = await eventually(complete, timeout=30)
    age = values.pop("oldest_age_seconds")
    assert values == {"depth": 5.0, "in_flight": 2.0, "consumers": 1.0}
    assert 120 <= age < 120 + 35
    await source.probe.close()


async def test_missing_queue_is_not_found(config, hub, exported, clock, unique, rabbitmq_management):
    for url in (f"{AMQP}?queue={unique}", f"{AMQP}?queue={unique}&management={rabbitmq_management}"):
        source = QueueSource(config, hub, url, clock=clock)
        assert not await source.poll()
        assert exported.queue(unique) == {}
        await source.probe.close()
    assert hub.metrics.get("tasklens.queue.poll_errors", queue=unique, reason="not_found") == 2


async def test_wrong_password_is_auth_and_masked(config, hub, clock, unique, rabbitmq_management, caplog):
    source = QueueSource(config, hub, f"amqp://guest:s3cret-pw@127.0.0.1:5672/?queue={unique}"
                                      f"&management={rabbitmq_management}", clock=clock)
    assert not await source.poll()
    assert hub.metrics.get("tasklens.queue.poll_errors", queue=unique, reason="auth") == 1
    assert "s3cret-pw" not in caplog.text and "s3cret-pw" not in str(source.status())
    assert "amqp://guest:***@127.0.0.1:5672/" in caplog.text
    await source.probe.close()


async def test_drain_trend(config, hub, exported, channel, clock, unique):
    queue = await channel.declare_queue(unique)
    for _ in range(20):
        await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=unique)
    source = QueueSource(config, hub, f"{AMQP}?queue={unique}", clock=clock)

    async def take(n):
        for _ in range(n):
            message = await queue.get(no_ack=False)
            await message.ack()

    await check_drain(source, clock, exported, take, depth=20)
    await source.probe.close()


def test_management_endpoint_and_credentials():
    from integrations.queues.base import parse_queue_url
    from integrations.queues.rabbitmq import BROKER, management_endpoint

    def endpoint(url):
        return management_endpoint(parse_queue_url(url, BROKER.params))

    columns = "?columns=messages_ready,messages_unacknowledged,consumers,head_message_timestamp"
    # the management URL's own credentials win and stay out of the request URL
    assert endpoint("amqp://app:pw@h/?queue=q&management=http://mon:s3cr@[::1]:15672/") == (
        "http://[::1]:15672/api/queues/%2F/q" + columns, ("mon", "s3cr"))
    # else the AMQP URL's, percent-decoded; the vhost and queue are encoded into the path
    assert endpoint("amqps://app:p%21w@h/prod?queue=my%20q&management=https://rabbit.example.com/mgmt/") == (
        "https://rabbit.example.com/mgmt/api/queues/prod/my%20q" + columns, ("app", "p!w"))
    assert endpoint("amqp://h?queue=q&management=http://h:15672")[1] == ("guest", "guest")


def test_management_reading():
    from integrations.queues.rabbitmq import reading_of_management

    now = 1_714_564_800.0  # 2024-05-01T12:00:00Z
    doc = {"messages_ready": 4, "messages_unacknowledged": 1, "consumers": 2, "head_message_timestamp": 1_714_564_710}
    got = reading_of_management(doc, now=now)
    assert (got.depth, got.in_flight, got.consumers, got.oldest_age_seconds, got.delayed) == (4, 1, 2, 90.0, None)
    # no timestamp property on the messages: age unknown; an empty queue: age 0
    assert reading_of_management({**doc, "head_message_timestamp": None}, now).oldest_age_seconds is None
    empty = {"messages_ready": 0, "messages_unacknowledged": 0, "consumers": 1, "head_message_timestamp": None}
    assert reading_of_management(empty, now).oldest_age_seconds == 0.0


async def test_management_password_is_masked_everywhere(config, hub, clock, unique, caplog):
    source = QueueSource(config, hub, f"{AMQP}?queue={unique}&management=http://guest:mgmt-s3cret@127.0.0.1:1/",
                         clock=clock)
    assert not await source.poll()  # nothing listens on port 1
    assert "mgmt-s3cret" not in caplog.text + str(source.status())
    # `guest` is the AMQP URL's password (AMQP): masked wherever it occurs, the user name too
    assert "management=http://***:***@127.0.0.1:1/" in source.status()["url"]
    await source.probe.close()


async def test_password_from_another_variable(config, hub, exported, channel, clock, unique, monkeypatch,
                                              rabbitmq_management):
    await channel.declare_queue(unique)
    monkeypatch.setenv("TL_TEST_RABBIT_PASSWORD", "guest")  # as an ECS secret would inject it
    for url in (f"amqp://guest@127.0.0.1:5672/?queue={unique}&password_env=TL_TEST_RABBIT_PASSWORD",
                f"amqp://guest@127.0.0.1:5672/?queue={unique}&password_env=TL_TEST_RABBIT_PASSWORD"
                f"&management={rabbitmq_management}"):
        source = QueueSource(config, hub, url, clock=clock)
        await eventually(source.poll, timeout=30)  # a new queue has no management statistics for a moment
        assert exported.queue(unique)["depth"] == 0.0
        await source.probe.close()
    monkeypatch.setenv("TL_TEST_RABBIT_PASSWORD", "wrong-pw")
    source = QueueSource(config, hub, f"amqp://guest@127.0.0.1:5672/?queue={unique}"
                                      "&password_env=TL_TEST_RABBIT_PASSWORD", clock=clock)
    assert not await source.poll()
    assert hub.metrics.get("tasklens.queue.poll_errors", queue=unique, reason="auth") == 1
    assert "wrong-pw" not in str(source.status())
    await source.probe.close()
    monkeypatch.delenv("TL_TEST_RABBIT_PASSWORD")
    with pytest.raises(ConfigError, match="password_env='TL_TEST_RABBIT_PASSWORD': that variable is not set"):
        QueueSource(config, hub, f"amqp://guest@127.0.0.1:5672/?queue={unique}&password_env=TL_TEST_RABBIT_PASSWORD")
