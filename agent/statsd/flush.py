"""The export side of the StatsD aggregator: what runs off the receive thread, once per interval.

`Flusher.batch(interval)` turns a finished `Interval` (handed over by `receive.Aggregator.swap`) into one
`Batch`: counters merged per context, zeros for idle counters (last: `Batch.idle`), the tags of the
task's containers, histogram values merged into weights where they repeat (`points`), and one sample
per series where contexts resolve to the same one (`one_per_series`).
`Flusher.expired()` says which contexts were idle past the TTL; the server passes them back to
`Aggregator.expire`, which forgets them at its next swap. The server runs this on a worker thread of
the event loop.
"""

from __future__ import annotations

import math
import time
from array import array
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from agent.memory import BURST
from agent.model import KIND_COUNT, KIND_GAUGE, Batch, Event, Kind, Points, Repeated, Sample, ServiceCheck, Tags, merge_tags
from agent.statsd.interval import Context, Interval, Slot

try:
    from agent.statsd import _fast
except ImportError:  # not built: the same in Python
    _fast = None

HISTOGRAM_TYPES = {"h": Kind.HISTOGRAM, "ms": Kind.HISTOGRAM, "d": Kind.DISTRIBUTION}
MERGE_MIN, MERGE_RATIO, MERGE_RETRY = 1024, 0.5, 16  # see `points`
MERGE_MAX, MERGE_CHUNK = 262_144, 65_536  # distinct values a merge may hold; values counted at a time


