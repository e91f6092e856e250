"""The queue source: polls one queue URL and publishes its numbers and trend as a snapshot.

Every poll attempt publishes `Batch(source="queue:<name>", snapshot=True)`. A failed poll publishes an
empty snapshot: the sinks drop the queue's series (a gap), never a 0 that would make a broken broker
look like a healthy empty queue. After a failure the probe is closed (the next poll reconnects) and
the next attempt backs off, up to `MAX_BACKOFF` intervals. Intervals carry +-10 % jitter so that the
sidecars of one service, started together, do not poll the broker in lockstep.

Shared polling (`TASKLENS_QUEUE_POLL_SHARE=k`, docs/scaling.md "Queue polling cost at fleet scale"):
every task reads the same queue, so with k > 1 each task polls in one interval of k, at a phase taken
from its task id, and a service of N tasks makes about N/k calls per interval instead of N. The first
interval always polls, so a new task has numbers at once. A skipped interval is not a gap: it
republishes the last reading as it was (same values, same timestamps) and feeds it, held, to the
backlog smoothing, whose window would otherwise never see enough readings. The price is staleness:
each task's numbers are up to k intervals old (the service as a whole still sees a fresh reading
about every interval / (N/k)). A failed poll is a gap as always, and the task then polls every
interval (with its backoff) until one succeeds: nothing stale is ever held across a failure.
"""

from __future__ import annotations

import asyncio
import random
import time
import traceback
import zlib
from collections.abc import Callable
from typing import Any

from agent.config import Config, ConfigError
from agent.urlmask import mask_secrets, mask_url, url_passwords
from agent.hub import Hub
from agent.logs import RateLimitedLog, shown
from agent.model import Batch, Kind, Sample
from agent.scaling.backlog import BacklogTracker
from integrations.queues import load_client, parse, probe_for
from integrations.queues.base import Probe, ProbeError, Reading, mask_secret
from integrations.queues.trend import History, Trend, trend_window

JITTER = 0.1
MAX_BACKOFF = 8  # intervals
CLOSE_TIMEOUT = 5.0


# every reason a failed poll is counted under (probes raise ProbeError with one of these)
POLL_ERRORS = ("timeout", "connection", "auth", "not_found", "query", "bad_reply", "error")


def reason_of(exc: BaseException) -> str:
    """A short, bounded label for the `poll_errors` self-metric."""
    if isinstance(exc, ProbeError):
        return exc.reason
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, (ConnectionError, OSError)):
        return "connection"
    if isinstance(exc, (ValueError, KeyError, TypeError, IndexError)):
        return "bad_reply"
    return "error"


def samples_of(reading: Reading, trend: Trend | None, tags: tuple[tuple[str, str], ...],
               timestamp: float) -> list[Sample]:
    values = {f"queue.{k}": v for k, v in reading.values().items()}
    if trend is not None:
        values["queue.growth_rate"] = trend.growth_rate
        if trend.drain_seconds is not None:
            values["queue.drain_seconds"] = trend.drain_seconds
        values["queue.backing_up"] = 1.0 if trend.backing_up else 0.0
    return [Sample(name, value, Kind.GAUGE, tags, timestamp) for name, value in values.items()]


def release(exc: BaseException) -> None:
    """Clear the frames of a failed read's exceptions (the error, its cause, the one it arose in): they
    hold the client's state as the read left it (a refused reply's parser, what it had read), in a cycle
    that only a full collection frees, and the collector runs rarely (agent/memory.py)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def shared_slot(slot: int, phase: int, share: int) -> bool:
    """Whether interval `slot` is this task's under shared polling: one in every `share`, at `phase`."""
    return (slot + phase) % share == 0


