"""SQS against moto's server mode on loopback, filled with boto3 and read with aiobotocore."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import boto3
import pytest

from tests.integrations.queues.support import check_drain, eventually
from integrations.queues.source import QueueSource

pytestmark = pytest.mark.usefixtures("aws_env")


def client(service: str, port: int):
    return boto3.client(service, region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}")


def fill(sqs, queue_url: str, ready: int, in_flight: int, delayed: int) -> None:
    for i in range(ready + in_flight):
        sqs.send_message(QueueUrl=queue_url, MessageBody=f"m{i}")
    for i in range(delayed):
        sqs.send_message(QueueUrl=queue_url, MessageBody=f"d{i}", DelaySeconds=900)
    taken = 0
    while taken < in_flight:  # received and not deleted: in flight for the visibility timeout
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=in_flight - taken, VisibilityTimeout=900)
        taken += len(got.get("Messages", []))


def put_age(port: int, queue: str, seconds: float, minutes_ago: int) -> None:
    """The datapoint CloudWatch would have (moto does not derive SQS metrics itself)."""
    client("cloudwatch", port).put_metric_data(Namespace="AWS/SQS", MetricData=[{
        "MetricName": "ApproximateAgeOfOldestMessage", "Dimensions": [{"Name": "QueueName", "Value": queue}],
        "Timestamp": datetime.now(timezone.utc) - timedelta(minutes=minutes_ago), "Value": seconds,
        "Unit": "Seconds"}])


async def test_ready_in_flight_and_delayed_by_name(config, hub, exported, moto_port, unique):
    sqs = client("sqs", moto_port)
    queue_url = sqs.create_queue(QueueName=unique)["QueueUrl"]
    fill(sqs, queue_url, ready=5, in_flight=2, delayed=3)
    source = QueueSource(config, hub, f"sqs://{unique}?region=us-east-1&endpoint=http://127.0.0.1:{moto_port}")
    assert await source.poll(), source.last_error
    assert exported.queue(unique) == {"depth": 5.0, "in_flight": 2.0, "delayed": 3.0}
    assert exported.labels("queue_depth", unique)["queue_type"] == "sqs"
    await source.probe.close()


async def test_by_queue_url(config, hub, exported, moto_port, unique):
    sqs = client("sqs", moto_port)
    queue_url = sqs.create_queue(QueueName=unique)["QueueUrl"]  # http://127.0.0.1:<port>/123456789012/<name>
    fill(sqs, queue_url, ready=4, in_flight=0, delayed=0)
    path = queue_url.split("/", 3)[3]
    source = QueueSource(config, hub, f"sqs://127.0.0.1:{moto_port}/{path}?endpoint=http://127.0.0.1:{moto_port}")
    assert source.queue == unique
    assert await source.poll(), source.last_error
    assert exported.queue(unique) == {"depth": 4.0, "in_flight": 0.0, "delayed": 0.0}
    await source.probe.close()


async def test_cloudwatch_oldest_age_when_asked(config, hub, exported, moto_port, unique):
    sqs = client("sqs", moto_port)
    sqs.create_queue(QueueName=unique)
    put_age(moto_port, unique, 420.0, minutes_ago=0)
    source = QueueSource(config, hub, f"sqs://{unique}?region=us-east-1&endpoint=http://127.0.0.1:{moto_port}"
                                      "&cloudwatch_age=true")
    assert await source.poll(), source.last_error
    assert exported.queue(unique) == {"depth": 0.0, "in_flight": 0.0, "delayed": 0.0, "oldest_age_seconds": 420.0}
    await source.probe.close()


async def test_cloudwatch_age_is_not_held_across_a_failed_poll(config, hub, exported, moto_port, unique):
    """The age is reused for a minute between polls, but not past a failure: the queue deleted and created
    again under its name is a new queue, whose age is not the old one's."""
    sqs = client("sqs", moto_port)
    queue_url = sqs.create_queue(QueueName=unique)["QueueUrl"]
    put_age(moto_port, unique, 420.0, minutes_ago=3)
    source = QueueSource(config, hub, f"sqs://{unique}?region=us-east-1&endpoint=http://127.0.0.1:{moto_port}"
                                      "&cloudwatch_age=true")
    assert await source.poll(), source.last_error
    assert exported.queue(unique)["oldest_age_seconds"] == 420.0
    sqs.delete_queue(QueueUrl=queue_url)
    assert not await source.poll()
    assert exported.queue(unique) == {}
    sqs.create_queue(QueueName=unique)
    put_age(moto_port, unique, 5.0, minutes_ago=0)
    assert await source.poll(), source.last_error
    assert exported.queue(unique) == {"depth": 0.0, "in_flight": 0.0, "delayed": 0.0, "oldest_age_seconds": 5.0}
    await source.probe.close()


async def test_missing_queue_is_not_found_and_a_gap(config, hub, exported, moto_port, unique):
    source = QueueSource(config, hub, f"sqs://{unique}?region=us-east-1&endpoint=http://127.0.0.1:{moto_port}")
    assert not await source.poll()
    assert exported.queue(unique) == {}
    assert hub.metrics.get("tasklens.queue.poll_errors", queue=unique, reason="not_found") == 1
    await source.probe.close()


