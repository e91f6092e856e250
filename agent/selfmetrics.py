"""The sidecar's own metrics (`tasklens.*`), kept in plain dicts and read at export time.

Every component counts its work and its failures here; the Prometheus and Datadog sinks pull a
snapshot through the hub, so self-metrics carry the task's tags like every other series.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from agent.model import Kind, Sample, Tags


class SelfMetrics:
    def __init__(self) -> None:
        self._values: dict[tuple[str, Tags], float] = {}
        self._kinds: dict[str, Kind] = {}
        self._lock = threading.Lock()  # profiler threads count here too

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """A cumulative counter: `inc("tasklens.ecs.poll_errors", reason="timeout")`."""
        key = (name, _tags(labels))
        with self._lock:
            self._kinds[name] = Kind.COUNTER
            self._values[key] = self._values.get(key, 0.0) + amount

    def declare(self, name: str, reasons: Iterable[str], **labels: str) -> None:
        """Export a counter at 0 for every known reason from the start, so that `increase()` sees the
        first error after a restart (a series that appears at 1 has no increase to show)."""
        with self._lock:
            self._kinds[name] = Kind.COUNTER
            for reason in reasons:
                self._values.setdefault((name, _tags({**labels, "reason": reason})), 0.0)

    def set(self, name: str, value: float, **labels: str) -> None:
        """A gauge: last value wins."""
        with self._lock:
            self._kinds[name] = Kind.GAUGE
            self._values[(name, _tags(labels))] = float(value)

    def get(self, name: str, **labels: str) -> float:
        """The current value (0 when never set); for tests and `/status`."""
        return self._values.get((name, _tags(labels)), 0.0)

    def total(self, name: str) -> float:
        """Sum over every label set of `name`."""
        with self._lock:
            return sum(v for (n, _), v in self._values.items() if n == name)

    def samples(self) -> list[Sample]:
        with self._lock:
            return [Sample(name, value, self._kinds[name], tags) for (name, tags), value in self._values.items()]


def _tags(labels: dict[str, str]) -> Tags:
    """One key per label set, whatever order the caller named the labels in."""
    return tuple(sorted(labels.items()))
