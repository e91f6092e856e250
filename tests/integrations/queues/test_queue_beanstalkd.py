"""beanstalkd, started by the test on a free port (with a binlog, so jobs survive a restart)."""

from __future__ import annotations

import asyncio
import time

import greenstalk
import pytest
import redis.asyncio

from tests.integrations.queues.support import check_drain, eventually, port_open, private_server
from integrations.queues.beanstalkd import MAX_REPLY
from integrations.queues.source import POLL_ERRORS, QueueSource


def producer(port: int, tube: str) -> greenstalk.Client:
    return greenstalk.Client(("127.0.0.1", port), use=tube, watch=tube)


async def test_ready_reserved_delayed_watching_and_age(config, hub, exported, beanstalkd, clock, unique):
    put_at = time.monotonic()
    with producer(beanstalkd.port, unique) as worker:
        for i in range(7):
            worker.put(f"job {i}")
        reserved = [worker.reserve(timeout=1) for _ in range(2)]  # a worker holds two: in flight
        for i in range(3):
            worker.put(f"later {i}", delay=3600)
        source = QueueSource(config, hub, f"beanstalk://127.0.0.1:{beanstalkd.port}/{unique}", clock=clock)
        assert await source.poll(), source.last_error
        values = exported.queue(unique)
        age = values.pop("oldest_age_seconds")
        # the worker's connection watches the tube; the probe's own connection does not count
        assert values == {"depth": 5.0, "in_flight": 2.0, "delayed": 3.0, "consumers": 1.0}
        assert 0 <= age <= time.monotonic() - put_at + 1  # beanstalkd counts whole seconds
        assert exported.labels("queue_depth", unique)["queue_type"] == "beanstalkd"
        for job in reserved:
            worker.delete(job)
    assert await source.poll()
    values = exported.queue(unique)
    assert (values["in_flight"], values["consumers"]) == (0.0, 0.0)
    await source.probe.close()


async def test_default_tube(config, hub, exported, beanstalkd, clock):
    with greenstalk.Client(("127.0.0.1", beanstalkd.port)) as c:
        c.put("x")
    source = QueueSource(config, hub, f"beanstalkd://127.0.0.1:{beanstalkd.port}", clock=clock)
    assert source.queue == "default"
    assert await source.poll(), source.last_error
    values = exported.queue("default")
    assert (values["depth"], values["consumers"]) == (1.0, 0.0)  # the probe watches a tube of its own
    await source.probe.close()


async def test_a_job_larger_than_a_reply_may_be_is_read_past_for_its_age(config, hub, exported, clock, unique):
    """`peek-ready` answers the job's body; a server may take jobs far past MAX_REPLY (`-z`): the probe
    reads past the body (never holding it), the age is known, and the connection stays in step."""
    with private_server("beanstalkd", lambda binary, port: [binary, "-l", "127.0.0.1", "-p", str(port),
                                                            "-z", str(1 << 20)]) as server:
        with producer(server.port, unique) as p:
            p.put(b"x" * (10 * MAX_REPLY))
        source = QueueSource(config, hub, f"beanstalk://127.0.0.1:{server.port}/{unique}", clock=clock)
        for _ in range(2):  # the second poll on the same connection: the body was read to its end
            assert await source.poll(), source.last_error
            values = exported.queue(unique)
            assert (values["depth"], values["consumers"]) == (1.0, 0.0)
            assert 0 <= values["oldest_age_seconds"] <= 5
        await source.probe.close()


async def test_drain_trend(config, hub, exported, beanstalkd, clock, unique):
    with producer(beanstalkd.port, unique) as worker:
        for i in range(20):
            worker.put(f"job {i}")
        source = QueueSource(config, hub, f"beanstalk://127.0.0.1:{beanstalkd.port}/{unique}", clock=clock)

        async def take(n):
            for _ in range(n):
                worker.delete(worker.reserve(timeout=1))

        await check_drain(source, clock, exported, take, depth=20)
        await source.probe.close()


