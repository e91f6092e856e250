"""The DogStatsD endpoint: listeners, a receive thread, and the flush onto the hub.

The sockets are read by a thread in C that never needs the GIL (`_recv.Receiver`): it fills a buffer
of TASKLENS_STATSD_BUFFER_BYTES while the interpreter is busy elsewhere. Parsing runs on a Python
thread, not on the event loop: it takes the filled chunks, parses and aggregates them in place, and at
each clock-aligned interval boundary swaps the interval out (a few ms: see `Aggregator.swap`) and
hands it to the event loop; while it has nothing to read, it makes the Python objects of the contexts
the C loop made (`IDLE_ADOPT`). Without the C module (or with TASKLENS_STATSD_RECEIVER=python) that
Python thread reads the sockets itself (non-blocking reads until EAGAIN, in C: `_fast.drain`).
Building the batch, the hub's tag enrichment, the sinks and `/metrics` rendering all happen off these
threads, so none of them can pause receiving long enough to fill the socket buffer (measured:
bench/statsd_throughput.py, docs/statsd.md).
The thread never takes a lock per line; its counters are read by the event loop once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import select
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from agent import heavy
from agent.config import Config
from agent.hub import Hub
from agent.logs import RateLimitedLog
from agent.memory import release_freed_memory
from agent.sinks.push import stepped_back  # the one rule of the loops that tick on the wall clock
from agent.statsd import mapping
from agent.model import Batch
from agent.statsd.flush import Flusher
from agent.statsd.interval import Context, Interval, Limits
from agent.statsd.receive import Aggregator
from agent.statsd.listener import Listener, open_udp, open_unix, read_udp_tables, udp_drops
from agent.statsd.parser import MAX_DATAGRAM, REASONS

try:
    from agent.statsd._fast import drain
except ImportError:  # built without a C compiler: a Python `recv` loop
    drain = None
try:
    from agent.statsd._recv import MAX_DATAGRAM as _RECV_MAX_DATAGRAM, Receiver
except ImportError:  # built without a C compiler: the Python receive thread reads the sockets
    Receiver = None  # type: ignore[assignment,misc]
else:
    if _RECV_MAX_DATAGRAM != MAX_DATAGRAM:
        raise ImportError("agent/statsd/_recv.c disagrees with parser.py on MAX_DATAGRAM: rebuild it "
                          "(`pip install -e .`)")

log = logging.getLogger("tasklens")

DRAIN_BATCH = 64  # datagrams read (and then parsed together) before looking at the other sockets and the clock
STATS_EVERY = 1.0  # seconds between copies of the receive counters into the self-metrics
# contexts the C loop made that get their Python objects per turn while there is nothing to read (about
# 6 ms): a storm's are made between its datagrams, not all in the swap at the end of its interval
IDLE_ADOPT = 2_000
GATHER_SECONDS, GATHER_BELOW = 0.01, 8  # pause 10 ms when a wake-up found fewer than 8 datagrams (see docs/statsd.md)
# The export side must never hold the event loop for long: the batch is built on a worker thread and
# handed to the sinks in slices of about PUBLISH_TURN seconds of work, one per loop turn (starting at
# PUBLISH_CHUNK samples, then sized to the pace seen), so `/health` and `/metrics` answer during a flush.
PUBLISH_CHUNK, PUBLISH_TURN = 1_000, 0.002
RELEASE_AFTER_VALUES = 1_000_000  # histogram values in a flush (8 MiB and more) worth a trim once freed
# finished intervals waiting for the export side; past this the receive side keeps extending the open
# interval (its counters then cover several periods, exported as such) instead of queueing more of them
MAX_BACKLOG = 1
SWITCH_INTERVAL = 0.001  # seconds (sys.setswitchinterval)
FREEZE_ABOVE = 10_000  # objects left in the youngest generation by a flush (see `paused_gc`)
# a second in which the C thread read less than this is quiet: the receive buffer's empty chunks are
# handed back to the system (after a burst); never under load, where their pages would be faulted again
TRIM_BELOW = 1024 * 1024
# new contexts are refused (`overload`) while the C thread holds more than this share of its buffer
# unparsed, until it is back under the second: see `Aggregator.shed`
SHED_ABOVE, SHED_BELOW = 1 / 4, 1 / 8


# the reasons that mean a limit was reached (not a malformed line): logged, at most once a minute each
LIMIT_REASONS = {
    "too_long": "a name, tag, tag field, line tail or datagram over its size",
    "too_many_tags": "a line with more tags than allowed",
    "cardinality_limit": "a new context past TASKLENS_STATSD_MAX_CONTEXTS or TASKLENS_STATSD_MAX_CONTEXT_BYTES",
    "event_limit": "events or service checks past the interval's count or TASKLENS_STATSD_MAX_EVENT_BYTES",
    "set_limit": "set members past TASKLENS_STATSD_MAX_SET_MEMBERS or _BYTES, or a set's own limit",
    "timestamp_limit": "lines with a |T timestamp past 100,000 in an interval",
    "value_limit": "histogram, timer and distribution values past TASKLENS_STATSD_MAX_HISTOGRAM_VALUES in an interval",
    "overload": "a new context while the receive buffer was over a quarter full (the known ones go on)",
}


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No garbage collection while a flush's batch is alive.

    A flush makes one short-lived object per sample (100,000 contexts: 100,000 samples, alive for
    the whole flush). A collection in mid-flush promotes them to the oldest generation, and once that
    grows by a quarter CPython collects it whole: over a heap of 100,000 contexts and series, 0.3-1.5 s
    holding the GIL, when neither `/health` nor the receive thread can run (measured: the slowest
    `/health` answers of a 1 s flush). With collection paused they are freed by reference counting and
    never promoted, and the next automatic pass takes what cycles other code made meanwhile.

    What the flush did keep (new contexts and series: up to 100,000 objects after a storm) would
    make that next pass, a young one, traverse all of it: 65-290 ms holding the GIL on whichever
    thread allocates next, the event loop included (measured, bench/health_under_load.py). So when
    more than FREEZE_ABOVE objects were left, they are frozen (`gc.freeze`): long-lived by nature,
    freed by reference counting like any other, never traversed by a collection again. The price:
    a reference cycle already garbage at that moment is never collected (none is made by a flush)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_count()[0] > FREEZE_ABOVE:
            gc.freeze()
        if was_enabled:
            gc.enable()


def next_boundary(now: float, interval: float) -> float:
    """The next multiple of `interval` after `now`: intervals are aligned to the clock."""
    return (math.floor(now / interval) + 1) * interval


class StatsdServer:
    name = "statsd"

    def __init__(self, config: Config, hub: Hub, *, wall: Callable[[], float] = time.time) -> None:
        self.config = config
        self.hub = hub
        self.wall = wall  # intervals close on its boundaries
        self.rules = mapping.compile_rules(config.mappings)  # ConfigError naming the rule
        limits = Limits(max_contexts=config.statsd_max_contexts, context_bytes=config.statsd_max_context_bytes,
                        event_bytes=config.statsd_max_event_bytes, set_members=config.statsd_max_set_members,
                        set_bytes=config.statsd_max_set_bytes, histogram_values=config.statsd_max_histogram_values)
        self.aggregator = Aggregator(config.statsd_max_contexts, config.statsd_gauge_deltas, self.rules,
                                     limits=limits)
        self.flusher = Flusher(config.flush_interval, config.statsd_context_ttl)
        self.listeners: list[Listener] = []
        self.last_flush: float | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._commands: deque[tuple[str, asyncio.Future[None] | None]] = deque()
        # finished intervals on their way to the event loop, oldest first (appended by the receive
        # thread, removed by `_publisher` once published: deque operations are atomic)
        self._ready: deque[tuple[Interval, asyncio.Future[None] | None]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._last_samples = 0  # in the last batch published
        self._wake_r, self._wake_w = -1, -1
        self._receiver: Receiver | None = None
        self._received = self._trimmed_at = 0  # bytes the C thread had stored: last second, last trim
        self._published: dict[tuple[str, str], float] = {}
        self._drops: dict[str, int] = {}
        self._log = RateLimitedLog(log, interval=60.0)

    # -- start and addresses -------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the sockets; raises OSError naming the address when one is in use."""
        if self.listeners:
            return
        config = self.config
        try:
            if config.statsd_addr is not None:
                self.listeners += open_udp(*config.statsd_addr, config.statsd_rcvbuf)
            if config.statsd_socket:
                self.listeners.append(open_unix(config.statsd_socket, config.statsd_rcvbuf))
        except OSError:
            self._close()
            raise
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        for listener in self.listeners:
            self._drops[listener.name] = 0
        log.info("StatsD on %s (flush every %g s)", ", ".join(l.name for l in self.listeners), config.flush_interval)

    @property
    def udp_addresses(self) -> list[tuple[str, int]]:
        return [l.address for l in self.listeners if l.name.startswith("udp:")]  # type: ignore[misc]

    @property
    def socket_path(self) -> str | None:
        return next((l.address for l in self.listeners if l.name.startswith("unix:")), None)  # type: ignore[return-value]

    # -- the component ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        # three threads want the GIL during a flush (receive, batch, event loop): hand it over every
        # 1 ms instead of 5, so that the event loop gets it back soon after each wait for I/O
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        publisher = asyncio.create_task(self._publisher(), name="statsd-publisher")
        if self._thread is None or not self._thread.is_alive():
            self._receiver = self._start_receiver()
            self._thread = threading.Thread(target=self._receive, name="statsd-receive", daemon=True)
            self._thread.start()
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=STATS_EVERY)
                except TimeoutError:
                    pass
                # /proc/net/udp is read on a thread: the kernel took up to 65 ms to list it under load
                self._publish_stats(await asyncio.to_thread(read_udp_tables))
        finally:
            try:
                await self._command("stop")  # the final, partial interval is flushed before returning
                log.info("StatsD: last interval flushed (%d samples) before stopping", self._last_samples)
                await asyncio.to_thread(self._thread.join, 5.0)
                self._publish_stats(await asyncio.to_thread(read_udp_tables))
            finally:
                publisher.cancel()
                self._close()

    def _start_receiver(self) -> Receiver | None:
        """The C receive thread, unless Python is asked to read or the module was not built."""
        if self.config.statsd_receiver != "native":
            return None
        if Receiver is None:
            log.warning("StatsD: the C receive thread is not built (agent/statsd/_recv.c); reading from Python")
            return None
        try:
            receiver = Receiver([l.sock.fileno() for l in self.listeners], self.config.statsd_buffer_bytes)
        except (OSError, MemoryError) as exc:  # no thread or no memory for the buffer: read from Python
            log.warning("StatsD: could not start the C receive thread (%r); reading from Python", exc)
            return None
        log.info("StatsD: sockets read by a C thread into %d bytes of buffer", receiver.buffer_bytes)
        self._received = self._trimmed_at = 0
        return receiver

    async def flush(self) -> None:
        """Flush the current interval now and wait until the hub has it (tests, `/status` tools)."""
        await self._command("flush")

    async def _command(self, what: str) -> None:
        if self._thread is None or not self._thread.is_alive():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._commands.append((what, future))
        os.write(self._wake_w, b"x")
        await future

    def status(self) -> dict[str, Any]:
        stats = self.aggregator.stats
        errors = dict(stats.errors)
        if self.flusher.overflows:
            errors["bad_value"] = errors.get("bad_value", 0) + self.flusher.overflows
        return {
            "receiver": "native" if self._receiver is not None else "python",
            "buffer_bytes": self._receiver.buffer_bytes if self._receiver is not None else None,
            "listeners": [{"name": l.name, "rcvbuf_bytes": l.rcvbuf, "kernel_drops": self._drops.get(l.name)}
                          for l in self.listeners],
            "flush_interval_seconds": self.config.flush_interval,
            "last_flush": self.last_flush,
            "contexts": self.aggregator.context_count,
            "max_contexts": self.config.statsd_max_contexts,
            "mapping_rules": len(self.rules),
            "packets": stats.packets,
            "lines": stats.lines,
            "samples": stats.samples,
            "parse_errors": errors,
            "contexts_dropped": stats.contexts_dropped,
        }

    # -- the receive thread ----------------------------------------------------------------------

    def _receive(self) -> None:
        agg, receiver = self.aggregator, self._receiver
        poller = select.poll()
        readers = {}
        if receiver is not None:  # the C thread reads the sockets; this one parses what it read
            poller.register(receiver.fileno(), select.POLLIN)
        else:
            for listener in self.listeners:
                poller.register(listener.sock.fileno(), select.POLLIN)
                readers[listener.sock.fileno()] = listener.sock
        poller.register(self._wake_r, select.POLLIN)
        interval = self.config.flush_interval
        boundary = next_boundary(self.wall(), interval)
        agg.interval.start = boundary - interval
        while True:
            try:
                now = self.wall()
                # the wall clock stepped back: the next boundary from now, not in an hour (a step of up to
                # two intervals is waited out: the boundary from now would be one already closed)
                if stepped_back(boundary, now, interval):
                    boundary = next_boundary(now, interval)
                if now >= boundary:
                    following = next_boundary(now, interval)
                    periods = max(1, round((following - boundary) / interval))  # more after a pause
                    if len(self._ready) < MAX_BACKLOG:
                        self._deliver(agg.swap(boundary))
                        agg.interval.periods = periods
                    else:  # the export side is behind: this interval goes on for another period
                        agg.interval.periods += periods
                    boundary = following
                read = 0
                events = poller.poll(0 if agg.waiting else max(0.0, min(boundary - now, 1.0)) * 1000)
                if not events and agg.waiting:  # nothing to read: make the objects of contexts made in C
                    agg.adopt(IDLE_ADOPT)
                    continue
                for fd, _ in events:
                    if fd == self._wake_r:
                        if self._run_commands():
                            return
                        continue
                    if receiver is not None:  # one chunk, then the clock and the commands again
                        read += self._take(receiver, agg)
                    else:
                        read += self._drain(readers[fd], agg)
                if 0 < read < GATHER_BELOW:
                    # light traffic: let datagrams gather for a moment instead of waking up for each one
                    # (a wake-up costs more than parsing a datagram); never when traffic is heavy
                    time.sleep(GATHER_SECONDS)
            except Exception as exc:  # keep receiving whatever happens; say so
                self.hub.metrics.inc("tasklens.statsd.receive_errors", reason="internal")
                self._log.error("statsd-loop", "StatsD receive loop error: %r", exc)
                time.sleep(0.01)

    def _drain(self, sock: socket.socket, agg: Aggregator) -> int:
        """Read and parse what one socket holds, up to DRAIN_BATCH datagrams; returns how many."""
        datagrams: list[bytes] = []
        drained: tuple[bytes, int, int, int] | None = None
        try:
            if drain is not None:  # in C, holding the GIL: see `_fast.c`
                drained = drain(sock.fileno(), DRAIN_BATCH)
            else:
                for _ in range(DRAIN_BATCH):
                    datagrams.append(sock.recv(MAX_DATAGRAM + 1))  # one byte more: a larger one is too long
        except BlockingIOError:
            pass
        except OSError as exc:
            self.hub.metrics.inc("tasklens.statsd.receive_errors", reason=type(exc).__name__)
            self._log.warning("statsd-recv", "StatsD receive error: %r", exc)
        read = drained[1] if drained else len(datagrams)
        if drained:
            self._ingest(agg.ingest_joined, *drained)
        elif datagrams:
            self._ingest(agg.ingest_many, datagrams)
        return read

    def _take(self, receiver: Receiver, agg: Aggregator) -> int:
        """Parse the oldest chunk the C thread filled, in place; returns its datagrams (0: none waiting).
        Its own function: the chunk goes back to the C thread once nothing refers to it any more."""
        taken = receiver.take()
        if taken is None:
            return 0
        self._ingest(agg.ingest_joined, *taken)
        behind = receiver.pending_bytes / receiver.buffer_bytes
        agg.shed(behind > (SHED_BELOW if agg.shedding else SHED_ABOVE))
        return taken[1]

    def _ingest(self, ingest: Callable[..., None], *args: Any) -> None:
        """Parse what was read; a parser bug costs those datagrams (counted, logged), never the thread."""
        try:
            ingest(*args)
        except Exception as exc:
            self.hub.metrics.inc("tasklens.statsd.receive_errors", reason="internal")
            self._log.error("statsd-internal", "StatsD internal error (datagrams skipped): %r", exc)

    def _take_all(self, agg: Aggregator) -> None:
        """Parse what the C thread holds, before a flush or the last interval (bounded: it keeps reading)."""
        receiver = self._receiver
        if receiver is None:
            return
        for _ in range(receiver.buffer_bytes // MAX_DATAGRAM + 1):
            if not self._take(receiver, agg):
                break

    def _run_commands(self) -> bool:
        """Flush or stop on request of the event loop; True when the thread must end."""
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        if any(what == "stop" for what, _ in self._commands) and self._receiver is not None:
            self._receiver.stop()  # joins the C thread: nothing is read after this
        self._take_all(self.aggregator)
        stopping = False
        while self._commands:
            what, future = self._commands.popleft()
            self._deliver(self.aggregator.swap(), future)
            stopping = stopping or what == "stop"
        return stopping

    def _deliver(self, interval: Interval, future: asyncio.Future[None] | None = None) -> None:
        loop, wakeup = self._loop, self._wakeup
        if loop is None or loop.is_closed() or wakeup is None:
            return
        self._ready.append((interval, future))
        try:
            loop.call_soon_threadsafe(wakeup.set)
        except RuntimeError:  # the loop is shutting down
            pass

    # -- on the event loop -----------------------------------------------------------------------

    async def _publisher(self) -> None:
        """Publish finished intervals one at a time, in order; a flush's waiter is released after its
        interval reached the hub."""
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._ready:
                interval, future = self._ready[0]
                try:
                    await self._publish(interval)
                finally:
                    self._ready.popleft()
                    if future is not None and not future.done():
                        future.set_result(None)

    def _build(self, interval: Interval, containers: dict[str, Any]) -> tuple[Batch, list[Context]]:
        """On a worker thread: the batch of a finished interval, with the task's tags, and the contexts
        now idle too long."""
        batch = self.flusher.batch(interval, containers, base=self.hub.identity.tags)
        return batch, self.flusher.expired()

    async def _publish(self, interval: Interval) -> None:
        started = time.perf_counter()
        with paused_gc():
            await self._publish_paused(interval, started)
        if self.flusher.histogram_values > RELEASE_AFTER_VALUES:
            # a flood of histogram values, now freed: hand the memory back now, not at the next
            # periodic trim (up to 30 s later), before the next flood arrives on top of it
            interval.values.clear()
            await heavy.run(release_freed_memory)

    async def _publish_paused(self, interval: Interval, started: float) -> None:
        try:
            batch, expired = await heavy.run(self._build, interval, dict(self.hub.identity.containers))
            samples = batch.samples
            self._last_samples = len(samples)
            idle_from = len(samples) - batch.idle
            start, size = 0, PUBLISH_CHUNK
            while True:
                turn = time.perf_counter()
                first = start == 0
                chunk = samples[start:start + size]
                self.hub.deliver(Batch(batch.source, chunk, batch.events if first else [],
                                       batch.service_checks if first else [], snapshot=False,
                                       idle=min(len(chunk), max(0, start + len(chunk) - idle_from))))
                start += size
                if start >= len(samples):
                    break
                # as many samples in the next turn as fit in PUBLISH_TURN at this turn's pace (new
                # series cost the sinks ten times more than known ones)
                took = max(time.perf_counter() - turn, 1e-6)
                size = max(PUBLISH_CHUNK // 10, min(PUBLISH_CHUNK * 10, int(size * PUBLISH_TURN / took)))
                await asyncio.sleep(0)  # let `/health`, `/metrics` and the other components run
            if expired:
                self.aggregator.expire(expired)
            self.last_flush = time.time()
            metrics = self.hub.metrics
            metrics.inc("tasklens.statsd.flushes")
            metrics.set("tasklens.statsd.flush_duration_seconds", time.perf_counter() - started)
            metrics.set("tasklens.statsd.contexts", self.aggregator.context_count)
        except Exception as exc:
            self.hub.metrics.inc("tasklens.statsd.flush_errors")
            self._log.error("statsd-flush", "StatsD flush failed: %r", exc)

    def _publish_stats(self, udp_tables: dict[str, str] | None = None) -> None:
        """Copy the receive thread's counters (plain ints, read without a lock) into the self-metrics;
        the kernel's drop counts from `udp_tables` (`read_udp_tables()`, read now when not given)."""
        stats = self.aggregator.stats
        errors = dict(stats.errors)  # one C-level copy: safe while the receive thread adds reasons
        current = {
            ("tasklens.statsd.packets", ""): stats.packets,
            ("tasklens.statsd.bytes", ""): stats.bytes,
            ("tasklens.statsd.lines", ""): stats.lines,
            ("tasklens.statsd.samples", ""): stats.samples,
            ("tasklens.statsd.events", ""): stats.events,
            ("tasklens.statsd.service_checks", ""): stats.service_checks,
            ("tasklens.statsd.contexts_dropped", ""): stats.contexts_dropped,
        }
        for reason in REASONS:
            current[("tasklens.statsd.parse_errors", reason)] = errors.get(reason, 0)
        current[("tasklens.statsd.parse_errors", "bad_value")] += self.flusher.overflows
        metrics = self.hub.metrics
        for (name, reason), value in current.items():
            delta = self._delta((name, reason), value)
            if delta is not None:
                if reason:
                    metrics.inc(name, delta, reason=reason)
                else:
                    metrics.inc(name, delta)
                if delta and reason in LIMIT_REASONS:
                    self._log.warning(f"limit:{reason}", "StatsD: %d line(s) refused (%s): %s (docs/statsd.md, "
                                      "Limits)", delta, reason, LIMIT_REASONS[reason])
        metrics.set("tasklens.statsd.contexts", self.aggregator.context_count)
        if self._receiver is not None:
            self._publish_receiver_stats(self._receiver)
        drops = udp_drops(read_udp_tables() if udp_tables is None else udp_tables)
        for listener in self.listeners:
            if listener.inode in drops:
                delta = drops[listener.inode] - self._drops.get(listener.name, 0)
                if delta or not self._published.get(("drops", listener.name)):
                    metrics.inc("tasklens.statsd.socket_drops", delta, listener=listener.name)
                    self._published[("drops", listener.name)] = 1
                self._drops[listener.name] = drops[listener.inode]

    def _delta(self, key: tuple[str, str], value: float) -> float | None:
        """How much a cumulative count of the receive side grew since it was last published (recorded
        now); None when it did not and was published before (a count is published once, even at 0)."""
        delta = value - self._published.get(key, 0)
        if not delta and key in self._published:
            return None
        self._published[key] = value
        return delta

    def _publish_receiver_stats(self, receiver: Receiver) -> None:
        stats = receiver.stats()
        metrics = self.hub.metrics
        counts: dict[tuple[str, str], int] = {("buffer_full", ""): stats["buffer_full"]}
        for code, n in stats["errors"].items():
            counts[("errors", type(OSError(code, "")).__name__ if code else "OSError")] = n
        for (what, reason), value in counts.items():
            delta = self._delta(("receiver:" + what, reason), value)
            if delta is None:
                continue
            if what == "buffer_full":
                metrics.inc("tasklens.statsd.buffer_full", delta)
                if delta:
                    self._log.warning("statsd-buffer-full", "StatsD: the receive buffer was full %d time(s): "
                                      "datagrams waited in the socket buffer (raise TASKLENS_STATSD_BUFFER_BYTES "
                                      "if tasklens_statsd_socket_drops_total grows too)", delta)
            else:
                metrics.inc("tasklens.statsd.receive_errors", delta, reason=reason)
                if delta:
                    self._log.warning("statsd-recv", "StatsD receive error: %s (%d time(s))", reason, delta)
        metrics.set("tasklens.statsd.buffer_peak_bytes", stats["peak_bytes"])
        received = stats["received_bytes"]
        quiet = received - self._received < TRIM_BELOW
        self._received = received
        if quiet and received != self._trimmed_at:  # once after each burst, not every quiet second
            receiver.trim()
            self._trimmed_at = received

    def _close(self) -> None:
        if self._receiver is not None:
            self._receiver.stop()  # before the sockets close: the C thread holds dups of them
        listeners, self.listeners = self.listeners, []  # a restarted run() binds again
        for listener in listeners:
            listener.sock.close()
            if listener.name.startswith("unix:"):
                try:
                    os.unlink(listener.name[len("unix:"):])
                except OSError:
                    pass
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
