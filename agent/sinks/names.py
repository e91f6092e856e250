"""Metric names as Prometheus takes them, and the names the sidecar keeps for its own series: shared by
the Prometheus sink and the push sinks' cumulative state, so that a worker's series is refused alike
everywhere it would stand beside the sidecar's."""

from __future__ import annotations

import re

_INVALID = re.compile(r"[^a-zA-Z0-9_]")
# Names the sidecar exports itself. A worker's name that sanitises to one of these prefixes would
# shadow (or be mistaken for) the sidecar's own series: it is refused, not renamed.
RESERVED_PREFIXES = ("tasklens_", "ecs_", "queue_")


def metric_name(name: str) -> str:
    out = _INVALID.sub("_", name)
    return "_" + out if out[:1].isdigit() else out


def reserved(pname: str) -> bool:
    """Whether a sanitised name (`metric_name`) is the sidecar's: `tasklens` alone too (`tasklens_total`)."""
    return (pname + "_").startswith(RESERVED_PREFIXES)
