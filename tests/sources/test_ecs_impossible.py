"""Real captures, moved on poll after poll in ways a real endpoint can, served on loopback: no number that
cannot be real. No CPU rate past what the container could use, whatever CPU count the stats give (or
leave out); no usage from a container that is not running, nor a rate from a sample that stopped
changing; no memory utilization against a limit that cannot be one."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.sources.ecs_helpers import MetadataServer, load, managed_instances_task
from tests.sources.test_ecs_source import Harness

from agent.model import Sample
from agent.sources.ecs_stats import CPU_SLACK, MIB, MIN_UNBOUNDED_DT, parse_time_ns
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
    harness = Harness(server.url, timeout=5.0)
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


# (every Harness here waits up to 5 s for the endpoint: on loopback, but on a busy shared machine a poll
# can take longer than the 0.5 s the other tests allow, and a timed-out poll is not what is tested)


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


# --- containers that are not running, samples that stopped changing ------------------------------

# what a container's stats give (the health monitor's series, such as the peak working set seen while it
# ran, are history, not this sample)
USAGE_SERIES = ("ecs.container.cpu.", "ecs.container.memory.usage", "ecs.container.memory.working_set",
                "ecs.container.memory.limit", "ecs.container.memory.utilization", "ecs.container.memory.rss",
                "ecs.container.memory.cache", "ecs.container.memory.anon", "ecs.container.memory.file",
                "ecs.container.io.", "ecs.container.pids", "ecs.container.uptime")
STATUS_PAIRS = [("fargate-2023.task", "fargate-2023.stats"), ("ec2-bridge-2020.task", "ec2-bridge-2020.stats"),
                ("fargate-v2-2017.task", "fargate-v2-2017-wrong-system-delta.stats"),
                ("ec2-awsvpc-2023-cgroupv2.task", "ec2-awsvpc-2023-cgroupv2.stats")]


def by_series(samples: list[Sample]) -> dict[tuple[str, str | None], float]:
    return {(s.name, dict(s.tags).get("container_name")): s.value for s in samples}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=st.sampled_from(STATUS_PAIRS),
       statuses=st.lists(st.sampled_from(["RUNNING", "STOPPED", "PULLED", "CREATED", "NONE"]), min_size=3, max_size=3),
       pause_up=st.booleans())
def test_a_container_not_running_counts_for_nothing_whatever_its_stats_entry_holds(
        pair: tuple[str, str], statuses: list[str], pause_up: bool) -> None:
    """ECS keeps the last sample of a container that stopped (or serves one for a container not started):
    its stats entry changes nothing but its state series. Every series, the task's sums included, is
    the same as without that entry; the pause container counts toward the task while it is
    RESOURCES_PROVISIONED (as it is while the task runs)."""
    task, stats = load(pair[0]), load(pair[1])
    for container, status in zip(task["Containers"], statuses):
        if container["Type"] == "CNI_PAUSE":
            container["KnownStatus"] = "RESOURCES_PROVISIONED" if pause_up else "STOPPED"
        else:
            container["KnownStatus"] = status
    in_use = {c["DockerId"] for c in task["Containers"]
              if c["KnownStatus"] in ("RUNNING", "RESOURCES_PROVISIONED")}
    later = {k: advance(v, 10 * 10**9, 10**9) if v else v for k, v in stats.items()}
    frozen = dict(later, **{k: v for k, v in stats.items() if k not in in_use})  # theirs stay as they were
    without = {k: v for k, v in later.items() if k in in_use}

    got = by_series(asyncio.run(polls(task, stats, frozen))[1])
    expected = by_series(asyncio.run(polls(task, {k: v for k, v in stats.items() if k in in_use}, without))[1])

    assert got == expected
    for container in task["Containers"]:
        if container["DockerId"] not in in_use:
            assert not [name for name, who in got if who == container["Name"] and name.startswith(USAGE_SERIES)]


async def test_a_sample_that_stopped_changing_gives_no_rate_once_stale(metadata: MetadataServer) -> None:
    """The same sample poll after poll: its rate is from before. Within `stale_after` the rate over the
    last two samples stands (the agent refreshes every 1-10 s); past it, no CPU rate for the container
    and a gap for the task's; a new sample gives a rate again."""
    task, first = load("fargate-2023.task"), load("fargate-2023.stats")
    second = {k: advance(v, 10 * 10**9, 10**9) for k, v in first.items()}
    third = {k: advance(v, 10 * 10**9, 10**9) for k, v in second.items()}
    dd, ping = first
    for stale_after, rate_stands in ((60.0, True), (0.0, False)):
        harness = Harness(metadata.url, timeout=5.0, stale_after=stale_after)
        for stats in (first, second, dict(second, **{dd: third[dd]})):  # apmtest-ping's sample stays
            metadata.serve(task, stats)
            assert await harness.source.poll_once()
        got = by_series(harness.recorder.last("ecs").samples)
        assert got["ecs.container.cpu.usage_vcpus", "dd-agent"] == pytest.approx(0.1)
        assert (("ecs.container.cpu.usage_vcpus", "apmtest-ping") in got) is rate_stands
        assert (("ecs.task.cpu.usage_vcpus", None) in got) is rate_stands
        assert got["ecs.container.memory.working_set_bytes", "apmtest-ping"] > 0  # a gauge: the last known
        metadata.serve(task, {dd: advance(third[dd], 10 * 10**9, 10**9), ping: third[ping]})
        assert await harness.source.poll_once()
        assert by_series(harness.recorder.last("ecs").samples)["ecs.task.cpu.usage_vcpus", None] == pytest.approx(0.2)
        await harness.source.aclose()