class Flusher:
    """Turns finished intervals into batches; tracks idle counters and context expiry."""

    def __init__(self, interval: float, ttl: float = 300.0) -> None:
        self.interval = interval
        self.ttl = ttl
        # when each context was last in an interval, and each counter last exported: oldest first (an
        # update moves the entry to the end), so what passed its TTL is found at the front
        self._last_seen: dict[Context, float] = {}
        self._counters_seen: dict[Context, float] = {}
        # An idle counter is exported as 0 until its TTL: the same Sample every flush, made once when it
        # goes idle (again when the containers' tags or the interval change), so that a flush costs what
        # changed, not what sits idle (100,000 idle counters: see docs/statsd.md, "Measured"). One zero
        # per series (`series_key`), held by the idle counters that resolve to it.
        self._zeros: dict[SeriesKey, Sample] = {}
        self._zero_of: dict[Context, SeriesKey] = {}
        self._holders: dict[SeriesKey, int] = {}  # idle counters per zero
        self._exported: set[Context] = set()  # the counters of the last batch
        self._zeros_for: tuple[dict[str, Tags], float, Tags] = ({}, 0.0, ())  # what `_zeros` were made with
        # A context's tags with its container's and the task's, by (id of its own tags, container), with
        # its own tags held so that the id stays theirs; the tags as a set by the id of the full tags
        # (`one_per_series`). Kept while the containers' and the task's tags stay the same.
        self._full: dict[tuple[int, str], tuple[Tags, Tags]] = {}
        self._sets: dict[int, frozenset[tuple[str, str]]] = {}
        self._full_for: tuple[dict[str, Tags], Tags] = ({}, ())
        self.overflows = 0  # counter sums that overflowed to infinity: dropped, counted as bad_value
        self.histogram_values = 0  # in the last batch

    def batch(self, iv: Interval, containers: Mapping[str, Tags] = {}, now: float | None = None,
              base: Tags = ()) -> Batch:
        """The batch of a finished interval. Tags: `base` (the task's: what `Hub.enrich` adds, done
        here once per distinct tag set instead of once more per sample), then the container's, then
        the line's own, each winning over the one before."""
        now = time.time() if now is None else now
        iv.settle()
        samples: list[Sample] = []
        add = samples.append
        full, sets = self._full_tags(containers, base)

        def tags_of(ctx: Context) -> Tags:
            key = (id(ctx.tags), ctx.container)
            hit = full.get(key)
            if hit is None:
                tags = _full_tags(ctx.tags, ctx.container, containers, base)
                hit = full[key] = (ctx.tags, tags)
                sets[id(tags)] = frozenset(tags)
            return hit[1]

        seen = self._last_seen
        seconds = self.interval * iv.periods  # what counts and histograms of this interval cover
        counters: dict[Context, float] = {}
        for slot, total in iv.counts.items():
            ctx = slot.ctx
            assert ctx is not None  # only slots with a context accumulate
            counters[ctx] = counters.get(ctx, 0.0) + total * slot.weight
        counters_seen, zero_of = self._counters_seen, self._zero_of
        for ctx, total in counters.items():
            if ctx in zero_of:  # it counts again
                self._drop_zero(ctx)
            if total - total != 0.0:  # finite values whose sum overflowed: never export an infinity
                self.overflows += 1
                continue
            add(Sample(ctx.name, total, KIND_COUNT, tags_of(ctx), None, seconds))
            counters_seen.pop(ctx, None)
            counters_seen[ctx] = now
        self._idle_zeros(counters, (dict(containers), seconds, base), now, tags_of)
        for ctx, value in iv.gauges.items():
            add(Sample(ctx.name, value, KIND_GAUGE, tags_of(ctx)))
        # Set contexts that resolve to one series (a `c:` of no container here, the task's own tag sent)
        # count the distinct members of them all: their union, made only where contexts share a series,
        # copied once and then added to (each member is looked at once; they are bounded by the set
        # limits). One sample per series, at its first context's place.
        distinct: dict[tuple[str, frozenset[tuple[str, str]]], tuple[Tags, set[bytes]]] = {}
        unions: set[tuple[str, frozenset[tuple[str, str]]]] = set()  # keys whose members are a copy
        for ctx, members in iv.sets.items():
            tags = tags_of(ctx)
            key = (ctx.name, sets[id(tags)])
            held = distinct.get(key)
            if held is None:
                distinct[key] = (tags, members)
            elif key in unions:
                held[1].update(members)
            else:  # the first context's own set stays as received
                distinct[key] = (held[0], held[1] | members)
                unions.add(key)
        for (name, _), (tags, members) in distinct.items():
            add(Sample(name, float(len(members)), KIND_GAUGE, tags))
        grouped: dict[Context, list[Slot]] = {}
        for slot in iv.values:
            grouped.setdefault(slot.ctx, []).append(slot)  # type: ignore[arg-type]
        self.histogram_values = 0
        for ctx, slots in grouped.items():
            self.histogram_values += sum(len(iv.values[slot]) for slot in slots)  # as received
            add(Sample(ctx.name, points(iv.values, slots, ctx.type == "ms", iv.weights), HISTOGRAM_TYPES[ctx.type],
                       tags_of(ctx), None, seconds))
        for ctx, value, ts in iv.timestamped:
            if value - value != 0.0:
                self.overflows += 1
                continue
            kind = Kind.COUNT if ctx.type == "c" else Kind.GAUGE
            add(Sample(ctx.name, value, kind, tags_of(ctx), ts, self.interval if kind is Kind.COUNT else None))
        events = [_with_container(e, c, containers, base) for e, c in iv.events]
        checks = [_with_container(sc, c, containers, base) for sc, c in iv.service_checks]
        for ctx in iv.contexts():
            seen.pop(ctx, None)
            seen[ctx] = now
        samples, keys, overflows = one_per_series(samples, self._sets)
        self.overflows += overflows
        zeros = self._zeros
        covered = {key for key in keys if key in zeros}  # an idle counter's series has a count from another
        if covered:
            samples.extend(zero for key, zero in zeros.items() if key not in covered)
        else:
            samples.extend(zeros.values())  # last: see `Batch.idle`
        return Batch("statsd", samples, events, checks, snapshot=False,  # type: ignore[arg-type]
                     idle=len(zeros) - len(covered))

    def _full_tags(self, containers: Mapping[str, Tags], base: Tags) -> tuple[
            dict[tuple[int, str], tuple[Tags, Tags]], dict[int, frozenset[tuple[str, str]]]]:
        """The caches of full tags, emptied when the tags they add change or when they hold far more
        than the live contexts (after a storm)."""
        made_for = (dict(containers), base)
        if made_for != self._full_for or len(self._full) > 2 * len(self._last_seen) + BURST:
            self._full_for, self._full, self._sets = made_for, {}, {}
        return self._full, self._sets

    def _idle_zeros(self, counters: Mapping[Context, float], made_for: tuple[dict[str, Tags], float, Tags],
                    now: float, tags_of: Callable[[Context], Tags]) -> None:
        """Keep `_zeros` to the counters exported before, not in this batch, within their TTL.
        `made_for`: the containers' tags, the interval and the task's tags the zeros are made with."""
        counters_seen, seconds = self._counters_seen, made_for[1]
        if made_for != self._zeros_for:  # the zeros' tags or interval changed: all anew
            self._zeros_for = made_for
            idle = list(self._zero_of)
            self._zeros, self._zero_of, self._holders = {}, {}, {}
            for ctx in idle:
                self._hold_zero(ctx, tags_of(ctx), seconds)
        for ctx in self._exported:
            if ctx not in counters and ctx in counters_seen:  # idle from this batch on
                self._hold_zero(ctx, tags_of(ctx), seconds)
        self._exported = set(counters)
        for ctx in _older_than(counters_seen, now - self.ttl):
            del counters_seen[ctx]
            self._drop_zero(ctx)

    def _hold_zero(self, ctx: Context, tags: Tags, seconds: float) -> None:
        zero = Sample(ctx.name, 0.0, KIND_COUNT, tags, None, seconds)
        key = self._zero_of[ctx] = series_key(zero, self._sets[id(tags)])
        self._holders[key] = self._holders.get(key, 0) + 1
        if key not in self._zeros:
            self._zeros[key] = zero

    def _drop_zero(self, ctx: Context) -> None:
        key = self._zero_of.pop(ctx, None)
        if key is not None:
            held = self._holders[key] = self._holders[key] - 1
            if not held:
                del self._holders[key], self._zeros[key]

    def expired(self, now: float | None = None) -> list[Context]:
        """Contexts idle for longer than the TTL; forgotten here, to be passed to `Aggregator.expire`."""
        now = time.time() if now is None else now
        old = _older_than(self._last_seen, now - self.ttl)
        for ctx in old:
            del self._last_seen[ctx]
            self._counters_seen.pop(ctx, None)
            self._drop_zero(ctx)
            self._exported.discard(ctx)
        if len(old) > BURST:  # a dict never shrinks by deletion: rebuild them after a burst
            self._last_seen = dict(self._last_seen)
            self._counters_seen = dict(self._counters_seen)
            self._zeros, self._zero_of, self._holders = dict(self._zeros), dict(self._zero_of), dict(self._holders)
            self._full, self._sets = {}, {}  # they hold the tags of what expired: made again as needed
        return old


