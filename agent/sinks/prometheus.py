"""Prometheus sink: keeps the latest state of every series and renders `/metrics` on demand.

Every point is checked against Prometheus's rules when it arrives, before it joins a series, so that
`/metrics` is valid in the text format and in OpenMetrics whatever a worker sends: one family per
name, one series per label set, no reserved name or label taken over, nothing non-finite where the
format forbids it. A point that cannot be exported is refused alone and counted as
`tasklens.sink.points_rejected{sink="prometheus", reason}`; the rules are in docs/statsd.md ("How
names reach /metrics").

Names: every character outside `[a-zA-Z0-9_]` becomes `_`. Counters (cumulative sources and StatsD
counts, summed since start) are exported as `<name>_total`; StatsD histograms, timers (converted to
seconds, as statsd_exporter does) and distributions as Prometheus histograms. Series of a snapshot
source are replaced by each snapshot; other series expire after the TTL. The zeros of idle StatsD
counters (`Batch.idle`) are skipped, since they change no total; a counter series lives as long as its
zeros would have kept it (`counter_ttl`).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from agent.logs import RateLimitedLog
from agent.memory import BURST, release_freed_memory
from agent.model import KIND_COUNT, KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM, Batch, Kind, Points, Sample, Tags, encodable
from agent.selfmetrics import SelfMetrics
from agent.sinks.cumulative import Histogram, count_refusal, counter_refusal
from agent.sinks.metric_help import own_help, worker_help
from agent.sinks.names import claims, clash, family_name, metric_name, reserved
from agent.sinks.prometheus_text import Family, LabelSet, Renderer, go_float, label_text

# Labels the formats give a meaning: `le` (histogram buckets), `quantile` (summaries), `__*` (Prometheus
# internal). A tag with such a key is exported as `exported_<key>`, as Prometheus itself does when a
# scraped label collides with a target label.
RESERVED_LABELS = frozenset({"le", "quantile"})
# The label text of every line of the worker's series together (a histogram repeats its labels on each
# bucket line). 100,000 counters with the ten identity labels use ~45 MiB.
MAX_LABEL_BYTES = 64 * 1024 * 1024
# a rendering of the worker's series that took over SLOW_RENDER seconds is reused, even when the data
# changed, until RENDER_SPACING times as long has passed (see `render_parts`)
SLOW_RENDER, RENDER_SPACING = 0.05, 2.0
EXPIRE_CHUNK = 2000  # tag sets looked at per event loop turn when expiring series

Part = bytes | memoryview  # of `/metrics` (`PrometheusSink.render_parts`)


@lru_cache(maxsize=4096)  # a new tag pair mostly has a key seen before (`request_id:<new id>`)
def label_name(key: str) -> str:
    """The label for a tag key; "" when none can be made (an empty key)."""
    out = metric_name(key)
    if out in RESERVED_LABELS or out.startswith("__"):
        return "exported_" + out.lstrip("_")
    return out


def rendered_kind(sample: Sample) -> Kind:
    if isinstance(sample.value, Points):
        return KIND_HISTOGRAM
    return KIND_COUNTER if sample.kind is KIND_COUNT or sample.kind is KIND_COUNTER else KIND_GAUGE


def _milliseconds(sample: Sample) -> bool:
    """A StatsD timer's points: exported in seconds, so not the same type as a histogram's."""
    return isinstance(sample.value, Points) and sample.value.milliseconds


def _printable(text: str) -> str:
    """HELP text: the name as sent, with `?` for what is not printable and `'` for `"` (which the
    text format cannot escape in HELP and OpenMetrics must)."""
    if not (text.isascii() and text.isprintable()):
        text = "".join(c if c.isprintable() else "?" for c in encodable(text))
    return text.replace('"', "'")


@dataclass(frozen=True, slots=True)
class _Renamed:
    """The label of a pair that gives an identity key another value than the task's: exported as
    `exported_<name>`, beside the identity label (`labels_of`)."""

    name: str
    text: str
    block_text: str
    theirs: str  # the task's value for that key, as exported (`_value_text`)


# A tag pair's label: (label name, value as exported, its text in the label block), a `_Renamed`, or
# the reason it has none
Label = tuple[str, str, str] | _Renamed | str
KNOWN_PAIRS = 8192  # tag pairs whose labels a sink remembers: bounded, a storm's pairs are each new (8 MiB with 200-byte tags)
_PLAIN = {tuple}  # the type of every label of a tag set that none renames or refuses
_NAME = itemgetter(0)


def _label(key: str, value: str, identity: dict[str, str] | None) -> Label:
    name = label_name(key)
    if not name:
        return "bad_label"
    theirs = identity.get(key, value) if identity is not None else value
    text = _value_text(value)
    if theirs != value:
        return _Renamed(name, text, label_text(name, text), _value_text(theirs))
    return name, text, label_text(name, text)


def _value_text(value: str) -> str:
    """A tag value as a label's value: a bare tag's as `true`, lone surrogates as `?` (`encodable`)."""
    return encodable(value) if value else "true"


def labels_of(tags: Tags, identity: dict[str, str] | None = None,
              known: dict[tuple[str, str], Label] | None = None) -> LabelSet | str:
    """The label set for a tag set, or the reason it has none.

    A bare tag (`canary`) becomes `canary="true"`: an empty label value means "no label" in PromQL.
    A tag that gives an identity key (`service`, `task_id`, ...) another value than the sidecar's is
    exported as `exported_<key>`; the identity label keeps the sidecar's value.
    `known`: the labels of the pairs seen before with this identity, added to here. Most pairs of a new
    tag set were seen (the task's ten identity tags, `env:prod`): each costs a lookup, not a rename,
    and brings its text in the label block made already. A tag set whose pairs were all seen and whose
    labels are all plain is looked at with C-level calls (map, set, sort), not a Python loop per pair.
    """
    known = {} if known is None else known
    found: list[Label] = list(map(known.get, tags))  # type: ignore[arg-type]
    if None in found:
        for i, label in enumerate(found):
            if label is None:
                key, value = pair = tags[i]
                found[i] = known[pair] = _label(key, value, identity)
    if set(map(type, found)) != _PLAIN:  # a reason, or an identity key's other value
        return _labels_in_turn(found)
    plain = cast(list[tuple[str, str, str]], found)
    plain.sort(key=_NAME)
    if len(set(map(_NAME, plain))) != len(plain):
        return "label_conflict"  # `a-b` and `a_b`
    return LabelSet(plain)


def _labels_in_turn(found: list[Label]) -> LabelSet | str:
    """`labels_of` of labels that rename or refuse, pair by pair: the first reason found, in the order of
    the tags."""
    labels: dict[str, tuple[str, str, str]] = {}
    for label in found:
        if isinstance(label, str):
            return label
        if isinstance(label, _Renamed):  # a worker's value for an identity key
            name, theirs = label.name, label.theirs
            if labels.setdefault(name, (name, theirs, label_text(name, theirs)))[1] != theirs:
                return "label_conflict"
            label = ("exported_" + name, label.text, "exported_" + label.block_text)
        if label[0] in labels:
            return "label_conflict"  # `a-b` and `a_b`, or a worker's `exported_x` beside a renamed `x`
        labels[label[0]] = label
    return LabelSet(sorted(labels.values(), key=_NAME))


@dataclass(slots=True)
class _Owner:
    """A worker family: the type that took the name first, and how many series it has."""

    kind: Kind
    help: str
    milliseconds: bool = False  # a histogram family of timers (in seconds) or of raw values: never both
    count: int = 0


@dataclass(slots=True)
class _Series:
    kind: Kind  # as rendered: COUNTER, GAUGE or HISTOGRAM
    value: float | Histogram
    updated: float
    family: str
    labels: LabelSet
    # a gauge's: when its value was read (wall clock: a `|T` timestamp, else its flush), so that an
    # older reading never replaces a newer one (`_accept_points`)
    read: float = -math.inf


class PrometheusSink:
    name = "prometheus"

    def __init__(self, metrics: SelfMetrics, pull: Callable[[], list[Sample]] = list,
                 ttl: float = 300.0, buckets: Iterable[float] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                 clock: Callable[[], float] = time.monotonic, identity: Callable[[], Tags] = tuple,
                 max_label_bytes: int = MAX_LABEL_BYTES, counter_ttl: float = 0.0,
                 wall: Callable[[], float] = time.time) -> None:
        self.metrics = metrics
        self.wall = wall  # when a gauge without a timestamp was read: its flush (see `_Series.read`)
        # how long after its last count the StatsD flusher still sends an idle counter's zero
        # (TASKLENS_STATSD_CONTEXT_TTL): the zeros are skipped (`Batch.idle`), so a counter series lives
        # that much longer than `ttl` from its last count, as if each zero had updated it
        self.counter_ttl = counter_ttl
        self.pull = pull
        self.identity = identity
        self.ttl = ttl
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self.clock = clock
        self.max_label_bytes = max_label_bytes
        self.label_bytes = 0  # of the worker's series, as rendered (see MAX_LABEL_BYTES)
        self.version = 0  # changes with the data: a rendering is reused until then
        self._snapshots: dict[str, list[_Series]] = {}
        self._by_tags: dict[Tags, dict[str, _Series]] = {}  # the worker's series: tags -> name -> series
        self.live = 0  # number of the worker's series
        self._lock = threading.Lock()
        self._families: dict[str, _Owner] = {}  # the worker's families, by family name
        self._owners: dict[tuple[str, str], _Series] = {}  # (family, label block) -> the series that has it
        self._labels: dict[Tags, LabelSet | str] = {}  # cache for the current identity
        self._pairs: dict[tuple[str, str], Label] = {}  # the same, per tag pair (`labels_of`)
        self._names: dict[str, str] = {}  # metric_name of the worker's names (bounded as `_pairs`)
        self._identity: Tags = ()
        self._log = RateLimitedLog()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._renderer = Renderer(self.buckets)
        # openmetrics? -> (version, worker part, when it was rendered, how long that took if slow)
        self._cache: dict[bool, tuple[int, memoryview, float, float]] = {}

    # -- sink side ---------------------------------------------------------------------------

    def accept(self, batch: Batch) -> None:
        """Apply a batch; may be called from any thread (a lock keeps accept and expire apart)."""
        refused: Counter[str] = Counter()
        with self._lock:
            now = self.clock()
            identity = self._current_identity()
            self.version += 1
            if batch.snapshot:
                self._accept_snapshot(batch, identity, now, refused)
            else:  # idle counters' zeros change no total: skipped (`Batch.idle`)
                samples = batch.samples[:len(batch.samples) - batch.idle] if batch.idle else batch.samples
                self._accept_points(samples, identity, now, self.wall(), refused)
        for reason, n in refused.items():
            self.metrics.inc("tasklens.sink.points_rejected", n, sink="prometheus", reason=reason)
            self._log.warning(f"prometheus:{reason}", "prometheus: %d point(s) of source %s refused: %s "
                              "(docs/statsd.md, \"How names reach /metrics\")", n, batch.source, reason)

    def _accept_snapshot(self, batch: Batch, identity: dict[str, str], now: float, refused: Counter[str]) -> None:
        """The sidecar's own sources: checked like the worker's points, but never budgeted."""
        kept = []
        for s in batch.samples:
            if isinstance(s.value, Points):
                continue
            entry = self._check(s, identity, now, refused, reserve=False)
            if entry is None:
                continue
            value = float(s.value)
            reason = counter_refusal(value) if entry.kind is Kind.COUNTER else ""
            if reason:
                refused[reason] += 1
                continue
            entry.value = value
            kept.append(entry)
        self._snapshots[batch.source] = kept

    def _accept_points(self, samples: list[Sample], identity: dict[str, str], now: float, wall: float,
                       refused: Counter[str]) -> None:
        """The hot path: 100,000 points per flush. Series are found by tags, then name: the samples of a
        batch share a few tag tuples (the hub merges each distinct set once), and a tuple of tuples is
        hashed anew on every lookup, so each distinct tuple object is looked up once per batch.

        A gauge shows its newest reading: `/metrics` has no timestamps, so a scraper reads what it shows
        as current, and a backfilled `|T` reading (an hour old) must not replace the live one, whatever
        the order they came in. A point without a timestamp was read at `wall` (its flush) and always
        replaces the value (a wall clock stepped back must not freeze a gauge); one stamped after `wall`
        counts as read then (a clock ahead must not hold a value past the live readings). An older
        reading changes nothing, not even the series' age (it is not refused: Datadog takes it)."""
        by_tags = self._by_tags
        groups: dict[int, dict[str, _Series]] = {}
        isfinite = math.isfinite
        for s in samples:
            tags = s.tags
            inner = groups.get(id(tags))
            if inner is None:
                inner = by_tags.get(tags)
                if inner is None:
                    inner = by_tags[tags] = {}
                groups[id(tags)] = inner
            entry = inner.get(s.name)
            fresh = entry is None  # a series stays only if its first point is taken (`_withdraw`)
            if entry is None:
                entry = self._admit(inner, s, identity, now, refused)
                if entry is None:
                    continue
            value = s.value
            kind = entry.kind
            if kind is KIND_GAUGE and s.kind is KIND_GAUGE:  # the common cases first, inline
                read = s.timestamp
                if read is None or read >= wall:
                    read = wall
                elif read < entry.read:
                    continue  # an older reading than the one shown
                entry.value, entry.read = value, read  # type: ignore[assignment]
                entry.updated = now
                continue
            if kind is KIND_COUNTER and s.kind is KIND_COUNT:
                total = entry.value + value  # type: ignore[operator]
                if value >= 0.0 and isfinite(total):  # type: ignore[operator]  # what count_refusal accepts, inline
                    entry.value = total
                    entry.updated = now
                else:
                    refused[count_refusal(entry.value, value)] += 1  # type: ignore[arg-type]
                    if fresh:
                        self._withdraw(inner, s.name, entry)
                continue
            if kind is not rendered_kind(s) or (kind is KIND_HISTOGRAM and not entry.value.takes(value)):  # type: ignore[union-attr,arg-type]
                refused["type_conflict"] += 1  # same name and tags, another type (or unit): the first keeps it
                continue
            reason = _update(entry, s)
            if reason:
                refused[reason] += 1
                if fresh:
                    self._withdraw(inner, s.name, entry)
            else:
                entry.updated = now

    def _current_identity(self) -> dict[str, str]:
        tags = self.identity()
        if tags != self._identity:  # the label cache depends on it
            self._identity = tags
            self._labels.clear()
            self._pairs.clear()
        return dict(tags)

    def _check(self, s: Sample, identity: dict[str, str], now: float, refused: Counter[str], *,
               reserve: bool) -> _Series | None:
        """A new series for `s` with its name and labels checked (not yet registered), or None."""
        pname = self._worker_metric_name(s.name) if reserve else metric_name(s.name)
        if not pname:
            refused["bad_name"] += 1
            return None
        if reserve and reserved(pname):
            refused["reserved_name"] += 1
            return None
        if reserve:  # a worker's tags: an identity label keeps the task's value (`labels_of`)
            labels = self._labels.get(s.tags)
            if labels is None:
                if len(self._pairs) >= KNOWN_PAIRS:
                    self._pairs.clear()
                labels = self._labels[s.tags] = labels_of(s.tags, identity, self._pairs)
        else:  # the sidecar's own series: their own labels win over the task's tags, as in every sink
            labels = labels_of(s.tags)
        if isinstance(labels, str):
            refused[labels] += 1
            return None
        kind = rendered_kind(s)
        value: float | Histogram = Histogram(self.buckets) if kind is KIND_HISTOGRAM else 0.0
        return _Series(kind, value, now, family_name(pname, kind), labels)

    def _worker_metric_name(self, name: str) -> str:
        """`metric_name`, remembered (bounded as the pairs' labels): a storm's series share their name."""
        pname = self._names.get(name)
        if pname is None:
            if len(self._names) >= KNOWN_PAIRS:
                self._names.clear()
            pname = self._names[name] = metric_name(name)
        return pname

    def _admit(self, inner: dict[str, _Series], s: Sample, identity: dict[str, str], now: float,
               refused: Counter[str]) -> _Series | None:
        """Register a new worker series, or count why it cannot be one."""
        entry = self._check(s, identity, now, refused, reserve=True)
        if entry is None:
            return None
        family = self._families.get(entry.family)
        if family is None:
            if clash(entry.family, entry.kind, self._families):  # `x` counter vs `x_total` gauge ...
                refused["name_conflict"] += 1
                return None
        elif family.kind is not entry.kind or family.milliseconds != _milliseconds(s):
            refused["type_conflict"] += 1  # README: the first type seen keeps the name (a timer is one)
            return None
        elif (entry.family, entry.labels.block) in self._owners:
            refused["duplicate_series"] += 1  # `a.b` and `a_b` with the same tags: the first keeps it
            return None
        cost = entry.labels.cost(entry.kind, len(self.buckets))
        if self.label_bytes + cost > self.max_label_bytes:
            refused["label_bytes_limit"] += 1
            return None
        if family is None:
            ms = _milliseconds(s)
            family = self._families[entry.family] = _Owner(entry.kind, _printable(worker_help(s.name, s.kind, ms)), ms)
        family.count += 1
        self._owners[(entry.family, entry.labels.block)] = entry
        self.label_bytes += cost
        inner[s.name] = entry
        self.live += 1
        return entry

    def _withdraw(self, inner: dict[str, _Series], name: str, entry: _Series) -> None:
        """Undo `_admit` for a series whose first point was refused (`1e308|h` twice: a sum that is not
        finite): it would show `_count 0` and hold its family's name and type for the TTL."""
        del inner[name]
        self._forget(entry)
        self.live -= 1

    def _forget(self, entry: _Series) -> None:
        """Release what a worker series held: its label block, label bytes, and its family's name once
        the family has no series left (the name is free again, for any type)."""
        family = self._families[entry.family]
        del self._owners[(entry.family, entry.labels.block)]
        self.label_bytes -= entry.labels.cost(entry.kind, len(self.buckets))
        family.count -= 1
        if not family.count:
            del self._families[entry.family]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=min(self.ttl, 30.0))
            except TimeoutError:
                pass
            await self.expire_gradually()

    def expire(self) -> int:
        """Forget the series not updated within the TTL, all at once; how many."""
        with self._lock:
            expired = self._expire(list(self._by_tags), self.clock() - self.ttl)
            self._after_expiry(expired)
        self._count_series()
        return expired

    async def expire_gradually(self) -> int:
        """`expire` on the event loop, EXPIRE_CHUNK tag sets per turn: looking at 100,000 of them
        takes 0.1-0.5 s, which `/health` and the StatsD flush must not wait for."""
        cutoff, expired = self.clock() - self.ttl, 0
        tag_sets = list(self._by_tags)
        for start in range(0, len(tag_sets), EXPIRE_CHUNK):
            with self._lock:
                expired += self._expire(tag_sets[start:start + EXPIRE_CHUNK], cutoff)
            await asyncio.sleep(0)
        with self._lock:
            self._after_expiry(expired)
        self._count_series()
        return expired

    def _count_series(self) -> None:
        self.metrics.set("tasklens.prometheus.series", self.live + sum(map(len, self._snapshots.values())))
        self.metrics.set("tasklens.prometheus.label_bytes", self.label_bytes)

    def _expire(self, tag_sets: list[Tags], cutoff: float) -> int:
        expired = 0
        counters_cutoff = cutoff - self.counter_ttl  # see `counter_ttl`
        for tags in tag_sets:
            inner = self._by_tags.get(tags)
            if inner is None:
                continue
            stale = [name for name, entry in inner.items()
                     if entry.updated < (counters_cutoff if entry.kind is Kind.COUNTER else cutoff)]
            for name in stale:
                self._forget(inner.pop(name))
            expired += len(stale)
            if not inner:
                del self._by_tags[tags]
            elif len(stale) > BURST:  # one tag set with many one-off names: shrink its dict too
                self._by_tags[tags] = dict(inner)
        self.live -= expired
        if expired:
            self.version += 1
        return expired

    def _after_expiry(self, expired: int) -> None:
        if len(self._labels) > 2 * self.live + 1024:
            self._labels.clear()  # tag sets came and went
        if expired > BURST:  # a dict never shrinks by deletion: rebuild them after a burst
            # and forget the pairs and names of a storm: a few thousand small objects left among its
            # freed memory would keep its pages (RSS) from going back
            self._pairs, self._names = {}, {}
            self._by_tags = dict(self._by_tags)
            self._families = dict(self._families)
            self._owners = dict(self._owners)
            release_freed_memory()

    # -- exposition ---------------------------------------------------------------------------

    def _sidecar_families(self) -> tuple[list[Family], int]:
        """The sidecar's own series (snapshots and the hub's pull), grouped; a clash among them left out."""
        now = self.clock()
        families: dict[str, Family] = {}
        blocks: set[tuple[str, str]] = set()
        taken: set[str] = set()
        refused = 0
        entries: list[_Series] = []
        for snap in list(self._snapshots.values()):
            entries.extend(snap)
        for s in self.pull():
            labels = labels_of(s.tags)  # the sidecar's own: see `_check`
            kind = rendered_kind(s)
            value = float(s.value)  # type: ignore[arg-type]
            if isinstance(labels, str) or (kind is Kind.COUNTER and counter_refusal(value)):
                refused += 1
                continue
            entries.append(_Series(kind, value, now, family_name(metric_name(s.name), kind), labels))
        for entry in entries:
            family = families.get(entry.family)
            if family is None:
                names = claims(entry.family, entry.kind)
                if any(n in taken for n in names):
                    refused += 1
                    continue
                taken.update(names)
                family = families[entry.family] = Family(entry.family, entry.kind, own_help(entry.family, entry.kind))
            if family.kind is not entry.kind or (entry.family, entry.labels.block) in blocks:
                refused += 1
                continue
            blocks.add((entry.family, entry.labels.block))
            family.series.append(entry)
        return list(families.values()), refused

    def _worker_families(self, sidecar: list[Family]) -> list[Family]:
        """The worker's series grouped by family, but any family that would clash with the sidecar's
        (the sidecar's names win). Runs in the rendering thread: the copies keep it safe from the
        event loop adding series meanwhile."""
        owners = self._families
        shadowed = {f.name for f in sidecar if f.name in owners} | {
            c for f in sidecar if (c := clash(f.name, f.kind, owners)) is not None}
        families: dict[str, Family] = {}
        for entry in list(self._owners.values()):  # values, not items: 100,000 tuples would wake the GC
            name = entry.family
            family = families.get(name)
            if family is None:
                owner = owners.get(name)
                if owner is None or name in shadowed:  # expired meanwhile, or shadowed
                    continue
                family = families[name] = Family(name, owner.kind, owner.help)
            family.series.append(entry)
        return list(families.values())

    def render(self, openmetrics: bool = False) -> bytes:
        """`/metrics` in text format 0.0.4 or OpenMetrics 1.0 (see prometheus_text.py)."""
        return b"".join(self.render_parts(openmetrics))

    def render_parts(self, openmetrics: bool = False) -> list[Part]:
        """`/metrics` in pieces: the worker's series, the sidecar's, and OpenMetrics' `# EOF`.

        Safe to call from another thread than the event loop. The worker's part (nearly all of it
        with many series) is rendered once per change of the data, and when that took longer than
        SLOW_RENDER, not again before RENDER_SPACING times as long has passed: under back-to-back
        scrapes of 100,000 series, rendering then holds the GIL a third of the time at most, not
        all of it (scrapes meanwhile get the last rendering). The sidecar's part is new every time.

        The worker's part is a memoryview of the kept rendering: unlike bytes it can be referenced
        weakly, so that `http.GzipCache` does not keep a rendering alive once the sink let it go. The
        last rendering is let go before the next one is made: with the label bytes full, each is
        ~70 MB. A scrape that has it already holds it until it is written, whole.
        """
        version = self.version
        sidecar, refused = self._sidecar_families()
        if refused or self.metrics.get("tasklens.prometheus.render_conflicts"):
            # a gauge: sidecar series left out of the last scrape (never expected; a bug if seen)
            self.metrics.set("tasklens.prometheus.render_conflicts", refused)
        if refused:
            self._log.error("prometheus:render_conflicts", "prometheus: %d of the sidecar's own series left out "
                            "of /metrics: they share a name with another (a bug: please report it)", refused)
        cached = self._cache.get(openmetrics)
        now = time.perf_counter()
        if cached is not None and (cached[0] == version or now - cached[2] < RENDER_SPACING * cached[3]):
            worker = cached[1]
        else:
            self._cache.pop(openmetrics, None)  # not held while the next one is rendered (nor here)
            cached = None
            worker = memoryview(self._renderer.render(self._worker_families(sidecar), openmetrics))
            took = time.perf_counter() - now
            self._cache[openmetrics] = (version, worker, now, took if took > SLOW_RENDER else 0.0)
        # the worker's part first: a gzip stream of it is kept and continued (`http.GzipCache`)
        parts: list[Part] = [worker, self._renderer.render(sidecar, openmetrics)]
        if openmetrics:
            parts.append(b"# EOF\n")
        return parts

    def collect(self) -> Iterator[Metric]:
        """The same families for prometheus_client's encoders (tests compare the two)."""
        sidecar, _ = self._sidecar_families()
        for family in self._worker_families(sidecar) + sidecar:  # in the order of `render_parts`
            yield _metric(family)


