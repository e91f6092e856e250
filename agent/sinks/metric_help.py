"""`# HELP` text for `/metrics`: what a metric is and its unit, not its Datadog name again.

The sidecar's own families get a sentence from `DESCRIPTIONS` (the ones people alert on), else one
built from the name and its unit suffix; a worker's StatsD metric says where it comes from.
"""

from __future__ import annotations

from agent.model import Kind

DESCRIPTIONS = {
    "ecs_container_cpu_usage_vcpus": "CPU used by the container, in vCPUs (1 = one full vCPU)",
    "ecs_container_cpu_utilization_percent": "CPU used by the container as a percent of its allocation "
                                             "(else the task's, else the online CPUs)",
    "ecs_container_memory_working_set_bytes": "container memory in use (usage minus inactive file cache), bytes",
    "ecs_container_memory_usage_bytes": "container memory usage including page cache, bytes",
    "ecs_container_memory_limit_bytes": "the smallest memory limit that applies to the container, bytes",
    "ecs_container_memory_utilization_percent": "container working set as a percent of its memory limit",
    "ecs_container_memory_time_to_limit_seconds": "seconds until the working set reaches the limit at its "
                                                  "current significant growth (absent when it does not grow)",
    "ecs_container_running": "1 while the container runs, 0 once it stopped",
    "ecs_container_exit_code": "exit code of the stopped container",
    "ecs_task_cpu_usage_vcpus": "CPU used by all the task's containers, in vCPUs",
    "ecs_task_cpu_limit_vcpus": "CPU the task was given, in vCPUs",
    "ecs_task_cpu_utilization_percent": "CPU used by the task as a percent of what it was given",
    "ecs_task_memory_working_set_bytes": "memory in use by all the task's containers, bytes",
    "ecs_task_memory_limit_bytes": "the task's memory size, bytes",
    "ecs_task_memory_reservation_bytes": "memory the containers of a task without a task-level size were given "
                                         "(not a limit: the working set can pass it), bytes",
    "ecs_task_memory_utilization_percent": "task working set as a percent of the task's memory size",
    "ecs_task_info": "1, with the task's identity as labels",
    "queue_depth": "messages ready in the queue",
    "queue_in_flight": "messages delivered and not yet acknowledged",
    "queue_oldest_age_seconds": "age of the oldest message in the queue, seconds",
    "queue_growth_rate": "least-squares slope of the depth over the trend window, messages per second",
    "queue_drain_seconds": "seconds until the queue is empty at the current drain rate",
    "queue_backing_up": "1 when the depth is above its threshold and growing",
    "queue_backlog_per_task": "ready plus in-flight messages per running task",
}

_UNITS = (  # suffix -> unit words, longest first
    ("_bytes_total", "bytes, cumulative"), ("_seconds_total", "seconds, cumulative"),
    ("_bytes_per_second", "bytes per second"), ("_per_second", "per second"), ("_bytes", "bytes"),
    ("_seconds", "seconds"), ("_percent", "percent"), ("_vcpus", "vCPUs"), ("_total", "count since the start"),
)
_SCOPES = (("tasklens_", "tasklens self-metric: "), ("ecs_container_", "ECS container "), ("ecs_task_", "ECS task "),
           ("queue_", "queue "))


def own_help(family: str, kind: Kind = Kind.GAUGE) -> str:
    """The sentence for one of the sidecar's own families (its family name: a counter's without `_total`)."""
    name = family + "_total" if kind is Kind.COUNTER else family
    if name in DESCRIPTIONS:
        return DESCRIPTIONS[name]
    base, unit = name, ""
    for suffix, words in _UNITS:
        if name.endswith(suffix):
            base, unit = name[: -len(suffix)], words
            break
    prefix, scope = next(((p, words) for p, words in _SCOPES if base.startswith(p)), ("", ""))
    what = base.removeprefix(prefix).replace("_", " ")
    return f"{scope}{what}" + (f", {unit}" if unit else "")


def worker_help(name: str, kind: Kind, milliseconds: bool = False) -> str:
    """The sentence for a worker's StatsD metric, with the name it was sent under."""
    what = {Kind.COUNT: "counter (sum of increments)", Kind.GAUGE: "gauge",
            Kind.HISTOGRAM: "histogram", Kind.DISTRIBUTION: "distribution"}.get(kind, kind.value)
    unit = ", seconds (sent as milliseconds)" if milliseconds else ""
    return f"StatsD {what} {name} sent by the worker{unit}"
