"""Real captures, moved on poll after poll in ways a real endpoint can, served on loopback: no CPU rate past
what the container could use, whatever the CPU count the stats give (or leave out)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.sources.ecs_helpers import MetadataServer, load, managed_instances_task
from tests.sources.test_ecs_source import Harness

from agent.model import Sample
from agent.sources.ecs_stats import CPU_SLACK, MIN_UNBOUNDED_DT, parse_time_ns
from agent.sources.localstats import format_time_ns

# (task, stats): Fargate (cgroup v1, percpu_usage), EC2 bridge, Windows (no CPU count at all), Managed Instances
CPU_PAIRS = [("fargate-2023.task", "fargate-2023.stats"), ("ec2-bridge-2020.task", "ec2-bridge-2020.stats"),
             ("fargate-v2-2017.task", "fargate-windows.stats"), (None, "managed-instances-2025-cgroupv2.stats")]


def advance(entry: dict[str, Any], dt_ns: int, cpu_ns: int) -> dict[str, Any]:
    """A container's next sample, as the agent writes it: the last one becomes `pre`, `read` moves on."""
    entry = copy.deepcopy(entry)
    entry["preread"], entry["precpu_stats"] = entry["read"], copy.deepcopy(entry["cpu_stats"])
    entry["read"] = format_time_ns(parse_time_ns(entry["read"]) + dt_ns)  # type: ignore[operator]
    entry["cpu_stats"]["cpu_usage"]["total_usage"] += cpu_ns
    return entry


async def polls(task: Any, *stats: Any) -> list[list[Sample]]:
    """The samples of one poll per stats document, by a real source over HTTP."""
    server = MetadataServer()
    await server.start()
    harness = Harness(server.url, timeout=5.0)  # a busy machine: loopback, but not always within 0.5 s
    out = []
    try:
        for document in stats:
            server.serve(task, document)
            assert await harness.source.poll_once()
            out.append(harness.recorder.last("ecs").samples)
    finally:
        await harness.source.aclose()
        await server.stop()
    return out


def values(samples: list[Sample], name: str) -> dict[str | None, float]:
    return {dict(s.tags).get("container_name"): s.value for s in samples if s.name == name}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=st.sampled_from(CPU_PAIRS), online=st.sampled_from(["keep", "delete", 0]),
       percpu=st.sampled_from(["keep", "delete"]), fargate_vcpus=st.sampled_from([None, 0.25, 0.5, 1, 2, 4]),
       dt_ns=st.one_of(st.sampled_from([1_000, 1_000_000, MIN_UNBOUNDED_DT - 1, MIN_UNBOUNDED_DT]),
                       st.integers(1, 20 * 10**9)),
       cpu_ns=st.lists(st.integers(0, 40 * 10**9), min_size=2, max_size=2))
def test_no_cpu_rate_past_what_the_container_can_use(pair: tuple[str | None, str], online: Any, percpu: str,
                                                     fargate_vcpus: float | None, dt_ns: int,
                                                     cpu_ns: list[int]) -> None:
    """A container uses at most the host's CPUs (`online_cpus`, else as many as `percpu_usage` lists)
    and on Fargate at most the task's size; without either, no rate is taken over a gap too short to
    mean anything. The task's sum obeys the same bound."""
    task = load(pair[0]) if pair[0] else managed_instances_task()
    first = {k: v for k, v in load(pair[1]).items() if v}
    if fargate_vcpus is not None:
        task["LaunchType"], task["Limits"] = "FARGATE", dict(task.get("Limits") or {}, CPU=fargate_vcpus)
    elif task.get("LaunchType") == "FARGATE":
        task["LaunchType"] = "EC2"
    for entry in first.values():
        for key in ("cpu_stats", "precpu_stats"):
            if online != "keep":
                entry[key].pop("online_cpus", None) if online == "delete" else entry[key].update(online_cpus=0)
            if percpu == "delete":
                entry[key]["cpu_usage"].pop("percpu_usage", None)
    second = {k: advance(v, dt_ns, cpu_ns[i % 2]) for i, (k, v) in enumerate(first.items())}

    samples = asyncio.run(polls(task, first, second))[1]

    bounds = []
    names = {c["DockerId"]: c["Name"] for c in task["Containers"]}
    for docker_id, entry in second.items():
        count = entry["cpu_stats"].get("online_cpus") or len(entry["cpu_stats"]["cpu_usage"].get("percpu_usage") or [])
        bound = min(b for b in (count, fargate_vcpus) if b) if count or fargate_vcpus else None
        bounds.append(bound)
        used = values(samples, "ecs.container.cpu.usage_vcpus").get(names.get(docker_id))
        if used is None:
            continue
        if bound is None:  # the pair is the one this poll moved on by (the agent's own and ours agree)
            assert dt_ns >= MIN_UNBOUNDED_DT, (used, dt_ns)
        else:
            assert used <= bound * CPU_SLACK, (used, bound)
    task_used = values(samples, "ecs.task.cpu.usage_vcpus").get(None)
    if task_used is not None and None not in bounds:
        assert task_used <= max(bounds) * CPU_SLACK, (task_used, bounds)
    if fargate_vcpus is not None:
        assert values(samples, "ecs.task.cpu.utilization_percent").get(None, 0) <= 100 * CPU_SLACK


def test_fargate_windows_or_no_cpu_count_repro() -> None:
    """The reviewer's cases: 1 s of CPU over a 1 ms gap without `online_cpus` (1000 vCPUs before), and
    2 vCPUs over 10 s on a 0.25-vCPU Fargate task whose stats say the host's 2 CPUs (800 % before)."""
    task, base = load("fargate-2023.task"), load("fargate-2023.stats")
    tiny = {k: advance(v, 1_000_000, 10**9) for k, v in base.items()}
    for entry in tiny.values():
        entry["cpu_stats"].pop("online_cpus")
        entry["precpu_stats"].pop("online_cpus")
        entry["cpu_stats"]["cpu_usage"].pop("percpu_usage")
    samples = asyncio.run(polls(task, base, tiny))[1]
    assert "dd-agent" not in values(samples, "ecs.container.cpu.usage_vcpus")
    assert values(samples, "ecs.task.cpu.utilization_percent") == {}

    task["Limits"]["CPU"] = 0.25
    busy = {k: advance(v, 10 * 10**9, 20 * 10**9 if i == 0 else 0) for i, (k, v) in enumerate(base.items())}
    samples = asyncio.run(polls(task, base, busy))[1]
    assert "dd-agent" not in values(samples, "ecs.container.cpu.usage_vcpus")
    assert values(samples, "ecs.container.cpu.usage_vcpus")["apmtest-ping"] == 0.0
    assert values(samples, "ecs.task.cpu.utilization_percent") == {}  # a gap: one container has no reading
