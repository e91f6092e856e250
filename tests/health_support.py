"""Helpers for the health tests: the ECS captures as successive polls, and series derived from them.

A derived poll is a capture (tests/fixtures/ecs, see its SOURCES.md) with only the fields named
by the helper changed: `read` moved by `t` seconds, a container's memory usage, status, exit code or
restart count. Everything else is the captured JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from agent.health import HealthMonitor
from agent.model import Sample
from agent.sources.ecs_stats import parse_time_ns
from agent.sources.localstats import format_time_ns
from tests.sources.ecs_helpers import load, managed_instances_task

MIB = 1024 * 1024
TASKS = {"fargate-v2-2017-wrong-system-delta": "fargate-v2-2017"}


def monitor(memory_window: float = 1800.0, saturation_threshold: float = 90.0,
            saturation_window: float = 60.0) -> HealthMonitor:
    return HealthMonitor(memory_window=memory_window, saturation_threshold=saturation_threshold,
                         saturation_window=saturation_window)


def series(f: Callable[[float], float], *, seconds: float, step: float) -> list[tuple[float, float]]:
    """f sampled every `step` seconds from 0 to `seconds` inclusive."""
    return [(i * step, f(i * step)) for i in range(int(seconds / step) + 1)]


def container_values(samples: list[Sample]) -> dict[str, dict[str, float]]:
    """container_name ("" for the task) -> series name -> value; fails on a duplicate series."""
    out: dict[str, dict[str, float]] = {}
    for s in samples:
        values = out.setdefault(dict(s.tags).get("container_name", ""), {})
        assert s.name not in values, f"duplicate series {s.name} {s.tags}"
        values[s.name] = s.value  # type: ignore[assignment]
    return out


def _docker_id(task: dict[str, Any], name: str) -> str:
    return str(next(c["DockerId"] for c in task["Containers"] if c["Name"] == name))


def poll(task_name: str, stats_name: str, *, t: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The capture's `/task` and `/task/stats`, every `read` moved `t` seconds later."""
    task, stats = load(task_name + ".task"), load(stats_name + ".stats")
    for entry in stats.values():
        if isinstance(entry, dict) and entry.get("read"):
            entry["read"] = format_time_ns(parse_time_ns(entry["read"]) + int(t * 1e9))  # type: ignore[operator]
    return task, stats


def with_memory(stats: dict[str, Any], task: dict[str, Any], name: str, *, working_set: float) -> None:
    """Set `usage` so that the working set (usage - total_inactive_file, as in the capture) is this."""
    memory = stats[_docker_id(task, name)]["memory_stats"]
    memory["usage"] = int(working_set) + memory["stats"].get("total_inactive_file", 0)


def stopped(task: dict[str, Any], stats: dict[str, Any], name: str, *, exit_code: int) -> None:
    """The container as the captures show a stopped one: STOPPED, an `ExitCode`, stats `{}`."""
    container = next(c for c in task["Containers"] if c["Name"] == name)
    container.update(KnownStatus="STOPPED", DesiredStatus="STOPPED", ExitCode=exit_code)
    stats[container["DockerId"]] = {}


def with_restart(task: dict[str, Any], name: str, *, restart_count: int) -> None:
    next(c for c in task["Containers"] if c["Name"] == name)["RestartCount"] = restart_count


def leaking_polls(*, polls: int, step: float, grow: float) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """fargate-2023 polled every `step` s; dd-agent's usage grows `grow` bytes per poll."""
    for i in range(polls):
        task, stats = poll("fargate-2023", "fargate-2023", t=i * step)
        stats[_docker_id(task, "dd-agent")]["memory_stats"]["usage"] += int(i * grow)
        yield task, stats


def _capture(task: str, stats: str) -> tuple[Any, Any]:
    return load(task + ".task"), load(stats + ".stats")


def _first_sight(peak: float | None, restarts: float = 0.0) -> dict[str, float]:
    out = {"ecs.container.restarts_total": restarts, "ecs.container.oom_kills_total": 0.0}
    if peak is not None:
        out["ecs.container.memory.peak_working_set_bytes"] = peak
    return out


