"""The one data model that flows from sources through processors to sinks.

A source produces `Sample`s and hands them to the hub in a `Batch`; sinks consume batches.
No sink knows about a source. Names are dotted (Datadog style: `ecs.container.cpu.usage_vcpus`);
the Prometheus sink turns dots into underscores.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Union, overload

try:
    from agent.statsd import _fast
except ImportError:  # built without a C compiler
    _fast = None

# Tags are unique by key; a StatsD context's are sorted by key (statsd/receive.py), the others keep
# their order. A bare DogStatsD tag `foo` is ("foo", "").
Tags = tuple[tuple[str, str], ...]


class Kind(enum.Enum):
    GAUGE = "gauge"  # a level: last value wins
    COUNTER = "counter"  # cumulative and monotonic since the source started (`*_total`)
    COUNT = "count"  # a delta accumulated over `interval` seconds (StatsD counters)
    HISTOGRAM = "histogram"  # weighted values of one interval (StatsD h / ms)
    DISTRIBUTION = "distribution"  # weighted values of one interval (StatsD d)


# The members as module globals, for loops that read them per sample: `Kind.GAUGE` is an enum property
# lookup on Python 3.11 (~75 ns), a global ~6 ns (several per sample, 100,000 samples a flush)
KIND_GAUGE, KIND_COUNTER, KIND_COUNT, KIND_HISTOGRAM, KIND_DISTRIBUTION = (
    Kind.GAUGE, Kind.COUNTER, Kind.COUNT, Kind.HISTOGRAM, Kind.DISTRIBUTION)


class Repeated(Sequence[float]):
    """One weight, `n` times, without an array of them: the weights of values sent at one sample rate.
    As `Points.cumulative`, `Repeated(w, n, running=True)` is the running weight: (i + 1) * w."""

    __slots__ = ("weight", "n", "running")

    def __init__(self, weight: float, n: int, running: bool = False) -> None:
        self.weight, self.n, self.running = float(weight), n, running

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> float: ...
    @overload
    def __getitem__(self, i: slice) -> list[float]: ...

    def __getitem__(self, i: int | slice) -> float | list[float]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return (i % self.n + 1) * self.weight if self.running else self.weight

    def __iter__(self) -> Iterator[float]:
        return (self[i] for i in range(self.n)) if self.running else itertools.repeat(self.weight, self.n)

    def __eq__(self, other: object) -> bool:  # as the sequence it stands for (Points compare by weights)
        if not isinstance(other, (Repeated, array, list, tuple)) or len(other) != self.n:
            return False
        return all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Points:
    """Values observed in one interval, each with a weight (1 / sample rate).

    Sorted when made: `values` ascending (an array('d') given is sorted in place), `weights` along
    with them, their running sum in `cumulative` and the sum of value times weight in `total`. The
    StatsD flush makes them on its own thread, in C without the GIL, so that every sink reads counts,
    buckets and ranks in O(log n) on the event loop, never value by value: an interval may hold
    millions of values (`TASKLENS_STATSD_MAX_HISTOGRAM_VALUES`). Values of one sample rate come with
    `Repeated` weights: 8 bytes a value in all when the weight is an integer (others take an array). `valid` is False, and nothing is sorted or summed,
    unless every value and weight is finite, every weight is above 0 and there is one weight per
    value: sinks then drop the points whole."""

    values: Sequence[float]  # array('d') once made
    weights: Sequence[float]  # same length as values: array('d') once made, or `Repeated`
    # True for StatsD timers (`ms`): the values are milliseconds.
    milliseconds: bool = False
    cumulative: Sequence[float] = field(init=False, repr=False, compare=False)
    total: float = field(init=False, repr=False, compare=False)
    valid: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = _doubles(self.values)
        weights = self.weights if isinstance(self.weights, Repeated) else _doubles(self.weights)
        if isinstance(weights, Repeated) and not weights.weight.is_integer():
            # (i + 1) * w is not the running sum w + w + ... for every w (1 / 0.3): ranks would differ
            # from the value-by-value rule at their boundaries. Integer weights (rates 1, 0.5, 0.1,
            # 0.01 ...) are exact up to 2**53.
            weights = array("d", [weights.weight]) * len(values)
        cumulative: Sequence[float] | None = None
        if len(weights) != len(values):
            total, valid = math.nan, False
        else:
            order = _fast.order if _fast is not None else _order
            total, valid, running = order(values, weights.weight if isinstance(weights, Repeated) else weights)
            if valid and running is not None:
                cumulative = memoryview(running).cast("d")
            elif valid:
                cumulative = Repeated(weights.weight, len(values), running=True)  # type: ignore[union-attr]
        for name, value in (("values", values), ("weights", weights), ("cumulative", cumulative or ()),
                            ("total", total), ("valid", valid)):
            object.__setattr__(self, name, value)

    @property
    def count(self) -> float:
        """The sum of the weights: how many samples the values stand for."""
        return self.cumulative[-1] if self.cumulative else 0.0

    def weight_upto(self, bound: float, scale: float = 1.0) -> float:
        """The weight of the values `v` with `v * scale <= bound`."""
        key = None if scale == 1.0 else (lambda v: v * scale)
        i = bisect.bisect_right(self.values, bound, key=key)
        return self.cumulative[i - 1] if i else 0.0

    def buckets(self, bounds: Sequence[float], scale: float = 1.0) -> list[float]:
        """The weight in each bucket of ascending `bounds` (Prometheus's `le`: a value equal to a bound
        is in that bound's bucket) of the values times `scale`; one more bucket at the end for +Inf."""
        out, below = [], 0.0
        for bound in bounds:
            upto = self.weight_upto(bound, scale)
            out.append(upto - below)
            below = upto
        out.append(self.count - below)
        return out

    def at_rank(self, rank: float) -> float:
        """The first value whose running weight exceeds `rank` (the largest when none does)."""
        i = bisect.bisect_right(self.cumulative, rank)
        return self.values[min(i, len(self.values) - 1)]

    def spread(self, n: int) -> list[float]:
        """`n` values at evenly spaced ranks, each standing for `count / n` samples: the shape of the
        distribution in a bounded number of values."""
        step = self.count / n
        return [self.at_rank((k + 0.5) * step) for k in range(n)]


def _doubles(seq: Sequence[float]) -> Doubles:
    """`seq` itself when it is an array('d') or a writable memoryview of doubles, else a copy."""
    if isinstance(seq, array) and seq.typecode == "d":
        return seq
    if isinstance(seq, memoryview) and seq.format == "d" and not seq.readonly:
        return seq
    return array("d", seq)


Doubles = Union["array[float]", memoryview]


def _order(values: Doubles, weights: Doubles | float) -> tuple[float, bool, bytearray | None]:
    """`_fast.order` in Python, for an install without the C module."""
    ws = [weights] if isinstance(weights, float) else weights
    if not all(math.isfinite(v) for v in values) or not all(math.isfinite(w) and w > 0 for w in ws):
        return math.nan, False, None
    if isinstance(weights, float):
        values[:] = array("d", sorted(values))
        return sum(v * weights for v in values), True, None
    pairs = sorted(zip(values, weights))
    values[:], weights[:] = array("d", [v for v, _ in pairs]), array("d", [w for _, w in pairs])
    running = total = 0.0
    cumulative = array("d")
    for value, weight in pairs:
        running += weight
        cumulative.append(running)
        total += value * weight
    return total, True, bytearray(cumulative.tobytes())


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    value: Union[float, Points]
    kind: Kind = Kind.GAUGE
    tags: Tags = ()
    timestamp: float | None = None  # Unix seconds; None means "now"
    interval: float | None = None  # seconds covered by a COUNT / HISTOGRAM / DISTRIBUTION


@dataclass(frozen=True, slots=True)
class Event:
    title: str
    text: str
    tags: Tags = ()
    timestamp: float | None = None
    hostname: str | None = None
    aggregation_key: str | None = None
    priority: str | None = None  # "normal" | "low"
    source_type: str | None = None
    alert_type: str | None = None  # "error" | "warning" | "info" | "success"


@dataclass(frozen=True, slots=True)
class ServiceCheck:
    name: str
    status: int  # 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
    tags: Tags = ()
    timestamp: float | None = None
    hostname: str | None = None
    message: str | None = None


@dataclass(slots=True)
class Batch:
    """What one source hands to the hub at once.

    `source` names the producer (`ecs`, `statsd`, `queue:orders`). With `snapshot=True` the batch is
    the complete current state of that source: a sink drops the series of that source that are not in
    it (a container that went away, a queue whose poll failed: a gap, never a stale value).

    The last `idle` samples are the zeros of StatsD counters idle since an earlier batch: a sink that
    sends intervals sends them (Datadog's 0 until the context TTL); a sink that keeps totals may skip
    them, as the Prometheus sink does: they change no total, and a flush then costs it what changed,
    not what sits idle.
    """

    source: str
    samples: list[Sample] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    service_checks: list[ServiceCheck] = field(default_factory=list)
    snapshot: bool = False
    idle: int = 0


def merge_tags(base: Tags, own: Tags) -> Tags:
    """`own` wins on a key conflict; order: base keys first, then own keys not in base."""
    if not base:
        return own
    if not own:
        return base
    own_keys = {k for k, _ in own}
    return tuple([kv for kv in base if kv[0] not in own_keys]) + own  # a list first: 0.75x a generator's time


def encodable(text: str) -> str:
    """`text` as UTF-8 can hold it: lone surrogates (from an environment variable, a JSON `\\ud800`
    escape) as `?`."""
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode()


def format_tag(key: str, value: str) -> str:
    return f"{key}:{value}" if value else key