SeriesKey = tuple[str, int, "float | None", bool, frozenset[tuple[str, str]]]


def series_key(s: Sample, tags: frozenset[tuple[str, str]]) -> SeriesKey:
    """What makes a sample one series for every sink: name, kind, timestamp, unit and tags as a set
    (`one_per_series` writes it inline)."""
    return (s.name, id(s.kind), s.timestamp, isinstance(s.value, Points) and s.value.milliseconds, tags)


def one_per_series(samples: list[Sample], sets: dict[int, frozenset[tuple[str, str]]] | None = None,
                   ) -> tuple[list[Sample], dict[SeriesKey, int], int]:
    """`samples` with one sample per series, where each series is, and how many counts were dropped
    because their sum overflowed. Distinct contexts can resolve to one series: a `c:` that names no
    container of the task (no container tags: the same series as the line without `c:`), a line's tag
    equal to its container's or the task's, a gauge and a set, a timestamped line sent twice. A sink
    that keeps one point per series and time (the Datadog intake) would keep one of them, so they are
    merged here, as the Datadog agent aggregates by resolved tags: counts summed, histogram values
    joined, the later gauge kept. Costs a dict entry per sample; the list is copied only when something
    merges. `sets`: the samples' tags as sets, by the id of the tag tuple, where known."""
    known, sets = sets or {}, {}
    where: dict[SeriesKey, int] = {}
    out: list[Sample] | None = None
    overflows = 0
    for i, s in enumerate(samples):
        tags = known.get(id(s.tags)) or sets.get(id(s.tags))
        if tags is None:
            tags = sets[id(s.tags)] = frozenset(s.tags)
        value = s.value
        key = (s.name, id(s.kind), s.timestamp, value.milliseconds if type(value) is Points else False, tags)
        at = where.get(key)
        if at is None:
            where[key] = i if out is None else len(out)
            if out is not None:
                out.append(s)
            continue
        if out is None:
            out = samples[:i]  # all distinct so far: `where` holds their places
        merged = _merged_sample(out[at], s)
        if merged is None:
            overflows += 1
        else:
            out[at] = merged
    return (samples if out is None else out), where, overflows


def _merged_sample(first: Sample, later: Sample) -> Sample | None:
    """One sample for two of one series; None when counts overflow (the first is kept)."""
    if first.kind is Kind.COUNT:
        total = first.value + later.value  # type: ignore[operator]
        return None if total - total != 0.0 else replace(first, value=total)
    if isinstance(first.value, Points) and isinstance(later.value, Points):
        values, weights = array("d"), array("d")
        for p in (first.value, later.value):
            values.frombytes(memoryview(p.values).cast("B"))  # type: ignore[arg-type]
            weights.extend(array("d", [p.weights.weight]) * len(p.weights) if isinstance(p.weights, Repeated)
                           else p.weights)
        return replace(first, value=Points(values, weights, first.value.milliseconds))
    return later  # a gauge: the later one