# What the first poll of each capture gives: no restart or OOM kill can be seen in one poll (a
# stopped container's exit is judged only when its stop is seen); the peak is the working set
# (usage - total_inactive_file on cgroup v1, usage - inactive_file on v2); the pause container and
# containers without stats ({} or missing) have no peak.
CAPTURES: dict[str, tuple[Any, Any, dict[str, dict[str, float]]]] = {
    "ec2-bridge-2020": (*_capture("ec2-bridge-2020", "ec2-bridge-2020"), {
        "nginx100": _first_sight(2_568_192 - 12_288),
        "nginx200": _first_sight(None),  # STOPPED, ExitCode 3, stats {}: its exit was not seen happen
        "nginx300": _first_sight(2_658_304 - 12_288),
    }),
    "fargate-2021": (*_capture("fargate-2021", "fargate-2021"), {
        "essential": _first_sight(974_848 - 0),
        "non": _first_sight(None),  # STOPPED, ExitCode 42, stats {}
    }),
    "fargate-2023": (*_capture("fargate-2023", "fargate-2023"), {
        "dd-agent": _first_sight(160_886_784 - 3_919_872),
        "apmtest-ping": _first_sight(34_865_152 - 0),
    }),
    "fargate-v2-2017": (*_capture("fargate-v2-2017", "fargate-v2-2017-wrong-system-delta"), {
        "dd-agent": _first_sight(253_894_656 - 22_790_144),
        "redis": _first_sight(7_901_184 - 4_059_136),
    }),
    "ec2-awsvpc-2023-cgroupv2": (*_capture("ec2-awsvpc-2023-cgroupv2", "ec2-awsvpc-2023-cgroupv2"), {}),
    "managed-instances-2025-cgroupv2": (managed_instances_task(), load("managed-instances-2025-cgroupv2.stats"), {
        "managed-instances-app": _first_sight(42_827_776 - 6_082_560),
        "datadog-agent": _first_sight(398_942_208 - 149_512_192),
    }),
    "task-with-tags": (load("task-with-tags.task"), load("managed-instances-2025-cgroupv2.stats"), {
        "log_router": _first_sight(None),  # its DockerId is not in these stats
        "datadog-agent": _first_sight(None),
    }),
}


# --- the status page ---------------------------------------------------------------------------------

HOSTILE = '<img src=x onerror="window.__pwned=1">'  # a StatsD name, a container name: shown as text


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def feed_page(page: Any, clock: Clock, *, polls: int = 181, step: float = 10.0, depth_start: float = 900.0) -> None:
    """What the sidecar publishes over `polls` polls of fargate-2023 with dd-agent leaking 2 MiB a poll
    (derive + health, as the ECS source does), a queue draining 3 messages a poll, and a StatsD flush
    with a hostile metric name, all into the page's history at the clock's times."""
    from agent.model import Batch, Kind, Points, Sample
    from agent.sources.ecs_stats import derive
    from integrations.queues.trend import History

    m = monitor()
    queue = History(300.0)
    previous: dict[str, Any] = {}
    busy = 0.0
    for i, (task, stats) in enumerate(leaking_polls(polls=polls, step=step, grow=2 * MIB)):
        clock.now += step
        # dd-agent busier and busier: 20 % of its 1 vCPU, rising 0.2 points a poll (56 % at the end)
        busy += (0.2 + 0.002 * i) * step * 1e9
        stats[_docker_id(task, "dd-agent")]["cpu_stats"]["cpu_usage"]["total_usage"] += int(busy)
        if i == 0:  # as just after a start: no `precpu_stats`, so no CPU rate for the first poll
            for entry in stats.values():
                entry["precpu_stats"] = {}
        for c in task["Containers"]:
            if c["Name"] == "apmtest-ping":
                c["Name"] = HOSTILE
        derived = derive(task, stats, previous).samples
        previous = stats
        derived += m.observe(task, stats, derived, clock.now)
        page.accept(Batch("ecs", derived, snapshot=True))
        depth = max(0.0, depth_start - 3 * i)
        queue.add(clock.now, depth)
        tr = queue.trend(100.0, clock.now)
        q = [Sample("queue.depth", depth, tags=(("queue", "orders"), ("queue_type", "sqs")))]
        if tr is not None:
            q += [Sample("queue.growth_rate", tr.growth_rate, tags=q[0].tags),
                  Sample("queue.backing_up", 1.0 if tr.backing_up else 0.0, tags=q[0].tags)]
            if tr.drain_seconds is not None:
                q.append(Sample("queue.drain_seconds", tr.drain_seconds, tags=q[0].tags))
        page.accept(Batch("queue:orders", q, snapshot=True))
    worker, agent = (("process", "python:worker.py"),), (("process", "agent"),)
    page.accept(Batch("processes", [
        Sample("ecs.task.process.cpu_vcpus", 0.45, tags=worker), Sample("ecs.task.process.cpu_vcpus", 0.02, tags=agent),
        Sample("ecs.task.process.rss_bytes", 480 * MIB, tags=worker), Sample("ecs.task.process.rss_bytes", 60 * MIB, tags=agent),
    ], snapshot=True))
    page.accept(Batch("statsd", [
        Sample("jobs.done", 500.0, Kind.COUNT, interval=10.0),
        Sample(HOSTILE, 50.0, Kind.COUNT, interval=10.0),
        Sample("job.seconds", Points([0.1] * 30, [1.0] * 30), Kind.HISTOGRAM, interval=10.0),
        Sample("workers", 4.0, Kind.GAUGE),
    ]))
