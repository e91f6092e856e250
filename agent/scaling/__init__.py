"""Queue-driven autoscaling and scale-in protection (docs/scaling.md).

- `backlog`: backlog per task and its smoothed value, pure functions over a queue reading;
- `heartbeat`: one datapoint per task per minute, which CloudWatch counts as the running tasks;
- `busy`: the busy rule (`cpu>20%`, `jobs.in_progress>0`, ...), its grammar and its evaluation;
- `protection`: the ECS agent's task-protection client and the component that protects while busy.

The metric names below are the one source of truth: the Terraform module's metric math, the alert
rules and the tests read them from here. Their Prometheus (and CloudWatch EMF) names are the dotted
names with dots as underscores.
"""

from __future__ import annotations

BACKLOG = "queue.backlog"  # ready + in flight, where the broker has each
BACKLOG_SMOOTHED = "queue.backlog_smoothed"  # what the scaling policy divides by the task count
BACKLOG_PER_TASK = "queue.backlog_per_task"  # only with a local task-count estimate
BACKLOG_PER_TASK_SMOOTHED = "queue.backlog_per_task_smoothed"
TASKS_ESTIMATE = "queue.tasks_estimate"  # the local estimate itself (live consumers / consumers per task)
HEARTBEAT = "tasklens.scaling.task_heartbeat"  # 1, once a minute: CloudWatch's SampleCount = running tasks
TARGET = "tasklens.scaling.target_backlog_per_task"  # the policy's target, when configured
MAX_TASKS = "tasklens.scaling.max_tasks"  # the scalable target's maximum, when configured
BUSY = "tasklens.scaling.busy"  # 1 while the busy rule holds
PROTECTED = "tasklens.scaling.protected"  # 1 while the task is (as far as we know) protected from scale-in

# The dimensions the scaling policy selects on (the EMF sink's default dimension set is these + queue).
DIMENSIONS = ("ecs_cluster", "service")
QUEUE_DIMENSION = "queue"


def prometheus_name(name: str) -> str:
    """`queue.backlog_smoothed` -> `queue_backlog_smoothed` (the Prometheus and CloudWatch name)."""
    return name.replace(".", "_")
