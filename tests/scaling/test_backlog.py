"""Backlog per task, pure: the backlog, the local task estimate, the windowed minimum (properties:
a spike shorter than the window never shows, a level held for the window always does)."""

from __future__ import annotations

from collections import deque

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agent.scaling import (
    BACKLOG,
    BACKLOG_PER_TASK,
    BACKLOG_PER_TASK_SMOOTHED,
    BACKLOG_SMOOTHED,
    TASKS_ESTIMATE,
    prometheus_name,
)
from agent.scaling.backlog import (
    LIVE_CONSUMERS,
    BacklogTracker,
    backlog,
    tasks_estimate,
    window_min,
)

TAGS = (("queue", "jobs"), ("queue_type", "beanstalkd"))


def test_backlog_is_ready_plus_in_flight() -> None:
    assert backlog(5.0, 3.0) == 8.0
    assert backlog(5.0, None) == 5.0  # a broker without in-flight numbers: ready alone
    assert backlog(None, 3.0) is None  # no depth, no backlog (never a 0)
    assert backlog(0.0, 0.0) == 0.0


def test_tasks_estimate_only_from_live_consumers() -> None:
    assert tasks_estimate("rabbitmq", 6.0, 2.0) == 3.0
    assert tasks_estimate("beanstalkd", 0.0, 1.0) == 1.0  # this task runs: at least 1
    assert tasks_estimate("redis", None, 1.0) is None  # a plain list has no consumers
    for queue_type in ("sqs", "nats", "redis_stream"):  # no live consumer count
        assert queue_type not in LIVE_CONSUMERS and tasks_estimate(queue_type, 4.0, 1.0) is None


def test_names_are_the_documented_prometheus_names() -> None:
    assert [prometheus_name(n) for n in (BACKLOG, BACKLOG_SMOOTHED, BACKLOG_PER_TASK, BACKLOG_PER_TASK_SMOOTHED)] == [
        "queue_backlog", "queue_backlog_smoothed", "queue_backlog_per_task", "queue_backlog_per_task_smoothed"]


def test_tracker_samples() -> None:
    tracker = BacklogTracker("beanstalkd", window=60.0)
    first = tracker.samples(10.0, 2.0, 4.0, 1000.0, TAGS, 1.7e9)
    # no smoothed value until the window holds half a window of history
    assert {s.name: s.value for s in first} == {BACKLOG: 12.0, TASKS_ESTIMATE: 4.0, BACKLOG_PER_TASK: 3.0}
    assert all(s.tags == TAGS and s.timestamp == 1.7e9 for s in first)
    tracker.samples(30.0, 2.0, 4.0, 1020.0, TAGS, 1.7e9)
    later = {s.name: s.value for s in tracker.samples(50.0, 2.0, 4.0, 1030.0, TAGS, 1.7e9)}
    assert later == {BACKLOG: 52.0, BACKLOG_SMOOTHED: 12.0, TASKS_ESTIMATE: 4.0, BACKLOG_PER_TASK: 13.0,
                     BACKLOG_PER_TASK_SMOOTHED: 3.0}
    # 61 s later the first point has left the window
    assert {s.name: s.value for s in tracker.samples(40.0, 0.0, 4.0, 1061.0, TAGS, 1.7e9)}[BACKLOG_SMOOTHED] == 32.0
    assert tracker.samples(None, 5.0, 4.0, 1070.0, TAGS, 1.7e9) == []
    sqs = BacklogTracker("sqs", window=60.0)
    assert [s.name for s in sqs.samples(10.0, 2.0, None, 0.0, TAGS, 0.0)] == [BACKLOG]


def series(draw_values: list[float], step: float) -> deque[tuple[float, float]]:
    return deque((i * step, v) for i, v in enumerate(draw_values))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=60), st.sampled_from([5.0, 15.0, 30.0]),
       st.sampled_from([60.0, 120.0, 300.0]))
