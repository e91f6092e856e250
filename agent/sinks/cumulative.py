"""The current cumulative state of every series, for push sinks whose receivers want cumulative values
(remote_write, OTLP): what `/metrics` would show, kept between flushes.

Kinds: a gauge keeps its newest reading (by its `|T` timestamp; a point without one is read now, and an
older reading does not replace a newer one, as on `/metrics`); a source's cumulative counter (`*_total`)
is kept as is; a StatsD count is summed since the series was first seen; StatsD histograms, timers (in
seconds) and distributions become cumulative bucket counts, a sum and a count. Counters follow `/metrics`' rule, which lives here
and which the Prometheus sink uses too (`count_refusal`, `counter_refusal`): a counter never decreases
and never becomes infinite, so an OTLP monotonic Sum and a remote_write `_total` are what `/metrics` shows.

A series *ends* when its snapshot source leaves it out (a container that went away, a queue whose poll
failed), when it is not updated for `ttl` seconds, or when the sink stops: `take_ended()` hands those
over once, so a sink can mark them stale (remote_write) instead of letting the line hang flat.

A worker's name keeps one type per family, as on `/metrics` (docs/statsd.md, "How names reach /metrics"):
the family is the name as `/metrics` shows it (`san.same` and `san_same` are one, a counter `x_total` is
`x`), and the type of the first series to take it (a histogram its unit: a timer's or raw values) keeps
it until all its series have ended; a point of another type, under any tags, is refused as
`type_conflict`, and a new family whose names overlap another's (`x_total` beside a counter `x`) as
`name_conflict`. Without this remote_write and EMF sent `tc_x{a="1"}` beside `tc_x_total{a="2"}`, which
`/metrics` refuses. The zeros of idle StatsD counters (`Batch.idle`) never make a series: they only keep
a counter that exists alive (a counter only ever decremented has no series, as on `/metrics`). Bad points
are dropped alone, counted as `tasklens.sink.points_rejected{sink,reason}`, and logged (given a `log`) at
most once a minute per sink and reason, naming the series: a refusal only this sink makes
(`count_overflow`, `too_many_labels`) is otherwise seen on no other path.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from agent.logs import RateLimitedLog
from agent.model import Batch, Kind, Points, Repeated, Sample, Tags
from agent.selfmetrics import SelfMetrics
from agent.sinks.names import clash, family_name, metric_name, reserved

Key = tuple[str, Tags]


@dataclass(slots=True)
class Histogram:
    """A StatsD histogram, timer or distribution as cumulative buckets, a sum and a count (the Prometheus
    sink's too)."""

    bounds: tuple[float, ...]
    counts: list[float] = field(default_factory=list)  # per bucket, not cumulative; the last is +Inf
    total: float = 0.0
    count: float = 0.0
    # the unit of the points it holds: a timer's (milliseconds, kept in seconds) or not; None while empty
    milliseconds: bool | None = None
    # a value below 0 was recorded: OTLP then leaves `sum` out (its proto: a sum is for non-negative events)
    negative: bool = False

    def takes(self, points: Points) -> bool:
        """The points are of the unit of those it holds: a timer's values and a histogram's raw ones are
        never added together (`x:500|ms` is 0.5 here, `x:500|h` 500)."""
        return self.milliseconds is None or self.milliseconds == points.milliseconds

    def add(self, points: Points) -> bool:
        """Add the points; False (and nothing added) when they are not valid or a total would stop being
        finite. O(buckets * log values): the points are sorted. Points of another unit (`takes`) are the
        caller's to refuse."""
        if not points.valid:
            return False
        scale = 0.001 if points.milliseconds else 1.0
        added = points.buckets(self.bounds, scale)
        counts = [a + b for a, b in zip(self.counts, added)] if self.counts else added
        total, count = self.total + scaled_total(points, scale), self.count + points.count
        if not (math.isfinite(total) and math.isfinite(count) and all(map(math.isfinite, counts))):
            return False
        # whole-list assignment: a scrape rendering in another thread sees the old or the new buckets
        self.counts = counts
        self.total, self.count = total, count
        self.milliseconds = points.milliseconds
        self.negative = self.negative or (len(points.values) > 0 and points.values[0] < 0.0)  # sorted: [0] is the least
        return True

    def cumulative(self) -> list[float]:
        """Counts per `le` bound, the last for +Inf (Prometheus's `_bucket` series)."""
        out, running = [], 0.0
        for n in self.counts or [0.0] * (len(self.bounds) + 1):
            running += n
            out.append(running)
        return out


@dataclass(slots=True)
class Series:
    kind: Kind  # GAUGE, COUNTER (also for summed StatsD counts) or HISTOGRAM
    value: float | Histogram
    updated: float  # monotonic
    start: float  # wall clock: when this stream started (OTLP's start_time_unix_nano)
    source: str = ""
    summed: bool = False  # a sum of StatsD counts from 0: its first value is all increase
    worker: bool = False  # a worker's (not from a snapshot): its tags cannot replace the task's identity
    cache: object = None  # a sink's encoded form of the labels, built once per series
    # a worker's gauge: when its value was read (wall clock: a `|T` timestamp, else its batch), so that an
    # older reading never replaces a newer one (`CumulativeState.accept`)
    read: float = -math.inf
    family: str = ""  # a worker's: the name of its family as /metrics shows it (`family_name`)


@dataclass(slots=True)
class Family:
    """A worker family (a name as `/metrics` shows it): the type that took it first, and its series."""

    kind: Kind
    milliseconds: bool = False  # a histogram family of timers (in seconds) or of raw values: never both
    count: int = 0


def scaled_total(points: Points, scale: float) -> float:
    """The weighted sum of the values times `scale` (a timer's in seconds). `Points.total` is summed in
    the points' own unit: `1e308|ms` twice is 2e308 ms, not finite, although it is a finite 2e305 s.
    Where the scaled sum of it is not finite, it is summed again from the scaled values: a cost only
    such values pay."""
    total = points.total * scale
    if math.isfinite(total) or scale == 1.0 or not points.valid:
        return total
    scaled = map(scale.__mul__, points.values)
    weights = points.weights
    if isinstance(weights, Repeated):
        return sum(scaled) * weights.weight
    return float(sum(map(operator.mul, scaled, weights)))


def count_refusal(total: float, value: float) -> str:
    """Why a StatsD count interval `value` cannot be added to a counter at `total`, or "" when it can:
    the counter would not be finite (`1e308` twice, NaN), or the interval is negative (`decrement()`
    sends `x:-1|c`; Datadog takes it, a cumulative counter cannot go down). The counter keeps its value."""
    if not math.isfinite(total + value):
        return "non_finite"
    return "negative_counter" if value < 0.0 else ""


def counter_refusal(value: float) -> str:
    """Why a source's cumulative counter value cannot be exported, or ""."""
    if not math.isfinite(value):
        return "non_finite"
    return "negative_counter" if value < 0.0 else ""


def _reject_reason(s: Sample) -> str | None:
    if not s.name:
        return "invalid_name"
    v = s.value
    if isinstance(v, Points):
        if len(v.values) != len(v.weights):
            return "invalid_points"
        return None if v.valid and math.isfinite(scaled_total(v, 0.001 if v.milliseconds else 1.0)) else "non_finite"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "not_a_number"
    if s.kind is Kind.COUNT:
        return None  # checked with the sum it makes, once the series exists (`count_refusal`), as on /metrics
    # NaN would poison a sum, and remote_write reserves one NaN for staleness: no NaN or inf at all
    return None if math.isfinite(f) else "non_finite"


class CumulativeState:
    def __init__(self, sink: str, metrics: SelfMetrics, buckets: Iterable[float], ttl: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 log: RateLimitedLog | None = None) -> None:
        self.sink = sink
        self.log = log  # None: the sink logs its refusals itself (EMF, with its own details)
        self.metrics = metrics
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self.ttl = ttl
        self.clock = clock
        self.wall = wall
        self._snapshots: dict[str, dict[Key, Series]] = {}
        self._series: dict[Key, Series] = {}
        self._ended: list[tuple[Key, Series]] = []
        # the worker's families, as on /metrics: family name -> its type and how many series it has
        self._families: dict[str, Family] = {}

    def reject(self, reason: str, amount: float = 1.0, name: str = "", detail: str = "") -> None:
        """Count a refused point of the series `name` (and log it, rate-limited; `detail` says more)."""
        self.metrics.inc("tasklens.sink.points_rejected", amount, sink=self.sink, reason=reason)
        if self.log is not None:
            self.log.warning(f"{self.sink}:{reason}", "%s: a point of %r is not sent (%s)%s", self.sink, name[:100],
                             reason, f": {detail}" if detail else "")

    def accept(self, batch: Batch) -> None:
        now, wall = self.clock(), self.wall()
        if batch.snapshot:
            old = self._snapshots.get(batch.source, {})
            new: dict[Key, Series] = {}
            for s in batch.samples:
                reason = "histogram_in_snapshot" if isinstance(s.value, Points) else _reject_reason(s)
                if reason:
                    self.reject(reason, name=s.name)
                    continue
                key = (s.name, s.tags)
                entry = old.get(key)
                kind = Kind.COUNTER if s.kind in (Kind.COUNT, Kind.COUNTER) else Kind.GAUGE
                number = float(s.value)  # type: ignore[arg-type]  # not Points: checked above
                reason = counter_refusal(number) if kind is Kind.COUNTER else ""
                if reason:
                    self.reject(reason, name=s.name)
                    continue
                if entry is None or entry.kind is not kind or (kind is Kind.COUNTER and number < entry.value):  # type: ignore[operator]
                    entry = Series(kind, 0.0, now, wall, batch.source)  # new, or a counter reset: a new stream
                entry.value, entry.updated = number, now
                new[key] = entry
            self._ended += [(k, v) for k, v in old.items() if k not in new]
            self._snapshots[batch.source] = new
            return
        series = self._series
        first_idle = len(batch.samples) - batch.idle
        for i, s in enumerate(batch.samples):
            if i >= first_idle:  # an idle counter's zero: it keeps its counter alive, and does nothing else
                entry = series.get((s.name, s.tags))
                if entry is not None and entry.summed:
                    entry.updated = now
                continue
            reason = _reject_reason(s)
            if reason:
                self.reject(reason, name=s.name)
                continue
            key = (s.name, s.tags)
            entry = series.get(key)
            is_points = isinstance(s.value, Points)
            kind = Kind.HISTOGRAM if is_points else Kind.COUNTER if s.kind in (Kind.COUNT, Kind.COUNTER) else Kind.GAUGE
            # another type, or a timer's points where a histogram's were (or the other way): as on /metrics,
            # the first keeps the series until it ends (a counter's stream never restarts at 0 for a gauge)
            if entry is not None and (entry.kind is not kind or (is_points and not entry.value.takes(s.value))):  # type: ignore[union-attr,arg-type]
                self.reject("type_conflict", name=s.name)
                continue
            fresh = entry is None  # kept only once its first point is taken, as on /metrics
            if entry is None:
                pname = metric_name(s.name)
                if reserved(pname):  # a worker's series never stands beside the sidecar's
                    self.reject("reserved_name", name=s.name)
                    continue
                family = family_name(pname, kind)
                reason = self._family_refusal(family, kind, is_points and s.value.milliseconds)  # type: ignore[union-attr]
                if reason:
                    self.reject(reason, name=s.name)
                    continue
                entry = Series(kind, Histogram(self.bounds) if is_points else 0.0, now, wall, batch.source,
                               summed=s.kind is Kind.COUNT, worker=True, family=family)
            value = s.value
            if isinstance(value, Points):
                if entry.value.add(value):  # type: ignore[union-attr]
                    entry.updated = now
                    if fresh:
                        self._admit(key, entry)
                else:
                    self.reject("non_finite", name=s.name)  # a sum, count or bucket would become infinite
                continue
            number = float(value)
            if kind is Kind.GAUGE:
                # The newest reading, as on /metrics: every flush sends the current value stamped with
                # the flush time, so a backfilled `|T` reading (an hour old) would be sent as current.
                # Without a timestamp (or stamped ahead of this clock) a point is read now and always
                # replaces the value; an older reading changes nothing, not even the series' age.
                read = s.timestamp
                if read is None or read >= wall:
                    read = wall
                elif read < entry.read:
                    continue
                entry.value, entry.read, entry.updated = number, read, now
                if fresh:
                    self._admit(key, entry)
                continue
            reason = (count_refusal(entry.value, number) if s.kind is Kind.COUNT  # type: ignore[arg-type]
                      else counter_refusal(number) if s.kind is Kind.COUNTER else "")
            if reason:
                self.reject(reason, name=s.name)  # the series stays as it was (a new one: none), as on /metrics
                continue
            if s.kind is Kind.COUNT:
                number += entry.value  # type: ignore[operator]
            elif s.kind is Kind.COUNTER and number < entry.value:  # type: ignore[operator]
                entry.start = wall  # the source restarted: a new cumulative stream
            entry.value, entry.updated = number, now
            if fresh:
                self._admit(key, entry)

    def _family_refusal(self, name: str, kind: Kind, milliseconds: bool) -> str:
        """Why a new worker series of `kind` cannot join its family `name` (`family_name`), or "":
        `/metrics`' rule (`PrometheusSink._admit`), so that no push sink sends a series it refuses."""
        family = self._families.get(name)
        if family is None:
            return "name_conflict" if clash(name, kind, self._families) else ""
        return "type_conflict" if family.kind is not kind or family.milliseconds != milliseconds else ""

    def _admit(self, key: Key, entry: Series) -> None:
        """Keep a worker's new series, whose first point was taken, in its family."""
        self._series[key] = entry
        value = entry.value
        family = self._families.get(entry.family)
        if family is None:
            milliseconds = bool(value.milliseconds) if isinstance(value, Histogram) else False
            family = self._families[entry.family] = Family(entry.kind, milliseconds)
        family.count += 1

    def _release(self, key: Key, entry: Series) -> None:
        """A worker's series ended: its family's name is free again, for any type, once it has none."""
        family = self._families.get(entry.family)
        if family is not None:
            family.count -= 1
            if family.count <= 0:
                del self._families[entry.family]

    def expire(self) -> int:
        cutoff = self.clock() - self.ttl
        stale = [k for k, v in self._series.items() if v.updated < cutoff]
        for key in stale:
            entry = self._series.pop(key)
            self._release(key, entry)
            self._ended.append((key, entry))
        return len(stale)

    def items(self) -> Iterator[tuple[Key, Series]]:
        for snap in self._snapshots.values():
            yield from snap.items()
        yield from self._series.items()

    def __len__(self) -> int:
        return len(self._series) + sum(map(len, self._snapshots.values()))

    def take_ended(self) -> list[tuple[Key, Series]]:
        ended, self._ended = self._ended, []
        return ended

    def end_all(self) -> list[tuple[Key, Series]]:
        """On a clean stop: every series ends now."""
        ended = self.take_ended() + list(self.items())
        self._snapshots.clear()
        self._series.clear()
        self._families.clear()
        return ended
