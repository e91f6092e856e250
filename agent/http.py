"""HTTP endpoints: `/metrics` (Prometheus), `/health` (alive), `/ready`, `/status` (JSON)."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import resource
import time
import weakref
import zlib
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from agent import heavy
from agent.hub import Hub
from agent.selfmetrics import SelfMetrics
from agent.sinks.prometheus import Part, PrometheusSink

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
SCRAPES_AT_ONCE = 2  # `/metrics` renderings at the same time; the others wait their turn (SingleFlight)
# `/metrics` answers written at the same time; the others wait their turn. Writing waits on the peer,
# not on the CPU, so it holds no rendering slot: peers that stop reading held both slots, and every
# scrape waited behind them (44 s behind 8). This bounds the memory held for slow and stalled peers:
# each answer keeps its body (shared by the scrapes rendered together: at 100,000 series 1.2 MB with
# gzip, as Prometheus asks, 53 MB without) and up to WRITE_CHUNK in its connection's buffer.
ANSWERS_AT_ONCE = 16
# `/metrics` is written this much at a time, each piece once the socket took the one before: a plain
# exposition of 100,000 series (53 MB) handed over whole was copied into the transport's buffer at
# once, the event loop 111 ms late (bench/metrics_exposition.py)
WRITE_CHUNK = 1 << 20
# A connection that has not delivered a complete request this long after it opened, or after its
# last response, is closed: aiohttp's keep-alive timeout, which it also applies from the connection's
# start (aiohttp >= 3.14.4). Without it a peer that connects and sends nothing, or trickles its
# headers, holds its connection for the default hour. Scrapers send a request at once; one that
# scrapes every 15 s reconnects for each scrape.
REQUEST_DEADLINE = 5.0
# Each piece (WRITE_CHUNK) of a `/metrics` answer must be taken within this, or the answer is dropped
# with its connection and counted (`tasklens.http.scrapes_abandoned`, reason "stalled"): a peer that
# asks and stops reading (its window closed) would hold its place among the ANSWERS_AT_ONCE for as
# long as it kept the connection. A deadline per piece rather than for the whole answer: a scraper
# that reads (1 MiB in 5 s is 0.2 MB/s) is served however large the answer.
STALL_DEADLINE = 5.0
# Why a `/metrics` request is counted in `tasklens.http.scrapes_abandoned`: its peer hung up before
# the answer was written (reason "gone"), or stopped reading it (reason "stalled").
ABANDONED = ("gone", "stalled")

# HTTP connections open at once, at most (ConnectionLimit): far more than scrapers and health checks
# use, and fewer under a low limit on open files, where SPARE_FILES stay for the rest of the sidecar
# (its pollers, sinks, StatsD sockets and files)
def show_addr(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets (`[::]:9102`), as the settings write it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# A connection that has not sent its whole request yet holds what it sent: up to HEADERS_MAX header
# lines of 8190 bytes (aiohttp's bound on one line) and the request line, about 0.5 MiB of memory with
# the parser's copies. CONNECTIONS_MAX of them bound that memory (64 MiB: tests/test_http_memory.py); a
# scraper, a health check and a browser need a few connections each.
CONNECTIONS_MAX = 128
HEADERS_MAX = 32  # aiohttp's default is 128; a browser sends about 15, Prometheus 6
SPARE_FILES = 128


def connections_limit() -> int:
    """CONNECTIONS_MAX, or what the limit on open files leaves of it."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return CONNECTIONS_MAX
    return max(min(CONNECTIONS_MAX, soft - SPARE_FILES), 16)


# the last connections the sidecar itself closed (`ConnectionLimit`): their peers did not hang up, and a
# request already read from one is not counted as abandoned ("gone") as well. aiohttp's connections take
# no weak reference: the newest CLOSED_KEPT are held (a request finds its connection closed at once)
CLOSED_KEPT = 1024
CLOSED_HERE: collections.OrderedDict[object, None] = collections.OrderedDict()