def with_rate(stats: dict[str, Any], rx_per_second: float) -> dict[str, Any]:
    return {k: dict(v, network_rate_stats={"rx_bytes_per_sec": rx_per_second, "tx_bytes_per_sec": 0.0})
            for k, v in stats.items()}


# capture -> the task's receive rate once one container's sample froze (its last rate 5,000,000 B/s, the
# other's now 100 B/s): while that sample may still be refreshed (stale_after 60 s), and once stale (0 s)
FROZEN_RATE = {"fargate-2023": (5_000_000.0, 100.0),  # shared: the largest copy; then the fresh one's alone
               "ec2-bridge-2020": (5_000_100.0, None)}  # its own interfaces: the sum; then a gap


@pytest.mark.parametrize("capture", sorted(FROZEN_RATE))
async def test_a_network_rate_from_a_sample_that_stopped_changing_is_not_published(
        capture: str, metadata: MetadataServer) -> None:
    """The agent's `network_rate_stats` of a sample that stopped changing is an old rate too. Shared
    interfaces (awsvpc): the other containers' copies give the rate; a container's own (bridge): the
    task's rate is a gap, never the sum of the others."""
    task = load(f"{capture}.task")
    first = {k: v for k, v in load(f"{capture}.stats").items() if v}
    second = with_rate({k: advance(v, 10 * 10**9, 10**9) for k, v in first.items()}, 5_000_000.0)
    fresh = next(iter(second))
    third = dict(second, **with_rate({fresh: advance(second[fresh], 10 * 10**9, 10**9)}, 100.0))
    for stale_after, expected in zip((60.0, 0.0), FROZEN_RATE[capture]):
        harness = Harness(metadata.url, timeout=5.0, stale_after=stale_after)
        for stats in (first, second, third):
            metadata.serve(task, stats)
            assert await harness.source.poll_once()
        got = by_series(harness.recorder.last("ecs").samples)
        assert got.get(("ecs.task.network.receive_bytes_per_second", None)) == expected, stale_after
        await harness.source.aclose()


