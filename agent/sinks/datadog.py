"""Datadog exporter: everything the hub sees, sent to Datadog's HTTP API once per flush interval.

Enabled by `DD_API_KEY`; the intake is `https://api.<DD_SITE>` unless `DD_DD_URL` overrides it (as in
the Datadog agent; the tests point it at loopback). Conversion to API objects is pure
(`datadog_series.py`); this module is the delivery: batching per flush, a bounded buffer, retries.

Isolation: each point, event and service check is checked against the intake's documented rules
before it joins a payload (`datadog_series.py` holds the rules). One the intake would repair the same
way is repaired (names, tags); one it would refuse is dropped alone and counted as
`tasklens.sink.points_rejected{sink="datadog", reason}`, so a payload is never refused for another
context's data. An exception while building one object costs that object only.

Delivery guarantees:
- Each flush becomes compressed payloads appended to a FIFO buffer. One sender submits them in order;
  a payload leaves the buffer only when the intake accepts it (2xx), so an outage loses nothing that fits
  in the buffer, and a recovered intake receives every point once.
- A timeout, a connection error, a 5xx, 408 or 429 is retried with exponential backoff and jitter:
  a random wait between half and all of 1, 2, 4 ... 30 s (never an immediate retry into an outage).
  So is a 3xx: a redirect is never followed (the key header would go with it to another host), and
  it is no answer about the payload either.
- Any other 4xx (a bad key: 403; a bad payload: 400, 413) is logged clearly, counted as failed and not
  retried: sending the same request again cannot succeed.
- The buffer holds at most `datadog_buffer_points` points and `datadog_buffer_bytes` bytes of payloads
  (events and service checks weigh kilobytes a point); past either the oldest payloads are dropped and
  counted (`points_dropped{reason="buffer_full"}`), never those of the newest flush (a flush larger than
  the bound is kept whole, alone). A payload expires with its oldest timestamp (1 h for
  metrics, 10 min for service checks, 18 h for events, less a margin for the request): past that it is
  dropped as `expired` instead of being sent to be refused; points far apart in time never share one.
- On stop (SIGTERM, after the sources flushed their partial interval): a final flush, then retries until
  the drain deadline; what is still undelivered is logged with its count and `reason="shutdown"`.

The API key is only ever in the `DD-API-KEY` header: never in a URL, a log line, `status()` or `repr`;
an intake's error text is kept and logged only through `agent.redact` (every configured secret masked).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from agent import __version__, heavy
from agent.capped import read_at_most
from agent.config import Config
from agent.urlmask import mask_url
from agent.hub import Hub
from agent.sinks.push import cancel
from agent.identity import INFO_TAG_KEYS
from agent.logs import RateLimitedLog
from agent.model import Batch, Event, Kind, Points, Sample, ServiceCheck, Tags
from agent.redact import Redactor, config_secrets
from agent.selfmetrics import SelfMetrics
from agent.sinks import datadog_series as dd
from agent.sinks.deltas import CounterDeltas
from agent.sinks.push import backoff_delay

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("tasklens.datadog")

EXPORTER = "datadog"
REJECTED = "tasklens.sink.points_rejected"  # {sink, reason}: every sink counts refused points under this name
RETRYABLE = frozenset({408, 429})
METRICS_MAX_AGE = 3600.0  # the series API refuses points more than an hour old
ERROR_BODY_LIMIT = 65536  # bytes of a refusal's body read: enough for its reason, never a flood
ERROR_BODY_SECONDS = 2.0  # at most this long to read it: the status has decided, the body is only for the log


def base_url(config: Config) -> str:
    if config.dd_url:
        return config.dd_url.rstrip("/")
    site = config.dd_site.strip().rstrip("/").removeprefix("https://").removeprefix("app.")
    return f"https://api.{site}"


def endpoint(base: str, path: str) -> str:
    """`path` under the base URL's own path (a proxy may serve the intake under a prefix); a query or
    fragment of the base (refused in DD_DD_URL) never comes before the path."""
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + path, query="", fragment=""))


async def check_api_key(config: Config, timeout: float = 5.0) -> dict[str, str]:
    """`GET /api/v1/validate`: does the intake take this key? For `tasklens check`; never shows the key."""
    import aiohttp

    url = base_url(config)
    out = {"url": mask_url(url)}  # a DD_DD_URL may carry proxy credentials
    try:
        async with aiohttp.ClientSession(trust_env=True) as session:
            async with session.get(endpoint(url, "/api/v1/validate"), headers={"DD-API-KEY": config.dd_api_key},
                                   allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                body = await r.json(content_type=None) if r.status == 200 else None
                status = r.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
        out["api_key"] = f"not checked: the intake did not answer ({type(exc).__name__})"
        return out
    if status == 200 and isinstance(body, dict) and body.get("valid") is True:
        out["api_key"] = "valid"
    elif status in (401, 403):
        out["api_key"] = f"invalid (HTTP {status}): check DD_API_KEY and DD_SITE"
    else:
        out["api_key"] = f"not checked: HTTP {status}"
    return out


class _Rejected(Exception):
    """The intake refused the request for good (a 4xx other than 408/429)."""


@dataclass(slots=True)
class Closed:
    """One interval's JSON objects, with their points and timestamps, ready to be packed into payloads."""

    series: list[bytes]
    series_stamps: list[float]
    distributions: list[bytes]
    distribution_points: list[int]
    distribution_stamps: list[float]
    events: list[bytes]
    event_stamps: list[float]
    checks: list[bytes]
    check_stamps: list[float]
    margin: float

    def encode(self) -> list[dd.Payload]:
        margin = self.margin
        return (dd.encode(dd.SERIES_PATH, self.series, [1] * len(self.series), self.series_stamps,
                          dd.SERIES_WINDOW, margin)
                + dd.encode(dd.DISTRIBUTION_PATH, self.distributions, self.distribution_points,
                            self.distribution_stamps, dd.SERIES_WINDOW, margin)
                + dd.encode(dd.EVENTS_PATH, self.events, [1] * len(self.events), self.event_stamps,
                            dd.EVENT_WINDOW, margin)
                + dd.encode(dd.CHECK_RUN_PATH, self.checks, [1] * len(self.checks), self.check_stamps,
                            dd.CHECK_WINDOW, margin))