def _older_than(when: dict[Context, float], cutoff: float) -> list[Context]:
    """The first entries of `when` (oldest first) with a time before `cutoff`."""
    old = []
    for ctx, t in when.items():
        if t >= cutoff:
            break
        old.append(ctx)
    return old


def points(values: dict[Slot, array[float]], slots: Sequence[Slot], milliseconds: bool,
           each: Mapping[Slot, array[float]] = {}) -> Points:
    """One context's values and weights (weights are built only here: most are 1). `each`: the weight
    of each value of a slot whose values have several (`Interval.fold`); the others have their slot's.

    When values repeat (timers in whole milliseconds, small sizes), equal values are merged into one
    with the sum of their weights, so that every sink works per distinct value, not per sample: in C
    without the GIL (`_fast.merge`), or in Python (`_merged`), to the same result. Whether a context's
    values repeat is remembered (`Context.merge`) and tried again every 16 flushes."""
    ctx: Context = slots[0].ctx  # type: ignore[assignment]
    total = sum(len(values[slot]) for slot in slots)
    if total >= MERGE_MIN and ctx.merge >= 0:
        merged = _merge([(values[slot], each.get(slot, slot.weight)) for slot in slots],
                        min(int(total * MERGE_RATIO), MERGE_MAX))
        if merged is not None:
            ctx.merge = 1
            return Points(memoryview(merged[0]).cast("d"), memoryview(merged[1]).cast("d"), milliseconds)
        ctx.merge = -MERGE_RETRY
    elif ctx.merge < 0:
        ctx.merge += 1
    if len(slots) == 1:
        vals = values[slots[0]]
        own = each.get(slots[0])
        return Points(vals, Repeated(slots[0].weight, len(vals)) if own is None else own, milliseconds)
    vals, weights = array("d"), array("d")
    for slot in slots:
        held = values[slot]
        vals.frombytes(memoryview(held).cast("B"))  # an array or a harvest: no float objects
        own = each.get(slot)
        weights.extend(array("d", [slot.weight]) * len(held) if own is None else own)
        values[slot] = array("d")  # copied: freed now, not with the interval (8 bytes a value of a flood)
    del held
    return Points(vals, weights, milliseconds)


def _merged(parts: Sequence[tuple[Sequence[float], float | Sequence[float]]], most: int,
            ) -> tuple[bytearray, bytearray] | None:
    """`_fast.merge` in Python: the distinct values of `parts` ((values, weight of each) pairs) and
    their summed weights, as bytearrays of doubles; None past `most` distinct values or for a value
    that is not finite. Each part's values are counted, MERGE_CHUNK at a time (4,000,000 distinct
    values counted at once held 470 MiB for a moment, for a merge that was not worth it), then added
    as count times weight. A part with a weight per value (`Interval.fold`) adds each as it comes."""
    merged: dict[float, float] = {}
    for held, weight in parts:
        if not isinstance(weight, float):
            for start in range(0, len(held), MERGE_CHUNK):
                for value, own in zip(held[start:start + MERGE_CHUNK], weight[start:start + MERGE_CHUNK]):
                    merged[value] = merged.get(value, 0.0) + own
                if len(merged) > most:
                    return None
            continue
        counted: Counter[float] = Counter()
        for start in range(0, len(held), MERGE_CHUNK):
            counted.update(held[start:start + MERGE_CHUNK])  # C-level counting
            if len(counted) > most:
                return None
        for value, n in counted.items():
            merged[value] = merged.get(value, 0.0) + n * weight
        if len(merged) > most:
            return None
    if not all(map(math.isfinite, merged)):
        return None
    return bytearray(array("d", merged.keys())), bytearray(array("d", merged.values()))


_merge = _fast.merge if _fast is not None else _merged


def _full_tags(own: Tags, container: str, containers: Mapping[str, Tags], base: Tags) -> Tags:
    """The task's tags, then the container's, then the line's own, each winning over the one before.
    `container`: the line's `c:` field, a DockerId as written, or `ci-<DockerId>` as the Datadog
    clients' origin detection sends it (`in-<cgroup inode>` names no container here: no tags)."""
    if container:
        tags = containers.get(container)
        if tags is None and container.startswith("ci-"):
            tags = containers.get(container[3:])
        own = merge_tags(tags or (), own)
    return merge_tags(base, own)


def _with_container(item: Event | ServiceCheck, container: str, containers: Mapping[str, Tags],
                    base: Tags) -> Event | ServiceCheck:
    tags = _full_tags(item.tags, container, containers, base)
    return item if tags is item.tags else replace(item, tags=tags)
