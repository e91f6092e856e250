"""The busy rule: when is the worker busy, read from metrics the sidecar already has (no worker code).

Grammar (`TASKLENS_SCALE_IN_PROTECTION`; terms joined by ` or ` or `,`, busy when any term holds):

    cpu>20%                          a worker container's CPU above 20 % of its allocation
    cpu[worker,thumbs]>20%           only these containers (by task-definition name)
    jobs.in_progress>0               a StatsD gauge (summed over its tag sets; `>=` also works)
    jobs.started-jobs.finished>0     two StatsD counters, counted since the sidecar started

Without a container list, `cpu` means every container of the task but the sidecar's own. A metric
never seen reads 0 (not busy). Parsing and evaluation are pure; `Observations` keeps the latest values
of just the metrics the rule names, fed from the hub's batches.
"""

from __future__ import annotations

import decimal
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent.model import Batch, Kind, Points, Tags
from agent.sources.ecs import STALE_MIN_SECONDS, STALE_POLLS

CPU_METRIC = "ecs.container.cpu.utilization_percent"
# sent for every container whose stats a metadata poll read: such a poll without CPU for the container
# has no CPU rate for it now (its sample stopped changing), so its last CPU is dropped at once
STATS_READ_METRIC = "ecs.container.memory.usage_bytes"
MAX_TAG_SETS = 100_000  # of one gauge, kept by `Observations` (TASKLENS_STATSD_MAX_CONTEXTS' default)
MAX_IDENTITY_PAIRS = 1_000  # identity pairs `Observations` leaves out of a tag set (an identity has about ten)

NAME = r"[A-Za-z_][A-Za-z0-9_.]*"  # a Datadog metric name: no `-`, so `a-b>0` is a difference
NUMBER = r"-?[0-9]+(?:\.[0-9]+)?"
_CPU = re.compile(rf"cpu(?:\[(?P<containers>[^\]]*)\])?\s*(?P<op>>=?)\s*(?P<n>{NUMBER})\s*%")
_DIFF = re.compile(rf"(?P<a>{NAME})\s*-\s*(?P<b>{NAME})\s*(?P<op>>=?)\s*(?P<n>{NUMBER})")
_GAUGE = re.compile(rf"(?P<a>{NAME})\s*(?P<op>>=?)\s*(?P<n>{NUMBER})")
_CONTAINER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,254}")
_SPLIT = re.compile(r"\s*,\s*(?![^\[]*\])|(?:^|\s+)or(?:\s+|$)")  # a comma inside cpu[...] lists containers

EXPECTED = ("a busy rule: cpu>N% (N >= 0; cpu[name,...]>N% for some containers), <statsd gauge>>N, or "
            "<started counter> - <finished counter> > N; several joined by ' or ' or ','")


def _num(value: float) -> str:
    """In plain decimal, as NUMBER reads it: repr's shortest digits that round-trip, written out
    without an exponent (1e+20 is 100000000000000000000, 1e-07 is 0.0000001)."""
    if value == 0:
        return "0"  # and not -0
    text = format(decimal.Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True)
class Cpu:
    threshold: float  # percent of the container's CPU allocation
    inclusive: bool = False
    containers: tuple[str, ...] = ()  # empty: every container but the sidecar's

    def __str__(self) -> str:
        names = f"[{','.join(self.containers)}]" if self.containers else ""
        return f"cpu{names}{'>=' if self.inclusive else '>'}{_num(self.threshold)}%"


@dataclass(frozen=True)
class Gauge:
    name: str
    threshold: float
    inclusive: bool = False

    def __str__(self) -> str:
        return f"{self.name}{'>=' if self.inclusive else '>'}{_num(self.threshold)}"


@dataclass(frozen=True)
class InProgress:
    started: str
    finished: str
    threshold: float
    inclusive: bool = False

    def __str__(self) -> str:
        return f"{self.started} - {self.finished} {'>=' if self.inclusive else '>'} {_num(self.threshold)}"


Term = Cpu | Gauge | InProgress


