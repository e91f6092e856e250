"""Is a series growing or shrinking, and how sure are we? Pure functions over (time, value) points.

One machinery for every trend the sidecar reports: a queue's backlog (`integrations.queues.trend`)
and a container's working set (`agent.health`). The rate is the least-squares slope of the points of
the last `window` seconds; it counts as a real trend only when it lies more than `k` standard errors
away from 0, so a flat but noisy series (approximate SQS counts, a garbage collector's sawtooth)
neither flaps nor produces a week-long forecast. Failed polls are simply missing points (gaps); too
few points, or points covering less than half the window, give no trend at all rather than a guess.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

SIGNIFICANCE = 2.0  # standard errors; about 95 % confidence that the slope is not 0
MIN_POINTS = 3  # two points always fit a line exactly: no idea of the noise
MIN_COVERAGE = 0.5  # the points must span at least this fraction of the window

Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Fit:
    slope: float  # value units per second
    stderr: float  # standard error of the slope
    level: float  # the fitted value at the last point's time (less noisy than the last point)

    def direction(self, k: float = SIGNIFICANCE) -> int:
        """+1 growing, -1 shrinking, 0 when the slope is within `k` standard errors of 0."""
        margin = k * self.stderr
        if self.slope > 0.0 and self.slope > margin:
            return 1
        if self.slope < 0.0 and -self.slope > margin:
            return -1
        return 0


def fit(points: Sequence[Point]) -> Fit | None:
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
    sse = sum((dy - slope * dt) * (dy - slope * dt) for dt, dy in zip(dts, dys))  # `** 2` raises past 1e154
    last_t = max(t for t, _ in points)
    out = Fit(slope, math.sqrt(max(sse, 0.0) / (n - 2) / sxx), mean_y + slope * (last_t - mean_t))
    # values so large that the sums overflow say nothing about a trend
    return out if all(map(math.isfinite, (out.slope, out.stderr, out.level))) else None


def recent(points: Iterable[Point], *, window: float, now: float | None = None) -> list[Point] | None:
    """The points within `window` seconds before `now` (default: the last point), oldest first; None
    when they are too few or span less than `MIN_COVERAGE` of the window to say anything."""
    pts = list(points)
    if not pts:
        return None
    now = max(t for t, _ in pts) if now is None else now
    out = sorted((t, y) for t, y in pts if now - window <= t <= now)
    if len(out) < MIN_POINTS or out[-1][0] - out[0][0] < MIN_COVERAGE * window:
        return None
    return out


def windowed_fit(points: Iterable[Point], *, window: float, now: float | None = None) -> Fit | None:
    """`fit` over `recent` points: None unless the window holds enough of them."""
    pts = recent(points, window=window, now=now)
    return fit(pts) if pts is not None else None


KEPT_WINDOWS = 2.0  # a point goes at the latest this many windows after it was added, by the sidecar's clock


class History:
    """The (time, value) points of the last `window` seconds; older ones fall off.

    The times are the caller's, and may be another machine's (a stats `read`): they can crawl, stand
    still or go back. So a point also goes once it was added KEPT_WINDOWS windows ago by the sidecar's
    own `clock`: a History holds at most the points added over two windows of real time (one a poll:
    2 x window / interval + 1), whatever its times do. Before, a `read` moving 1 us a poll kept every
    point for good, and each poll fitted them all. A clock that agrees with ours loses no point to it."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.points: deque[Point] = deque()
        self._added: deque[float] = deque()  # when each point was added, by `clock`: never decreasing
        self._clock = clock

    def add(self, t: float, value: float) -> None:
        now = self._clock()
        self.points.append((t, value))
        self._added.append(now)
        while self.points and (self.points[0][0] < t - self.window
                               or self._added[0] < now - KEPT_WINDOWS * self.window):
            self.points.popleft()
            self._added.popleft()

    def fit(self, now: float | None = None) -> Fit | None:
        return windowed_fit(self.points, window=self.window, now=now)
