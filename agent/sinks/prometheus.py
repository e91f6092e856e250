"""Prometheus sink: keeps the latest state of every series and renders `/metrics` on demand.

Names: dots and every other character outside `[a-zA-Z0-9_]` become `_`. Counters (cumulative
sources and StatsD counts, summed since start) are exported as `<name>_total`; StatsD histograms,
timers (converted to seconds, as statsd_exporter does) and distributions as Prometheus histograms.
Series of a snapshot source are replaced by each snapshot; other series expire after the TTL.
"""

from __future__ import annotations

import asyncio
import bisect
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from agent.memory import BURST, release_freed_memory
from agent.model import Batch, Kind, Points, Sample, Tags
from agent.selfmetrics import SelfMetrics
from agent.sinks.prometheus_text import TextRenderer

_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(name: str) -> str:
    out = _INVALID.sub("_", name)
    return "_" + out if out[:1].isdigit() else out


def label_name(key: str) -> str:
    out = metric_name(key)
    return "_" + out.lstrip("_") if out.startswith("__") else out  # `__` is reserved by Prometheus


def labels_of(tags: Tags) -> dict[str, str]:
    # a bare tag (`canary`) becomes `canary="true"`: an empty label value means "no label" in PromQL
    return {label_name(k): (v if v else "true") for k, v in tags}


@dataclass(slots=True)
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[float] = field(default_factory=list)  # per bucket, not cumulative; last is +Inf
    total: float = 0.0
    count: float = 0.0

    def add(self, points: Points) -> None:
        counts = list(self.counts) or [0.0] * (len(self.bounds) + 1)
        bounds, total, count = self.bounds, 0.0, 0.0
        scale = 0.001 if points.milliseconds else 1.0
        for value, weight in zip(points.values, points.weights):
            value *= scale
            counts[bisect.bisect_left(bounds, value)] += weight
            total += value * weight
            count += weight
        # whole-list assignment: a scrape rendering in another thread sees the old or the new buckets
        self.counts = counts
        self.total += total
        self.count += count

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0.0
        counts = self.counts
        for bound, n in zip(self.bounds, counts):
            running += n
            out.append((repr(float(bound)), running))
        out.append(("+Inf", running + (counts[-1] if counts else 0.0)))
        return out


@dataclass(slots=True)
class _Series:
    kind: Kind
    value: float | _Histogram
    updated: float


class PrometheusSink:
    name = "prometheus"

    def __init__(self, metrics: SelfMetrics, pull: Callable[[], list[Sample]] = list,
                 ttl: float = 300.0, buckets: Iterable[float] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.pull = pull
        self.ttl = ttl
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self.clock = clock
        self._snapshots: dict[str, dict[tuple[str, Tags], _Series]] = {}
        self._series: dict[tuple[str, Tags], _Series] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._text = TextRenderer(metric_name, labels_of)

    # -- sink side ---------------------------------------------------------------------------

    def accept(self, batch: Batch) -> None:
        now = self.clock()
        if batch.snapshot:
            self._snapshots[batch.source] = {
                (s.name, s.tags): _Series(s.kind, float(s.value), now)
                for s in batch.samples if not isinstance(s.value, Points)
            }
            return
        series = self._series
        for s in batch.samples:
            key = (s.name, s.tags)
            entry = series.get(key)
            if entry is None or entry.kind is not s.kind:
                value: float | _Histogram = _Histogram(self.buckets) if isinstance(s.value, Points) else 0.0
                entry = series[key] = _Series(s.kind, value, now)
            entry.updated = now
            if isinstance(s.value, Points):
                if isinstance(entry.value, _Histogram):
                    entry.value.add(s.value)
            elif s.kind is Kind.COUNT:
                entry.value += s.value  # type: ignore[operator]
            else:
                entry.value = float(s.value)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=min(self.ttl, 30.0))
            except TimeoutError:
                pass
            self.expire()

    def expire(self) -> int:
        cutoff = self.clock() - self.ttl
        stale = [k for k, v in self._series.items() if v.updated < cutoff]
        for key in stale:
            del self._series[key]
        expired = len(stale)
        del stale  # the keys go now, before the trim
        if expired > BURST:  # a dict never shrinks by deletion: rebuild it after a burst
            self._series = dict(self._series)
            release_freed_memory()
        self.metrics.set("tasklens.prometheus.series", len(self._series) + sum(map(len, self._snapshots.values())))
        return expired

    # -- collector side (prometheus_client calls this from generate_latest) ---------------------

    def _items(self) -> Iterator[tuple[str, Tags, _Series]]:
        for snap in list(self._snapshots.values()):
            for (name, tags), entry in list(snap.items()):
                yield name, tags, entry
        for (name, tags), entry in list(self._series.items()):
            yield name, tags, entry
        now = self.clock()
        for s in self.pull():
            yield s.name, s.tags, _Series(s.kind, float(s.value), now)  # type: ignore[arg-type]

    def render(self) -> bytes:
        """`/metrics` in text format 0.0.4, fast with 100,000 series (see prometheus_text.py)."""
        body, conflicts = self._text.render(self._items())
        # a gauge: series left out of the last scrape (a counter would grow with the scrape rate)
        if conflicts or self.metrics.get("tasklens.prometheus.type_conflicts"):
            self.metrics.set("tasklens.prometheus.type_conflicts", conflicts)
        return body

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        kinds: dict[str, Kind] = {}
        conflicts = 0
        for name, tags, entry in self._items():
            pname = metric_name(name)
            kind = Kind.COUNTER if entry.kind in (Kind.COUNT, Kind.COUNTER) else entry.kind
            if isinstance(entry.value, _Histogram):
                kind = Kind.HISTOGRAM
            family = families.get(pname)
            if family is None:
                if kind is Kind.COUNTER:
                    family = CounterMetricFamily(pname, name)
                elif kind is Kind.HISTOGRAM:
                    family = HistogramMetricFamily(pname, name)
                else:
                    family = GaugeMetricFamily(pname, name)
                families[pname], kinds[pname] = family, kind
            elif kinds[pname] is not kind:
                conflicts += 1  # two types under one name would make Prometheus reject the scrape
                continue
            labels = labels_of(tags)
            if isinstance(entry.value, _Histogram):
                h = entry.value
                for bound, cumulative in h.buckets():
                    family.add_sample(pname + "_bucket", {**labels, "le": bound}, cumulative)
                family.add_sample(pname + "_count", labels, h.count)
                family.add_sample(pname + "_sum", labels, h.total)
            elif kind is Kind.COUNTER:
                family.add_sample(family.name + "_total", labels, entry.value)
            else:
                family.add_sample(pname, labels, entry.value)
        # a gauge: series left out of the last scrape (a counter would grow with the scrape rate)
        if conflicts or self.metrics.get("tasklens.prometheus.type_conflicts"):
            self.metrics.set("tasklens.prometheus.type_conflicts", conflicts)
        yield from families.values()
