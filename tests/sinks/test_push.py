"""The shared push helper (agent/sinks/push.py) on its own: the retry rule, Retry-After, expiry and the
drain deadline, against a loopback HTTP server."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.selfmetrics import SelfMetrics
from agent.sinks.push import MAX_RETRY_AFTER, Outcome, Payload, Pusher, classify, post, retry_after
from tests.support import serve_app
from tests.sinks.stores import until


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.floats().map(str), st.integers(-10**9, 10**9).map(str)))
def test_retry_after_is_none_or_a_bounded_wait_for_any_text(text: str) -> None:
    wait = retry_after(text)
    assert wait is None or 0.0 <= wait <= MAX_RETRY_AFTER


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after("7") == 7.0
    assert retry_after("100000") == MAX_RETRY_AFTER
    now = time.time()
    assert retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == pytest.approx(30, abs=1)
    assert retry_after("soon") is None and retry_after(None) is None


@pytest.mark.parametrize(("status", "kind"), [(200, "ok"), (204, "ok"), (400, "reject"), (401, "reject"),
                                              (403, "reject"), (404, "reject"), (408, "retry"), (413, "reject"),
                                              (429, "retry"), (500, "retry"), (503, "retry")])
def test_the_default_retry_rule(status: int, kind: str) -> None:
    assert classify(status, {}, b"").kind == kind


def test_a_receiver_specific_retry_rule() -> None:
    otlp = frozenset({429, 502, 503, 504})
    assert classify(500, {}, b"", otlp).kind == "reject" and classify(502, {}, b"", otlp).kind == "retry"


class Server:
    def __init__(self) -> None:
        self.status = 204
        self.hits = 0
        self.hang = False
        self.headers: dict[str, str] = {}

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        await request.read()
        if self.hang:
            await asyncio.sleep(30)
        return web.Response(status=self.status, headers=self.headers)


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, str]]:
    s = Server()
    app = web.Application()
    app.router.add_post("/", s.handle)
    runner, url = await serve_app(app)
    yield s, url + "/"
    await runner.cleanup()


def pusher(url: str, metrics: SelfMetrics, **options: float) -> Pusher:
    async def send(session: aiohttp.ClientSession, payload: Payload, timeout: float):  # type: ignore[no-untyped-def]
        return await post(session, url, payload, timeout)

    return Pusher("test", metrics, flush=list, send=send, interval=60.0, max_points=100,
                  **{"timeout": 1.0, "drain_timeout": 0.5, "backoff_base": 0.02, "backoff_max": 0.05, **options})


async def test_a_store_that_stays_down_is_given_up_at_the_drain_deadline(
        server: tuple[Server, str], caplog: pytest.LogCaptureFixture) -> None:
    srv, url = server
    srv.status = 503
    metrics = SelfMetrics()
    p = pusher(url, metrics)
    p.put([Payload(b"x", 5), Payload(b"y", 7)])
    stop = asyncio.Event()
    stop.set()
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        with caplog.at_level(logging.ERROR, "tasklens.push"):
            await p.run(stop, session)
    assert time.monotonic() - started < 3.0
    assert metrics.get("tasklens.exporter.points_dropped", exporter="test", reason="shutdown") == 12
    assert srv.hits >= 2 and p.pending == 0
    assert any("12 points could not be delivered" in r.message for r in caplog.records)


async def test_a_sender_whose_request_turns_its_cancellation_into_a_timeout_still_ends() -> None:
    """aiohttp can turn a task's cancellation into a TimeoutError when the request's own timeout fires
    at the same moment (aiohttp #5979); `post` returns that as a retryable timeout and the sender goes
    on. The pusher must end anyway, soon after its drain deadline: a sidecar that never exits on
    SIGTERM while a store hangs would be killed by ECS with nothing flushed."""
    swallowed = 0

    async def send(session: aiohttp.ClientSession, payload: Payload, timeout: float) -> Outcome:
        nonlocal swallowed
        try:
            await asyncio.sleep(3600)  # a store that never answers
        except asyncio.CancelledError:
            if swallowed < 3:  # the race, three times over: the cancellation becomes a timeout
                swallowed += 1
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                return Outcome("retry", "timeout")
            raise
        return Outcome("ok")

    p = Pusher("test", SelfMetrics(), flush=list, send=send, interval=60.0, max_points=100, timeout=3600.0,
               drain_timeout=0.3, backoff_base=0.01, backoff_max=0.01)
    p.put([Payload(b"x", 5)])
    stop = asyncio.Event()
    stop.set()
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        run = asyncio.create_task(p.run(stop, session))
        done, _ = await asyncio.wait({run}, timeout=5.0)
        took = time.monotonic() - started
        while not run.done():  # it hangs: end it here, so that the test fails instead (three swallows at most)
            run.cancel()
            await asyncio.wait({run}, timeout=0.1)
    assert run in done, "the pusher did not end after its drain deadline"
    assert swallowed == 3 and took < 3.0  # each swallowed cancellation was followed by another


async def test_a_hanging_store_times_out_and_is_retried(server: tuple[Server, str]) -> None:
    srv, url = server
    srv.hang = True
    metrics = SelfMetrics()
    p = pusher(url, metrics, timeout=0.2)
    p.put([Payload(b"x", 1)])
    async with aiohttp.ClientSession() as session:
        sender = asyncio.create_task(p._send_loop(session))
        await until(lambda: metrics.get("tasklens.exporter.submissions", exporter="test", status="timeout") >= 2,
                    10, "two timeouts")
        srv.hang = False
        await until(lambda: metrics.get("tasklens.exporter.points_sent", exporter="test") == 1, 10, "delivery")
        sender.cancel()


async def test_delivery_resumes_after_more_failures_than_the_backoff_has_doublings(server: tuple[Server, str]) -> None:
    """2 ** 1024 is past the float range: an outage of over 1,024 failed attempts (six hours at the
    real backoff) must not end the sender, or nothing is sent again until a restart."""
    srv, url = server
    srv.status = 503
    metrics = SelfMetrics()
    p = pusher(url, metrics, backoff_base=0.0001, backoff_max=0.0002)
    p.put([Payload(b"x", 1)])
    async with aiohttp.ClientSession() as session:
        sender = asyncio.create_task(p._send_loop(session))
        await until(lambda: srv.hits > 1100 or sender.done(), 30, "1,100 failed attempts")
        srv.status = 204
        await until(lambda: metrics.get("tasklens.exporter.points_sent", exporter="test") == 1 or sender.done(),
                    10, "delivery after the store recovered")
        assert not sender.done(), sender.exception()
        assert metrics.get("tasklens.exporter.points_sent", exporter="test") == 1
        sender.cancel()


async def test_a_defect_while_sending_costs_that_payload_never_the_sink(server: tuple[Server, str]) -> None:
    """An exception the sender does not expect (here: the error-text masker) loses the payload it was
    sending, counted, and the sender goes on with the next one; one after the payload went back to the
    queue for a retry loses nothing."""
    srv, url = server
    srv.status = 503
    metrics = SelfMetrics()
    p = pusher(url, metrics)
    calls = 0

    def broken_mask(text: str) -> str:
        nonlocal calls
        calls += 1
        raise RuntimeError("a defect")

    p.mask = broken_mask
    p.put([Payload(b"x", 3)])
    async with aiohttp.ClientSession() as session:
        sender = asyncio.create_task(p._send_loop(session))
        await until(lambda: calls == 1, 10, "the defect")
        await until(lambda: metrics.get("tasklens.exporter.points_dropped", exporter="test", reason="internal") == 3,
                    10, "the payload counted as dropped")
        p.mask = str
        srv.status, first = 503, srv.hits
        p.put([Payload(b"y", 2)])
        raised = []

        def broken_bound() -> None:
            raised.append(True)
            raise RuntimeError("a defect after the retry was queued")

        p._enforce_bound = broken_bound
        await until(lambda: raised and srv.hits > first, 10, "the next payload tried, and the defect")
        p._enforce_bound = lambda: None
        srv.status = 204
        await until(lambda: metrics.get("tasklens.exporter.points_sent", exporter="test") == 2 or sender.done(),
                    10, "the payload queued again delivered")
        assert not sender.done(), sender.exception()
        assert metrics.get("tasklens.exporter.points_dropped", exporter="test", reason="internal") == 3
        sender.cancel()


@pytest.mark.parametrize("value", ["0", "-5", "0.001", "Mon, 01 Jan 2001 00:00:00 GMT"])
async def test_a_retry_after_shorter_than_the_backoff_never_makes_a_busy_loop(
        server: tuple[Server, str], value: str) -> None:
    """A store that answers `429 Retry-After: 0` (or a negative number, or a date gone by) forever is
    retried no sooner than the backoff would: it asked for no less."""
    srv, url = server
    srv.status, srv.headers = 429, {"Retry-After": value}
    metrics = SelfMetrics()
    p = pusher(url, metrics, backoff_base=0.2, backoff_max=0.4)
    p.put([Payload(b"x", 1)])
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        sender = asyncio.create_task(p._send_loop(session))
        await until(lambda: srv.hits >= 4, 10, "four attempts")
        took = time.monotonic() - started
        sender.cancel()
    # the three waits between them are drawn from [0.1, 0.2], [0.2, 0.4] and [0.2, 0.4] s
    assert took >= 0.5, f"{srv.hits} attempts in {took:.3f} s"


async def test_expired_payloads_are_dropped_not_sent(server: tuple[Server, str]) -> None:
    srv, url = server
    metrics = SelfMetrics()
    p = pusher(url, metrics)
    p.put([Payload(b"old", 3, expires=time.time() - 1), Payload(b"new", 2)])
    stop = asyncio.Event()
    stop.set()
    async with aiohttp.ClientSession() as session:
        await p.run(stop, session)
    assert srv.hits == 1
    assert metrics.get("tasklens.exporter.points_dropped", exporter="test", reason="expired") == 3
    # the reasons that did not happen are exported too, at 0
    zeros = {dict(s.tags)["reason"] for s in metrics.samples() if s.name == "tasklens.exporter.points_dropped"
             and ("exporter", "test") in s.tags and s.value == 0}
    assert zeros >= {"buffer_full", "flush_error"}
    assert metrics.get("tasklens.exporter.points_sent", exporter="test") == 2
