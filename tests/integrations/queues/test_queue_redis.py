"""Redis lists (plain, Celery, RQ) and streams, against the Redis server on 127.0.0.1:6379."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import redis.asyncio
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from tests.integrations.queues.support import check_backing_up, check_drain, eventually, port_open
from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from integrations.queues.redis import MAX_WORKERS
from integrations.queues.source import QueueSource

REDIS = "redis://127.0.0.1:6379/0"

pytestmark = pytest.mark.skipif(not port_open(6379), reason="Redis is not running on 127.0.0.1:6379")


@pytest.fixture
async def r(unique):
    client = redis.asyncio.from_url(REDIS, decode_responses=True)
    yield client
    keys = await client.keys(f"*{unique}*")
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_plain_list_depth_with_task_tags(config, hub, exported, recorder, r, unique):
    await r.rpush(unique, *range(7))
    source = QueueSource(config, hub, f"{REDIS}?list={unique}")
    assert source.name == f"queue:{unique}"
    assert await source.poll()
    # a plain list has only its length: nothing else is reported, not even a 0
    assert exported.queue(unique) == {"depth": 7.0}
    labels = exported.labels("queue_depth", unique)
    assert labels["queue_type"] == "redis"
    assert (labels["service"], labels["env"], labels["task_id"]) == ("worker", "test", "t1")
    batch = recorder.last(f"queue:{unique}")
    assert batch.snapshot is True
    assert hub.metrics.get("tasklens.queue.polls", queue=unique) == 1
    assert source.status()["values"] == {"queue.depth": 7.0}


@pytest.mark.parametrize("kind", ["zset", "set", "hash", "absent"])
async def test_key_types(config, hub, exported, r, unique, kind):
    if kind == "zset":
        await r.zadd(unique, {"a": 1, "b": 2, "c": 3})
    elif kind == "set":
        await r.sadd(unique, "a", "b", "c")
    elif kind == "hash":
        await r.hset(unique, mapping={"a": 1, "b": 2, "c": 3})
    source = QueueSource(config, hub, f"{REDIS}?list={unique}")
    assert await source.poll()
    # Redis deletes an empty list: an absent key is an empty queue
    assert exported.queue(unique) == {"depth": 0.0 if kind == "absent" else 3.0}


async def test_key_of_another_type_is_an_error_and_a_gap(config, hub, exported, r, unique):
    await r.set(unique, "not a queue")
    source = QueueSource(config, hub, f"{REDIS}?list={unique}")
    assert not await source.poll()
    assert exported.queue(unique) == {}
    assert hub.metrics.get("tasklens.queue.poll_errors", queue=unique, reason="bad_reply") == 1
    assert "is a string" in source.status()["last_error"]


async def test_celery_priority_lists_are_summed(config, hub, exported, r, unique):
    kombu = pytest.importorskip("kombu")
    with kombu.Connection(REDIS) as conn:  # the real Celery transport (blocking, briefly)
        queue = kombu.Queue(unique, routing_key=unique, max_priority=10)
        producer = conn.Producer(serializer="json")
        for priority, n in ((0, 2), (4, 3), (9, 4)):
            for _ in range(n):
                producer.publish({"x": 1}, routing_key=unique, declare=[queue], priority=priority)
    assert len(await r.keys(f"{unique}*")) == 3  # really spread over three priority lists
    source = QueueSource(config, hub, f"{REDIS}?celery={unique}")
    assert await source.poll()
    assert exported.queue(unique) == {"depth": 9.0}
    await source.probe.close()


def rq_worker(unique: str) -> subprocess.Popen[bytes]:
    rq = Path(sys.executable).with_name("rq")
    return subprocess.Popen([str(rq), "worker", "--burst", "--url", REDIS, unique],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_rq_ready_started_scheduled_workers_and_age(config, hub, exported, r, clock, unique):
    rq = pytest.importorskip("rq")
    sync = redis.Redis.from_url(REDIS)
    q = rq.Queue(unique, connection=sync)
    q.enqueue("time.sleep", 4)  # a real worker takes this one and holds it: in flight
    worker = rq_worker(unique)
    source = QueueSource(config, hub, f"{REDIS}?rq={unique}", clock=clock)  # time stands still: no trend
    try:
        async def started():
            assert await source.poll()
            values = exported.queue(unique)
            assert values.get("in_flight") == 1.0 and values.get("consumers") == 1.0, values
            return values
        await eventually(started, 20)
        for _ in range(5):
            q.enqueue("os.getcwd")
        for _ in range(2):
            q.enqueue_in(timedelta(hours=1), "os.getcwd")
        head = (await r.lindex(f"rq:queue:{unique}", 0))
        hour_ago = time.time() - 3600
        await r.hset(f"rq:job:{head}", "enqueued_at",
                     time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(hour_ago)))
        assert await source.poll()
        values = exported.queue(unique)
        age = values.pop("oldest_age_seconds")
        assert values == {"depth": 5.0, "in_flight": 1.0, "delayed": 2.0, "consumers": 1.0}
        assert 3600 <= age < 3600 + 5

        async def left():  # the burst worker took everything and left: only the scheduled
            assert await source.poll()
            assert exported.queue(unique) == {"depth": 0.0, "in_flight": 0.0, "delayed": 2.0, "consumers": 0.0,
                                              "oldest_age_seconds": 0.0}
            return True
        await eventually(left, 60)  # on a busy machine: its jobs take 4 s, its start a few more
    finally:
        # gone from Redis by now; rq's own exit may still wait up to a minute on its pubsub thread
        worker.terminate()
        worker.wait(10)
        await source.probe.close()


def scaling_values(exported, queue: str) -> dict[str, float]:
    """The backlog-per-task series of one queue (agent/scaling/backlog.py), by metric name."""
    return {s.name: s.value for s in exported.samples() if s.labels.get("queue") == queue
            and s.name.startswith(("queue_consumers", "queue_backlog", "queue_tasks"))}


async def test_rq_workers_killed_with_sigkill_stop_counting_once_their_key_expires(config, hub, exported, r, unique):
    """A worker killed with SIGKILL (an OOM kill, a task stopped hard) never leaves `rq:workers:<queue>`:
    RQ prunes that set only when a worker starts or `rq info` runs. Its own key `rq:worker:<name>` expires
    (`worker_ttl` + 60 s after its last heartbeat, at least 61 s), and only workers whose key is there
    count. Two real `rq worker`s are killed; rather than wait a minute, their keys are then expired by
    hand, as their TTL would. Two workers registered by RQ's own code in this process stay alive."""
    rq = pytest.importorskip("rq")
    sync = redis.Redis.from_url(REDIS)
    q = rq.Queue(unique, connection=sync)
    alive = [rq.Worker([q], connection=sync, name=f"{unique}-alive{i}") for i in range(2)]
    for worker in alive:
        worker.register_birth()  # what a starting worker writes; these ones never take a job
    binary = Path(sys.executable).with_name("rq")
    killed = [subprocess.Popen([str(binary), "worker", "--url", REDIS, "--name", f"{unique}-killed{i}",
                                "--worker-ttl", "5", unique], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
              for i in range(2)]
    source = QueueSource(config, hub, f"{REDIS}?rq={unique}")
    try:
        async def all_four():
            assert await source.poll(), source.last_error
            assert exported.queue(unique)["consumers"] == 4.0, exported.queue(unique)
            return True
        await eventually(all_four, 30)
        for worker in killed:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        await r.rpush(f"rq:queue:{unique}", *[f"job-{i}" for i in range(8)])  # nobody takes these
        assert await source.poll()
        assert exported.queue(unique)["consumers"] == 4.0  # until their keys expire, they look alive
        members = await r.smembers(f"rq:workers:{unique}")
        dead = {f"rq:worker:{unique}-killed{i}" for i in range(2)}
        assert dead <= members and await r.ttl(next(iter(dead))) > 0  # RQ left them in the set, with a TTL
        for key in dead:
            await r.pexpire(key, 1)  # the TTL runs out
        await eventually(lambda: _absent(r, dead))
        assert await r.smembers(f"rq:workers:{unique}") == members  # still listed
        assert await source.poll()
        assert scaling_values(exported, unique) == {
            "queue_consumers": 2.0, "queue_backlog": 8.0, "queue_tasks_estimate": 2.0, "queue_backlog_per_task": 4.0}
    finally:
        for worker in killed:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        names = ("alive0", "alive1", "killed0", "killed1")
        await r.srem("rq:workers", *[f"rq:worker:{unique}-{name}" for name in names])
        await r.srem("rq:queues", f"rq:queue:{unique}")
        await source.probe.close()


async def _absent(r: redis.asyncio.Redis, keys: set[str]) -> bool:
    return await r.exists(*keys) == 0


@pytest.mark.parametrize("registered", [MAX_WORKERS, MAX_WORKERS + 1])
async def test_rq_workers_past_the_bound_are_not_counted(config, hub, exported, r, unique, registered):
    """Redis checks at most MAX_WORKERS registered workers in one script; past that the consumer count
    (and the local tasks estimate) is omitted, the rest of the poll is reported."""
    members = [f"rq:worker:{unique}-{i}" for i in range(registered)]
    await r.sadd(f"rq:workers:{unique}", *members)
    await r.mset({m: 1 for m in members[:3]})  # three alive
    await r.rpush(f"rq:queue:{unique}", "job-1")
    source = QueueSource(config, hub, f"{REDIS}?rq={unique}")
    try:
        assert await source.poll(), source.last_error
        values = scaling_values(exported, unique)
        if registered <= MAX_WORKERS:
            assert values == {"queue_consumers": 3.0, "queue_backlog": 1.0, "queue_tasks_estimate": 3.0,
                              "queue_backlog_per_task": 1.0 / 3}
        else:
            assert values == {"queue_backlog": 1.0}
            assert exported.queue(unique)["depth"] == 1.0
    finally:
        await source.probe.close()


async def test_stream_group_lag_pending_consumers_and_age(config, hub, exported, r, unique):
    now_ms = int(time.time() * 1000)
    base = now_ms - 60_000  # the first entry was added a minute ago, the next ones a second apart
    await r.xgroup_create(unique, "workers", id="0", mkstream=True)
    for i in range(10):
        await r.xadd(unique, {"n": i}, id=f"{base + i * 1000}-0")
    await r.xreadgroup("workers", "c1", {unique: ">"}, count=3)  # three delivered, not acked
    source = QueueSource(config, hub, f"{REDIS}?stream={unique}&group=workers")
    assert await source.poll()
    values = exported.queue(unique)
    age = values.pop("oldest_age_seconds")
    assert values == {"depth": 7.0, "in_flight": 3.0, "consumers": 1.0}
    assert exported.labels("queue_depth", unique)["queue_type"] == "redis_stream"
    # the oldest waiting entry is the 4th: added 57 s ago (Redis' own clock)
    assert 57.0 <= age < 57.0 + 2
    ids = [e[0] for e in await r.xrange(unique, count=3)]
    await r.xack(unique, "workers", *ids[:2])
    assert await source.poll()
    assert exported.queue(unique)["in_flight"] == 1.0
    await source.probe.close()


@pytest.mark.parametrize("delivered", ["5-18446744073709551615", "0-0"])
async def test_stream_group_delivered_up_to_an_odd_id(config, hub, exported, r, unique, delivered):
    """Ids given by the producer: the group's last-delivered-id at the largest sequence of its millisecond
    (the next id is in the next millisecond), or at 0-0 (nothing delivered yet). The next entry, 6-0, is
    not a time (6 ms after the epoch): no age."""
    await r.xgroup_create(unique, "workers", id="0", mkstream=True)
    if delivered != "0-0":
        await r.xadd(unique, {"n": 0}, id=delivered)
        await r.xreadgroup("workers", "c1", {unique: ">"}, count=1)
    await r.xadd(unique, {"n": 1}, id="6-0")
    await r.xadd(unique, {"n": 2}, id="7-0")
    source = QueueSource(config, hub, f"{REDIS}?stream={unique}&group=workers")
    assert await source.poll(), source.last_error
    assert exported.queue(unique) == {"depth": 2.0, "in_flight": 0.0 if delivered == "0-0" else 1.0,
                                      "consumers": float(delivered != "0-0")}
    await source.probe.close()


async def test_stream_group_beside_a_group_with_a_binary_name(config, hub, exported, r, unique):
    """Another application's group named in bytes that are not UTF-8 is none of this queue's business."""
    await r.xgroup_create(unique, "workers", id="0", mkstream=True)
    await r.execute_command("XGROUP", "CREATE", unique, b"\xff\xfe", "0")
    for i in range(3):
        await r.xadd(unique, {"n": i})
    await r.xreadgroup("workers", "c1", {unique: ">"}, count=1)
    source = QueueSource(config, hub, f"{REDIS}?stream={unique}&group=workers")
    assert await source.poll(), source.last_error
    values = exported.queue(unique)
    assert values.pop("oldest_age_seconds") < 60
    assert values == {"depth": 2.0, "in_flight": 1.0, "consumers": 1.0}
    await source.probe.close()


# Ids a producer gives (`XADD s <ms>-<seq>`): any ms part, one since 2000 (a time, by its looks), or one
# a little before or after now (the bounds of a plausible time); None is an auto id (`*`), which after an
# id in the future takes that id's ms
YEAR_2000_MS = 946_684_800_000
ABSOLUTE_IDS = st.tuples(st.just("abs"),
                         st.one_of(st.integers(0, 2**64 - 1), st.integers(YEAR_2000_MS, 1_700_000_000_000)),
                         st.integers(0, 2**64 - 1))
NEAR_NOW_IDS = st.tuples(st.just("rel"), st.integers(-120_000, 120_000), st.integers(0, 3))
STREAM_STEPS = st.lists(st.one_of(st.none(), ABSOLUTE_IDS, NEAR_NOW_IDS), min_size=1, max_size=6)
SKEW_MS = 60_000  # how far past Redis' TIME an id still reads as a time (integrations/queues/redis.py)


@settings(max_examples=100, deadline=None)
@given(STREAM_STEPS, st.integers(0, 3))
@example([("abs", 1, 1), ("abs", 2, 1)], 1)  # the review's case: 2-1 read as 1970, an age of 57 years
def test_a_stream_age_is_absent_or_within_the_real_age(steps, delivered):
    """Whatever ids the producer gives, the age is absent or within [0, real age + skew]; an id that
    claims a time between 2000 and now is read as that time (it cannot be told from an auto id)."""
    asyncio.run(_stream_age(steps, delivered))


async def _stream_age(steps: list[tuple[str, int, int] | None], delivered: int) -> None:
    key = "tl-" + uuid.uuid4().hex[:10]
    r = redis.asyncio.from_url(REDIS, decode_responses=True)
    source = QueueSource(Config(), Hub(Identity(service="worker")), f"{REDIS}?stream={key}&group=g")
    added: list[tuple[str, float, bool]] = []  # (id, wall time just before its XADD, given by the producer)
    try:
        await r.xgroup_create(key, "g", id="0", mkstream=True)
        for step in steps:
            before = time.time()
            if step is None:
                entry_id = "*"
            else:
                kind, ms, seq = step
                entry_id = f"{ms if kind == 'abs' else int(before * 1000) + ms}-{seq}"
            try:
                added.append((await r.xadd(key, {"n": len(added)}, id=entry_id), before, step is not None))
            except redis.ResponseError:  # not above the last id (or the last possible id is taken)
                pass
        if delivered:
            await r.xreadgroup("g", "c1", {key: ">"}, count=delivered)
        t0 = time.time()
        assert await source.poll(), source.last_error
        t1 = time.time()
        age = source.last_values.get("queue.oldest_age_seconds")
        waiting = added[delivered:]
        if not waiting:
            event("nothing waiting")
            assert age == 0.0
            return
        entry_id, added_at, given = waiting[0]
        ms = int(entry_id.split("-")[0])
        event("auto id" if not given else "no time" if ms < YEAR_2000_MS or ms > t1 * 1000 + SKEW_MS
              else "a past time" if ms <= t0 * 1000 else "within the skew")
        if ms < YEAR_2000_MS or ms > t1 * 1000 + SKEW_MS:
            assert age is None, (entry_id, age)
        elif ms <= t0 * 1000:  # a time in the past: what the id says
            assert age is not None and t0 - ms / 1000 - 0.01 <= age <= t1 - ms / 1000 + 0.01, (entry_id, age)
        else:  # about now or a little ahead of Redis' clock: 0 or what passed since, or none on the bound
            assert age is None or 0.0 <= age <= max(0.0, t1 - ms / 1000) + 0.01, (entry_id, age)
        if age is not None and not (given and ms <= t0 * 1000):  # an id that claims a past time aside
            assert 0.0 <= age <= t1 - added_at + SKEW_MS / 1000, (entry_id, age)
    finally:
        await source.probe.close()
        await r.delete(key)
        await r.aclose()


def test_a_stream_id_reads_as_a_time_only_between_2000_and_a_minute_past_redis_clock() -> None:
    from integrations.queues.redis import stream_age

    now = 1_714_564_800.5  # Redis' TIME
    assert stream_age("1714564740500-0", now) == 60.0
    assert stream_age(f"{YEAR_2000_MS}-0", now) == now - YEAR_2000_MS / 1000
    assert stream_age(f"{YEAR_2000_MS - 1}-5", now) is None  # a sequence number, not a time
    assert stream_age("1-1", now) is None
    assert stream_age("1714564860500-0", now) == 0.0  # 60 s ahead: a producer's clock ahead of Redis'
    assert stream_age("1714564860501-0", now) is None
    assert stream_age(f"{2**64 - 1}-{2**64 - 1}", now) is None


@pytest.mark.parametrize("kind", ["stream", "rq"])
async def test_a_huge_message_is_never_read_to_know_its_age(config, hub, exported, r, unique, kind):
    """The age needs the next entry's id (a stream) or the head's job id (RQ), not the message: one of
    32 MiB, which Redis allows up to 512 MiB, is left where it is."""
    import tracemalloc

    huge = "x" * (32 * 1024 * 1024)
    if kind == "stream":
        await r.xgroup_create(unique, "workers", id="0", mkstream=True)
        await r.xadd(unique, {"blob": huge})
        url = f"{REDIS}?stream={unique}&group=workers"
    else:
        await r.rpush(f"rq:queue:{unique}", huge)  # no job has such an id: its age is unknown
        url = f"{REDIS}?rq={unique}"
    del huge
    source = QueueSource(config, hub, url)
    tracemalloc.start()
    try:
        assert await source.poll(), source.last_error
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        await source.probe.close()
    assert peak < 4 * 1024 * 1024, peak
    values = exported.queue(unique)
    assert values["depth"] == 1.0
    if kind == "stream":
        assert 0.0 <= values["oldest_age_seconds"] < 60
    else:
        assert "oldest_age_seconds" not in values


async def test_stream_without_group_is_its_length(config, hub, exported, r, unique):
    for i in range(4):
        await r.xadd(unique, {"n": i})
    source = QueueSource(config, hub, f"{REDIS}?stream={unique}")
    assert await source.poll()
    assert exported.queue(unique) == {"depth": 4.0}
    await source.probe.close()


async def test_missing_group_is_not_found_and_a_gap(config, hub, exported, r, unique):
    await r.xadd(unique, {"n": 1})
    source = QueueSource(config, hub, f"{REDIS}?stream={unique}&group=nobody")
    assert not await source.poll()
    assert exported.queue(unique) == {}
    assert hub.metrics.get("tasklens.queue.poll_errors", queue=unique, reason="not_found") == 1
    await source.probe.close()


async def test_list_drain_trend(config, hub, exported, r, clock, unique):
    await r.rpush(unique, *range(30))
    source = QueueSource(config, hub, f"{REDIS}?list={unique}", clock=clock)

    async def take(n):
        await r.lpop(unique, n)

    await check_drain(source, clock, exported, take, depth=30)
    await source.probe.close()


async def test_list_backing_up(config, hub, exported, r, clock, unique):
    await r.rpush(unique, *range(10))
    source = QueueSource(config, hub, f"{REDIS}?list={unique}", clock=clock)

    async def put(n):
        await r.rpush(unique, *range(n))

    await check_backing_up(source, clock, exported, put)
    await source.probe.close()


@pytest.mark.parametrize("interval, share", [(3.0, 1), (1.0, 4)])
async def test_a_window_narrower_than_three_polls_still_gives_a_trend(hub, exported, r, clock, unique, interval, share):
    """`window=5` with polls 3 s apart, or 1 s apart with each task polling one interval in 4, could never
    hold the 3 points a trend needs: the window used is 3 real polls, and `backing_up` is reported."""
    config = Config(queue_poll_interval=interval, queue_trend_window=300.0, queue_backlog_threshold=5.0,
                    queue_poll_share=share)
    await r.rpush(unique, *range(10))
    source = QueueSource(config, hub, f"{REDIS}?list={unique}&window=5", clock=clock)
    assert source.status()["trend_window_seconds"] == 3 * interval * share
    for _ in range(4 * share):
        await source.step()
        await r.rpush(unique, *range(20))
        clock.advance(interval)
    assert exported.queue(unique)["backing_up"] == 1.0
    await source.probe.close()


# one step: the key becomes (or stays) a key of that type, with n more members (a list may also lose some);
# a key of another type is deleted first, so the key changes type between polls
KEY_STEPS = st.tuples(st.sampled_from(["list", "zset", "set", "hash", "stream", "string", "absent"]),
                      st.integers(-3, 5))


@settings(max_examples=40, deadline=None)
@given(st.lists(KEY_STEPS, min_size=1, max_size=12))
def test_any_changes_to_the_key_read_exactly_or_as_a_gap(steps):
    asyncio.run(_poll_through(steps))


async def _poll_through(steps: list[tuple[str, int]]) -> None:
    key = "tl-" + uuid.uuid4().hex[:10]
    r = redis.asyncio.from_url(REDIS)
    source = QueueSource(Config(), Hub(Identity(service="worker")), f"{REDIS}?list={key}")
    kind, length, errors = "absent", 0, 0
    try:
        for step_kind, n in steps:
            if step_kind != kind:
                await r.delete(key)
                kind, length = step_kind, 0
            length = await _grow(r, key, kind, length, n)
            if length == 0 and kind != "string":
                kind = "absent"  # Redis deletes a key left empty
            ok = await source.poll()
            if kind == "string":
                errors += 1
                assert not ok and source.last_values == {}
                assert source.hub.metrics.get("tasklens.queue.poll_errors", queue=key, reason="bad_reply") == errors
            else:
                assert ok, source.last_error
                assert source.last_values == {"queue.depth": float(length)}
    finally:
        await source.probe.close()
        await r.delete(key)
        await r.aclose()


async def _grow(r: redis.asyncio.Redis, key: str, kind: str, length: int, n: int) -> int:
    """Add `n` members to a key of type `kind` (a list pops when n < 0); its length after."""
    new = [f"m{length + i}" for i in range(max(n, 0))]
    if kind == "string":
        await r.set(key, "not a queue")
        return 1
    if kind == "list" and n < 0:
        await r.lpop(key, -n)
        return max(0, length + n)
    if not new:
        return length
    if kind == "list":
        await r.rpush(key, *new)
    elif kind == "zset":
        await r.zadd(key, {m: i for i, m in enumerate(new)})
    elif kind == "set":
        await r.sadd(key, *new)
    elif kind == "hash":
        await r.hset(key, mapping={m: 1 for m in new})
    elif kind == "stream":
        for m in new:
            await r.xadd(key, {"m": m})
    else:  # absent
        return 0
    return length + len(new)


@pytest.mark.parametrize("zone", ["UTC", "Asia/Tokyo", "America/Los_Angeles"])
def test_an_rq_time_without_a_zone_is_utc_whatever_the_local_time(monkeypatch, zone: str) -> None:
    from integrations.queues.redis import rq_age

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        now = 1_714_564_800.0  # 2024-05-01T12:00:00Z
        for written in ("2024-05-01T11:59:30", "2024-05-01T11:59:30.000000Z", "2024-05-01T13:59:30+02:00"):
            assert rq_age(written, now) == 30.0, written
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("denied", ["+@all -type", "+@all resetkeys ~other:*"], ids=["a_command", "the_key"])
async def test_a_user_denied_a_command_or_the_key_is_an_auth_error(config, hub, r, unique, denied):
    """An ACL that denies the probe a command or the queue's key: `auth` (redis-py raises
    NoPermissionError and strips the NOPERM prefix from its text, so this was counted `bad_reply`,
    the reason for a server that is not Redis)."""
    user = f"tl_{unique}"
    await r.rpush(unique, 1)
    await r.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", *denied.split())
    try:
        source = QueueSource(config, hub, f"redis://{user}:pw@127.0.0.1:6379/0?list={unique}")
        assert not await source.poll()
        assert hub.metrics.get("tasklens.queue.poll_errors", queue=unique, reason="auth") == 1, source.last_error
    finally:
        await r.execute_command("ACL", "DELUSER", user)


async def test_an_rq_user_with_the_documented_acl_reads_every_value(config, hub, exported, r, unique):
    """docs/queues.md's ACL for RQ, exactly: the commands the worker count's script runs in Redis
    (SCARD, SMEMBERS, EXISTS) are checked against the user too."""
    user = f"tl_{unique}"
    await r.rpush(f"rq:queue:{unique}", f"{unique}-job")
    await r.hset(f"rq:job:{unique}-job", "enqueued_at", "2024-05-01T12:00:00.000000Z")
    await r.sadd(f"rq:workers:{unique}", f"rq:worker:{unique}-a", f"rq:worker:{unique}-b")
    await r.set(f"rq:worker:{unique}-a", 1)
    acl = "+llen +zcount +zcard +scard +smembers +exists +eval +lindex +hget".split()
    await r.execute_command("ACL", "SETUSER", user, "on", ">pw", "resetkeys", "~rq:*", "-@all", *acl)
    source = QueueSource(config, hub, f"redis://{user}:pw@127.0.0.1:6379/0?rq={unique}")
    try:
        assert await source.poll(), source.last_error
        values = exported.queue(unique)
        assert values.pop("oldest_age_seconds") > 3600
        assert values == {"depth": 1.0, "in_flight": 0.0, "delayed": 0.0, "consumers": 1.0}
    finally:
        await source.probe.close()
        await r.execute_command("ACL", "DELUSER", user)
