"""Cumulative counters -> deltas, for exporters whose counters are per-interval (Datadog, DogStatsD).

A source's `*_total` counter is cumulative since *it* started. Sending the raw value as a Datadog count
would add up the whole history on every flush; sending the difference between two sightings is what
the receiver expects. The first sighting has no previous value, and a value lower than the previous one
means the source restarted (a container restart resets its cgroup counters): neither yields a delta.
"""

from __future__ import annotations

from collections.abc import Hashable


class CounterDeltas:
    def __init__(self) -> None:
        self._last: dict[Hashable, tuple[float, float]] = {}  # key -> (value, when seen)

    def update(self, key: Hashable, value: float, now: float) -> float | None:
        """The increase since the last sighting of `key`, or None (first sighting or a reset)."""
        previous = self._last.get(key)
        self._last[key] = (value, now)
        if previous is None or value < previous[0]:
            return None
        return value - previous[0]

    def forget(self, key: Hashable) -> None:
        """A counter that ended: the next one under this key starts a new count."""
        self._last.pop(key, None)

    def prune(self, older_than: float) -> int:
        """Forget counters not seen since `older_than` (a container that went away)."""
        stale = [k for k, (_, seen) in self._last.items() if seen < older_than]
        for key in stale:
            del self._last[key]
        return len(stale)

    def __len__(self) -> int:
        return len(self._last)
