"""Delivery for push sinks (the OpenTelemetry Collector's `exporterhelper` idea): a sink turns each flush
into payloads; this module queues, sends, retries and drains them.

A sink supplies two things: `flush()` (close the interval, return payloads) and `send(session, payload,
timeout)` (one attempt, usually through `post()`, returning an `Outcome`). The `Pusher` does the rest:
- flushes on clock-aligned ticks (the StatsD source closes its intervals on the same boundaries), and a
  final flush on stop;
- one sender, FIFO: a payload leaves the queue only when accepted, and a retried payload goes back to the
  head, so per-series timestamp order survives an outage (remote_write requires it);
- retries a timeout, a connection error, 408, 429 and 5xx with exponential backoff and jitter (a random
  wait between half and all of 1, 2, 4 ... `backoff_max` s), or after `Retry-After` when the server asks
  for longer;
- never retries another 4xx: it cannot succeed; logged (once a minute per status) and counted;
- bounds the queue in points and in bytes (labels of random text do not compress: a sample may cost
  kilobytes): past `max_points` or `max_bytes` the oldest payloads are dropped and counted, never the
  newest flush's (dropping those as they arrive would lose everything with a healthy receiver); a
  payload past its `expires` time is dropped as `expired` instead of being sent to be refused;
- on stop: the final flush, then sends until the drain deadline; what is left is counted as `shutdown`.

Self-metrics, labelled `exporter=<sink>` (the Datadog sink's names): `tasklens.exporter.points_queued`,
`points_sent`, `bytes_sent` (request bodies as sent), `points_failed{reason}`, `points_dropped{reason}`,
`retries`, `submissions{status}`, `buffer_points` and `submission_seconds` (gauges).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.capped import read_at_most
from agent.logs import RateLimitedLog
from agent.selfmetrics import SelfMetrics

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("tasklens.push")

RETRYABLE = frozenset({408, 429})
MAX_RETRY_AFTER = 300.0  # a server asking for more than five minutes is capped: the queue keeps filling
# of an answer's body, read at most: a store that sends a huge body or never finishes one costs neither
# memory nor a retry (`400` and a stalled body is a refusal, not a timeout)
BODY_BYTES, BODY_SECONDS = 64 * 1024, 2.0


@dataclass(slots=True)
class Payload:
    """One request body, ready to send (already encoded and compressed)."""

    body: bytes
    points: int
    expires: float = math.inf  # wall-clock time after which the receiver would refuse it
    headers: Mapping[str, str] = field(default_factory=dict)
    path: str = ""  # for sinks with several endpoints (Datadog's series, checks, events): theirs to use


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt: `ok`, `retry` (maybe after `retry_after` s) or `reject` (never again)."""

    kind: str
    reason: str = ""  # `http_503`, `timeout`, ...: the label of the counters
    retry_after: float | None = None
    detail: str = ""  # what the server said (its body, cut), for the log line
    status: str = ""  # the HTTP status (`204`), for `submissions{status}` as the Datadog sink counts them


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` in seconds: a number of seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def classify(status: int, headers: Mapping[str, str], body: bytes,
             retryable: Collection[int] | None = None) -> Outcome:
    """The retry rule, from a response: by default remote_write 1.0's and Datadog's (408, 429, 5xx);
    OTLP/HTTP passes its own list (429, 502, 503, 504)."""
    if 200 <= status < 300:
        return Outcome("ok", status=str(status))
    # all of it (BODY_BYTES at most): the pusher's mask is to see a secret whole before its text is cut
    detail = body.decode(errors="replace").strip()
    if (status in retryable) if retryable is not None else (status in RETRYABLE or status >= 500):
        return Outcome("retry", f"http_{status}", retry_after(headers.get("Retry-After")), detail, str(status))
    return Outcome("reject", f"http_{status}", None, detail, str(status))


async def post(session: aiohttp.ClientSession, url: str, payload: Payload, timeout: float,
               headers: Mapping[str, str] | None = None, *, retryable: Collection[int] | None = None,
               on_ok: Callable[[bytes], None] | None = None) -> Outcome:
    """POST a payload; a network error or timeout is a retryable outcome, never an exception.
    `on_ok` sees the body of an accepted request (OTLP's partial success)."""
    import aiohttp

    try:
        # no redirects: credentials in headers must never follow a redirect to another host
        async with session.post(url, data=payload.body, headers={**payload.headers, **(headers or {})},
                                allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            body = await read_at_most(r, BODY_BYTES, BODY_SECONDS)  # the status decides; the body says more
            outcome = classify(r.status, r.headers, body, retryable)
        if outcome.kind == "ok" and on_ok is not None:
            on_ok(body)
        return outcome
    except TimeoutError:
        return Outcome("retry", "timeout")
    except (aiohttp.ClientError, OSError) as exc:
        return Outcome("retry", "connection", detail=type(exc).__name__)


async def cancel(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it has ended. A request whose own timeout fires just as it is
    cancelled turns the cancellation into a timeout (aiohttp #5979): `post` returns it as an outcome and
    the task goes on, and a plain `await` after one `cancel()` would wait for it forever (a sidecar that
    does not exit on SIGTERM while a store hangs). So it is cancelled again until it ends."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if not task.cancelled():
        task.result()  # an error it ended with is raised, as `await task` raised it


def backoff_delay(failures: int, base: float, most: float) -> float:
    """The longest wait before retrying after `failures` consecutive failures: `base` doubling, at most
    `most`. The doubling stops at 2 ** 64: past 2 ** 1023 it is no float, and an outage of a day reaches
    that many failures."""
    return min(most, base * 2.0 ** min(failures - 1, 64))


def next_tick(after: float, interval: float) -> float:
    """The first flush time after `after`: just past the next clock-aligned interval boundary."""
    offset = min(1.0, interval / 10)
    return (math.floor((after - offset) / interval) + 1) * interval + offset


def stepped_back(due: float, now: float, interval: float) -> bool:
    """Whether the wall clock stepped back past a schedule that ticks every `interval` (an NTP step, a
    VM's clock corrected): its next tick is then an interval and the step away, and the loop must tick
    from now rather than wait out the step (an hour for an hour). A step of up to two intervals is
    waited out (three intervals at most): after it the tick from now is one already flushed."""
    return due - now > 3 * interval


Send = Callable[["aiohttp.ClientSession", Payload, float], Awaitable[Outcome]]


class Pusher:
    def __init__(self, name: str, metrics: SelfMetrics, *, flush: Callable[[], list[Payload]], send: Send,
                 interval: float, max_points: int, max_bytes: float = math.inf, timeout: float = 10.0,
                 drain_timeout: float = 15.0,
                 backoff_base: float = 1.0, backoff_max: float = 30.0,
                 on_stop: Callable[[], list[Payload]] | None = None, wall: Callable[[], float] = time.time,
                 mask: Callable[[str], str] = str) -> None:
        self.name = name
        self.mask = mask  # a receiver's error text may echo a header or a key: masked before kept or logged
        self.metrics = metrics
        # every known reason exported at 0 from the start, so that increase() sees the first one
        metrics.declare("tasklens.exporter.points_dropped", ("buffer_full", "flush_error", "shutdown", "expired"),
                        exporter=name)
        self.flush = flush
        self.send = send
        self.on_stop = on_stop
        self.interval = interval
        self.max_points = max_points
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.drain_timeout = drain_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.wall = wall
        self._log = RateLimitedLog(log, interval=60.0)
        self._queue: deque[Payload] = deque()
        self._queued = 0  # points in _queue
        self._queued_bytes = 0  # of the bodies in _queue
        self._newest = 0  # payloads of the last flush: the rightmost ones in _queue, never dropped for space
        self._in_flight: Payload | None = None
        self._wake = asyncio.Event()
        self._failures = 0  # consecutive retryable failures: drives the backoff
        self._backoff_until = 0.0
        self._draining = False
        self._drain_deadline = 0.0
        self.last_success: float | None = None
        self.last_error = ""

    # -- the queue --------------------------------------------------------------------------------

    def put(self, payloads: list[Payload]) -> None:
        produced = 0
        self._newest = 0
        for p in payloads:
            if p.points or p.body:
                self._queue.append(p)
                self._queued += p.points
                self._queued_bytes += len(p.body)
                self._newest += 1
                produced += p.points
        if produced:
            self.count("points_queued", produced)
        self._enforce_bound()
        self._wake.set()

    @property
    def pending(self) -> int:
        """Points waiting or in flight."""
        return self._queued + (self._in_flight.points if self._in_flight else 0)

    def _enforce_bound(self) -> None:
        in_flight = self._in_flight.points if self._in_flight else 0
        in_flight_bytes = len(self._in_flight.body) if self._in_flight else 0
        # the queue's payloads past the last flush's (which the sender takes last, being the rightmost)
        while ((self._queued + in_flight > self.max_points or self._queued_bytes + in_flight_bytes > self.max_bytes)
               and len(self._queue) > self._newest):
            dropped = self._queue.popleft()
            self._queued -= dropped.points
            self._queued_bytes -= len(dropped.body)
            self.count("points_dropped", dropped.points, "buffer_full")
            self._log.warning(f"{self.name}:buffer_full", "%s: queue full (%d points or %d bytes): dropped the "
                              "oldest %d points", self.name, self.max_points, self.max_bytes, dropped.points)
        self.metrics.set("tasklens.exporter.buffer_points", self._queued, exporter=self.name)

    def count(self, what: str, amount: float, reason: str | None = None) -> None:
        if reason is None:
            self.metrics.inc(f"tasklens.exporter.{what}", amount, exporter=self.name)
        else:
            self.metrics.inc(f"tasklens.exporter.{what}", amount, exporter=self.name, reason=reason)

    # -- running ------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, session: aiohttp.ClientSession) -> None:
        """Flush every interval until `stop`, then the final flush and the drain."""
        sender = asyncio.create_task(self._send_loop(session), name=f"{self.name}-sender")
        loop = asyncio.get_running_loop()
        try:
            due = next_tick(self.wall(), self.interval)
            while True:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=max(0.0, due - self.wall()))
                except TimeoutError:
                    pass
                self._flush()  # on stop too: the final, partial interval
                if stop.is_set():
                    break
                now = self.wall()
                due = next_tick(max(now, due), self.interval)  # a late loop skips ticks, never piles them
                if stepped_back(due, now, self.interval):
                    due = next_tick(now, self.interval)
            if self.on_stop is not None:
                self.put(self.on_stop())
            await self.drain(loop.time() + self.drain_timeout)
        except asyncio.CancelledError:
            self._give_up("cancelled")
            raise
        finally:
            await cancel(sender)

    def _flush(self) -> None:
        try:
            payloads = self.flush()
        except Exception as exc:  # an encoder bug loses one interval, never the sink
            self.count("points_dropped", 1, "flush_error")
            self._log.error(f"{self.name}:flush", "%s: flush failed: %r", self.name, exc)
            return
        self.put(payloads)

    async def drain(self, deadline: float) -> None:
        self._draining = True
        self._drain_deadline = deadline
        self._backoff_until = 0.0  # shutting down: try now, not after the last backoff
        self._wake.set()
        loop = asyncio.get_running_loop()
        while self.pending and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.pending:
            self._give_up("shutdown deadline")
        else:
            log.info("%s: all points delivered before exit", self.name)

    def _give_up(self, why: str) -> None:
        if self.pending:
            self.count("points_dropped", self.pending, "shutdown")
            log.error("%s: %d points could not be delivered before the %s (last error: %s)",
                      self.name, self.pending, why, self.last_error or "none")
        self._queue.clear()
        self._queued = self._queued_bytes = 0
        self._in_flight = None

    async def _send_loop(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self._backoff_until - loop.time()
            if wait > 0:
                self._wake.clear()
                try:  # a drain start wakes us early
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                except TimeoutError:
                    pass
                continue
            payload = self._queue.popleft()
            self._queued -= payload.points
            self._queued_bytes -= len(payload.body)
            self._in_flight = payload
            try:
                await self._deliver(session, payload)
            except Exception as exc:  # a defect while sending costs at most this payload, never the sink
                if not (self._queue and self._queue[0] is payload):  # not back in the queue for a retry
                    self.count("points_dropped", payload.points, "internal")
                self._backoff_until = loop.time() + self.backoff_max  # a defect that repeats: no busy loop
                self._log.error(f"{self.name}:internal", "%s: sending %d points failed: %r", self.name,
                                payload.points, exc)
            finally:
                self._in_flight = None
                self.metrics.set("tasklens.exporter.buffer_points", self._queued, exporter=self.name)

    async def _deliver(self, session: aiohttp.ClientSession, payload: Payload) -> None:
        loop = asyncio.get_running_loop()
        if payload.expires < self.wall():
            self.count("points_dropped", payload.points, "expired")
            return
        timeout = self.timeout
        if self._draining:
            timeout = max(0.1, min(timeout, self._drain_deadline - loop.time()))
        started = loop.time()
        try:
            outcome = await self.send(session, payload, timeout)
        except Exception as exc:  # a signer or encoder failure: worth another try, and visible
            outcome = Outcome("retry", "error", detail=repr(exc))
        self.metrics.set("tasklens.exporter.submission_seconds", loop.time() - started, exporter=self.name)
        self.metrics.inc("tasklens.exporter.submissions", exporter=self.name, status=outcome.status or outcome.reason)
        if outcome.kind == "ok":
            self.count("points_sent", payload.points)
            self.count("bytes_sent", len(payload.body))
            self._failures = 0
            self.last_success = self.wall()
            return
        detail = self.mask(outcome.detail)
        self.last_error = f"{outcome.reason}: {detail}" if detail else outcome.reason
        if outcome.kind == "reject":
            self.count("points_failed", payload.points, outcome.reason)
            self._failures = 0
            hint = " (check the sink's credentials)" if outcome.reason in ("http_401", "http_403") else ""
            self._log.error(f"{self.name}:{outcome.reason}", "%s: the receiver refused %d points (%s: %s)%s; "
                            "dropped, not retried", self.name, payload.points, outcome.reason, detail, hint)
            return
        # retryable: back to the head of the queue, after a backoff with jitter (or what the server asked)
        self._in_flight = None
        self._queue.appendleft(payload)
        self._queued += payload.points
        self._queued_bytes += len(payload.body)
        self._enforce_bound()
        self._failures += 1
        self.count("retries", 1)
        delay = backoff_delay(self._failures, self.backoff_base, self.backoff_max)
        wait = random.uniform(delay / 2, delay)
        if outcome.retry_after is not None:  # never sooner than the backoff: `Retry-After: 0` is no busy loop
            wait = max(wait, outcome.retry_after)
        if self._draining:  # the deadline is near: keep trying often
            wait = min(wait, 1.0)
        self._backoff_until = loop.time() + wait
        self._log.warning(f"{self.name}:retry", "%s: delivery failed (%s); %d points queued, retrying in %.1f s",
                          self.name, self.last_error, self.pending, wait)

    def status(self) -> dict[str, Any]:
        m, labels = self.metrics, {"exporter": self.name}
        return {
            "flush_interval_seconds": self.interval,
            "queued_points": self.pending,
            "queue_limit_points": self.max_points,
            "queued_bytes": self._queued_bytes + (len(self._in_flight.body) if self._in_flight else 0),
            "queue_limit_bytes": None if math.isinf(self.max_bytes) else self.max_bytes,
            "queued_payloads": len(self._queue),
            "points_sent": m.get("tasklens.exporter.points_sent", **labels),
            "retries": m.get("tasklens.exporter.retries", **labels),
            "consecutive_failures": self._failures,
            "last_success": None if self.last_success is None else
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_success)),
            "last_error": self.last_error,
        }
