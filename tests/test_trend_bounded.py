"""A trend's history holds a bounded number of points whatever its times do: the readings' clock is the
metadata endpoint's (a stats `read`), which can crawl, stand still, go back or jump. Before, a `read`
moving 1 us a poll kept every point for good (100 containers polled every 0.5 s: +26 KB/s of RSS, no
plateau), and every poll fitted them all."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from agent import trend
from agent.health import HealthMonitor
from agent.sources.ecs_stats import parse_time_ns
from agent.sources.localstats import format_time_ns
from integrations.queues.trend import History as QueueHistory
from tests.health_support import poll


class Clock:
    """The sidecar's monotonic clock, moved by the test: one poll interval a reading."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bound(window: float, interval: float) -> int:
    """The readings of two windows of the sidecar's clock, one a poll."""
    return math.floor(2 * window / interval) + 2


steps = st.one_of(
    st.just(1e-6),  # crawling
    st.just(0.0),  # repeated
    st.floats(-1e6, -1e-6),  # going back
    st.floats(1e3, 1e9),  # jumping ahead
    st.floats(0.0, 100.0),  # anything in between
)


@settings(max_examples=300, deadline=None)
@given(window=st.floats(1.0, 3600.0), interval=st.floats(0.1, 60.0),
       moves=st.lists(st.tuples(steps, st.integers(1, 400)), min_size=1, max_size=6))
def test_a_history_holds_at_most_two_windows_of_readings_whatever_its_times(
        window: float, interval: float, moves: list[tuple[float, int]]) -> None:
    clock = Clock()
    history = trend.History(window, clock=clock)
    t = 1.7e9
    for step, count in moves:
        for _ in range(count):
            t += step
            clock.now += interval
            history.add(t, 1.0)
            assert len(history.points) <= bound(window, interval)


def test_the_queue_history_is_bounded_alike() -> None:
    clock = Clock()
    history = QueueHistory(30.0, clock=clock)
    for i in range(10_000):
        clock.now += 1.0
        history.add(5.0 + i * 1e-6, float(i))
    assert len(history.points) <= bound(30.0, 1.0)


def test_a_well_behaved_clock_keeps_the_window_as_before() -> None:
    clock = Clock()
    history = trend.History(30.0, clock=clock)
    for t in range(0, 100, 10):
        clock.now += 10.0
        history.add(float(t), 2.0 * t)
    assert [t for t, _ in history.points] == [60.0, 70.0, 80.0, 90.0]


def test_a_crawling_read_neither_grows_the_memory_trend_nor_its_cost() -> None:
    """The tester's endpoint: every `read` 1 us after the one before, polled every 0.5 s, a 60 s window."""
    clock = Clock()
    monitor = HealthMonitor(memory_window=60.0, saturation_threshold=90.0, saturation_window=60.0, clock=clock)
    task, stats = poll("fargate-2023", "fargate-2023", t=0)
    entries = [e for e in stats.values() if isinstance(e, dict) and e.get("read")]
    start = parse_time_ns(entries[0]["read"])
    for i in range(2_000):  # 1,000 s of polls
        clock.now += 0.5
        for entry in entries:
            entry["read"] = format_time_ns(start + i * 1_000)
            entry["memory_stats"]["usage"] += 4096
        monitor.observe(task, stats, [], 1.7e9 + i * 0.5)
    kept = [len(c.memory.points) for c in monitor._containers.values()]
    assert kept and max(kept) <= bound(60.0, 0.5), kept  # it was 2,000 each, and growing