async def test_drain_trend(config, hub, exported, moto_port, clock, unique):
    sqs = client("sqs", moto_port)
    queue_url = sqs.create_queue(QueueName=unique)["QueueUrl"]
    fill(sqs, queue_url, ready=20, in_flight=0, delayed=0)
    source = QueueSource(config, hub, f"sqs://{unique}?region=us-east-1&endpoint=http://127.0.0.1:{moto_port}",
                         clock=clock)

    async def take(n):  # what a worker does: receive, process, delete
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=n, VisibilityTimeout=900)["Messages"]
        assert len(got) == n
        sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])

    await check_drain(source, clock, exported, take, depth=20)
    await source.probe.close()


async def test_outage_is_a_gap_and_values_return(config, hub, exported, moto_factory, unique):
    server = moto_factory(None)
    server.start(60.0)
    sqs = client("sqs", server.port)

    def setup():
        fill(sqs, sqs.create_queue(QueueName=unique)["QueueUrl"], ready=3, in_flight=0, delayed=0)

    setup()
    source = QueueSource(config, hub, f"sqs://{unique}?region=us-east-1&endpoint=http://127.0.0.1:{server.port}")
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))
    try:
        await eventually(lambda: _equals(exported.queue(unique), {"depth": 3.0, "in_flight": 0.0, "delayed": 0.0}))
        await asyncio.to_thread(server.stop)
        await eventually(lambda: _equals(exported.queue(unique), {}))  # a gap, not zeros
        await eventually(lambda: _async(hub.metrics.get("tasklens.queue.poll_errors", queue=unique,
                                                         reason="connection") >= 1))
        await asyncio.to_thread(server.start, 60.0)  # moto forgets everything: the queue comes back
        await asyncio.to_thread(setup)
        await eventually(lambda: _equals(exported.queue(unique), {"depth": 3.0, "in_flight": 0.0, "delayed": 0.0}),
                         timeout=30)
        assert source.status()["last_error"] is None
    finally:
        stop.set()
        await task


async def _equals(got, want):
    assert got == want
    return True


async def _async(value):
    return value


@pytest.mark.parametrize("url, expected", [
    ("sqs://orders?region=eu-west-1", ("orders", None, "eu-west-1")),
    ("sqs://orders.fifo", ("orders.fifo", None, "us-east-1")),
    ("sqs://sqs.eu-west-1.amazonaws.com/123456789012/orders",
     ("orders", "https://sqs.eu-west-1.amazonaws.com/123456789012/orders", "eu-west-1")),
    ("sqs://eu-central-1.queue.amazonaws.com/123456789012/jobs",
     ("jobs", "https://eu-central-1.queue.amazonaws.com/123456789012/jobs", "eu-central-1")),
    ("sqs://sqs.cn-north-1.amazonaws.com.cn/123456789012/jobs",
     ("jobs", "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/jobs", "cn-north-1")),
    ("sqs://localhost:4566/000000000000/jobs?endpoint=http://localhost:4566&region=eu-west-1",
     ("jobs", "http://localhost:4566/000000000000/jobs", "eu-west-1")),
])
def test_location(url, expected, monkeypatch):
    from integrations.queues.base import parse_queue_url
    from integrations.queues.sqs import BROKER, location

    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert location(parse_queue_url(url, BROKER.params)) == expected


@pytest.mark.parametrize("host, region", [
    ("sqs.eu-west-1.amazonaws.com", "eu-west-1"), ("eu-central-1.queue.amazonaws.com", "eu-central-1"),
    ("sqs-fips.us-gov-west-1.amazonaws.com", "us-gov-west-1"), ("sqs.cn-north-1.amazonaws.com.cn", "cn-north-1"),
    ("vpce-0a1b2c3d4e5f-abcd1234.sqs.ap-southeast-4.vpce.amazonaws.com", "ap-southeast-4"),
    ("sqs.il-central-1.api.aws", "il-central-1"), ("SQS.EU-WEST-3.AMAZONAWS.COM", "eu-west-3"),
    ("localhost", None), ("queue.amazonaws.com", None), ("127.0.0.1", None), ("sqs.example-1", None),
])
def test_region_of_any_sqs_host(host, region):
    from integrations.queues.sqs import region_of_host

    assert region_of_host(host) == region


def test_without_a_region_the_tasks_is_used(monkeypatch):
    """ECS sets AWS_REGION in a task: a queue by name, or a URL whose host names no region, is the
    task's region's, not us-east-1's (where it would be a `not_found` gap for ever)."""
    from integrations.queues.base import parse_queue_url
    from integrations.queues.sqs import BROKER, location

    monkeypatch.setenv("AWS_REGION", "eu-north-1")
    assert location(parse_queue_url("sqs://orders", BROKER.params)) == ("orders", None, "eu-north-1")
    assert location(parse_queue_url("sqs://localhost:4566/000000000000/jobs", BROKER.params))[2] == "eu-north-1"
    assert location(parse_queue_url("sqs://orders?region=eu-west-1", BROKER.params))[2] == "eu-west-1"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "sa-east-1")
    assert location(parse_queue_url("sqs://orders", BROKER.params))[2] == "sa-east-1"