@dataclass(frozen=True)
class Rule:
    terms: tuple[Term, ...]

    def __str__(self) -> str:
        return " or ".join(str(t) for t in self.terms)

    @property
    def metric_names(self) -> frozenset[str]:
        names: set[str] = set()
        for t in self.terms:
            if isinstance(t, Gauge):
                names.add(t.name)
            elif isinstance(t, InProgress):
                names.update((t.started, t.finished))
        return frozenset(names)

    @property
    def uses_cpu(self) -> bool:
        return any(isinstance(t, Cpu) for t in self.terms)


def _threshold(text: str, what: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{EXPECTED}; {what} is not a finite number")
    return value


def _never_idle(text: str, threshold: float, inclusive: bool) -> None:
    """Refuse a term that holds at 0: a metric never seen reads 0, so the task would be busy from
    start, and protected for good (`x>=0`, `x>-1`, `a-b>=-0.5`, `cpu>=0%`)."""
    if _above(0.0, threshold, inclusive):
        raise ValueError(f"{EXPECTED}; {text!r} holds when the metric is 0 or never seen: the task would be "
                         "protected for good")


def parse_term(text: str) -> Term:
    term = _parse_term(text)
    _never_idle(text, term.threshold, term.inclusive)
    return term


def _parse_term(text: str) -> Term:
    if m := _CPU.fullmatch(text):
        containers = tuple(c.strip() for c in (m["containers"] or "").split(",") if c.strip())
        if m["containers"] is not None and not containers:
            raise ValueError(f"{EXPECTED}; {text!r} names no container")
        for c in containers:
            if not _CONTAINER.fullmatch(c):
                raise ValueError(f"{EXPECTED}; {c!r} is not a container name")
        threshold = _threshold(m["n"], text)
        if threshold < 0:
            raise ValueError(f"{EXPECTED}; {text!r}: the CPU share must be >= 0")
        return Cpu(threshold, m["op"] == ">=", containers)
    if m := _DIFF.fullmatch(text):
        return InProgress(m["a"], m["b"], _threshold(m["n"], text), m["op"] == ">=")
    if m := _GAUGE.fullmatch(text):
        if m["a"] == "cpu":
            raise ValueError(f"{EXPECTED}; {text!r}: a CPU share ends with %")
        return Gauge(m["a"], _threshold(m["n"], text), m["op"] == ">=")
    raise ValueError(f"{EXPECTED}; {text!r} is none of these")


def parse_rule(text: str) -> Rule:
    """The rule in `text`. Raises ValueError saying what is expected (the config names the variable)."""
    if len(text) > 1000:
        raise ValueError(f"{EXPECTED}; the rule is longer than 1000 characters")
    parts = _SPLIT.split(text.strip())
    if not parts or any(not p for p in parts):
        raise ValueError(f"{EXPECTED}; {text!r} has an empty term")
    return Rule(tuple(parse_term(p) for p in parts))


# --- evaluation ---------------------------------------------------------------------------------


def _value(value: float | Points) -> float:
    if isinstance(value, Points):  # a histogram: how many values this interval
        return value.count
    return float(value)


@dataclass
class Observations:
    """The latest values of what a rule reads, fed with every batch the hub publishes.

    A gauge keeps the last value of each tag set, but a tag set at 0 adds nothing to the sum and is not
    kept: a worker that tags its in-progress gauge per job grows nothing once its jobs are done. At most
    MAX_TAG_SETS tag sets a gauge are kept (the StatsD side holds no more contexts), the first seen
    forgotten first.

    A tag set is the worker's: the pairs the hub adds (every pair of every identity seen: the task's,
    and its containers', which a line's `c:` adds once the metadata names the container) are not part
    of it. When the first metadata poll turns `service:<host name>` into the task's identity, the
    worker's 0 for `slot:1` clears the 1 it sent for `slot:1` before, instead of leaving it under the
    old identity, busy for good.

    A container's CPU is kept with the time it came (`clock`): a poll that read the stats and gave none
    for the container drops it, and any value is used for `cpu_stale_after` seconds at most, the ECS
    source's own limit for a sample that stopped changing (`poll_interval`), so a metadata outage
    does not keep the task busy, and protected, for good."""

    rule: Rule
    poll_interval: float = 10.0  # TASKLENS_POLL_INTERVAL
    clock: Callable[[], float] = time.monotonic
    cpu: dict[str, tuple[float, float]] = field(default_factory=dict)  # container -> (% of its allocation, when)
    gauges: dict[str, dict[Tags, float]] = field(default_factory=dict)  # name -> tags -> last value
    counts: dict[str, float] = field(default_factory=dict)  # name -> total since start
    identity: set[tuple[str, str]] = field(default_factory=set)  # the pairs of every identity seen

    def __post_init__(self) -> None:
        self._names = self.rule.metric_names
        self._counted = frozenset(n for t in self.rule.terms if isinstance(t, InProgress)
                                  for n in (t.started, t.finished))
        self.cpu_stale_after = max(STALE_POLLS * self.poll_interval, STALE_MIN_SECONDS)

    def observe(self, batch: Batch, identity: Tags = ()) -> None:
        """`identity`: the pairs the hub adds now (`Identity.added_tags`: the task's tags, and a
        container's when a line's `c:` names it), which the batch's samples may carry."""
        if not self.identity.issuperset(identity):
            self._learn(identity)
        cpu: dict[str, float] = {}
        stats_read = False
        for s in batch.samples:
            if s.name == STATS_READ_METRIC:
                stats_read = True
            if s.name == CPU_METRIC and self.rule.uses_cpu:
                container = dict(s.tags).get("container_name", "")
                cpu[container] = _value(s.value)
            elif s.name in self._names:
                value = _value(s.value)
                if not math.isfinite(value):
                    continue
                if s.name in self._counted and s.kind in (Kind.COUNT, Kind.HISTOGRAM, Kind.DISTRIBUTION):
                    self.counts[s.name] = self.counts.get(s.name, 0.0) + value
                values = self.gauges.setdefault(s.name, {})
                key = self._own(s.tags)
                if value == 0.0:
                    values.pop(key, None)
                    continue
                if key not in values and len(values) >= MAX_TAG_SETS:
                    del values[next(iter(values))]
                values[key] = value
        if cpu or stats_read:  # a poll that read the stats: a container without CPU in it has none now
            now = self.clock()
            self.cpu = {container: (value, now) for container, value in cpu.items()}
        # else a failed poll, or another source's batch: the values stay until they are too old (current_cpu)

    def current_cpu(self) -> dict[str, float]:
        """Each container's CPU, but none older than `cpu_stale_after`."""
        now = self.clock()
        return {c: value for c, (value, at) in self.cpu.items() if now - at <= self.cpu_stale_after}

    def _own(self, tags: Tags) -> Tags:
        return tuple(pair for pair in tags if pair not in self.identity)

    def _learn(self, identity: Tags) -> None:
        """Take a new identity's pairs, and key what is kept without them."""
        if len(self.identity) >= MAX_IDENTITY_PAIRS:  # identities that never stop changing: bounded
            self.identity.clear()
        self.identity.update(identity)
        self.gauges = {name: {self._own(tags): v for tags, v in values.items()} for name, values in self.gauges.items()}

    def total(self, name: str) -> float:
        return self.counts.get(name, sum(self.gauges.get(name, {}).values()))


def _above(value: float, threshold: float, inclusive: bool) -> bool:
    return value >= threshold if inclusive else value > threshold


def holds(term: Term, seen: Observations, own_container: str | None) -> bool:
    if isinstance(term, Cpu):
        chosen: Iterable[float]
        cpu = seen.current_cpu()
        if term.containers:
            chosen = (v for c, v in cpu.items() if c in term.containers)
        else:
            chosen = (v for c, v in cpu.items() if c != own_container)
        return any(_above(v, term.threshold, term.inclusive) for v in chosen)
    if isinstance(term, Gauge):
        return _above(sum(seen.gauges.get(term.name, {}).values()), term.threshold, term.inclusive)
    return _above(seen.total(term.started) - seen.total(term.finished), term.threshold, term.inclusive)


def evaluate(rule: Rule, seen: Observations, own_container: str | None = None) -> tuple[bool, list[str]]:
    """(busy, the terms that hold)."""
    holding = [str(t) for t in rule.terms if holds(t, seen, own_container)]
    return bool(holding), holding
