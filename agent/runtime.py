"""Builds the components the configuration names and runs them until SIGTERM (or SIGINT, SIGHUP).

Sources (ECS or local, StatsD, queues, profiler) feed the hub; sinks (Prometheus, Datadog, DogStatsD
forwarding) export. Shutdown has two phases so that nothing collected is lost: first the sources stop
and flush their last (partial) interval into the hub, then the sinks flush to their back ends, all
within `shutdown_timeout`. What is still running then is cancelled and logged.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import importlib
import logging
import os
import resource
import socket
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent import http, memory, stopping
from agent.config import Config, ConfigError
from agent.hub import Component, Hub, Sink
from agent.identity import Identity, local_identity
from agent.logs import RateLimitedLog, known_secrets, masked
from agent.redact import log_secrets
from agent.selfmetrics import SelfMetrics
from agent.sinks.prometheus import PrometheusSink

if TYPE_CHECKING:
    from agent.statuspage import PageHistory

log = logging.getLogger("tasklens")
MEMORY_RELEASE_EVERY = 30.0  # seconds; a trim with nothing to give back costs well under a millisecond
MEMORY_CHECK_EVERY = 1.0  # seconds between looks for a burst's second trim (see agent/memory.py)
HTTP_GRACE = 1.0  # seconds an answer under way at shutdown may take to finish (aiohttp waits 60 s)
# push sinks: name -> (is it configured?, "module:Class" taking (config, hub)); imported only when configured
SINKS: dict[str, tuple[Callable[[Config], bool], str]] = {
    "remote_write": (lambda c: bool(c.remote_write_url), "agent.sinks.remote_write:RemoteWriteSink"),
    "otlp": (lambda c: bool(c.otlp_endpoint or c.otlp_metrics_endpoint), "agent.sinks.otlp:OtlpSink"),
    "emf": (lambda c: c.cloudwatch == "emf", "agent.sinks.emf:EmfSink"),
}


def raise_open_files_limit() -> None:
    """The soft limit on open files up to the hard one: docker's soft limit is often 1024 (its hard
    one far higher), and each HTTP connection takes a descriptor that `/health`, the pollers and the
    sinks need too: 1,100 connections held open failed `/health` and the resource poll (EMFILE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # a hard limit of "unlimited" is refused on Linux
            log.debug("open files: soft limit %s kept, not raised to %s: %s", soft, hard, exc)
            return
    log.debug("open files: limit %s (was %s)", hard, soft)


def _dual_stack(port: int) -> socket.socket | None:
    """One socket on `::` for both families (asyncio sets IPV6_V6ONLY: `::` would not answer on
    127.0.0.1), as the StatsD listener binds `::`; None where the system has none, or where another
    process holds the port over IPv4 only: then `::` serves IPv6 alone, as it did, with a warning."""
    if not socket.has_dualstack_ipv6():
        return None
    try:
        return socket.create_server(("::", port), family=socket.AF_INET6, backlog=128, reuse_port=False,
                                    dualstack_ipv6=True)  # (SO_REUSEADDR set)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        log.warning("HTTP on [::]:%d: the port is taken over IPv4 (another process): serving IPv6 only", port)
        return None


class Runtime:
    def __init__(self, config: Config, environ: Mapping[str, str] | None = None) -> None:
        from agent.sources.ecs import metadata_base_url

        self.config = config
        self.environ = os.environ if environ is None else environ
        # what every log line is masked with (`logs.setup`): the status and the page's errors are too
        self.secrets = known_secrets(log_secrets(config, self.environ), self.environ)
        self.metadata_url = metadata_base_url(self.environ)
        identity = local_identity(config, self.environ)
        if self.metadata_url:
            # until the first poll answers, only what the configuration says is known
            identity = Identity(service=identity.service, env=identity.env, version=identity.version,
                                extra=config.tags)
        self.metrics = SelfMetrics()
        self.hub = Hub(identity, self.metrics)
        self.prometheus = PrometheusSink(self.metrics, pull=self.hub.pull, ttl=config.series_ttl,
                                         buckets=config.histogram_buckets, identity=lambda: self.hub.identity.tags,
                                         counter_ttl=config.statsd_context_ttl)
        self.sources: list[Component] = []
        self.sinks: list[Sink] = [self.prometheus]
        self.http_addresses: list[tuple[str, int]] = []
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.page: PageHistory | None = None  # the status page's history, when enabled
        self._log = RateLimitedLog(log, interval=60.0)

    # -- assembly: each component is imported only when the configuration names it -------------

    async def build(self) -> None:
        config, hub = self.config, self.hub
        if self.metadata_url:
            from agent.sources.ecs import EcsSource

            self.sources.append(EcsSource(config, hub, self.metadata_url))
        else:
            from agent.sources.local import LocalSource

            log.info("ECS_CONTAINER_METADATA_URI_V4 is not set: not on ECS, running in local mode")
            self.sources.append(LocalSource(config, hub))
        if config.statsd_enabled:
            from agent.statsd.server import StatsdServer

            statsd = StatsdServer(config, hub)
            await statsd.start()
            self.sources.append(statsd)
        if config.queues:
            from integrations.queues.source import queue_sources

            self.sources += queue_sources(config, hub)  # ConfigError on a bad or duplicate URL
        if config.top_processes:  # needs pidMode task to see the workers' processes
            from agent.processes import MIN_INTERVAL, ProcessSource

            interval = max(config.poll_interval, MIN_INTERVAL)
            self.sources.append(ProcessSource(hub, interval=interval, n=config.top_processes))
        self._add_scaling()
        if config.profiling_enabled:
            from integrations.profilers.pyspy import PySpyProfiler

            self.sources.append(PySpyProfiler(config, hub))
        if config.datadog_enabled:
            from agent.sinks.datadog import DatadogSink

            self.sinks.append(DatadogSink(config, hub))
        if config.dogstatsd_forward:
            from agent.sinks.dogstatsd_forward import DogStatsdForwarder

            self.sinks.append(DogStatsdForwarder(config, hub))
        for configured, target in SINKS.values():
            if configured(config):
                module, _, cls = target.partition(":")
                self.sinks.append(getattr(importlib.import_module(module), cls)(config, hub))
        if config.status_page:  # GET /: keeps the last hour of a few series per container and queue
            from agent.statuspage import PageHistory, status_window

            self.page = PageHistory(hub, history_seconds=status_window(config, self.sources), secrets=self.secrets)
            self.sinks.append(self.page)
        for sink in self.sinks:
            if sink is not self.prometheus:
                hub.add_sink(sink)
        hub.add_sink(self.prometheus)

    def _add_scaling(self) -> None:
        """The task heartbeat (CloudWatch counts tasks with it), and scale-in protection when a busy
        rule is set: a source of its own state and a sink that watches the rule's metrics."""
        from agent.scaling.heartbeat import Heartbeat

        self.sources.append(Heartbeat(self.hub, target=self.config.scaling_target,
                                      max_tasks=self.config.scaling_max_tasks))
        if self.config.scale_in_protection:
            from agent.scaling.protection import ENV_AGENT_URI, ScaleInProtection

            protection = ScaleInProtection(
                self.config.scale_in_protection, self.hub, self.environ.get(ENV_AGENT_URI, "").strip() or None,
                idle=self.config.scale_in_idle, expires_minutes=self.config.scale_in_expires_minutes,
                metadata_url=self.metadata_url, poll_interval=self.config.poll_interval)
            self.sources.append(protection)
            self.hub.add_sink(protection)

    def ready(self) -> bool:
        first = self.sources[0] if self.sources else None
        return bool(getattr(first, "ready", True))

    def status(self) -> dict[str, Any]:
        """Each component's status, as `/status` and `/status/history` show it: every text in it masked as
        a log line is (`logs.masked`), whatever the component kept (an endpoint's error body quoting a
        credential, a library's exception text)."""
        out: dict[str, Any] = {}
        for component in [*self.sources, *self.sinks]:
            status = getattr(component, "status", None)
            out[component.name] = status() if callable(status) else {}
        shown: dict[str, Any] = masked(out, self.secrets)
        return shown

    async def start_http(self) -> None:
        app = http.make_app(self.hub, self.prometheus, self.ready, self.status)
        if self.page is not None:
            from agent.statuspage import add_routes

            add_routes(app, self.page, self.status)
        limit = http.ConnectionLimit(http.connections_limit(), self.metrics)
        app.middlewares.append(limit.middleware)
        # handler_cancellation: a request whose peer hangs up stops where it is (aiohttp >= 3.9 lets it
        # run on): a `/metrics` request then no longer waits its turn, renders and writes for nobody.
        # The handlers only read, so stopping one anywhere leaves nothing half done.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True,
                                     keepalive_timeout=http.REQUEST_DEADLINE, shutdown_timeout=HTTP_GRACE,
                                     max_headers=http.HEADERS_MAX,
                                     logger=http.CountingLogger(self.metrics))
        await self._runner.setup()
        assert self._runner.server is not None  # made by setup()
        host, port = self.config.http_addr

        # listening here rather than through a TCPSite: the connection limit sits in front of aiohttp's
        # protocol factory (closed in serve(), before the runner's cleanup)
        try:
            sock = _dual_stack(port) if host == "::" else None
            where: dict[str, Any] = {"sock": sock} if sock is not None else {
                "host": host, "port": port, "reuse_address": True, "backlog": 128}
            self._listener = await asyncio.get_running_loop().create_server(limit.protocols(self._runner.server),
                                                                            **where)
        except OSError as exc:
            raise OSError(exc.errno, f"HTTP listener on {http.show_addr(host, port)} (TASKLENS_HTTP_ADDR): "
                                     f"{exc.strerror}") from None
        log.debug("HTTP: at most %d connections", limit.limit)
        self.http_addresses = [s.getsockname()[:2] for s in self._listener.sockets]
        log.info("HTTP on %s (/metrics, /health, /ready, /status)",
                 ", ".join(http.show_addr(h, p) for h, p in self.http_addresses))

    # -- running -------------------------------------------------------------------------------

    async def _supervise(self, component: Component, stop: asyncio.Event) -> None:
        """Run a component; if it crashes, count it, log it and restart it: one part never stops the rest."""
        delay = 1.0
        while True:
            started = time.monotonic()
            try:
                await component.run(stop)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.inc("tasklens.component.crashes", component=component.name)
                self._log.error(f"crash:{component.name}", "component %s failed: %r; restarting",
                                component.name, exc)
                if stop.is_set():
                    return
                delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, 30.0)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                    return
                except TimeoutError:
                    pass

    async def _release_memory(self, stop: asyncio.Event) -> None:
        """After a burst (a cardinality storm, an outage buffer drained) the objects are freed but glibc
        keeps the pages: hand them back a moment after each burst, and every 30 s for the rest."""
        loop = asyncio.get_running_loop()
        periodic = loop.time() + MEMORY_RELEASE_EVERY
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=MEMORY_CHECK_EVERY)
                return
            except TimeoutError:
                pass
            if memory.second_trim_due() or loop.time() >= periodic:
                periodic = loop.time() + MEMORY_RELEASE_EVERY
                await asyncio.to_thread(memory.trim)

    async def serve(self, shutdown: asyncio.Event | None = None) -> int:
        shutdown = shutdown or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in stopping.STOP_SIGNALS:
            try:
                loop.add_signal_handler(sig, shutdown.set)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests)
                pass
        if stopping.requested():  # during the start (agent/stopping.py): stop as soon as it is built
            shutdown.set()
        raise_open_files_limit()
        await self.build()
        await self.start_http()
        stop_sources, stop_sinks = asyncio.Event(), asyncio.Event()
        source_tasks = [asyncio.create_task(self._supervise(c, stop_sources), name=c.name) for c in self.sources]
        sink_tasks = [asyncio.create_task(self._supervise(s, stop_sinks), name=s.name) for s in self.sinks]
        sink_tasks.append(asyncio.create_task(self._release_memory(stop_sinks), name="memory"))
        await shutdown.wait()

        deadline = loop.time() + self.config.shutdown_timeout
        log.info("stopping: flushing within %.0f s", self.config.shutdown_timeout)
        stop_sources.set()
        await self._drain(source_tasks, deadline - loop.time() - min(5.0, self.config.shutdown_timeout / 4))
        stop_sinks.set()
        await self._drain(sink_tasks, deadline - loop.time())
        if self._listener is not None:
            self._listener.close()  # no new connection from here on
        if self._runner is not None:
            # answers under way get HTTP_GRACE, within what is left of the deadline: a scraper that stopped
            # reading would hold its answer for STALL_DEADLINE, and aiohttp waits 60 s by default
            try:
                await asyncio.wait_for(self._runner.cleanup(), max(deadline - loop.time(), 0.1))
            except TimeoutError:
                log.warning("stopping: HTTP answers still under way at the deadline were dropped")
        for sig in stopping.STOP_SIGNALS:
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass
        log.info("stopped")
        return 0

    async def _drain(self, tasks: list[asyncio.Task[None]], timeout: float) -> None:
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=max(timeout, 0.1))
        for task in pending:
            log.warning("component %s did not finish in time; cancelled", task.get_name())
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)


def run(config: Config) -> int:
    """Entry point of `tasklens run`: uvloop when installed, the stock loop otherwise."""
    runtime = Runtime(config)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            code = runner.run(runtime.serve())
            # everything is flushed: spare the interpreter its last full collection of a heap about to
            # go (100,000 contexts: 1-2 s after "stopped", counted against the shutdown deadline)
            gc.freeze()
            return code
        except OSError as exc:  # a listener could not bind: say which, without a traceback
            log.error("cannot start: %s", exc)
            return 1
        except ConfigError as exc:  # found while building a component (a queue URL, a mapping rule)
            log.error("invalid configuration: %s", exc)
            return 2
