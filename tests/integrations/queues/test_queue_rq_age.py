"""RQ's head job with any `enqueued_at` (Redis on 127.0.0.1:6379): the age is the time it says when that is a
plausible enqueue time, else left out; the queue's other numbers are reported whatever it holds. One
unreadable `enqueued_at` ("not a date", an epoch number, bytes that are not UTF-8) used to fail the whole poll
(`bad_reply: Invalid isoformat string`), and depth, in-flight, consumers and the backlog were lost with it."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import redis.asyncio
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from integrations.queues.base import CLOCK_SKEW as SKEW
from integrations.queues.base import PLAUSIBLE_FROM as YEAR_2000
from integrations.queues.source import QueueSource
from tests.integrations.queues.support import port_open

REDIS = "redis://127.0.0.1:6379/0"

pytestmark = pytest.mark.skipif(not port_open(6379), reason="Redis is not running on 127.0.0.1:6379")


def rq_format(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # what RQ writes


# (what the head job's hash holds, the time it says when it is written as a time, else None)
OFFSETS = st.one_of(st.integers(-10**10, 10**10), st.integers(-120, 120),  # any time, or about now
                    st.integers(-3, 3).map(lambda s: YEAR_2000 + s - int(time.time())))  # about 2000
AS_TIMES = st.builds(lambda offset, micros, form: (form(offset, micros), offset),
                     OFFSETS, st.integers(0, 999_999),
                     st.sampled_from([lambda o, us: rq_format(_at(o, us)), lambda o, us: _at(o, us).isoformat(),
                                      lambda o, us: _at(o, us).replace(tzinfo=None).isoformat()]))
NOT_TIMES = st.one_of(st.binary(max_size=80), st.text(max_size=80).map(lambda s: s.encode()),
                      st.integers(-2**63, 2**63).map(lambda n: str(n).encode()),
                      st.floats(allow_nan=True).map(lambda f: str(f).encode()),
                      st.integers(1, 3 * 1024 * 1024).map(lambda n: b"2" * n))
VALUES = st.one_of(AS_TIMES, NOT_TIMES.map(lambda v: (v, None)))


def _at(offset: int, micros: int) -> datetime:
    """The time `offset` seconds from now, clamped to what a datetime holds."""
    now = datetime.now(timezone.utc)
    try:
        return now + timedelta(seconds=offset, microseconds=micros - now.microsecond)
    except OverflowError:
        return datetime.max.replace(tzinfo=timezone.utc) if offset > 0 else datetime.min.replace(tzinfo=timezone.utc)


@settings(max_examples=150, deadline=None)
@given(VALUES)
@example((b"not a date", None))  # the tester's cases: each failed the whole poll
@example((b"1714564800", None))
@example((b"\xff\xfe", None))
@example((b"1999-12-31T23:59:59Z", None))  # before 2000: no enqueue time of this queue
def test_any_enqueued_at_leaves_the_other_numbers_and_gives_a_plausible_age_or_none(value):
    asyncio.run(_poll_with_head(value))


async def _poll_with_head(value: tuple[bytes | str, int | None]) -> None:
    written, _ = value
    key = "tl-" + uuid.uuid4().hex[:10]
    head = f"{key}-head"
    r = redis.asyncio.from_url(REDIS)
    source = QueueSource(Config(), Hub(Identity(service="worker")), f"{REDIS}?rq={key}")
    try:
        await r.rpush(f"rq:queue:{key}", head, f"{key}-2", f"{key}-3")
        await r.hset(f"rq:job:{head}", "enqueued_at", written)
        stored = await r.hget(f"rq:job:{head}", "enqueued_at")
        t0 = time.time()
        assert await source.poll(), source.last_error
        t1 = time.time()
        values = dict(source.last_values)
        age = values.pop("queue.oldest_age_seconds", None)
        assert values == {"queue.depth": 3.0, "queue.in_flight": 0.0, "queue.delayed": 0.0,
                          "queue.consumers": 0.0}
        said = _said(stored)
        if said is None:
            event("no time")
            assert age is None, (stored[:80], age)
        elif said < YEAR_2000 or said > t1 + SKEW:
            event("a time that is no enqueue time")
            assert age is None, (stored[:80], age)
        elif said <= t0:
            event("a past time")
            assert age is not None and t0 - said - 0.01 <= age <= t1 - said + 0.01, (stored[:80], age)
        else:  # ahead of the sidecar's clock, within the skew: 0, or none on the bound
            event("within the skew")
            assert age in (0.0, None), (stored[:80], age)
    finally:
        await source.probe.close()
        await r.delete(f"rq:queue:{key}", f"rq:job:{head}")
        await r.aclose()


def _said(stored: bytes) -> float | None:
    """The time `stored` says as an ISO 8601 time (UTC without a zone, as RQ means it), else None: text
    that is not ASCII or is over 64 bytes (an ISO time takes 32 at most) is no time."""
    if len(stored) > 64 or not stored.isascii():
        return None
    text = stored.decode()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
        return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
    except (ValueError, OverflowError):
        return None


async def test_an_unreadable_head_time_keeps_depth_in_flight_consumers_and_backlog(config, hub, exported, unique):
    """The tester's case on a real queue: 3 jobs, the head's `enqueued_at` "not a date": every other number
    and the backlog per task are reported, only the age is left out; a readable time gives it back."""
    r = redis.asyncio.from_url(REDIS, decode_responses=True)
    source = QueueSource(config, hub, f"{REDIS}?rq={unique}")
    head = f"{unique}-a"
    try:
        await r.rpush(f"rq:queue:{unique}", head, f"{unique}-b", f"{unique}-c")
        for written in ("not a date", "1714564800", "1970-01-01T00:00:00Z", "2099-01-01T00:00:00Z",
                        "2024-05-01T12:00:00.123456Z" + " " * 60):  # over 64 bytes: only its length comes back
            await r.hset(f"rq:job:{head}", "enqueued_at", written)
            assert await source.poll(), (written, source.last_error)
            assert exported.queue(unique) == {"depth": 3.0, "in_flight": 0.0, "delayed": 0.0, "consumers": 0.0}
            assert any(s.name.startswith("queue_backlog") for s in exported.samples()
                       if s.labels.get("queue") == unique), written
        await r.hset(f"rq:job:{head}", "enqueued_at", rq_format(datetime.now(timezone.utc) - timedelta(minutes=10)))
        assert await source.poll(), source.last_error
        assert 600 <= exported.queue(unique)["oldest_age_seconds"] < 610
        assert hub.metrics.total("tasklens.queue.poll_errors") == 0
        assert hub.metrics.get("tasklens.queue.ages_unreadable", queue=unique) == 5  # one a poll of each bad time
    finally:
        await source.probe.close()
        await r.delete(f"rq:queue:{unique}", f"rq:job:{head}")
        await r.aclose()
