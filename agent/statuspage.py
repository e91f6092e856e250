"""The status page at `GET /`: the last hour of this task at a glance, without Prometheus or Grafana.

`PageHistory` is a sink: it keeps a few series of each ECS (or local) and queue batch in fixed-size
rings, sampled once per poll, so memory is bounded whatever the number of containers and queues
(`MAX_CONTAINERS`, `MAX_QUEUES`, `MAX_POINTS`). StatsD batches are looked at only while somebody is
watching (a page fetched its data in the last `WATCHING` seconds): nobody looking costs nothing on
the StatsD path. The page itself (static/status.html) is one self-contained file: no external
asset, a Content-Security-Policy that forbids any, and every name from outside (container, queue,
StatsD metric, log text) is written into the page as text, never as HTML.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any, TypeGuard

from aiohttp import web

from agent.hub import Hub
from agent.http import json_text
from agent.model import Batch, Kind, Points
from agent.urlmask import mask_text
from integrations.queues.trend import trend_window  # the trend windows' rule: 3 polls at least

MAX_CONTAINERS = 20
MAX_QUEUES = 20
MAX_POINTS = 360  # per series: one hour at the default 10 s poll; faster polls are thinned out
TOP_STATSD = 10
MAX_ERRORS = 20
WATCHING = 300.0  # seconds after the last page fetch during which StatsD batches are ranked
SNAPSHOT_REUSE = 1.0  # seconds a snapshot of /status/history is served again

# no external request can leave the page: scripts and styles only inline, fetches only to us
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
       "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
           "Referrer-Policy": "no-referrer"}

# the container series the page charts or shows, by sample name
CONTAINER_SERIES = {
    "ecs.container.cpu.utilization_percent": "cpu_percent",
    "ecs.container.memory.working_set_bytes": "working_set_bytes",
}
CONTAINER_LATEST = {
    "ecs.container.memory.limit_bytes": "limit_bytes",
    "ecs.container.memory.time_to_limit_seconds": "time_to_limit_seconds",
    "ecs.container.memory.growth_bytes_per_hour": "growth_bytes_per_hour",
    "ecs.container.memory.leak_suspected": "leak_suspected",
    "ecs.container.memory.peak_working_set_bytes": "peak_working_set_bytes",
    "ecs.container.oom_kills_total": "oom_kills",
    "ecs.container.restarts_total": "restarts",
    "ecs.container.cpu.saturated": "cpu_saturated",
    "ecs.container.running": "running",
}
TASK_SERIES = {"ecs.task.cpu.utilization_percent": "cpu_percent",
               "ecs.task.memory.working_set_bytes": "working_set_bytes"}
QUEUE_SERIES = {"queue.depth": "depth"}
QUEUE_LATEST = {"queue.growth_rate": "growth_rate", "queue.drain_seconds": "drain_seconds",
                "queue.backing_up": "backing_up"}


class Ring:
    """The last `capacity` (time, value) points in two preallocated arrays: 16 bytes a point.

    Time is cut into buckets of `spacing` seconds and a bucket keeps its latest point: polls faster than
    that are thinned out, the last point is always the latest reading, and `capacity` points span
    `capacity - 1` buckets however often the polls come (a rule of "at least `spacing` after the last
    point" would space them further apart than that and keep less than the history). A step of the
    clock back by more than a bucket starts the ring afresh: its points' times are the old clock's."""

    __slots__ = ("head", "size", "spacing", "t", "v")

    def __init__(self, capacity: int, spacing: float) -> None:
        self.t = array("d", bytes(8 * capacity))
        self.v = array("d", bytes(8 * capacity))
        self.head = 0
        self.size = 0
        self.spacing = spacing

    def add(self, t: float, value: float | None) -> None:
        cap = len(self.t)
        if self.size:
            last = self.t[(self.head - 1) % cap]
            if t < last - self.spacing:
                self.size = 0  # the clock stepped back
            elif t <= last:
                return
            elif self.spacing > 0 and t // self.spacing == last // self.spacing:
                self.head, self.size = (self.head - 1) % cap, self.size - 1  # replaced
        self.t[self.head] = t
        self.v[self.head] = math.nan if value is None or not math.isfinite(value) else value
        self.head = (self.head + 1) % cap
        self.size = min(self.size + 1, cap)

    def points(self, since: float = -math.inf) -> list[list[float | None]]:
        """Oldest first, from `since` on; a missing value is None (shown as a gap, never as 0)."""
        cap = len(self.t)
        out: list[list[float | None]] = []
        for i in range(self.head - self.size, self.head):
            t, v = self.t[i % cap], self.v[i % cap]
            if t >= since:
                # 3 decimals: plenty for a chart (bytes are whole), half the JSON of full doubles
                out.append([round(t, 1), None if math.isnan(v) else round(v, 3)])
        return out


class RecentErrors(logging.Handler):
    """The last warnings and errors of the sidecar's own log, for the page: each message masked as the
    log masks it (`mask_text` with `secrets`, `logs.known_secrets`) when it is kept, then cut (a cut
    never shows part of what the mask would have matched whole). This handler is not the log's: without
    it, a message quoting an endpoint's answer was kept as written."""

    def __init__(self, size: int = MAX_ERRORS, secrets: Iterable[str] = ()) -> None:
        super().__init__(logging.WARNING)
        self.records: deque[dict[str, Any]] = deque(maxlen=size)
        self.secrets = tuple(secrets)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in somebody's log call: keep the raw text
            message = str(record.msg)
        self.records.append({"time": record.created, "level": record.levelname, "logger": record.name,
                             "message": mask_text(message, self.secrets)[:500]})


class PageHistory:
    """A sink that keeps what the status page charts. Never blocks: a few dict and array writes a poll."""

    name = "statuspage"

    def __init__(self, hub: Hub, *, history_seconds: float = 3600.0, clock: Callable[[], float] = time.time,
                 secrets: Iterable[str] = ()) -> None:
        self.hub = hub
        self.history_seconds = history_seconds
        self.spacing = history_seconds / (MAX_POINTS - 1)  # MAX_POINTS points span the history (`Ring`)
        self.clock = clock
        self.task: dict[str, Ring] = {}
        self.containers: dict[str, dict[str, Any]] = {}
        self.queues: dict[str, dict[str, Any]] = {}
        self.statsd: list[dict[str, Any]] = []
        self.processes: list[dict[str, Any]] = []  # the latest top processes (agent/processes.py)
        self.statsd_at: float | None = None
        self.dropped = 0  # containers or queues beyond the caps
        self.errors = RecentErrors(secrets=secrets)  # `secrets`: what the log masks (`logs.known_secrets`)
        self.watched_at = -math.inf

    def _ring(self) -> Ring:
        return Ring(MAX_POINTS, self.spacing)

    # -- Sink ---------------------------------------------------------------------------------

    def accept(self, batch: Batch) -> None:
        now = self.clock()
        if batch.source in ("ecs", "local"):
            self._resources(batch, now)
        elif batch.source.startswith("queue"):
            self._queue(batch, now)
        elif batch.source == "processes":
            self._processes(batch)
        elif batch.source == "statsd" and now - self.watched_at < WATCHING:
            self._statsd(batch, now)

    async def run(self, stop: asyncio.Event) -> None:
        """Collect the sidecar's own warnings and errors while running."""
        logger = logging.getLogger("tasklens")
        logger.addHandler(self.errors)
        try:
            await stop.wait()
        finally:
            logger.removeHandler(self.errors)

    def status(self) -> dict[str, Any]:
        return {"containers": len(self.containers), "queues": len(self.queues), "dropped": self.dropped,
                "history_seconds": self.history_seconds}

    # -- what each batch leaves behind ---------------------------------------------------------

    def _resources(self, batch: Batch, now: float) -> None:
        seen: dict[str, dict[str, float]] = {}
        task: dict[str, float] = {}
        for s in batch.samples:
            if not _number(s.value):
                continue
            if s.name in TASK_SERIES:
                task[TASK_SERIES[s.name]] = float(s.value)
                continue
            key = CONTAINER_SERIES.get(s.name) or CONTAINER_LATEST.get(s.name)
            if key is None:
                continue
            name = dict(s.tags).get("container_name")
            if name:
                seen.setdefault(name, {})[key] = float(s.value)
        for key in TASK_SERIES.values():
            self.task.setdefault(key, self._ring()).add(now, task.get(key))
        for name, values in seen.items():
            entry = self.containers.get(name)
            if entry is None:
                if len(self.containers) >= MAX_CONTAINERS:
                    self.dropped += 1
                    continue
                entry = self.containers[name] = {"series": {k: self._ring() for k in CONTAINER_SERIES.values()}}
            for key, ring in entry["series"].items():
                ring.add(now, values.get(key))
            entry["latest"] = {k: values.get(k) for k in CONTAINER_LATEST.values()}
            entry["seen"] = now
        for name in [n for n, e in self.containers.items() if now - e["seen"] > self.history_seconds]:
            del self.containers[name]  # gone for longer than the page shows

    def _queue(self, batch: Batch, now: float) -> None:
        values: dict[str, dict[str, float]] = {}
        for s in batch.samples:
            key = QUEUE_SERIES.get(s.name) or QUEUE_LATEST.get(s.name)
            if key is not None and _number(s.value):
                values.setdefault(dict(s.tags).get("queue") or batch.source, {})[key] = float(s.value)
        for name in values or {batch.source.partition(":")[2] or batch.source: {}}:
            entry = self.queues.get(name)
            if entry is None:
                if len(self.queues) >= MAX_QUEUES:
                    self.dropped += 1
                    continue
                entry = self.queues[name] = {"series": {k: self._ring() for k in QUEUE_SERIES.values()}}
            got = values.get(name, {})
            for key, ring in entry["series"].items():
                ring.add(now, got.get(key))  # a failed poll is a gap in the chart
            entry["latest"] = {k: got.get(k) for k in QUEUE_LATEST.values()}

    def _processes(self, batch: Batch) -> None:
        top: dict[str, dict[str, float]] = {}
        for s in batch.samples:
            name = dict(s.tags).get("process")
            if name and _number(s.value):
                top.setdefault(name, {})[s.name.rsplit(".", 1)[-1]] = float(s.value)
        self.processes = [{"name": n, **v} for n, v in sorted(top.items(), key=lambda kv: -kv[1].get("rss_bytes", 0))]

    def _statsd(self, batch: Batch, now: float) -> None:
        """The busiest StatsD metrics of this flush: values received per second, by name."""
        rates: dict[str, float] = {}
        for s in batch.samples:
            interval = s.interval or 0.0
            if interval <= 0:
                continue
            if isinstance(s.value, Points):
                n = s.value.count
            elif s.kind is Kind.COUNT:
                n = abs(s.value)
            else:
                continue
            rates[s.name] = rates.get(s.name, 0.0) + n / interval
        top = sorted(rates.items(), key=lambda kv: -kv[1])[:TOP_STATSD]
        self.statsd = [{"name": name[:200], "per_second": rate} for name, rate in top]
        self.statsd_at = now

    # -- the page's data --------------------------------------------------------------------------

    def snapshot(self, components: dict[str, Any]) -> dict[str, Any]:
        self.watched_at = self.clock()
        since = self.watched_at - self.history_seconds
        return {
            "generated_at": self.watched_at,
            "history_seconds": self.history_seconds,
            "identity": self.hub.identity.as_dict(),
            "task": {k: r.points(since) for k, r in self.task.items()},
            "containers": [{"name": name, **{k: r.points(since) for k, r in e["series"].items()}, **e.get("latest", {})}
                           for name, e in sorted(self.containers.items())],
            "queues": [{"name": name, **{k: r.points(since) for k, r in e["series"].items()}, **e.get("latest", {})}
                       for name, e in sorted(self.queues.items())],
            "statsd": {"busiest": self.statsd, "at": self.statsd_at},
            "processes": self.processes,
            "errors": list(self.errors.records)[::-1],
            "components": {name: _health(status) for name, status in components.items()},
        }


def status_window(config: Any, sources: Iterable[Any] = ()) -> float:
    """The history the page keeps: TASKLENS_STATUS_HISTORY, widened to 3 polls of the slowest source it
    charts (ECS, each queue under shared polling), as the trend windows are (`trend_window`): a history
    shorter than that would chart one point or none."""
    window = trend_window(config.status_history, config.poll_interval)
    for source in sources:
        share = getattr(source, "share", None)  # a queue source's: its interval and its share of the polls
        if share is not None:
            window = max(window, trend_window(config.status_history, source.interval, share))
    return window


def _number(value: object) -> TypeGuard[float]:
    """A plain number (sources may hand over ints); not a bool, not a histogram's Points."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _health(status: Any) -> dict[str, Any]:
    """A component's status reduced to what the page shows: ok or not, and why. A component that reports
    no failure (not ready, failed polls or pushes, an error, a problem its deployment must fix, a loop) is
    ok: it runs, and a crash is restarted, counted and logged (the page's recent errors show it)."""
    if not isinstance(status, dict):
        return {"ok": None}
    if status.get("problem"):  # the profiler cannot run (py-spy missing, ptrace denied)
        return {"ok": False, "error": str(status["problem"])[:300]}
    if status.get("loop_detected"):  # the forwarder's lines come back to this sidecar
        return {"ok": False, "error": str(status.get("last_error") or "loop detected")[:300]}
    error = status.get("last_error")
    ok = status.get("ready")
    if ok is None and "consecutive_failures" in status:
        ok = not status["consecutive_failures"]
    return {"ok": ok if isinstance(ok, bool) else not error, "error": str(error)[:300] if error else None}


def page_html() -> bytes:
    return resources.files("agent").joinpath("static/status.html").read_bytes()


def add_routes(app: web.Application, history: PageHistory, components: Callable[[], dict[str, Any]]) -> None:
    """`GET /` (the page) and `GET /status/history` (its data) on the sidecar's HTTP app."""
    html = page_html()  # read once: the page is static, the data comes from the JSON
    made: list[tuple[float, str]] = []  # the last snapshot's JSON and when it was made

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=html, content_type="text/html", charset="utf-8", headers=HEADERS)

    async def data(request: web.Request) -> web.Response:
        # a snapshot is built on the event loop: at most one a second, however many tabs (or clients) ask
        now = time.monotonic()
        if not made or now - made[0][0] >= SNAPSHOT_REUSE:
            made[:] = [(now, json_text(history.snapshot(components())))]
        response = web.Response(text=made[0][1], content_type="application/json", headers=HEADERS)
        response.enable_compression()  # ~400 KB of JSON at the caps, ~25 KB gzipped
        return response

    app.router.add_get("/", page)
    app.router.add_get("/status/history", data)
