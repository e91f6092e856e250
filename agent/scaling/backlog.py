"""Backlog per task: pure functions over one queue's readings (docs/scaling.md).

The backlog is the work not yet done: ready messages plus those delivered and not yet acked (a
scaler that ignores in-flight messages scales in under workers that are busy). Delayed messages are
not work yet and are left out.

The smoothed backlog is a max of mins: the minimum over a short window (`TASKLENS_SCALING_SMOOTHING_WINDOW`,
60 s) keeps a level only once it has lasted that long, so a burst the running tasks drain within
the window never scales the service out; the maximum of those minima over a longer hold
(`TASKLENS_SCALING_HOLD`, 600 s) lets a rise through at once but a fall only after the hold, so a
queue that drains between periodic bursts does not scale in and out with every burst. A sustained
rise passes one short window late; a sustained fall one hold late (on top of target tracking's own
15 minutes before it scales in).

The running-task count comes from CloudWatch (the heartbeat's SampleCount, see `heartbeat.py`).
Locally the sidecar has no cheap exact count; where the broker reports live consumers (RabbitMQ,
beanstalkd, RQ, a PostgreSQL query that returns them) it estimates tasks as consumers / consumers
per task, and only then reports the per-task values itself.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from agent.model import Kind, Sample, Tags
from agent.scaling import (
    BACKLOG,
    BACKLOG_PER_TASK,
    BACKLOG_PER_TASK_SMOOTHED,
    BACKLOG_SMOOTHED,
    TASKS_ESTIMATE,
)

# queue types whose `consumers` count running workers: connections (gone when a worker dies), or RQ's
# registered workers whose key has not expired (a killed one counts until then, `--worker-ttl` + 60 s; a
# plain Redis list has no consumers). NATS counts consumers defined on the stream and a Redis stream
# group keeps its consumer names: neither counts workers.
LIVE_CONSUMERS = frozenset({"rabbitmq", "beanstalkd", "redis", "postgres"})


def backlog(depth: float | None, in_flight: float | None) -> float | None:
    """Ready + in flight; None without a depth (a broker with no depth gives no backlog)."""
    if depth is None:
        return None
    return depth + (in_flight or 0.0)


def tasks_estimate(queue_type: str, consumers: float | None, consumers_per_task: float) -> float | None:
    """Running tasks as live consumers / consumers per task, at least 1 (this task runs); None when
    the broker has no live consumer count."""
    if queue_type not in LIVE_CONSUMERS or consumers is None or consumers_per_task <= 0:
        return None
    return max(consumers / consumers_per_task, 1.0)


def window_min(points: deque[tuple[float, float]], now: float, window: float) -> float | None:
    """The minimum value of the points within `window` seconds before `now`; None until the points
    span at least half the window (a fresh or long-gapped history proves nothing yet)."""
    inside = [(t, v) for t, v in points if now - window <= t <= now]
    if not inside or now - inside[0][0] < window / 2:
        return None
    return min(v for _, v in inside)


def held_max(minima: deque[tuple[float, float]], now: float, hold: float) -> float | None:
    """The largest of the windowed minima within `hold` seconds before `now`."""
    inside = [v for t, v in minima if now - hold <= t <= now]
    return max(inside) if inside else None


@dataclass
class BacklogTracker:
    """One queue's backlog history and the samples it adds to each poll's snapshot."""

    queue_type: str
    window: float
    consumers_per_task: float = 1.0
    hold: float = 0.0  # 0: the windowed minimum alone

    def __post_init__(self) -> None:
        self.points: deque[tuple[float, float]] = deque()
        self.minima: deque[tuple[float, float]] = deque()

    def add(self, now: float, value: float) -> float | None:
        """Add a reading; the smoothed backlog (None until the window has enough history)."""
        self.points.append((now, value))
        while self.points and self.points[0][0] < now - self.window:
            self.points.popleft()
        low = window_min(self.points, now, self.window)
        if low is None:
            return None
        self.minima.append((now, low))
        while self.minima and self.minima[0][0] < now - self.hold:
            self.minima.popleft()
        return held_max(self.minima, now, self.hold)

    def samples(self, depth: float | None, in_flight: float | None, consumers: float | None, now: float,
                tags: Tags, timestamp: float) -> list[Sample]:
        """The backlog samples of one successful poll (`now` monotonic, `timestamp` wall time)."""
        raw = backlog(depth, in_flight)
        if raw is None:
            return []
        smoothed = self.add(now, raw)
        values = {BACKLOG: raw}
        if smoothed is not None:
            values[BACKLOG_SMOOTHED] = smoothed
        tasks = tasks_estimate(self.queue_type, consumers, self.consumers_per_task)
        if tasks is not None:
            values[TASKS_ESTIMATE] = tasks
            values[BACKLOG_PER_TASK] = raw / tasks
            if smoothed is not None:
                values[BACKLOG_PER_TASK_SMOOTHED] = smoothed / tasks
        return [Sample(name, value, Kind.GAUGE, tags, timestamp) for name, value in values.items()]