class QueueSource:
    def __init__(self, config: Config, hub: Hub, url: str, *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        try:
            target = parse(url)
            self.probe: Probe = probe_for(target)
        except ValueError as exc:  # a broker's or client's message may quote the URL: masked too
            raise ConfigError(f"{config.where('queues')}: {mask_url(url)}: "
                              f"{mask_secrets(str(exc), url_passwords(url))}") from None
        self.hub = hub
        self.broker = target.broker
        self._client_loaded = False
        parsed = self.url = target.url
        queue = self.queue = target.name
        self.queue_type = target.queue_type
        self.name = f"queue:{queue}"
        self.interval = parsed.interval or config.queue_poll_interval
        self.timeout = parsed.poll_timeout
        self.threshold = parsed.threshold if parsed.threshold is not None else config.queue_backlog_threshold
        self.history = History(trend_window(parsed.window or config.queue_trend_window, self.interval,
                                            config.queue_poll_share))
        # the smoothing window holds at least 2.5 polls: with polls 60 s apart (+-10%) a 60 s window holds
        # one reading, which proves nothing, and the policy's metric would vanish (docs/scaling.md)
        window = max(config.scaling_smoothing_window, 2.5 * self.interval)
        self.backlog = BacklogTracker(self.queue_type, window, config.scaling_consumers_per_task, config.scaling_hold)
        self.tags = (("queue", queue), ("queue_type", self.queue_type))
        hub.metrics.declare("tasklens.queue.poll_errors", POLL_ERRORS, queue=queue)
        self.clock, self.wall = clock, wall
        self.failures = 0  # consecutive
        self.last_poll: float | None = None  # wall time of the last attempt
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_values: dict[str, float] = {}
        self.share = config.queue_poll_share
        self.slots = 0  # intervals so far, polled or skipped
        self.skipped = 0
        self._held: tuple[Reading, list[Sample]] | None = None  # the last good reading and its samples
        self._log = RateLimitedLog()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.step()
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.next_delay())
                except TimeoutError:
                    pass
        finally:
            await self._close()

    async def step(self) -> None:
        """One interval: a poll, or (shared polling) the last reading held."""
        if self.due():
            await self.poll()
        else:
            self.hold()

    def phase(self) -> int:
        """This task's slot among `share`: from its task id, so tasks started together spread out."""
        task_id = self.hub.identity.task_id
        return zlib.crc32(task_id.encode()) % self.share if task_id else 0

    def due(self) -> bool:
        """Whether this interval polls: until a poll succeeds and after a failure always, else 1 in `share`."""
        slot, self.slots = self.slots, self.slots + 1
        return self.failures > 0 or self._held is None or shared_slot(slot, self.phase(), self.share)

    def hold(self) -> None:
        """A skipped interval: the last reading again, unchanged; the smoothing gets it as held."""
        self.skipped += 1
        self.hub.metrics.inc("tasklens.queue.polls_skipped", queue=self.queue)
        if self._held is None:
            return
        reading, samples = self._held
        samples = samples + self.backlog.samples(reading.depth, reading.in_flight, reading.consumers, self.clock(),
                                                 self.tags, self.wall())
        self.hub.publish(Batch(source=self.name, samples=samples, snapshot=True))

    def next_delay(self) -> float:
        backoff = min(1 << max(self.failures - 1, 0), MAX_BACKOFF)
        return self.interval * backoff * random.uniform(1 - JITTER, 1 + JITTER)

    async def poll(self) -> bool:
        """One attempt: read, publish the numbers (or a gap), count it. True when it succeeded."""
        metrics = self.hub.metrics
        started = self.clock()
        self.last_poll = self.wall()
        metrics.inc("tasklens.queue.polls", queue=self.queue)
        try:
            if not self._client_loaded:  # outside the poll's timeout: a first import takes up to a second
                load_client(self.broker)
                self._client_loaded = True
            reading = (await asyncio.wait_for(self.probe.read(), self.timeout)).checked()
            now = self.clock()
            if reading.depth is not None:
                self.history.add(now, reading.depth)
            # no depth this poll (a stream's lag not known, a query's NULL): no trend either, not the
            # one of the depths before
            trend = self.history.trend(self.threshold, now) if reading.depth is not None else None
            samples = samples_of(reading, trend, self.tags, self.wall())
            backlog = self.backlog.samples(reading.depth, reading.in_flight, reading.consumers, now, self.tags,
                                           self.wall())  # backlog per task: docs/scaling.md
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the read, or a reading nothing can be worked out from: a gap, never a crash
            self._failed(exc)
            release(exc)
            self._held = None
            await self._close()
            self.hub.publish(Batch(source=self.name, snapshot=True))
            return False
        finally:
            metrics.set("tasklens.queue.poll_duration_seconds", self.clock() - started, queue=self.queue)
        if reading.unreadable_age is not None:  # the broker's answer was read; one of its numbers was not
            self.hub.metrics.inc("tasklens.queue.ages_unreadable", queue=self.queue)
            self._log.warning(f"{self.name}:age", "queue %s: %s is no time from 2000 to now + 60 s (in "
                              "milliseconds?): the age is left out", self.queue,
                              shown(mask_secret(reading.unreadable_age, self.url)))
        if self.failures:
            # a broker failing every other poll would log this at every other poll: once a minute, as failures
            self._log.info(f"{self.name}:recovered", "queue %s: polled again after %d failed polls", self.queue,
                           self.failures)
        self.failures, self.last_error = 0, None
        self.last_success = self.last_poll
        self.last_values = {s.name: float(s.value) for s in samples}  # type: ignore[arg-type]
        self._held = (reading, list(samples))
        self.hub.publish(Batch(source=self.name, samples=samples + backlog, snapshot=True))
        return True

    def _failed(self, exc: Exception) -> None:
        reason = reason_of(exc)
        self.failures += 1
        self.last_error = f"{reason}: {mask_secret(str(exc) or type(exc).__name__, self.url)}"
        self.last_values = {}
        self.hub.metrics.inc("tasklens.queue.poll_errors", queue=self.queue, reason=reason)
        self._log.warning(f"{self.name}:{reason}", "queue %s (%s): poll failed (%s), reported as a gap",
                          self.queue, self.url.masked, self.last_error)

    async def _close(self) -> None:
        try:
            await asyncio.wait_for(self.probe.close(), CLOSE_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # closing a dead connection may fail; the next read reconnects anyway
            self._log.warning(f"{self.name}:close", "queue %s: close failed: %s", self.queue,
                              mask_secret(repr(exc), self.url))  # a client's error may quote its URL

    def status(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "queue_type": self.queue_type,
            "url": self.url.masked,
            "interval_seconds": self.interval,
            "poll_share": self.share,
            "trend_window_seconds": self.history.window,
            "polls_skipped": self.skipped,
            "last_poll": self.last_poll,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "consecutive_failures": self.failures,
            "values": dict(self.last_values),
        }



def queue_sources(config: Config, hub: Hub) -> list[QueueSource]:
    """One source per URL in `TASKLENS_QUEUES`. Two queues with one name would overwrite each
    other's series (and `/status` entry), so that stops start-up with a ConfigError."""
    sources = [QueueSource(config, hub, url) for url in config.queues]
    seen: dict[str, QueueSource] = {}
    for source in sources:
        other = seen.setdefault(source.name, source)
        if other is not source:
            raise ConfigError(f"{config.where('queues')}: {other.url.masked} and {source.url.masked} are both named "
                              f"{source.queue!r}; give one a name= parameter")
    return sources