def closed_here(connection: object) -> None:
    CLOSED_HERE[connection] = None
    while len(CLOSED_HERE) > CLOSED_KEPT:
        CLOSED_HERE.popitem(last=False)


class ConnectionLimit:
    """At most `limit` HTTP connections: over it, a new connection closes the oldest one that has no
    request under way (one idle after an answer, or that has not sent a whole request yet), counted in
    `tasklens.http.connections_over_limit`.

    A peer that holds connections open took every descriptor: `/health` and the resource poll failed
    with EMFILE. Refusing the new connection instead would refuse `/health` while the peer holds the
    rest; aiohttp has no limit of its own."""

    def __init__(self, limit: int, metrics: SelfMetrics) -> None:
        self.limit = limit
        self._metrics = metrics
        self._answering: set[web.RequestHandler] = set()  # connections with a request under way
        metrics.inc("tasklens.http.connections_over_limit", 0.0)  # exported from the start

    def protocols(self, server: web.Server) -> Callable[[], asyncio.BaseProtocol]:
        """The protocol factory to listen with, in front of aiohttp's `server`."""

        def protocol() -> asyncio.BaseProtocol:
            # a connection closed here leaves `server.connections` a moment later: not counted again
            connections = [c for c in server.connections if c.transport is not None]  # oldest first
            over = len(connections) + 1 - self.limit
            for connection in connections:
                if over <= 0:
                    break
                if connection not in self._answering:
                    closed_here(connection)
                    connection.force_close()
                    self._metrics.inc("tasklens.http.connections_over_limit")
                    over -= 1
            return server()

        return protocol

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self._answering.add(request.protocol)
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            self._answering.discard(request.protocol)


class CountingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger (`logger=` of its request handlers), counting each request it answers with
    an error of its own ("Error handling request", logged by `handle_error` for every such answer) in
    `tasklens.http.errors{reason}`: `bad_request` (malformed: a header over 8 KiB, too many headers,
    garbage on the port: its 400), or `server_error` (the sidecar failed the request: an exception in a
    handler, its 500; a handler past its deadline, its 504). Those answers never reach the middleware;
    the log lines stay rate-limited (`logs.OneLinePerInterval`)."""

    def __init__(self, metrics: SelfMetrics) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._metrics = metrics
        for reason in ("bad_request", "server_error"):
            metrics.inc("tasklens.http.errors", 0.0, reason=reason)  # exported from the start

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if isinstance(msg, str) and msg.startswith("Error handling request"):
            bad = isinstance(kwargs.get("exc_info"), HttpProcessingError)
            self._metrics.inc("tasklens.http.errors", reason="bad_request" if bad else "server_error")
        super().log(level, msg, *args, **kwargs)


class SingleFlight:
    """Concurrent callers with the same key share one run of `fn` in a worker thread, and at most
    `at_once` runs (of different keys) go at a time.

    Twenty scrapes arriving together render `/metrics` once instead of twenty times side by side,
    each holding the GIL in turn while the event loop (StatsD, `/health`) waits for it. A caller joins
    the run of its key also while that run waits for its turn: when each caller took a turn first,
    eight scrapes arriving together rendered four times, one pair after the other.
    """

    def __init__(self, at_once: int) -> None:
        self._running: dict[object, asyncio.Future[list[Part]]] = {}
        self._turns = asyncio.Semaphore(at_once)

    async def run(self, key: object, fn: Callable[[], list[Part]]) -> list[Part]:
        future = self._running.get(key)
        if future is None:
            future = self._running[key] = asyncio.ensure_future(self._in_turn(fn))
            future.add_done_callback(lambda f: self._forget(key, f))
        # shield: a scraper that hangs up does not cancel the rendering the others wait for
        return await asyncio.shield(future)

    async def _in_turn(self, fn: Callable[[], list[Part]]) -> list[Part]:
        async with self._turns:
            return await heavy.run(fn)

    def _forget(self, key: object, future: asyncio.Future[list[Part]]) -> None:
        if self._running.get(key) is future:
            del self._running[key]
        if not future.cancelled():
            future.exception()  # retrieved: no "never retrieved" warning when every caller left


class GzipCache:
    """gzip of `/metrics` without compressing the worker's series again for every scrape.

    The first part (the worker's series: nearly all of a large exposition, the same object until
    the data changes) is compressed once; the compressor's state after it is kept, and each scrape
    continues a copy of it with the rest (the sidecar's series, new every time). One gzip member, as
    if compressed whole. 100,000 series: 20 MB compressed once per change instead of once per scrape.

    The first part is referenced weakly where it can be (the sink's memoryview): a kept state must
    not keep a rendering the sink let go (~70 MB with the label bytes full) alive while the sink
    renders the next one; its output and state go with it. Bytes are held."""

    def __init__(self) -> None:
        # key -> (the first part, or a weak reference to it; its output; the state after it)
        self._kept: dict[object, tuple[Callable[[], object], bytes, Any]] = {}

    def compress(self, key: object, parts: list[Part]) -> bytes:
        first, rest = parts[0], parts[1:]
        kept = self._kept.get(key)
        if kept is None or kept[0]() is not first:
            # the last one's output and state go before the new ones are made (from this frame too)
            self._kept.pop(key, None)
            kept = None
            # level 1: ~0.15 s for 53 MB, with the GIL released
            gz = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            kept = self._kept[key] = (self._reference(key, first), gz.compress(first), gz)
        gz = kept[2].copy()
        return b"".join([kept[1]] + [gz.compress(p) for p in rest] + [gz.flush()])

    def _reference(self, key: object, first: Part) -> Callable[[], object]:
        try:
            return weakref.ref(first, lambda gone: self._forget(key, gone))
        except TypeError:  # bytes cannot be referenced weakly: held
            return lambda: first

    def _forget(self, key: object, ref: object) -> None:
        """The first part is gone: its output and state too. (Another thread may have just kept another
        in its place: then that one is compressed again, once.)"""
        kept = self._kept.get(key)
        if kept is not None and kept[0] is ref:
            self._kept.pop(key, None)


def quality(header: str, wanted: str) -> float:
    """The q value an `Accept` or `Accept-Encoding` header gives `wanted` (`type/subtype`, or a coding),
    from its most specific entry (`type/subtype`, then `type/*`, then `*/*` or `*`); 0 when none names
    it. Case-insensitive, parameters other than q ignored, a q that is no number in 0-1 taken as 0."""
    wanted = wanted.lower()
    ranges = (wanted, wanted.split("/")[0] + "/*", "*/*") if "/" in wanted else (wanted, "*")
    found: dict[str, float] = {}
    for entry in header.split(","):
        item, *params = entry.split(";")
        item = item.strip().lower()
        if item not in ranges:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                q = q if 0.0 <= q <= 1.0 else 0.0  # also NaN
        found[item] = max(found.get(item, 0.0), q)
    return next((found[r] for r in ranges if r in found), 0.0)


def negotiate(accept: str) -> bool:
    """True for OpenMetrics: only when the scraper does not take the text format and takes OpenMetrics
    (else the text format, also for a header that takes neither).

    Prometheus lists both and prefers OpenMetrics; the text format keeps a sampled histogram's
    weighted counts exact, where OpenMetrics needs them rounded to integers.
    """
    if not accept.strip():
        return False
    return quality(accept, "text/plain") == 0 and quality(accept, "application/openmetrics-text") > 0


def make_app(hub: Hub, prometheus: PrometheusSink, ready: Callable[[], bool],
             status: Callable[[], dict[str, Any]]) -> web.Application:
    started = time.time()
    # two renderings at a time: each one renders (off the event loop) and compresses 1.2-53 MB at
    # 100,000 series; twenty at once would fill the event loop's queue ahead of `/health` (measured:
    # bench/health_under_load.py)
    flights = SingleFlight(SCRAPES_AT_ONCE)
    gzipped = GzipCache()  # used by one rendering at a time per key (SingleFlight)
    answering = asyncio.Semaphore(ANSWERS_AT_ONCE)
    hub.metrics.declare("tasklens.http.scrapes_abandoned", ABANDONED)

    async def metrics(request: web.Request) -> web.StreamResponse:
        try:
            return await answer_metrics(request)
        except asyncio.CancelledError:
            # the runner cancels a handler whose peer hangs up (handler_cancellation); at shutdown the
            # peer is still there, and that is not counted
            if gone(request):
                hub.metrics.inc("tasklens.http.scrapes_abandoned", reason="gone")
            raise

    async def answer_metrics(request: web.Request) -> web.StreamResponse:
        openmetrics = negotiate(request.headers.get("Accept", ""))
        headers = {"Content-Type": OPENMETRICS if openmetrics else TEXT}
        compress = quality(request.headers.get("Accept-Encoding", ""), "gzip") > 0
        if compress:  # Prometheus asks: 53 MB -> 1.2 MB at 100k series
            headers["Content-Encoding"] = "gzip"

        def render() -> list[Part]:
            parts = prometheus.render_parts(openmetrics)
            # uncompressed, the parts are written as they are: the worker's is the sink's cached rendering
            # (~70 MB with its label bytes full), and joining them made a copy of it for every scrape
            return [gzipped.compress(openmetrics, parts)] if compress else parts

        # its place to write is taken first: no body is rendered, and kept, for an answer that must
        # wait to be written
        async with answering:
            if gone(request):  # it hung up while it waited its turn: render and write nothing for it
                hub.metrics.inc("tasklens.http.scrapes_abandoned", reason="gone")
                return web.Response()  # aiohttp finds the connection closed and sends nothing
            # off the event loop, and shared by concurrent scrapes: a large exposition must not stall
            # the StatsD receive path or `/health`
            parts = await flights.run((openmetrics, compress), render)
            response = web.StreamResponse(headers=headers)
            response.content_length = sum(map(len, parts))
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(STALL_DEADLINE) as deadline:
                    await response.prepare(request)
                    for part in parts if request.method != "HEAD" else ():
                        view = memoryview(part)
                        for start in range(0, len(part), WRITE_CHUNK):
                            await response.write(view[start:start + WRITE_CHUNK])  # as the socket drains: no 53 MB at once
                            deadline.reschedule(loop.time() + STALL_DEADLINE)  # it took the piece: as long for the next
                    await response.write_eof()
            except ConnectionError:  # it hung up during the answer
                if request.protocol not in CLOSED_HERE:
                    hub.metrics.inc("tasklens.http.scrapes_abandoned", reason="gone")
                return response
            except TimeoutError:
                hub.metrics.inc("tasklens.http.scrapes_abandoned", reason="stalled")
                if request.transport is not None:
                    request.transport.abort()  # what is buffered for it goes too
                return response
        hub.metrics.inc("tasklens.http.scrapes")
        return response

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready_handler(request: web.Request) -> web.Response:
        ok = ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def status_handler(request: web.Request) -> web.Response:
        body = {
            "identity": hub.identity.as_dict(),
            "ready": ready(),
            "uptime_seconds": round(time.time() - started, 3),
            "components": status(),
        }
        return web.json_response(body, dumps=_dumps)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready_handler)
    app.router.add_get("/status", status_handler)
    return app


def gone(request: web.Request) -> bool:
    """The peer hung up (or half-closed: aiohttp closes the connection on the peer's FIN, so no
    answer could reach it); not a connection closed here (`CLOSED_HERE`), counted as such."""
    closed = request.transport is None or request.transport.is_closing()
    return closed and request.protocol not in CLOSED_HERE


def json_text(obj: Any, indent: int | None = None) -> str:
    """JSON every parser reads: a number that is not finite (a sum that overflowed, say) is null, never
    `Infinity` or `NaN`, which are no JSON (`JSON.parse` refuses the whole document for one of them)."""
    try:
        return json.dumps(obj, indent=indent, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(obj), indent=indent, default=str, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _dumps(obj: Any) -> str:
    return json_text(obj, indent=2)
