"""The hub: sources publish batches, the hub adds the task's tags, sinks consume.

The hub is the only place that knows both sides. It also holds the current identity (refreshed by
the ECS source; most components read it when they need it, one that publishes rarely asks to be told
of a change) and the self-metrics, which sinks pull at export time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from agent.identity import Identity
from agent.logs import RateLimitedLog
from agent.model import Batch, Kind, Sample, Tags, merge_tags
from agent.selfmetrics import SelfMetrics


class Component(Protocol):
    """Anything the runtime runs: a source, a listener, a sink."""

    name: str

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set, then finish in-flight work (flush) and return."""


class Sink(Component, Protocol):
    def accept(self, batch: Batch) -> None:
        """Take a batch (tags already enriched). Must not block: buffer and export in `run`."""


class Hub:
    def __init__(self, identity: Identity, metrics: SelfMetrics | None = None) -> None:
        self.identity = identity
        self.metrics = metrics or SelfMetrics()
        self.sinks: list[Sink] = []
        self._identity_listeners: list[Callable[[], None]] = []
        self._log = RateLimitedLog()

    def add_sink(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def on_identity_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` each time the identity's tags change (the first ECS poll, most often)."""
        self._identity_listeners.append(listener)

    def set_identity(self, identity: Identity) -> None:
        changed = identity.tags != self.identity.tags
        self.identity = identity
        if changed:
            for listener in self._identity_listeners:
                listener()

    def enrich(self, batch: Batch) -> Batch:
        base = self.identity.tags
        merged: dict[Tags, Tags] = {}  # many samples share a tag set: merge each set once

        def tags_of(own: Tags) -> Tags:
            out = merged.get(own)
            if out is None:
                out = merged[own] = merge_tags(base, own)
            return out

        return Batch(
            source=batch.source,
            # the constructor, not dataclasses.replace: this runs for every sample of every flush
            samples=[Sample(s.name, s.value, s.kind, tags_of(s.tags), s.timestamp, s.interval)
                     for s in batch.samples],
            events=[replace(e, tags=merge_tags(base, e.tags)) for e in batch.events],
            service_checks=[replace(c, tags=merge_tags(base, c.tags)) for c in batch.service_checks],
            snapshot=batch.snapshot,
            idle=batch.idle,
        )

    def publish(self, batch: Batch) -> None:
        self.deliver(self.enrich(batch))

    def deliver(self, batch: Batch) -> None:
        """Hand a batch already through `enrich` to every sink (a source with large batches enriches
        them on a worker thread, off the event loop)."""
        for sink in self.sinks:
            try:
                sink.accept(batch)
            except Exception as exc:  # a broken sink never stops the others or the source
                self.metrics.inc("tasklens.sink.errors", sink=sink.name)
                self._log.error(f"sink:{sink.name}", "sink %s rejected a batch: %r", sink.name, exc)

    def pull(self) -> list[Sample]:
        """Series computed at export time: the task info series and the self-metrics, tagged."""
        info = Sample("ecs.task.info", 1.0, Kind.GAUGE, self.identity.info_tags)
        base = self.identity.tags
        return [info] + [replace(s, tags=merge_tags(base, s.tags)) for s in self.metrics.samples()]

