"""The one data model that flows from sources through processors to sinks.

A source produces `Sample`s and hands them to the hub in a `Batch`; sinks consume batches.
No sink knows about a source. Names are dotted (Datadog style: `ecs.container.cpu.usage_vcpus`);
the Prometheus sink turns dots into underscores.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Union

# Tags keep their order and are unique by key. A bare DogStatsD tag `foo` is ("foo", "").
Tags = tuple[tuple[str, str], ...]


class Kind(enum.Enum):
    GAUGE = "gauge"  # a level: last value wins
    COUNTER = "counter"  # cumulative and monotonic since the source started (`*_total`)
    COUNT = "count"  # a delta accumulated over `interval` seconds (StatsD counters)
    HISTOGRAM = "histogram"  # weighted values of one interval (StatsD h / ms)
    DISTRIBUTION = "distribution"  # weighted values of one interval (StatsD d)


@dataclass(frozen=True, slots=True)
class Points:
    """Values observed in one interval, each with a weight (1 / sample rate)."""

    values: Sequence[float]  # a tuple, list or array('d')
    weights: Sequence[float]  # same length as values
    # True for StatsD timers (`ms`): the values are milliseconds.
    milliseconds: bool = False


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
    """

    source: str
    samples: list[Sample] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    service_checks: list[ServiceCheck] = field(default_factory=list)
    snapshot: bool = False


def merge_tags(base: Tags, own: Tags) -> Tags:
    """`own` wins on a key conflict; order: base keys first, then own keys not in base."""
    if not base:
        return own
    if not own:
        return base
    own_keys = {k for k, _ in own}
    return tuple(kv for kv in base if kv[0] not in own_keys) + own


def format_tag(key: str, value: str) -> str:
    return f"{key}:{value}" if value else key
