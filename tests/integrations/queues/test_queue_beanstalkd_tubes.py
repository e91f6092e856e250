"""beanstalkd tubes as named: the probe reads the tube the URL names, never creates it, and a tube beanstalkd
does not know is `not_found`, a gap. The probe used to `use` its tube on connecting, which creates it: a
misspelt tube read as a healthy, empty queue (depth 0, no error counted), and `stats-tube`'s NOT_FOUND never
came. A path ending in `/` (`/jobs/`) polled, and created, `jobs`."""

from __future__ import annotations

import asyncio
import string
from urllib.parse import quote

import greenstalk
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from agent.config import Config, ConfigError
from agent.hub import Hub
from agent.identity import Identity
from integrations.queues.beanstalkd import PROBE_TUBE
from integrations.queues.source import QueueSource
from tests.integrations.queues.support import private_server

FREE = {"TASKLENS_HTTP_ADDR": "127.0.0.1:0", "TASKLENS_STATSD_ADDR": "127.0.0.1:0"}  # `validate` binds them


def beanstalkd_argv(binary: str, port: int) -> list[str]:
    return [binary, "-l", "127.0.0.1", "-p", str(port)]


def tubes(port: int) -> set[str]:
    """The tubes beanstalkd knows, but for the two every probe connection keeps (its own, and `default`,
    which each connection uses until it switches)."""
    with greenstalk.Client(("127.0.0.1", port)) as c:
        return set(c.tubes()) - {PROBE_TUBE, "default"}


def poll_errors(hub: Hub, queue: str) -> dict[str, float]:
    return {r: n for r in ("timeout", "connection", "auth", "not_found", "query", "bad_reply", "error")
            if (n := hub.metrics.get("tasklens.queue.poll_errors", queue=queue, reason=r))}


async def test_a_tube_beanstalkd_does_not_know_is_not_found_and_is_not_created(config, hub, exported, beanstalkd,
                                                                             unique):
    """The tester's case: a misspelt tube is a gap counted as `not_found`, at every poll; the tube is never
    created. Once a job is in it, it is read; once nobody uses it and it is empty, it is not found again."""
    url = f"beanstalk://127.0.0.1:{beanstalkd.port}/{unique}_typo"
    source = QueueSource(config, hub, url)
    try:
        for polls in (1, 2):
            assert not await source.poll()
            assert exported.queue(f"{unique}_typo") == {}
            assert poll_errors(hub, f"{unique}_typo") == {"not_found": polls}
            assert f"{unique}_typo" not in tubes(beanstalkd.port)
        with greenstalk.Client(("127.0.0.1", beanstalkd.port), use=f"{unique}_typo") as producer:
            job = producer.put("job")
        assert await source.poll(), source.last_error  # the job holds the tube; the producer has gone
        values = exported.queue(f"{unique}_typo")
        assert (values["depth"], values["consumers"]) == (1.0, 0.0) and 0 <= values["oldest_age_seconds"] < 5
        with greenstalk.Client(("127.0.0.1", beanstalkd.port)) as worker:
            worker.delete(job)
        # the probe's `peek-ready` used the tube for a moment only: nothing holds it now
        assert f"{unique}_typo" not in tubes(beanstalkd.port)
        assert not await source.poll()
        assert poll_errors(hub, f"{unique}_typo") == {"not_found": 3}
    finally:
        await source.probe.close()


async def test_a_path_ending_in_a_slash_stops_start_up_and_percent_2f_names_it(config, hub, exported, beanstalkd,
                                                                              unique):
    """`/jobs/` polled `jobs`, and created it; now it stops start-up naming the URL. `/jobs%2F` is the tube
    `jobs/`, read as written, and `jobs` is left alone."""
    from agent.cli import validate

    for path in (f"/{unique}/", f"//{unique}", "//"):
        url = f"beanstalk://127.0.0.1:{beanstalkd.port}{path}"
        with pytest.raises(ConfigError, match=r"beanstalk://127\.0\.0\.1:\d+/.*: the path .* puts a '/' at the start "
                                              r"or end of the tube's name"):
            validate({"TASKLENS_QUEUES": url, **FREE})  # what `run` and `check` do at start
        with pytest.raises(ConfigError, match="%2F"):
            QueueSource(config, hub, url)
    with greenstalk.Client(("127.0.0.1", beanstalkd.port), use=f"{unique}/") as producer:
        producer.put("one")
        producer.put("two")
    source = QueueSource(config, hub, f"beanstalk://127.0.0.1:{beanstalkd.port}/{unique}%2F")
    try:
        assert source.queue == f"{unique}/"
        assert await source.poll(), source.last_error
        assert exported.queue(f"{unique}/")["depth"] == 2.0
        assert tubes(beanstalkd.port) == {f"{unique}/"}
    finally:
        await source.probe.close()


