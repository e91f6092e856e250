"""URL parsing, the scheme registry, lazy imports and the source's loop: timeouts, backoff, shutdown."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import Config, ConfigError
from agent.hub import Hub
from agent.identity import Identity
from integrations.queues.base import Reading
from tests.support import Recorder
from tests.integrations.queues.support import eventually, port_open
from integrations.queues import describe_url, open_probe, read_once
from integrations.queues.source import MAX_BACKOFF, QueueSource

CLIENTS = ("aiobotocore", "botocore", "aio_pika", "aiormq", "redis", "nats", "greenstalk", "asyncpg")
ONE_OF_EACH = [
    "sqs://orders?region=eu-west-1",
    "amqp://guest:guest@127.0.0.1:5672/?queue=orders",
    "redis://127.0.0.1:6379/0?list=jobs",
    "nats://127.0.0.1:4222?stream=ORDERS&consumer=worker",
    "beanstalk://127.0.0.1:11300/jobs",
    "postgresql://postgres@127.0.0.1:5432/test?query=SELECT+1+AS+depth",
]


def test_describe_url_masks_the_password_and_resolves_defaults():
    config = Config(queue_poll_interval=20, queue_trend_window=600, queue_backlog_threshold=50)
    got = describe_url("amqp://app:hunter2@rabbit:5672/prod?queue=orders&management=http://rabbit:15672"
                       "&interval=30&threshold=500", config)
    assert got == {
        "url": "amqp://app:***@rabbit:5672/prod?queue=orders&management=http://rabbit:15672&interval=30&threshold=500",
        "queue": "orders",
        "queue_type": "rabbitmq",
        "reports": ["queue.depth", "queue.in_flight", "queue.consumers", "queue.oldest_age_seconds"],
        "interval_seconds": 30.0,
        "timeout_seconds": 10.0,
        "trend_window_seconds": 600.0,
        "backlog_threshold": 500.0,
        "client": "aio_pika",
    }


@pytest.mark.parametrize("url, queue, queue_type, reports", [
    ("sqs://orders?region=eu-west-1", "orders", "sqs", ["depth", "in_flight", "delayed"]),
    ("sqs://sqs.eu-west-1.amazonaws.com/123456789012/orders?cloudwatch_age=true", "orders", "sqs",
     ["depth", "in_flight", "delayed", "oldest_age_seconds"]),
    ("amqps://u:p@host/?queue=q1", "q1", "rabbitmq", ["depth", "consumers"]),
    ("redis://:pw@host:6379/2?list=jobs", "jobs", "redis", ["depth"]),
    ("redis://host?celery=celery", "celery", "redis", ["depth"]),
    ("rediss://host?rq=default", "default", "redis",
     ["depth", "in_flight", "delayed", "consumers", "oldest_age_seconds"]),
    ("redis://host?stream=events&group=g", "events", "redis_stream",
     ["depth", "in_flight", "consumers", "oldest_age_seconds"]),
    ("redis://host?stream=events", "events", "redis_stream", ["depth"]),
    ("nats://host?stream=ORDERS&consumer=w", "ORDERS", "nats",
     ["depth", "in_flight", "consumers", "oldest_age_seconds"]),
    ("beanstalkd://host", "default", "beanstalkd",
     ["depth", "in_flight", "delayed", "consumers", "oldest_age_seconds"]),
    ("postgres://h/app?query=SELECT+1+AS+depth", "app", "postgres",
     ["depth", "in_flight", "delayed", "consumers", "oldest_age_seconds"]),
    ("redis://host?list=jobs&name=emails", "emails", "redis", ["depth"]),
])
def test_url_forms(url, queue, queue_type, reports):
    got = describe_url(url)
    assert (got["queue"], got["queue_type"], got["reports"]) == (queue, queue_type, ["queue." + r for r in reports])


@pytest.mark.parametrize("url, message", [
    ("kafka://host/topic", "unknown queue URL scheme 'kafka'"),
    ("redis://host?list=a&lsit=b", "unknown parameter 'lsit'"),
    ("redis://host", "exactly one of ?list=, ?celery=, ?rq=, ?stream="),
    ("redis://host?list=a&group=g", "?group= goes with ?stream="),
    ("amqp://host/", "names the queue"),
    ("nats://host?stream=S", "names the stream and the durable consumer"),
    ("nats://host?stream=ORDERS.*&consumer=worker", "stream 'ORDERS.*': a NATS name has no"),
    ("nats://host?stream=%3E&consumer=worker", "stream '>': a NATS name has no"),
    ("nats://host?stream=ORDERS&consumer=my%20worker", "consumer 'my worker': a NATS name has no"),
    ("nats://host?stream=ORDERS&consumer=eu/worker", "consumer 'eu/worker': a NATS name has no"),
    ("sqs://", "an SQS URL names the queue"),
    ("amqp://host/?queue=caf%C3%A9", "add &management="),
    ("postgres://h/db", "exactly one of ?query=<SQL> or ?query_file=<path>"),
    ("postgres://h/db?query_file=/nonexistent/q.sql", "query_file='/nonexistent/q.sql'"),
    ("redis://host?list=a&interval=0", "interval='0': expected a number of seconds > 0"),
    ("redis://host?list=a&threshold=lots", "threshold='lots': expected a number"),
    ("redis://host:port?list=a", "not a valid URL"),
    ("sqs://q?cloudwatch_age=maybe", "cloudwatch_age='maybe': expected true or false"),
])
def test_bad_urls_say_what_is_wrong(url, message):
    with pytest.raises(ValueError) as info:
        describe_url(url)
    assert message in str(info.value)


def test_a_bad_url_stops_start_up_with_the_variable_named_and_the_password_masked(hub):
    with pytest.raises(ConfigError) as info:
        QueueSource(Config(), hub, "amqp://app:hunter2@rabbit/?queu=orders")
    text = str(info.value)
    assert text.startswith("TASKLENS_QUEUES: amqp://app:***@rabbit/?queu=orders: unknown parameter 'queu'")
    assert "hunter2" not in text


def test_a_missing_client_library_names_the_extra(hub, monkeypatch):
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as if `tasklens[postgres]` were not installed
    with pytest.raises(ValueError, match=r"pip install 'tasklens\[postgres\]'"):
        open_probe("postgres://h/db?query=SELECT+1+AS+depth")
    with pytest.raises(ConfigError):
        QueueSource(Config(), hub, "postgres://h/db?query=SELECT+1+AS+depth")
    assert "missing" in describe_url("postgres://h/db?query=SELECT+1+AS+depth")["client"]


def test_per_queue_overrides(hub):
    config = Config(queue_poll_interval=15, queue_trend_window=300, queue_backlog_threshold=100)
    default = QueueSource(config, hub, "redis://h?list=a")
    assert (default.interval, default.timeout, default.history.window, default.threshold) == (15, 10, 300, 100)
    custom = QueueSource(config, hub, "redis://h?list=a&interval=30&timeout=3&window=120&threshold=500")
    assert (custom.interval, custom.timeout, custom.history.window, custom.threshold) == (30, 3, 120, 500)


def test_clients_are_imported_only_for_the_schemes_in_use():
    script = f"""
