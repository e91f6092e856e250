"""Is the backlog growing, and when will it be empty? Pure functions over (time, depth) points.

The growth rate is the least-squares slope of depth over the last `window` seconds. A trend is
"growing" or "draining" only when the slope is more than `SIGNIFICANCE` standard errors away from 0,
so the noise of a flat backlog (SQS counts are approximate) does not flap `backing_up` or produce a
week-long drain estimate. Failed polls are simply missing points (gaps); too few points, or points
covering less than half the window, give no trend at all rather than a guess.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SIGNIFICANCE = 2.0  # standard errors; about 95 % confidence that the slope is not 0
MIN_POINTS = 3  # two points always fit a line exactly: no idea of the noise
MIN_COVERAGE = 0.5  # the points must span at least this fraction of the window


@dataclass(frozen=True, slots=True)
class Fit:
    slope: float  # depth units per second
    stderr: float  # standard error of the slope


@dataclass(frozen=True, slots=True)
class Trend:
    growth_rate: float  # messages per second, negative when draining
    drain_seconds: float | None  # estimated time to empty; None unless draining
    backing_up: bool  # above the threshold and growing


def fit(points: Sequence[tuple[float, float]]) -> Fit | None:
    """Ordinary least squares of y on t; None with fewer than 3 points or all at one time."""
    n = len(points)
    if n < MIN_POINTS:
        return None
    # centred sums: monotonic clock values are large, their squares would swamp the differences
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    dts = [t - mean_t for t, _ in points]
    dys = [y - mean_y for _, y in points]
    sxx = sum(dt * dt for dt in dts)
    if sxx <= 0.0:
        return None
    slope = sum(dt * dy for dt, dy in zip(dts, dys)) / sxx
    sse = sum((dy - slope * dt) ** 2 for dt, dy in zip(dts, dys))
    return Fit(slope, math.sqrt(max(sse, 0.0) / (n - 2) / sxx))


def trend(points: Iterable[tuple[float, float]], *, window: float, threshold: float,
          now: float | None = None) -> Trend | None:
    """The trend of the points within `window` seconds before `now` (default: the last point)."""
    pts = list(points)
    if not pts:
        return None
    now = max(t for t, _ in pts) if now is None else now
    recent = sorted((t, y) for t, y in pts if now - window <= t <= now)
    if len(recent) < MIN_POINTS or recent[-1][0] - recent[0][0] < MIN_COVERAGE * window:
        return None
    f = fit(recent)
    if f is None:
        return None
    depth = recent[-1][1]
    margin = SIGNIFICANCE * f.stderr
    growing = f.slope > 0.0 and f.slope > margin
    draining = f.slope < 0.0 and -f.slope > margin
    return Trend(
        growth_rate=f.slope,
        drain_seconds=depth / -f.slope if draining else None,
        backing_up=growing and depth > threshold,
    )


class History:
    """The (time, depth) points of the last `window` seconds; older ones fall off."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.points: deque[tuple[float, float]] = deque()

    def add(self, t: float, depth: float) -> None:
        self.points.append((t, depth))
        while self.points and self.points[0][0] < t - self.window:
            self.points.popleft()

    def trend(self, threshold: float, now: float) -> Trend | None:
        return trend(self.points, window=self.window, threshold=threshold, now=now)