def test_the_smoothed_backlog_is_the_minimum_over_the_window(values: list[int], step: float, window: float) -> None:
    points = series([float(v) for v in values], step)
    now = points[-1][0]
    smoothed = window_min(points, now, window)
    inside = [v for t, v in points if t >= now - window]
    if now - min(t for t, _ in points if t >= now - window) < window / 2:
        assert smoothed is None
    else:
        assert smoothed == min(inside)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 1000), st.integers(1, 100_000), st.integers(0, 8), st.sampled_from([15.0, 30.0]))
def test_a_spike_shorter_than_the_window_never_shows(base: int, spike: int, length: int, step: float) -> None:
    """A burst drained within the window (up to 8 polls 15 s apart for a 120 s window) leaves the
    smoothed value at the base level at every poll: nothing to scale out for, nothing to scale back in."""
    window = 120.0
    assume(length * step <= window)
    tracker = BacklogTracker("sqs", window)
    values = [base] * 10 + [base + spike] * length + [base] * 10
    for i, v in enumerate(values):
        out = {s.name: s.value for s in tracker.samples(float(v), None, None, i * step, (), 0.0)}
        if BACKLOG_SMOOTHED in out:
            assert out[BACKLOG_SMOOTHED] == base


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 1000), st.integers(1, 100_000), st.sampled_from([5.0, 15.0]))
def test_a_level_held_for_the_window_passes_within_one_window(base: int, rise: int, step: float) -> None:
    window = 120.0
    tracker = BacklogTracker("sqs", window)
    t = 0.0
    for _ in range(int(window / step) + 1):
        tracker.samples(float(base), None, None, t, (), 0.0)
        t += step
    risen_at = t
    while True:
        out = {s.name: s.value for s in tracker.samples(float(base + rise), None, None, t, (), 0.0)}
        if out[BACKLOG_SMOOTHED] == base + rise:
            break
        assert out[BACKLOG_SMOOTHED] == base
        t += step
    assert t - risen_at <= window + step  # one window late, not more


def test_heartbeat_carries_the_target_and_maximum_when_configured() -> None:
    from agent.hub import Hub
    from agent.identity import Identity
    from agent.scaling import HEARTBEAT, MAX_TASKS, TARGET
    from agent.scaling.heartbeat import Heartbeat
    from tests.support import Recorder

    hub = Hub(Identity(service="thumbs", ecs_cluster="prod", task_id="t1"))
    recorder = Recorder()
    hub.add_sink(recorder)
    Heartbeat(hub).beat()
    Heartbeat(hub, target=200.0, max_tasks=50).beat()
    plain, configured = recorder.batches
    assert [(s.name, s.value) for s in plain.samples] == [(HEARTBEAT, 1.0)]
    assert [(s.name, s.value) for s in configured.samples] == [(HEARTBEAT, 1.0), (TARGET, 200.0), (MAX_TASKS, 50.0)]
    assert dict(configured.samples[0].tags)["ecs_cluster"] == "prod" and configured.snapshot


@settings(max_examples=200, deadline=None)
@given(st.integers(100, 1000), st.integers(1, 8), st.sampled_from([15.0, 30.0]))
def test_the_hold_keeps_a_level_through_a_short_dip(level: int, dip_polls: int, step: float) -> None:
    """A queue drained between bursts: within the hold the smoothed backlog stays at the level held
    before; once the dip has lasted the hold, it falls."""
    window, hold = 60.0, 300.0
    tracker = BacklogTracker("sqs", window, hold=hold)
    t = 0.0
    for _ in range(int((window + hold) / step) + 2):
        tracker.samples(float(level), None, None, t, (), 0.0)
        t += step
    dip_started = t
    while True:
        out = {s.name: s.value for s in tracker.samples(0.0, None, None, t, (), 0.0)}
        if out[BACKLOG_SMOOTHED] == 0.0:
            break
        assert out[BACKLOG_SMOOTHED] == level
        t += step
    assert hold <= t - dip_started <= hold + window + step
