"""Metric names as Prometheus takes them, and the names the sidecar keeps for its own series: shared by
the Prometheus sink and the push sinks' cumulative state, so that a worker's series is refused alike
everywhere it would stand beside the sidecar's."""

from __future__ import annotations

import re

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
    or Prometheus's own (`up`, `scrape_*` of a target, `__*`)."""
    return (pname + "_").startswith(RESERVED_PREFIXES) or pname in PROMETHEUS_OWN or pname.startswith("__")