def _update(entry: _Series, s: Sample) -> str:
    """Apply a point to its series; the reason it was refused, or ""."""
    if isinstance(entry.value, Histogram):
        return "" if entry.value.add(s.value) else "non_finite"  # type: ignore[arg-type]
    value = float(s.value)  # type: ignore[arg-type]
    if entry.kind is Kind.GAUGE:
        entry.value = value
        return ""
    # a counter never decreases nor becomes infinite: the rule every cumulative sink shares
    reason = counter_refusal(value) if s.kind is Kind.COUNTER else count_refusal(entry.value, value)
    if not reason:
        entry.value = value if s.kind is Kind.COUNTER else entry.value + value
    return reason


def _metric(family: Family) -> Metric:
    metric: Metric
    if family.kind is Kind.COUNTER:
        metric = CounterMetricFamily(family.name, family.help)
    elif family.kind is Kind.HISTOGRAM:
        metric = HistogramMetricFamily(family.name, family.help)
    else:
        metric = GaugeMetricFamily(family.name, family.help)
    for entry in family.series:
        labels = dict(entry.labels.items)
        value = entry.value
        if isinstance(value, Histogram):
            for bound, cumulative in zip(_le(value.bounds), value.cumulative()):
                metric.add_sample(family.name + "_bucket", {**labels, "le": bound}, cumulative)
            metric.add_sample(family.name + "_count", labels, value.count)
            metric.add_sample(family.name + "_sum", labels, value.total)
        elif family.kind is Kind.COUNTER:
            metric.add_sample(family.name + "_total", labels, value)
        else:
            metric.add_sample(family.name, labels, value)
    return metric


def _le(bounds: tuple[float, ...]) -> list[str]:
    return [go_float(b) for b in bounds] + ["+Inf"]
