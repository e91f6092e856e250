"""The shared trend machinery (agent/trend.py): the fit, the window, the significance test.

The queue's reading of it is tested in tests/integrations/queues/test_queue_trend.py and the memory
forecast's in tests/test_health.py; here only what both rely on.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import trend


def test_fit_of_an_exact_line():
    f = trend.fit([(0.0, 1.0), (10.0, 21.0), (20.0, 41.0)])
    assert f is not None
    assert f.slope == pytest.approx(2.0, rel=1e-12)
    assert f.stderr == pytest.approx(0.0, abs=1e-12)
    assert f.level == pytest.approx(41.0, rel=1e-12)
    assert f.direction() == 1


def test_fit_standard_error_by_hand():
    # t = 0, 1, 2, 3; y = 0, 2, 1, 3: slope 4 / 5, residuals -0.3, 0.9, -0.9, 0.3 -> sse 1.8
    f = trend.fit([(0.0, 0.0), (1.0, 2.0), (2.0, 1.0), (3.0, 3.0)])
    assert f is not None
    assert f.slope == pytest.approx(0.8)
    assert f.stderr == pytest.approx((1.8 / 2 / 5.0) ** 0.5)  # sqrt(sse / (n-2) / sxx), sxx = 5
    assert f.level == pytest.approx(1.5 + 0.8 * 1.5)  # the line at t = 3
    assert f.direction(k=1.5) == 1  # 0.8 > 1.5 * 0.424
    assert f.direction(k=2.0) == 0  # 0.8 < 2 * 0.424: not significant at ~95 %


def test_too_few_points_or_one_instant_fit_nothing():
    assert trend.fit([(0.0, 1.0), (1.0, 2.0)]) is None
    assert trend.fit([(5.0, 1.0), (5.0, 2.0), (5.0, 3.0)]) is None


def test_recent_needs_half_the_window_covered():
    pts = [(float(t), 1.0) for t in range(0, 40, 10)]  # span 30 s
    assert trend.recent(pts, window=100.0) is None
    assert trend.recent(pts, window=60.0) == pts
    assert trend.recent(pts, window=60.0, now=100.0) is None  # all older than the window
    assert trend.recent([], window=60.0) is None


def test_history_keeps_only_the_window():
    h = trend.History(30.0)
    for t in range(0, 100, 10):
        h.add(float(t), 2.0 * t)
    assert [t for t, _ in h.points] == [60.0, 70.0, 80.0, 90.0]
    f = h.fit()
    assert f is not None and f.slope == pytest.approx(2.0)


@settings(max_examples=200, deadline=None)
@given(intercept=st.floats(-1e9, 1e9), slope=st.floats(-1e6, 1e6), start=st.floats(0, 1e9),
       step=st.sampled_from([0.5, 1.0, 10.0, 60.0]), n=st.integers(3, 400))
def test_any_exact_line_is_recovered_wherever_the_clock_starts(intercept, slope, start, step, n):
    points = [(start + i * step, intercept + slope * i * step) for i in range(n)]
    f = trend.fit(points)
    assert f is not None
    tol = 1e-6 * (abs(slope) + abs(intercept) / (n * step) + 1.0)
    assert f.slope == pytest.approx(slope, abs=tol)
    assert f.level == pytest.approx(points[-1][1], abs=1e-6 * (abs(intercept) + abs(slope) * n * step + 1.0))
    backwards = trend.fit(list(reversed(points)))
    assert backwards is not None and backwards.slope == pytest.approx(f.slope, abs=tol)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1e6), st.floats(-1.7e308, 1.7e308)), min_size=3, max_size=20))
def test_a_fit_of_any_finite_points_is_finite_or_none(points: list[tuple[float, float]]) -> None:
    """Values so large that the sums overflow (`** 2` raised OverflowError and crashed the queue
    source) give no fit, never an exception or an infinite slope."""
    f = trend.fit(points)
    assert f is None or all(math.isfinite(x) for x in (f.slope, f.stderr, f.level))