import asyncio, json, sys
from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from integrations.queues.source import QueueSource
urls = {ONE_OF_EACH!r}
sources = [QueueSource(Config(), Hub(Identity(service="s")), u) for u in urls]
loaded = lambda: sorted(m for m in {CLIENTS!r} if m in sys.modules)
before = loaded()
asyncio.run(sources[2].poll())  # Redis only
print(json.dumps([before, loaded()]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    # botocore's own checks of the SQS URL's region and endpoint run at start (sqs.check): no client yet
    assert before == ["botocore"]
    assert after == ["botocore", "redis"]


def test_backoff_after_failures_with_jitter(hub):
    source = QueueSource(Config(queue_poll_interval=10), hub, "redis://h?list=a")
    for failures, factor in ((0, 1), (1, 1), (2, 2), (3, 4), (4, 8), (9, MAX_BACKOFF)):
        source.failures = failures
        delays = [source.next_delay() for _ in range(200)]
        assert 10 * factor * 0.9 <= min(delays) <= max(delays) <= 10 * factor * 1.1
        assert max(delays) - min(delays) > 10 * factor * 0.1  # really jittered


async def test_a_silent_broker_is_a_timeout_not_a_hang(config, hub, exported):
    async def silent(reader, writer):  # accepts the connection, never answers
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    source = QueueSource(config, hub, f"redis://127.0.0.1:{port}/0?list=jobs&timeout=0.3")
    started = time.monotonic()
    assert not await source.poll()
    assert time.monotonic() - started < 2.0
    assert hub.metrics.get("tasklens.queue.poll_errors", queue="jobs", reason="timeout") == 1
    assert exported.queue("jobs") == {}
    assert hub.metrics.get("tasklens.queue.poll_duration_seconds", queue="jobs") >= 0.3
    await source._close()
    server.close()


async def test_unreachable_broker_is_a_connection_error(config, hub, recorder):
    from tests.support import free_port

    source = QueueSource(config, hub, f"redis://127.0.0.1:{free_port()}/0?list=jobs")
    assert not await source.poll()
    assert hub.metrics.get("tasklens.queue.poll_errors", queue="jobs", reason="connection") == 1
    batch = recorder.last("queue:jobs")
    assert (batch.snapshot, batch.samples) == (True, [])  # an empty snapshot: the sinks drop the series
    status = source.status()
    assert status["consecutive_failures"] == 1 and status["values"] == {}
    assert status["last_error"].startswith("connection: ")


@pytest.mark.skipif(not port_open(6379), reason="Redis is not running on 127.0.0.1:6379")
async def test_password_never_reaches_logs_or_status(config, hub, caplog, unique):
    source = QueueSource(config, hub, f"redis://nobody:hunter2-secret@127.0.0.1:6379/0?list={unique}")
    assert not await source.poll()  # no such user: WRONGPASS
    assert hub.metrics.get("tasklens.queue.poll_errors", queue=unique, reason="auth") == 1
    assert "hunter2-secret" not in caplog.text
    assert "hunter2-secret" not in json.dumps(source.status())
    assert "redis://nobody:***@127.0.0.1:6379/0" in caplog.text
    await source._close()


@pytest.mark.skipif(not port_open(6379), reason="Redis is not running on 127.0.0.1:6379")
async def test_run_polls_until_stopped_then_closes(config, hub, unique):
    source = QueueSource(config, hub, f"redis://127.0.0.1:6379/0?list={unique}")
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop))

    async def polled_twice():
        return hub.metrics.get("tasklens.queue.polls", queue=unique) >= 2

    await eventually(polled_twice)
    assert source.probe._client is not None
    stop.set()
    await asyncio.wait_for(task, 2.0)  # does not sleep out the interval
    assert source.probe._client is None
    assert await read_once(f"redis://127.0.0.1:6379/0?list={unique}") is not None