# every tube name beanstalkd takes (its protocol.txt): letters, digits and - + / ; . $ _ ( ), not starting
# with a hyphen, at most 200 bytes
FIRST = string.ascii_letters + string.digits + "+/;.$_()"
NAMES = st.builds(lambda first, rest: first + rest, st.sampled_from(FIRST), st.text(alphabet=FIRST + "-", max_size=40))
TUBE_NAMES = st.one_of(NAMES, NAMES.map(lambda t: t + "/"), NAMES.map(lambda t: "/" + t)).filter(
    lambda t: t != PROBE_TUBE)  # a `/` at an end too: what a raw path cannot say without %2F


def test_any_tube_reads_back_as_written_and_only_as_it_is() -> None:
    """On a beanstalkd of its own (each example leaves no tube behind). Any tube name, written raw or
    percent-encoded, with 0-2 ready jobs, watched by a worker or not: the
    queue is that tube (or a raw `/` at an end stops start-up), a tube beanstalkd does not know is a
    `not_found` gap, one it knows is read; and the probe leaves beanstalkd's tubes as they were."""
    with private_server("beanstalkd", beanstalkd_argv) as server:
        _tubes_property(server.port)


def _tubes_property(port: int) -> None:
    @settings(max_examples=150, deadline=None)
    @given(TUBE_NAMES, st.integers(0, 2), st.booleans(), st.booleans())
    @example("review_q_t/", 0, False, False)  # the tester's case: polled (and created) `review_q_t`
    @example("review_q_typo", 0, False, True)  # the tester's first case: read as an empty, healthy queue
    @example("t" * 200, 1, True, True)
    def check(tube: str, jobs: int, watched: bool, encoded: bool) -> None:
        asyncio.run(_read_tube(port, tube, jobs, watched, encoded))

    check()


async def _read_tube(port: int, tube: str, jobs: int, watched: bool, encoded: bool) -> None:
    url = f"beanstalk://127.0.0.1:{port}/{quote(tube, safe='') if encoded else tube}"
    hub = Hub(Identity(service="worker"))
    if not encoded and (tube.startswith("/") or tube.endswith("/")):
        event("a raw '/' at an end: refused")
        with pytest.raises(ConfigError, match="%2F"):
            QueueSource(Config(), hub, url)
        return
    source = QueueSource(Config(), hub, url)
    assert source.queue == tube, url
    worker = greenstalk.Client(("127.0.0.1", port), use=tube, watch=tube) if watched else None
    with greenstalk.Client(("127.0.0.1", port), use=tube) as producer:
        ids = [producer.put(f"job {i}") for i in range(jobs)]
    before = tubes(port)
    try:
        polled = await source.poll()
        if jobs or watched:
            event("a tube beanstalkd knows")
            assert polled, (url, source.last_error)
            values = source.last_values
            assert (values["queue.depth"], values["queue.consumers"]) == (float(jobs), float(watched)), values
            assert (values["queue.oldest_age_seconds"] >= 0) if jobs else values["queue.oldest_age_seconds"] == 0
        else:
            event("a tube beanstalkd does not know")
            assert not polled and source.last_values == {}, (url, source.last_values)
            assert poll_errors(hub, tube) == {"not_found": 1}
        assert tubes(port) == before, url  # nothing created, nothing left in use
    finally:
        await source.probe.close()
        with greenstalk.Client(("127.0.0.1", port)) as cleaner:
            for job in ids:
                cleaner.delete(job)
        if worker is not None:
            worker.close()
