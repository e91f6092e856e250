"""Metric names as Prometheus takes them, and the names the sidecar keeps for its own series: shared by
the Prometheus sink and the push sinks' cumulative state, so that a worker's series is refused alike
everywhere it would stand beside the sidecar's."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol

from agent.model import Kind

_INVALID = re.compile(r"[^a-zA-Z0-9_]")
# Names the sidecar exports itself. A worker's name that sanitises to one of these prefixes would
# shadow (or be mistaken for) the sidecar's own series: it is refused, not renamed.
RESERVED_PREFIXES = ("tasklens_", "ecs_", "queue_")
# Names Prometheus writes itself for every target it scrapes (its "automatically generated" series, with
# --enable-feature=extra-scrape-metrics too): a worker's `up:0|g` made `up == 0` fire for a healthy
# target. Names beginning `__` are Prometheus's own as well.
PROMETHEUS_OWN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added",
                            "scrape_samples_post_metric_relabeling", "scrape_timeout_seconds",
                            "scrape_sample_limit", "scrape_body_size_bytes"})


def metric_name(name: str) -> str:
    out = _INVALID.sub("_", name)
    return "_" + out if out[:1].isdigit() else out


def reserved(pname: str) -> bool:
    """Whether a sanitised name (`metric_name`) is the sidecar's (`tasklens` alone too: `tasklens_total`)
    or Prometheus's own (`up`, `scrape_*` of a target, `__*`; `_` alone too, whose samples would be `__total`,
    `__bucket`: a name of nothing but characters sanitised away, `.` or `é`)."""
    return ((pname + "_").startswith(RESERVED_PREFIXES) or pname in PROMETHEUS_OWN or pname.startswith("__")
            or pname == "_")


# The names a family of each type takes on `/metrics` beside its own (either format)
SUFFIXES = {Kind.COUNTER: ("_total", "_created"), Kind.GAUGE: (),
            Kind.HISTOGRAM: ("_bucket", "_count", "_sum", "_created")}
ALL_SUFFIXES = ("_total", "_created", "_bucket", "_count", "_sum")


class Typed(Protocol):
    """A family as the sinks keep it: the type that took its name."""

    kind: Kind


def counter_name(pname: str) -> str:
    return pname if pname.endswith("_total") else pname + "_total"


def shown_names(pname: str, kind: Kind) -> tuple[str, ...]:
    """Every name a series of `kind` named `pname` (`metric_name`) shows on `/metrics`: its family's
    (`# TYPE`), then its samples': a counter `jobs` (or `jobs_total`) is the family `jobs` with the sample
    `jobs_total`; a histogram `lat` is `lat` with `lat_bucket`, `lat_sum`, `lat_count`; a gauge its name.
    What a selection of series by their names on `/metrics` (remote_write's, CloudWatch's) matches."""
    if kind is Kind.COUNTER:
        return (family_name(pname, kind), counter_name(pname))
    if kind is Kind.HISTOGRAM:
        return (pname, pname + "_bucket", pname + "_sum", pname + "_count")
    return (pname,)


def family_name(pname: str, kind: Kind) -> str:
    """`x_total` as a counter is the family `x` (OpenMetrics names a counter without `_total`)."""
    if kind is Kind.COUNTER and pname.endswith("_total") and len(pname) > 6:
        return pname[:-6]
    return pname


def claims(family: str, kind: Kind) -> tuple[str, ...]:
    """Every name a family occupies in either format: its own, and its samples' suffixed names."""
    return (family,) + tuple(family + suffix for suffix in SUFFIXES[kind])


def clash(name: str, kind: Kind, families: Mapping[str, Typed]) -> str | None:
    """The family among `families` (other than `name` itself) whose names overlap those of a family
    `name` of `kind`: `x_total` beside counter `x`, counter `x` beside `x_total`, `y_count` beside
    histogram `y`... No suffix ends with another, so checking both directions finds every overlap
    without keeping a table of every claimed name (which cost ~300 bytes per series)."""
    for suffix in SUFFIXES[kind]:
        if name + suffix in families:
            return name + suffix
    if not name.endswith(ALL_SUFFIXES):  # most names: one call
        return None
    for suffix in ALL_SUFFIXES:
        if name.endswith(suffix):
            other = families.get(name[:-len(suffix)])
            if other is not None and suffix in SUFFIXES[other.kind]:
                return name[:-len(suffix)]
    return None
