"""Is the backlog growing, and when will it be empty? The queue's reading of `agent.trend`.

The growth rate is the least-squares slope of depth over the last `window` seconds (`agent.trend`,
the same machinery as the memory forecast). A trend is "growing" or "draining" only when the slope
is more than `SIGNIFICANCE` standard errors away from 0, so the noise of a flat backlog (SQS counts
are approximate) does not flap `backing_up` or produce a week-long drain estimate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent import trend as _trend
from agent.trend import SIGNIFICANCE, Fit, fit, recent

__all__ = ["SIGNIFICANCE", "Fit", "History", "Trend", "fit", "trend", "trend_window"]

# real polls a trend window spans at least: with +-10 % jitter, 3 points then fit in it and span more
# than half of it (`agent.trend.recent`)
TREND_POLLS = 3


def trend_window(window: float, interval: float, share: int = 1) -> float:
    """The trend's window: `window` as set, widened to TREND_POLLS real polls (`interval * share` apart
    under shared polling, whose held readings are no points). A window that cannot hold three polls
    would never give a trend, and `backing_up` would never be reported."""
    return max(window, TREND_POLLS * interval * share)


@dataclass(frozen=True, slots=True)
class Trend:
    growth_rate: float  # messages per second, negative when draining
    drain_seconds: float | None  # estimated time to empty; None unless draining
    backing_up: bool  # above the threshold and growing


def trend(points: Iterable[tuple[float, float]], *, window: float, threshold: float,
          now: float | None = None) -> Trend | None:
    """The trend of the points within `window` seconds before `now` (default: the last point)."""
    pts = recent(points, window=window, now=now)
    f = fit(pts) if pts is not None else None
    if pts is None or f is None:
        return None
    depth = pts[-1][1]
    direction = f.direction(SIGNIFICANCE)
    return Trend(
        growth_rate=f.slope,
        drain_seconds=depth / -f.slope if direction < 0 else None,
        backing_up=direction > 0 and depth > threshold,
    )


class History(_trend.History):
    """The (time, depth) points of the last `window` seconds; older ones fall off."""

    def trend(self, threshold: float, now: float) -> Trend | None:
        return trend(self.points, window=self.window, threshold=threshold, now=now)
