"""The trend as pure functions over synthetic series: steady, growing, draining, noisy, gaps."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.trend import recent
from integrations.queues.trend import History, fit, trend, trend_window

WINDOW = 300.0
TIMES = [15.0 * i for i in range(21)]  # a 15 s poll over 5 minutes: 0, 15, ..., 300


def series(f, times=TIMES):
    return [(t, f(t)) for t in times]


def exact(value: float):
    return pytest.approx(value, rel=1e-9, abs=1e-12)


def test_steady_backlog_has_zero_growth_and_no_drain_estimate():
    got = trend(series(lambda t: 50.0), window=WINDOW, threshold=10)
    assert got is not None
    assert got.growth_rate == 0.0
    assert got.drain_seconds is None
    assert got.backing_up is False


def test_growing_backlog_above_threshold_is_backing_up():
    got = trend(series(lambda t: 100 + 2 * t), window=WINDOW, threshold=100)
    assert got.growth_rate == exact(2.0)
    assert got.drain_seconds is None
    assert got.backing_up is True


def test_growing_backlog_below_threshold_is_not_backing_up():
    got = trend(series(lambda t: 10 + 0.1 * t), window=WINDOW, threshold=100)  # ends at 40
    assert got.growth_rate == exact(0.1)
    assert got.backing_up is False


def test_high_but_not_growing_backlog_is_not_backing_up():
    got = trend(series(lambda t: 5000.0), window=WINDOW, threshold=100)
    assert got.backing_up is False


def test_draining_backlog_estimates_time_to_empty():
    # 600 - 1.5 t ends at 150 messages at t = 300, leaving at 1.5/s: empty in 100 s
    got = trend(series(lambda t: 600 - 1.5 * t), window=WINDOW, threshold=100)
    assert got.growth_rate == exact(-1.5)
    assert got.drain_seconds == exact(100.0)
    assert got.backing_up is False


def test_drained_queue_reports_zero_seconds_left():
    got = trend(series(lambda t: max(0.0, 300 - 2 * t)), window=WINDOW, threshold=100)
    assert got.growth_rate < 0
    assert got.drain_seconds == 0.0


NOISE = [5.0 * (-1) ** i for i in range(21)]  # +-5 alternating: adds nothing to the slope


def noisy(slope: float, base: float = 200.0):
    return [(t, base + slope * t + n) for t, n in zip(TIMES, NOISE)]


def test_noise_has_no_effect_on_the_slope_but_on_its_error():
    # By hand: the alternating noise is orthogonal to (t - mean t), so the slope is exactly 0.01.
    # SSE = sum((+-5 - 5/21)^2) = 525 - 25/21; Sxx = 225 * 2 * (1^2 + ... + 10^2) = 173250
    f = fit(noisy(0.01))
    assert f.slope == exact(0.01)
    assert f.stderr == exact(math.sqrt((525 - 25 / 21) / 19 / 173250))  # 0.012615...


def test_noisy_slight_growth_is_not_significant_so_not_backing_up():
    got = trend(noisy(0.01), window=WINDOW, threshold=100)  # 0.01 < 2 * 0.0126
    assert got.growth_rate == exact(0.01)
    assert got.backing_up is False


def test_noisy_clear_growth_is_backing_up():
    got = trend(noisy(0.1), window=WINDOW, threshold=100)  # 0.1 > 2 * 0.0126
    assert got.growth_rate == exact(0.1)
    assert got.backing_up is True


def test_noisy_slight_decrease_gives_no_drain_estimate():
    got = trend(noisy(-0.01), window=WINDOW, threshold=100)
    assert got.growth_rate == exact(-0.01)
    assert got.drain_seconds is None


def test_gap_in_the_middle_still_fits_the_remaining_points():
    times = [t for t in TIMES if t <= 60 or t >= 240]  # failed polls between 60 s and 240 s
    got = trend(series(lambda t: 100 + 2 * t, times), window=WINDOW, threshold=100)
    assert got.growth_rate == exact(2.0)
    assert got.backing_up is True


def test_too_few_points_give_no_trend():
    assert trend([(0.0, 1.0), (300.0, 50.0)], window=WINDOW, threshold=0) is None
    assert trend([], window=WINDOW, threshold=0) is None


def test_points_covering_less_than_half_the_window_give_no_trend():
    times = [200.0, 215.0, 230.0, 245.0, 260.0, 275.0, 290.0]  # 90 s of a 300 s window
    assert trend(series(lambda t: t, times), window=WINDOW, threshold=0) is None
    # the same points do make a trend over a 150 s window (90 >= 75): slope 1
    assert trend(series(lambda t: t, times), window=150.0, threshold=0).growth_rate == exact(1.0)


def test_points_older_than_the_window_are_ignored():
    old = [(t - 600.0, 10_000.0 - 50 * t) for t in TIMES]  # a steep drain long ago
    got = trend(old + series(lambda t: 100 + 2 * t), window=WINDOW, threshold=100, now=300.0)
    assert got.growth_rate == exact(2.0)


def test_all_points_at_one_instant_fit_nothing():
    assert fit([(5.0, 1.0), (5.0, 2.0), (5.0, 3.0)]) is None


def test_history_keeps_only_the_window():
    h = History(window=30.0)
    for t in range(0, 100, 10):
        h.add(float(t), float(t))
    assert [t for t, _ in h.points] == [60.0, 70.0, 80.0, 90.0]
    got = h.trend(threshold=0, now=90.0)
    assert got.growth_rate == exact(1.0)
    assert got.backing_up is True


@settings(max_examples=200, deadline=None)
@given(intercept=st.floats(0, 1e6), slope=st.floats(-50, 50), start=st.floats(0, 1e7),
       step=st.sampled_from([1.0, 5.0, 15.0, 30.0]), threshold=st.floats(0, 1e6))
def test_any_exact_line_is_recovered(intercept, slope, start, step, threshold):
    # a monotonic clock can read anything; the fit is centred, so large times lose nothing
    n = int(WINDOW / step) + 1
    points = [(start + i * step, intercept + slope * i * step) for i in range(n)]
    got = trend(points, window=WINDOW, threshold=threshold)
    assert got.growth_rate == pytest.approx(slope, rel=1e-6, abs=1e-6)
    last = points[-1][1]
    clearly_growing, clearly_draining = slope > 1e-6, slope < -1e-6
    if clearly_growing:
        assert got.backing_up == (last > threshold)
        assert got.drain_seconds is None
    if clearly_draining:
        assert got.backing_up is False
        assert got.drain_seconds == pytest.approx(last / -slope, rel=1e-6, abs=1e-6)
    # the order in which points arrive does not matter
    assert trend(list(reversed(points)), window=WINDOW, threshold=threshold) == got


@settings(max_examples=200, deadline=None)
@given(st.floats(1, 3600), st.floats(1, 3600), st.integers(1, 100),
       st.lists(st.floats(0.9, 1.1), min_size=40, max_size=40))
def test_the_window_used_gives_a_trend_at_every_poll_once_polls_span_it(window, interval, share, jitter):
    """Whatever the window, the interval (+-10 % jitter) and the share, the window used holds, at every
    real poll once the polls span it, the 3 points over half of it that a trend needs: a window set
    narrower than 3 polls would have given none, ever."""
    used = trend_window(window, interval, share)
    t, times = 0.0, []
    for k, j in enumerate(jitter):
        if k % share == 0:  # a real poll; the other intervals only hold the last reading
            times.append(t)
        t += interval * j
    for now in times:
        if now >= used:
            assert recent([(x, 1.0) for x in times if x <= now], window=used, now=now) is not None
