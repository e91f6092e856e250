"""Helpers of the scaling tests (fixtures are in conftest.py)."""

from __future__ import annotations


class FakeClock:
    """A monotonic clock and a wall clock moved together by hand, shared by the component and the
    emulated agent, so that an expiry of minutes passes in no time."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.offset = 1.7e9

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.t + self.offset

    def advance(self, seconds: float) -> None:
        self.t += seconds