class DatadogSink:
    name = "datadog"

    def __init__(self, config: Config, hub: Hub, *, backoff_base: float = 1.0, backoff_max: float = 30.0,
                 drain_timeout: float | None = None, wall: Callable[[], float] = time.time) -> None:
        self.config = config
        self.hub = hub
        self.metrics = hub.metrics
        self.url = base_url(config)
        self._api_key = config.dd_api_key
        self.interval = config.flush_interval
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        # the runtime gives sinks what is left of shutdown_timeout once the sources stopped; keep a margin
        self.drain_timeout = config.shutdown_timeout * 0.75 if drain_timeout is None else drain_timeout
        self.wall = wall
        self._log = RateLimitedLog(log, interval=60.0)
        self._redact = Redactor(config_secrets(config))  # for every remote text kept or logged
        # every known reason exported at 0 from the start, so that increase() sees the first one
        self.metrics.declare("tasklens.exporter.points_dropped", ("buffer_full", "expired", "shutdown"),
                             exporter=EXPORTER)
        self.metrics.declare(REJECTED, ("invalid", "invalid_name", "name_too_long", "not_finite",
                                        "timestamp_out_of_range", "invalid_event", "invalid_service_check",
                                        "too_large"), sink=EXPORTER)
        # a point must still be inside the intake's window when a request sent at its expiry lands
        self._margin = max(dd.SEND_MARGIN, config.datadog_timeout)
        # the sidecar's own tag keys as Datadog stores them: one tag each, the client's if it sent one
        self._unique = frozenset(dd.tag_key(dd.normalize_tag(k)) for k in INFO_TAG_KEYS + tuple(k for k, _ in config.tags))
        # points a histogram sample becomes: what one rejected whole counts
        self._per_histogram = len(config.histogram_aggregates) + len(config.histogram_percentiles)
        # the current interval, filled by accept()
        self._series: list[bytes] = []  # one point each, already JSON (the hot path)
        self._distributions: list[bytes] = []
        self._distribution_points: list[int] = []
        self._series_stamps: list[float] = []  # each point's timestamp: a payload expires with its oldest
        self._distribution_stamps: list[float] = []
        self._events: list[bytes] = []
        self._event_stamps: list[float] = []
        self._checks: list[bytes] = []
        self._check_stamps: list[float] = []
        self._counts: dict[tuple[str, Tags], float] = {}
        self._deltas = CounterDeltas()
        # what waits for the intake
        self._buffer: deque[dd.Payload] = deque()
        self._buffered = 0
        self._buffered_bytes = 0  # of the payloads' bodies: an event is one point of up to ~8 KB
        self._newest: set[int] = set()  # id() of the newest flush's payloads still here: never dropped for space
        self._in_flight: dd.Payload | None = None
        self._wake = asyncio.Event()
        self._failures = 0  # consecutive retryable failures: drives the backoff
        self._backoff_until = 0.0
        self._draining = False
        self._drain_deadline = 0.0
        self.last_success: float | None = None
        self.last_error = ""

    def __repr__(self) -> str:
        return f"DatadogSink(url={mask_url(self.url)!r})"

    # -- sink side: convert now, so the interval's data is small and typed ------------------------

    def accept(self, batch: Batch) -> None:
        now = self.wall()
        for sample in batch.samples:
            self._add_one(sample, now)
        # each object alone: one the intake would refuse, or one that breaks the code, costs only itself
        for e in batch.events:
            self._keep_object(self._events, self._event_stamps, dd.event, e, now, "date_happened")
        for c in batch.service_checks:
            self._keep_object(self._checks, self._check_stamps, dd.service_check, c, now, "timestamp")

    def _keep_object(self, into: list[bytes], stamps: list[float],
                     build: Callable[[Any, float, float, frozenset[str]], dict[str, Any]], what: Event | ServiceCheck,
                     now: float,
                     stamp_key: str) -> None:
        try:
            obj = build(what, now, self._margin, self._unique)
            body = dd.dumps(obj)
        except dd.Rejected as exc:
            self._reject(exc.reason, 1, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a bug or a malformed object: counted, never the batch
            self._reject("invalid", 1, f"{type(what).__name__}: {exc!r}")
            return
        if len(body) > dd.MAX_OBJECT:
            self._reject("too_large", 1, f"{type(what).__name__} of {len(body)} bytes")
            return
        into.append(body)
        stamps.append(float(obj[stamp_key]))

    def _add_one(self, sample: Sample, now: float) -> None:
        try:
            self._add(sample, now)
        except dd.Rejected as exc:
            self._reject(exc.reason, self._points_of(sample), str(exc))
        except Exception as exc:  # noqa: BLE001 - one bad sample never costs the batch
            self._reject("invalid", self._points_of(sample), f"sample {str(sample.name)[:100]!r}: {exc!r}")

    def _points_of(self, s: Sample) -> int:
        """The points a sample becomes: what rejecting it whole counts."""
        try:
            if isinstance(s.value, Points):
                if s.kind is Kind.DISTRIBUTION:
                    return len(s.value.values)
                return self._per_histogram if len(s.value.values) else 0
        except Exception:  # noqa: BLE001 - a malformed value counts as one
            pass
        return 1

    def _add(self, s: Sample, now: float) -> None:
        name = dd.metric_name(s.name)
        if not name:
            self._reject("invalid_name", self._points_of(s), f"no letter to start the name {s.name[:100]!r}")
            return
        ts = s.timestamp if s.timestamp is not None else now
        if not dd.in_window(ts, now, dd.SERIES_WINDOW, self._margin):
            self._reject("timestamp_out_of_range", self._points_of(s), f"{name[:100]!r} at {ts!r}")
            return
        if s.interval is not None and not 0 <= s.interval <= dd.MAX_INTERVAL:  # NaN too; 0: the flush interval
            self._reject("invalid", self._points_of(s), f"{name[:100]!r} over an interval of {s.interval!r} s")
            return
        value = s.value
        if isinstance(value, Points):
            self._add_points(name, s, value, ts)
            return
        value = float(value)
        if not math.isfinite(value):
            self._reject("not_finite", 1, f"{name[:100]!r} = {value!r}")
        elif len(name) > dd.MAX_NAME:
            self._reject("name_too_long", 1, f"{name[:100]!r}... ({len(name)} characters)")
        elif s.kind is Kind.COUNTER:
            delta = self._deltas.update((name, s.tags), value, now)
            if delta is not None:
                key = (name, s.tags)
                self._counts[key] = self._counts.get(key, 0.0) + delta
        elif s.kind is Kind.COUNT:
            if s.interval:  # a StatsD counter summed over its interval -> a rate, as DogStatsD sends it
                # over the whole seconds the point carries as `interval`: rate x interval is the count exactly
                seconds = dd.interval_seconds(s.interval)
                self._series_point(name, dd.RATE, value / seconds, ts, s.tags, seconds)
            else:  # a timestamped count, not aggregated
                self._series_point(name, dd.COUNT, value, ts, s.tags, self.interval)
        else:
            self._series_point(name, dd.GAUGE, value, ts, s.tags)

    def _add_points(self, name: str, s: Sample, value: Points, ts: float) -> None:
        if not value.values:
            return
        if not value.valid:
            # JSON has no NaN; a weight per value, finite (a denormal sample rate gives an infinite one)
            self._reject("not_finite", self._points_of(s), f"{name[:100]!r}: a value or weight is not finite")
            return
        if s.kind is Kind.DISTRIBUTION:
            if len(name) > dd.MAX_NAME:
                self._reject("name_too_long", len(value.values), f"{name[:100]!r}... ({len(name)} characters)")
                return
            values = dd.expand_weights(value)
            body = dd.dumps(dd.distribution(name, values, ts, s.tags, self._unique))
            if len(body) > dd.MAX_OBJECT:
                self._reject("too_large", len(values), f"distribution {name[:100]!r} of {len(body)} bytes")
                return
            self._distributions.append(body)
            self._distribution_points.append(len(values))
            self._distribution_stamps.append(ts)
            return
        interval = dd.interval_seconds(s.interval or self.interval)  # `.count` x interval: the weighted count
        for suffix, agg, kind in dd.histogram_aggregates(value, interval, self.config.histogram_aggregates,
                                                         self.config.histogram_percentiles):
            # each aggregate is a point of its own: an overflowing `.avg` costs neither `.max` nor another context
            full = name + suffix
            if not math.isfinite(agg):
                self._reject("not_finite", 1, f"{full[:100]!r} = {agg!r}")
            elif len(full) > dd.MAX_NAME:
                self._reject("name_too_long", 1, f"{full[:100]!r}... ({len(full)} characters with {suffix!r})")
            else:
                self._series_point(full, kind, agg, ts, s.tags, interval if kind == dd.RATE else None)

    def _series_point(self, name: str, kind: int, value: float, ts: float, tags: Tags,
                      interval: float | None = None) -> None:
        if not math.isfinite(value):  # computed values too (`.avg` of an overflowing sum)
            self._reject("not_finite", 1, f"{name[:100]!r} = {value!r}")
            return
        body = dd.series(name, kind, value, ts, tags, interval, self._unique)
        if len(body) > dd.MAX_OBJECT:
            self._reject("too_large", 1, f"{name[:100]!r} of {len(body)} bytes")
            return
        self._series.append(body)
        self._series_stamps.append(ts)

    def _reject(self, reason: str, points: int, detail: str) -> None:
        """A point the intake would refuse (or that cannot be built), dropped alone before it joins a payload."""
        self.metrics.inc(REJECTED, points, sink=EXPORTER, reason=reason)
        self._log.warning(f"rejected:{reason}", "datadog: dropped %d point(s) before sending (%s): %s",
                          points, reason, detail)

    # -- flushing: the interval becomes payloads in the buffer -----------------------------------

    def flush(self) -> int:
        """Close the current interval and queue its payloads; returns the points it produced."""
        return self.queue(self.close().encode())

    def close(self) -> Closed:
        """Close the current interval: what it kept, to be encoded (`Closed.encode`, which the running
        sink calls on the heavy-work thread: compressing 100,000 series takes ~170 ms)."""
        now = self.wall()
        for sample in self.hub.pull():  # task info and self-metrics, current at export time
            self._add_one(sample, now)
        for (name, tags), delta in self._counts.items():
            try:
                self._series_point(name, dd.COUNT, delta, now, tags, self.interval)
            except Exception as exc:  # noqa: BLE001
                self._reject("invalid", 1, f"{name[:100]!r}: {exc!r}")
        self._counts = {}
        self._deltas.prune(now - max(METRICS_MAX_AGE, 10 * self.interval))
        closed = Closed(self._series, self._series_stamps, self._distributions, self._distribution_points,
                        self._distribution_stamps, self._events, self._event_stamps, self._checks,
                        self._check_stamps, self._margin)
        self._series, self._series_stamps, self._distributions, self._distribution_points = [], [], [], []
        self._distribution_stamps, self._events, self._event_stamps, self._checks, self._check_stamps = [], [], [], [], []
        return closed

    def queue(self, payloads: list[dd.Payload]) -> int:
        """One flush's payloads into the send buffer (oldest dropped past its bound); returns the points queued."""
        produced = 0
        for payload in payloads:
            self._buffer.append(payload)
            self._buffered += payload.points
            self._buffered_bytes += len(payload.body)
            produced += payload.points
        self._newest = {id(p) for p in payloads}
        self._count("points_queued", produced)
        self._enforce_bound()
        self._wake.set()
        return produced

    def _enforce_bound(self) -> None:
        """Drop the oldest payloads past the bounds (points, and bytes: events and service checks cost
        kilobytes a point), never the newest flush's: a flush larger than a bound is kept whole (dropping
        it as it arrives would lose everything with a healthy intake)."""
        limit, byte_limit = self.config.datadog_buffer_points, self.config.datadog_buffer_bytes
        in_flight = self._in_flight.points if self._in_flight else 0
        in_flight_bytes = len(self._in_flight.body) if self._in_flight else 0
        while self._buffered + in_flight > limit or self._buffered_bytes + in_flight_bytes > byte_limit:
            # the oldest not of the newest flush (one of those may be back at the head for a retry)
            i = next((i for i, p in enumerate(self._buffer) if id(p) not in self._newest), None)
            if i is None:
                break
            dropped = self._buffer[i]
            del self._buffer[i]
            self._buffered -= dropped.points
            self._buffered_bytes -= len(dropped.body)
            self._count("points_dropped", dropped.points, "buffer_full")
            self._log.warning("buffer_full", "datadog: buffer full (%d points or %d bytes): dropped the oldest "
                              "%d points", limit, byte_limit, dropped.points)
        self.metrics.set("tasklens.exporter.buffer_points", self._buffered, exporter=EXPORTER)

    def _count(self, what: str, amount: float, reason: str | None = None) -> None:
        if reason is None:
            self.metrics.inc(f"tasklens.exporter.{what}", amount, exporter=EXPORTER)
        else:
            self.metrics.inc(f"tasklens.exporter.{what}", amount, exporter=EXPORTER, reason=reason)

    # -- running ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        import aiohttp

        loop = asyncio.get_running_loop()
        headers = {"DD-API-KEY": self._api_key, "Content-Type": "application/json",
                   "User-Agent": f"tasklens/{__version__}"}
        # trust_env: HTTPS_PROXY / NO_PROXY are honoured, as egress from a task often needs them
        async with aiohttp.ClientSession(headers=headers, trust_env=True) as session:
            sender = asyncio.create_task(self._send_loop(session), name="datadog-sender")
            try:
                due = self._next_flush(self.wall())
                while True:
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=max(0.0, due - self.wall()))
                    except TimeoutError:
                        pass
                    self.queue(await heavy.run(self.close().encode))  # on stop too: the final, partial interval
                    if stop.is_set():
                        break
                    due = self._next_flush(max(self.wall(), due))  # a late loop skips ticks, never piles them
                await self._drain(loop.time() + self.drain_timeout)
            except asyncio.CancelledError:
                self._give_up("cancelled")
                raise
            finally:
                await cancel(sender)

    def _next_flush(self, after: float) -> float:
        """The first flush time after `after`: just past each clock-aligned interval boundary.

        The StatsD source closes its intervals on the same boundaries, so each interval is exported
        moments after it closes (within one interval of the samples, not up to two).
        """
        offset = min(1.0, self.interval / 10)
        return (math.floor((after - offset) / self.interval) + 1) * self.interval + offset

    async def _drain(self, deadline: float) -> None:
        self._draining = True
        self._drain_deadline = deadline
        self._backoff_until = 0.0  # shutting down: try now, not after the last backoff
        self._wake.set()
        loop = asyncio.get_running_loop()
        while (self._buffer or self._in_flight) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self._buffer or self._in_flight:
            self._give_up("shutdown deadline")
        else:
            log.info("datadog: all points delivered before exit")

    def _give_up(self, why: str) -> None:
        pending = self._buffered + (self._in_flight.points if self._in_flight else 0)
        if pending:
            self._count("points_dropped", pending, "shutdown")
            log.error("datadog: %d points could not be delivered before the %s (last error: %s)",
                      pending, why, self.last_error or "none")
        self._buffer.clear()
        self._buffered = self._buffered_bytes = 0
        self._newest.clear()
        self._in_flight = None

    async def _send_loop(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._buffer:
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
            payload = self._take()
            self._buffered -= payload.points
            self._buffered_bytes -= len(payload.body)
            self._in_flight = payload
            try:
                await self._deliver(session, payload)
            except Exception as exc:  # a defect while sending costs at most this payload, never the sink
                if not (self._buffer and self._buffer[0] is payload):  # not back in the buffer for a retry
                    self._count("points_dropped", payload.points, "internal")
                self._backoff_until = loop.time() + self.backoff_max  # a defect that repeats: no busy loop
                self._log.error("internal", "datadog: sending %d points failed: %r", payload.points, exc)
            finally:
                if not (self._buffer and self._buffer[0] is payload):  # gone for good, not back for a retry
                    self._newest.discard(id(payload))
                self._in_flight = None
                self.metrics.set("tasklens.exporter.buffer_points", self._buffered, exporter=EXPORTER)

    def _take(self) -> dd.Payload:
        """The oldest payload that is not an event, else the oldest event. Events go one a request: a
        burst of them (one per failed job in an incident) must not hold back the metrics queued after
        it, which would fall further behind at every flush."""
        buffer = self._buffer
        i = next((i for i, p in enumerate(buffer) if p.path != dd.EVENTS_PATH), 0)
        payload = buffer[i]
        del buffer[i]
        return payload

    async def _deliver(self, session: aiohttp.ClientSession, payload: dd.Payload) -> None:
        loop = asyncio.get_running_loop()
        if payload.expires < self.wall():
            self._count("points_dropped", payload.points, "expired")
            return
        timeout = self.config.datadog_timeout
        if self._draining:
            timeout = max(0.1, min(timeout, self._drain_deadline - loop.time()))
        started = loop.time()
        try:
            status = await self._post(session, payload, timeout)
        except _Rejected as exc:
            self._count("points_failed", payload.points, exc.args[0])
            self._failures = 0
            return
        except Exception as exc:  # timeouts, refused connections, resets: all worth another try
            status = _reason(exc)
        finally:
            self.metrics.set("tasklens.exporter.submission_seconds", loop.time() - started, exporter=EXPORTER)
        if status == "ok":
            self._count("points_sent", payload.points)
            self._failures = 0
            self.last_success = self.wall()
            return
        # retryable: back to the head of the buffer, after a backoff with jitter
        self._in_flight = None
        self._buffer.appendleft(payload)
        self._buffered += payload.points
        self._buffered_bytes += len(payload.body)
        self._enforce_bound()
        self._failures += 1
        self._count("retries", 1)
        delay = backoff_delay(self._failures, self.backoff_base, self.backoff_max)
        if self._draining:  # the deadline is near: keep trying often
            delay = min(delay, 1.0)
        self._backoff_until = loop.time() + random.uniform(delay / 2, delay)
        self.last_error = status
        self._log.warning("retry", "datadog: %s %s failed (%s); %d points buffered, retrying in up to %.1f s",
                          "POST", payload.path, status, self._buffered, delay)

    async def _post(self, session: aiohttp.ClientSession, payload: dd.Payload, timeout: float) -> str:
        import aiohttp

        headers = {"Content-Encoding": payload.encoding} if payload.encoding else {}
        # no redirects: the key header must never follow a redirect to another host
        async with session.post(endpoint(self.url, payload.path), data=payload.body, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            code = response.status
            # the status decides from here on: a refusal's body is read for the log only, best effort
            final = 400 <= code < 500 and code not in RETRYABLE  # a 3xx, 5xx, 408, 429: tried again
            body = await read_at_most(response, ERROR_BODY_LIMIT, min(ERROR_BODY_SECONDS, timeout)) if final else b""
        self.metrics.inc("tasklens.exporter.submissions", exporter=EXPORTER, status=str(code))
        if 200 <= code < 300:
            return "ok"
        if 300 <= code < 400:  # not followed (the key would go along), not final either: the intake may come back
            return f"http_{code} (a redirect, not followed: check DD_SITE and DD_DD_URL)"
        if not final:
            return f"http_{code}"
        # the intake may echo what it was sent (the key among it): masked before it is kept or logged
        detail = self._redact.remote_text(body)
        self.last_error = f"http_{code}: {detail}"
        if code in (401, 403):
            self._log.error(f"http_{code}", "datadog: the intake %s refused the API key (HTTP %d): check DD_API_KEY"
                            " and DD_SITE; %d points dropped, not retried", mask_url(self.url), code, payload.points)
        else:
            self._log.error(f"http_{code}", "datadog: the intake refused a payload to %s (HTTP %d: %s); "
                            "%d points dropped, not retried", payload.path, code, detail, payload.points)
        raise _Rejected(f"http_{code}")

    def pending(self) -> list[dd.Payload]:
        """The payloads waiting for the intake, oldest first (not the one in flight)."""
        return list(self._buffer)

    # -- /status -----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        m, labels = self.metrics, {"exporter": EXPORTER}
        return {
            "url": mask_url(self.url),
            "flush_interval_seconds": self.interval,
            "buffered_points": self._buffered + (self._in_flight.points if self._in_flight else 0),
            "buffer_limit_points": self.config.datadog_buffer_points,
            "buffered_bytes": self._buffered_bytes,
            "buffer_limit_bytes": self.config.datadog_buffer_bytes,
            "buffered_payloads": len(self._buffer),
            "points_sent": m.get("tasklens.exporter.points_sent", **labels),
            "points_failed": exporter_total(m, "tasklens.exporter.points_failed"),
            "points_dropped": exporter_total(m, "tasklens.exporter.points_dropped"),
            "points_rejected": rejected_total(m),
            "retries": m.get("tasklens.exporter.retries", **labels),
            "consecutive_failures": self._failures,
            "last_success": _iso(self.last_success),
            "last_error": self.last_error,
        }


def exporter_total(metrics: SelfMetrics, name: str, exporter: str = EXPORTER) -> float:
    """A self-metric summed over its reasons, for one exporter."""
    return math.fsum(s.value for s in metrics.samples()  # type: ignore[misc]
                     if s.name == name and ("exporter", exporter) in s.tags)



def rejected_total(metrics: SelfMetrics, sink: str = EXPORTER) -> float:
    """Points a sink refused before queuing them, summed over the reasons."""
    return math.fsum(s.value for s in metrics.samples()  # type: ignore[misc]
                     if s.name == REJECTED and ("sink", sink) in s.tags)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    return f"error: {type(exc).__name__}"


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