@pytest.mark.parametrize("url, shown", [
    ("nats://s3cret-token@nats:4222?stream=S&consumer=c", "nats://***@nats:4222?stream=S&consumer=c"),
    ("nats://user:s3cret@nats:4222?stream=S&consumer=c", "nats://user:***@nats:4222?stream=S&consumer=c"),
    ("postgresql://app:s3cret@db/app?query=SELECT+1+AS+depth", "postgresql://app:***@db/app?query=SELECT+1+AS+depth"),
    ("redis://:s3cret@cache:6379/0?list=jobs", "redis://:***@cache:6379/0?list=jobs"),
    ("postgresql://app@db/app?password=s3cret&query=SELECT+1+AS+depth",  # asyncpg reads ?password= too
     "postgresql://app@db/app?password=***&query=SELECT+1+AS+depth"),
])
def test_every_form_of_secret_is_masked(url, shown):
    assert describe_url(url)["url"] == shown


def test_queue_sources_builds_one_per_url_and_refuses_duplicate_names(hub):
    from integrations.queues.source import queue_sources

    config = Config(queues=("redis://h?list=jobs", "beanstalk://h/jobs?name=bean-jobs", "sqs://orders"))
    assert [s.name for s in queue_sources(config, hub)] == ["queue:jobs", "queue:bean-jobs", "queue:orders"]
    with pytest.raises(ConfigError, match=r"redis://:\*\*\*@h\?list=jobs and beanstalk://h/jobs are both named "
                                          r"'jobs'; give one a name= parameter"):
        queue_sources(Config(queues=("redis://:pw@h?list=jobs", "beanstalk://h/jobs")), hub)