async def test_the_reviewers_stopped_container(metadata: MetadataServer) -> None:
    """fargate-2023, apmtest-ping STOPPED with its last sample still served, five polls: the task is
    dd-agent alone (0.1 vCPU, working set 156,966,912), apmtest-ping has its state only."""
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    dd, ping = stats
    harness = Harness(metadata.url, timeout=5.0)
    stats = {k: advance(v, 10 * 10**9, 10**9) for k, v in stats.items()}
    metadata.serve(task, stats)
    assert await harness.source.poll_once()
    task["Containers"][1].update(KnownStatus="STOPPED", DesiredStatus="STOPPED", ExitCode=0)
    for _ in range(5):
        stats = {dd: advance(stats[dd], 10 * 10**9, 10**9), ping: stats[ping]}
        metadata.serve(task, stats)
        assert await harness.source.poll_once()
    got = harness.scrape()
    assert got["ecs_task_cpu_usage_vcpus", None] == pytest.approx(0.1)
    assert got["ecs_task_memory_working_set_bytes", None] == 156_966_912
    assert got["ecs_container_running", "apmtest-ping"] == 0
    sent = by_series(harness.recorder.last("ecs").samples)
    assert not [name for name, who in sent if who == "apmtest-ping" and name.startswith(USAGE_SERIES)]
    await harness.source.aclose()


# --- memory limits that cannot be real -----------------------------------------------------------

MEMORY_PAIRS = STATUS_PAIRS + [("fargate-v2-2017.task", "fargate-windows.stats"),
                               ("fargate-2021.task", "fargate-2021.stats")]
LIMIT_MIB = st.one_of(st.none(), st.integers(0, 1 << 20), st.sampled_from([1, 1e308, 2**62 // MIB, 2**64, 1e-300]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=st.sampled_from(MEMORY_PAIRS), task_mib=LIMIT_MIB, container_mibs=st.lists(LIMIT_MIB, min_size=3, max_size=3),
       usage=st.sampled_from([None, 1e308, 2**63]))
def test_a_memory_utilization_only_against_a_limit_that_can_be_real(
        pair: tuple[str, str], task_mib: float | None, container_mibs: list[float | None], usage: float | None) -> None:
    """Whatever `Limits.Memory` the task and its containers claim (none, 0, 1 MiB under the usage, 1e308
    MiB, the sentinels) and whatever usage the stats claim: a utilization goes out only beside the limit
    it is of, that limit is finite, below the "unlimited" sentinels and not below the usage, so the
    utilization is at most 100 %."""
    task, stats = load(pair[0]), load(pair[1])
    task["Limits"] = {k: v for k, v in dict(task.get("Limits") or {}, Memory=task_mib).items() if v is not None}
    for container, mib in zip(task["Containers"], container_mibs):
        container["Limits"] = {k: v for k, v in dict(container.get("Limits") or {}, Memory=mib).items() if v is not None}
    if usage is not None:
        first = next(k for k, v in stats.items() if v)
        stats[first]["memory_stats"]["usage"] = usage

    got = by_series(asyncio.run(polls(task, stats))[0])

    for (name, who), value in got.items():
        if name.endswith("memory.utilization_percent"):
            limit = got[name.replace("utilization_percent", "limit_bytes"), who]
            assert 0 <= value <= 100, (who, value, limit)
        if name.endswith("memory.limit_bytes"):
            assert 0 < value < 2**62, (who, value)
            used = got.get((name.replace("limit_bytes", "usage_bytes"), who))
            assert used is None or value >= used, (who, value, used)


async def test_the_reviewers_memory_limits(metadata: MetadataServer) -> None:
    """fargate-2023: a task of 1e308 MiB has no limit and no utilization (0.0 % before); dd-agent limited
    to 1 MiB under a 157 MB working set takes the task's 3 GiB instead (14,969 % before)."""
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    task["Limits"]["Memory"] = 1e308
    got = by_series((await _poll(metadata, task, stats)))
    assert not [k for k in got if "memory.limit" in k[0] or "memory.utilization" in k[0]]
    task = load("fargate-2023.task")
    task["Containers"][0]["Limits"]["Memory"] = 1
    got = by_series((await _poll(metadata, task, stats)))
    assert got["ecs.container.memory.limit_bytes", "dd-agent"] == 3072 * 1024 * 1024
    assert got["ecs.container.memory.utilization_percent", "dd-agent"] == pytest.approx(156_966_912 / 3072 / 1024 / 1024 * 100)


async def _poll(metadata: MetadataServer, task: Any, stats: Any) -> list[Sample]:
    harness = Harness(metadata.url, timeout=5.0)
    metadata.serve(task, stats)
    assert await harness.source.poll_once()
    await harness.source.aclose()
    return harness.recorder.last("ecs").samples