@pytest.mark.skipif(not port_open(6379), reason="Redis is not running on 127.0.0.1:6379")
async def test_broker_outage_is_a_gap_and_other_queues_go_on(config, hub, exported, beanstalkd, unique):
    with producer(beanstalkd.port, unique) as p:
        for i in range(4):
            p.put(f"job {i}")
    r = redis.asyncio.from_url("redis://127.0.0.1:6379/0")
    await r.rpush(unique, 1, 2)
    bean = QueueSource(config, hub, f"beanstalk://127.0.0.1:{beanstalkd.port}/{unique}?name=jobs")
    other = QueueSource(config, hub, f"redis://127.0.0.1:6379/0?list={unique}")
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in (bean, other)]

    async def depth_is(queue, want):
        got = exported.queue(queue).get("depth")
        assert got == want, (queue, got)
        return True

    try:
        await eventually(lambda: depth_is("jobs", 4.0))
        await eventually(lambda: depth_is(unique, 2.0))

        await asyncio.to_thread(beanstalkd.stop)
        await eventually(lambda: depth_is("jobs", None))  # the series is gone, not 0
        assert exported.queue("jobs") == {}

        async def errors_counted():
            return hub.metrics.get("tasklens.queue.poll_errors", queue="jobs", reason="connection") >= 2
        await eventually(errors_counted)
        assert bean.status()["last_error"] is not None
        assert bean.status()["consecutive_failures"] >= 2
        # the other queue keeps being polled and reported meanwhile
        polls = hub.metrics.get("tasklens.queue.polls", queue=unique)
        await r.rpush(unique, 3)
        await eventually(lambda: depth_is(unique, 3.0))
        assert hub.metrics.get("tasklens.queue.polls", queue=unique) > polls
        assert hub.metrics.get("tasklens.queue.poll_errors", queue=unique, reason="connection") == 0
        error_series = [s for s in exported.samples() if s.name == "tasklens_queue_poll_errors_total"]
        # only the broken queue has errors (a broker killed mid-reply may also give another reason)
        assert {s.labels["queue"] for s in error_series if s.value > 0} == {"jobs"}
        # every known reason is exported for every queue from the start, at 0 until it happens
        assert {(s.labels["queue"], s.labels["reason"]) for s in error_series if s.value == 0} >= {
            (unique, reason) for reason in POLL_ERRORS}
        assert ("jobs", "connection") in {(s.labels["queue"], s.labels["reason"]) for s in error_series}

        await asyncio.to_thread(beanstalkd.start)  # the binlog brings the four jobs back
        await eventually(lambda: depth_is("jobs", 4.0), timeout=20)
        assert bean.status()["last_error"] is None and bean.failures == 0
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await r.delete(unique)
        await r.aclose()


# tube names of every class: plain, every punctuation beanstalkd takes, 200 bytes, percent-encoded; a
# leading hyphen, 201 bytes, a character it refuses, an encoded space
GOOD_TUBES = ["jobs", "a+b/c;d.e$f_g(h)-i", "t" * 200, "a%2Fb"]
BAD_TUBES = ["-tube", "t" * 201, "a!b", "a%20b", "caf%C3%A9"]
FREE = {"TASKLENS_HTTP_ADDR": "127.0.0.1:0", "TASKLENS_STATSD_ADDR": "127.0.0.1:0"}  # `validate` binds them


async def test_a_tube_name_beanstalkd_takes_is_polled_and_any_other_refused_at_start(config, hub, beanstalkd):
    """A name beanstalkd refuses (`BAD_FORMAT`) passed `check` and `run`, then every poll failed as
    `error: []` (greenstalk's error carries no text); now it stops start-up, naming the tube. Every name
    taken is polled by the real beanstalkd."""
    from agent.cli import validate
    from agent.config import ConfigError

    for tube in BAD_TUBES:
        url = f"beanstalk://127.0.0.1:{beanstalkd.port}/{tube}"
        with pytest.raises(ConfigError, match="a beanstalkd tube name is"):
            validate({"TASKLENS_QUEUES": url, **FREE})  # what `run` and `check` do at start
    for tube in GOOD_TUBES:
        url = f"beanstalk://127.0.0.1:{beanstalkd.port}/{tube}"
        validate({"TASKLENS_QUEUES": url, **FREE})
        source = QueueSource(config, hub, url)
        with producer(beanstalkd.port, source.queue) as worker:  # the tube exists while a client uses it
            worker.put("job")
            assert await source.poll(), (tube, source.last_error)
        await source.probe.close()