# -- what a broker or a query answers: any numbers, any types ----------------------------------------

class Scripted:
    """A probe answering the readings it is given, one per read."""

    def __init__(self, readings: list[Reading]) -> None:
        self.readings = list(readings)

    async def read(self) -> Reading:
        return self.readings.pop(0)

    async def close(self) -> None:
        pass


ANY_VALUE = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**6),
                      st.integers(2**53 - 3, 2**53 + 3), st.decimals(), st.integers(2**53 - 3, 2**53 + 3).map(Decimal),
                      st.sampled_from([10**400, -1, -0.0, 1e308, 1.7e308, 2.0**53, "12", "abc", True, b"1", [], {},
                                       Decimal("2.5"), Decimal("-0"), Decimal("sNaN")]))
READINGS = st.builds(Reading, depth=ANY_VALUE, in_flight=ANY_VALUE, delayed=ANY_VALUE, consumers=ANY_VALUE,
                     oldest_age_seconds=ANY_VALUE)
COUNTS = ("depth", "in_flight", "delayed", "consumers")


def exactly(value: object) -> Fraction | None:
    """The number `value` is, exactly; None for what is not a finite number (text, a bool, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    try:
        return Fraction(value)
    except (ValueError, OverflowError):
        return None


def valid(name: str, value: object) -> bool:
    """A count is a whole number from 0 to 2**53 (each one a float holds exactly), an age any number in that range."""
    if value is None:
        return True
    number = exactly(value)
    return number is not None and 0 <= number <= 2**53 and (name not in COUNTS or number.denominator == 1)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(READINGS, min_size=1, max_size=12))
def test_any_reading_is_published_whole_or_is_a_counted_gap(readings: list[Reading]) -> None:
    """Whatever a broker's API or a user's query answers (NaN, infinity, negative, huge, fractional, text): a
    poll never crashes; a reading with a count that is not a whole number from 0 to 2**53, or an age outside
    that range, is a gap counted as `bad_reply`; every count published is the one read, exactly (2**53 + 1 is
    not published as 2**53), every age the nearest float, and a trend only comes with a depth."""
    hub = Hub(Identity(service="worker"))
    recorder = Recorder()
    hub.add_sink(recorder)
    now = [1000.0]
    source = QueueSource(Config(queue_trend_window=4.0, queue_backlog_threshold=1.0), hub,
                         "redis://127.0.0.1:6379/0?list=jobs", clock=lambda: now[0])
    source.probe = Scripted(readings)
    bad = 0
    for reading in readings:
        fields = {f: getattr(reading, f) for f in (*COUNTS, "oldest_age_seconds")}
        ok = all(valid(name, value) for name, value in fields.items())
        assert asyncio.run(source.poll()) is ok
        bad += not ok
        published = recorder.last("queue:jobs").samples
        values = {s.name: s.value for s in published}
        assert all(math.isfinite(v) for v in values.values()), values  # type: ignore[arg-type]
        if ok:
            for name, value in fields.items():
                if value is not None:
                    got = values[f"queue.{name}"]
                    assert got == float(value) and (name not in COUNTS or Fraction(got) == exactly(value)), (name, value)
        if not ok or reading.depth is None:
            assert "queue.growth_rate" not in values and "queue.backing_up" not in values
        now[0] += 1.0
    assert hub.metrics.get("tasklens.queue.poll_errors", queue="jobs", reason="bad_reply") == bad
