"""The sidecar's own metrics (`tasklens.*`), kept in plain dicts and read at export time.

Every component counts its work and its failures here; the Prometheus and Datadog sinks pull a
snapshot through the hub, so self-metrics carry the task's tags like every other series.
"""

from __future__ import annotations

import threading

from agent.model import Kind, Sample, Tags


class SelfMetrics:
    def __init__(self) -> None:
        self._values: dict[tuple[str, Tags], float] = {}
        self._kinds: dict[str, Kind] = {}
        self._lock = threading.Lock()  # profiler threads count here too

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """A cumulative counter: `inc("tasklens.ecs.poll_errors", reason="timeout")`."""
        key = (name, tuple(labels.items()))
        with self._lock:
            self._kinds[name] = Kind.COUNTER
            self._values[key] = self._values.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        """A gauge: last value wins."""
        with self._lock:
            self._kinds[name] = Kind.GAUGE
            self._values[(name, tuple(labels.items()))] = float(value)

    def get(self, name: str, **labels: str) -> float:
        """The current value (0 when never set); for tests and `/status`."""
        return self._values.get((name, tuple(labels.items())), 0.0)

    def total(self, name: str) -> float:
        """Sum over every label set of `name`."""
        with self._lock:
            return sum(v for (n, _), v in self._values.items() if n == name)

    def samples(self) -> list[Sample]:
        with self._lock:
            return [Sample(name, value, self._kinds[name], tags) for (name, tags), value in self._values.items()]
