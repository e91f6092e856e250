"""The pure derivations, checked against numbers worked out by hand from each capture.

The arithmetic is written out (fixture values copied from the files) so that each expected value
can be checked by reading the JSON.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from tests.sources.ecs_helpers import load, managed_instances_task
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.model import Kind, Sample
from agent.sources.ecs_stats import derive, parse_time_ns, unusable_parts, working_set_bytes
from agent.sources.localstats import format_time_ns

MIB = 1024 * 1024


def values(samples: list[Sample]) -> dict[tuple[str, str | None], float]:
    """(name, container_name or None for task series) -> value; fails on a duplicate series."""
    out: dict[tuple[str, str | None], float] = {}
    for s in samples:
        key = (s.name, dict(s.tags).get("container_name"))
        assert key not in out, f"duplicate series {key}"
        out[key] = s.value  # type: ignore[assignment]
    return out


def pair(task: str, stats: str, previous: dict[str, Any] | None = None):
    return derive(load(task + ".task"), load(stats + ".stats"), previous)


def containers(samples: list[Sample]) -> set[str]:
    return {dict(s.tags)["container_name"] for s in samples if s.name.startswith("ecs.container.")}


# --- the spec's worked numbers ------------------------------------------------------------------


def test_fargate_2023_worked_numbers() -> None:
    d = pair("fargate-2023", "fargate-2023")
    v = values(d.samples)
    assert d.errors == []
    # dd-agent: cpu delta 4817594472 - 4731035320 = 86,559,152 ns over 01:19:45.077342978 - 01:19:35.076984286
    assert 4817594472 - 4731035320 == 86_559_152
    dd_vcpus = 86_559_152 / 10_000_358_692
    assert v["ecs.container.cpu.usage_vcpus", "dd-agent"] == pytest.approx(dd_vcpus, rel=1e-12)
    assert round(v["ecs.container.cpu.usage_vcpus", "dd-agent"], 5) == 0.00866
    # apmtest-ping: 977249587 - 970577025 = 6,672,562 ns over 44.895193503 - 34.895391778 = 9.999801725 s
    ping_vcpus = 6_672_562 / 9_999_801_725
    assert v["ecs.container.cpu.usage_vcpus", "apmtest-ping"] == pytest.approx(ping_vcpus, rel=1e-12)
    assert round(v["ecs.container.cpu.usage_vcpus", "apmtest-ping"], 5) == 0.00067
    # container Limits.CPU is 2 (unset on Fargate): utilization is of the task's 1 vCPU
    assert v["ecs.container.cpu.utilization_percent", "dd-agent"] == pytest.approx(dd_vcpus * 100)
    # memory: usage 160,886,784; working set = usage - total_inactive_file (3,919,872), not usage - cache
    assert v["ecs.container.memory.usage_bytes", "dd-agent"] == 160_886_784
    assert v["ecs.container.memory.working_set_bytes", "dd-agent"] == 156_966_912
    assert 160_886_784 - 5_136_384 == 155_750_400  # usage - cache: the other, rejected answer
    assert v["ecs.container.memory.usage_bytes", "apmtest-ping"] == 34_865_152
    assert v["ecs.container.memory.working_set_bytes", "apmtest-ping"] == 34_865_152  # inactive file 0
    # the capture's limits (922337, 92233) are below the usage: not real; the task's 3072 MiB applies
    assert v["ecs.container.memory.limit_bytes", "dd-agent"] == 3072 * MIB
    assert v["ecs.container.memory.utilization_percent", "dd-agent"] == pytest.approx(156_966_912 / (3072 * MIB) * 100)
    assert v["ecs.container.memory.rss_bytes", "dd-agent"] == 147_873_792
    assert v["ecs.container.memory.cache_bytes", "dd-agent"] == 5_136_384
    # blkio: Read/Write entries of both devices; Sync/Async/Discard/Total ignored
    assert v["ecs.container.io.read_bytes_total", "dd-agent"] == 0 + 143_360
    assert v["ecs.container.io.write_bytes_total", "dd-agent"] == 57_344 + 0
    assert v["ecs.container.io.read_ops_total", "dd-agent"] == 0 + 2
    assert v["ecs.container.io.write_ops_total", "dd-agent"] == 14 + 0
    assert v["ecs.container.io.read_bytes_total", "apmtest-ping"] == 0  # empty arrays
    assert ("ecs.container.pids", "dd-agent") not in v  # pids_stats {} on Fargate
    assert v["ecs.container.running", "dd-agent"] == 1
    # uptime = read 01:19:45.077342978 - StartedAt 01:13:35.073930071
    assert v["ecs.container.uptime_seconds", "dd-agent"] == pytest.approx(370.003412907)

    # task: sums over containers; limits from the task (1 vCPU, 3072 MiB)
    assert v["ecs.task.cpu.usage_vcpus", None] == pytest.approx(dd_vcpus + ping_vcpus)
    assert v["ecs.task.cpu.limit_vcpus", None] == 1
    assert v["ecs.task.cpu.utilization_percent", None] == pytest.approx((dd_vcpus + ping_vcpus) * 100)
    assert v["ecs.task.memory.working_set_bytes", None] == 156_966_912 + 34_865_152
    assert v["ecs.task.memory.limit_bytes", None] == 3072 * MIB
    assert v["ecs.task.memory.utilization_percent", None] == pytest.approx(191_832_064 / (3072 * MIB) * 100)
    # awsvpc: both containers report eth1; one copy (the newer, dd-agent's), not 781187362 + 781186753
    assert v["ecs.task.network.receive_bytes_total", None] == 781_187_362
    assert v["ecs.task.network.transmit_bytes_total", None] == 971_750
    assert v["ecs.task.network.receive_packets_total", None] == 527_514
    assert v["ecs.task.network.receive_bytes_per_second", None] == 1911.331442643617
    assert v["ecs.task.network.transmit_bytes_per_second", None] == 2390.9142405361977
    # EphemeralStorageMetrics in MiB
    assert v["ecs.task.ephemeral_storage.used_bytes", None] == 2925 * MIB
    assert v["ecs.task.ephemeral_storage.reserved_bytes", None] == 21499 * MIB


def test_ec2_awsvpc_cgroupv2_pause_only() -> None:
    d = pair("ec2-awsvpc-2023-cgroupv2", "ec2-awsvpc-2023-cgroupv2")
    v = values(d.samples)
    assert d.errors == []
    # the pause container is not a workload: no per-container series at all
    assert containers(d.samples) == set()
    # but it is part of the task: cpu delta 0 over 32.690109934 - 31.642796089 = 1.047 s -> 0 vCPU
    assert v["ecs.task.cpu.usage_vcpus", None] == 0.0
    assert v["ecs.task.cpu.limit_vcpus", None] == 0.5
    # cgroup v2: working set = usage 303,104 - inactive_file 0
    assert v["ecs.task.memory.working_set_bytes", None] == 303_104
    assert v["ecs.task.memory.limit_bytes", None] == 1024 * MIB
    assert v["ecs.task.network.receive_bytes_total", None] == 14
    assert v["ecs.task.network.transmit_bytes_total", None] == 21
    assert ("ecs.task.network.receive_bytes_per_second", None) not in v  # no rate stats, one poll
    stats = load("ec2-awsvpc-2023-cgroupv2.stats")
    (entry,) = stats.values()
    assert working_set_bytes(entry["memory_stats"]) == 303_104


# --- every other capture ------------------------------------------------------------------------


def test_ec2_bridge_2020_cgroup_v1_bridge_network_and_stopped_container() -> None:
    d = pair("ec2-bridge-2020", "ec2-bridge-2020")
    v = values(d.samples)
    assert d.errors == []  # nginx200 is STOPPED: `{}` stats are expected, not an error
    assert containers(d.samples) == {"nginx100", "nginx300", "nginx200"}
    # zero CPU delta: 0 vCPU, emitted (read - preread > 0)
    assert v["ecs.container.cpu.usage_vcpus", "nginx100"] == 0.0
    assert v["ecs.container.cpu.utilization_percent", "nginx100"] == 0.0
    # cgroup v1: usage - total_inactive_file
    assert v["ecs.container.memory.working_set_bytes", "nginx100"] == 2_568_192 - 12_288
    assert v["ecs.container.memory.working_set_bytes", "nginx300"] == 2_658_304 - 12_288
    assert v["ecs.container.memory.limit_bytes", "nginx300"] == 134_217_728
    assert v["ecs.container.memory.utilization_percent", "nginx300"] == pytest.approx(2_646_016 / 134_217_728 * 100)
    assert v["ecs.container.pids", "nginx100"] == 2
    # capitalised blkio ops (cgroup v1)
    assert v["ecs.container.io.read_bytes_total", "nginx300"] == 3_452_928
    assert v["ecs.container.io.write_bytes_total", "nginx300"] == 0
    assert ("ecs.container.io.read_ops_total", "nginx300") not in v  # io_serviced_recursive []
    # the stopped container: state only
    assert v["ecs.container.running", "nginx200"] == 0
    assert v["ecs.container.exit_code", "nginx200"] == 3
    assert not [k for k in v if k[1] == "nginx200" and k[0] not in ("ecs.container.running", "ecs.container.exit_code")]
    assert ("ecs.container.exit_code", "nginx100") not in v
    # bridge mode: each container has its own namespace, so the interfaces add up
    assert v["ecs.task.network.receive_bytes_total", None] == 2156 + 100 + 2066
    assert v["ecs.task.network.receive_packets_total", None] == 28 + 100 + 27
    assert v["ecs.task.network.receive_bytes_per_second", None] == pytest.approx(101.091 + 10)
    assert v["ecs.task.network.transmit_bytes_per_second", None] == pytest.approx(55.322 + 55)
    # no task Limits on EC2: CPU bound by the online CPUs (nginx300 has no reservation); memory has
    # no task limit, only what the running containers reserved (128 MiB each), under its own name
    assert v["ecs.task.cpu.limit_vcpus", None] == 2
    assert v["ecs.task.memory.reservation_bytes", None] == 2 * 128 * MIB
    assert ("ecs.task.memory.limit_bytes", None) not in v
    assert ("ecs.task.memory.utilization_percent", None) not in v
    assert v["ecs.task.memory.working_set_bytes", None] == 2_555_904 + 2_646_016
    assert ("ecs.task.ephemeral_storage.used_bytes", None) not in v


def test_ec2_bridge_cpu_allocation_from_container_units() -> None:
    task, stats = load("ec2-bridge-2020.task"), load("ec2-bridge-2020.stats")
    nginx100 = "5302b3fac16c62951717f444030cb1b8f233f40c03fe5507fc127ca1a70597da"
    stats[nginx100]["cpu_stats"]["cpu_usage"]["total_usage"] += 50_000_000  # over 1.002126667 s
    v = values(derive(task, stats).samples)
    vcpus = 50_000_000 / 1_002_126_667
    assert v["ecs.container.cpu.usage_vcpus", "nginx100"] == pytest.approx(vcpus)
    # Limits.CPU 100 units = 100/1024 vCPU
    assert v["ecs.container.cpu.utilization_percent", "nginx100"] == pytest.approx(vcpus / (100 / 1024) * 100)


def test_fargate_2021_sentinel_limit_and_stopped_container() -> None:
    d = pair("fargate-2021", "fargate-2021")
    v = values(d.samples)
    assert d.errors == []
    # limit 9223372036854771712 is "unlimited": the task's 512 MiB applies
    assert v["ecs.container.memory.limit_bytes", "essential"] == 512 * MIB
    assert v["ecs.container.memory.working_set_bytes", "essential"] == 974_848 - 0
    assert v["ecs.container.memory.utilization_percent", "essential"] == pytest.approx(974_848 / (512 * MIB) * 100)
    assert ("ecs.container.pids", "essential") not in v
    assert v["ecs.container.cpu.usage_vcpus", "essential"] == 0.0
    assert v["ecs.container.running", "non"] == 0
    assert v["ecs.container.exit_code", "non"] == 42
    assert v["ecs.task.cpu.limit_vcpus", None] == 0.25
    assert v["ecs.task.network.receive_bytes_total", None] == 64_794_122
    assert v["ecs.task.network.transmit_bytes_per_second", None] == 6.998895157210041
    assert v["ecs.task.network.receive_bytes_per_second", None] == 0


def test_fargate_v2_2017_pause_container_missing_values_and_old_network_key() -> None:
    d = pair("fargate-v2-2017", "fargate-v2-2017-wrong-system-delta")
    v = values(d.samples)
    assert d.errors == []
    assert containers(d.samples) == {"dd-agent", "redis"}  # not ~internal~ecs~pause
    # CPU without system_cpu_usage: 371201388381 - 371199948667 over 38.512541896 - 37.512194702
    dd = (371_201_388_381 - 371_199_948_667) / 1_000_347_194
    assert v["ecs.container.cpu.usage_vcpus", "dd-agent"] == pytest.approx(dd)
    assert v["ecs.container.cpu.utilization_percent", "dd-agent"] == pytest.approx(dd / (100 / 1024) * 100)
    redis = (34_722_128_652 - 34_721_570_779) / 1_000_116_822
    pause = 1 / 999_973_547
    assert v["ecs.task.cpu.usage_vcpus", None] == pytest.approx(dd + redis + pause)
    assert v["ecs.task.cpu.limit_vcpus", None] == 2
    # blkio entries without `value` are skipped; the disk (202:26368) and the two device-mapper
    # devices stacked on it (253:1, 253:2) carry the same I/O: counted once, plus the fourth device
    assert v["ecs.container.io.read_bytes_total", "dd-agent"] == 5_578_752 + 95_875_072
    assert v["ecs.container.io.write_bytes_total", "dd-agent"] == 45_666_304 + 46_002_176
    assert v["ecs.container.io.read_bytes_total", "redis"] == 389_120 + 6_496_256
    assert v["ecs.container.io.write_bytes_total", "redis"] == 0
    assert v["ecs.container.memory.working_set_bytes", "dd-agent"] == 253_894_656 - 22_790_144
    # the task's working set includes the pause container (1110016 - 786432)
    assert v["ecs.task.memory.working_set_bytes", None] == (253_894_656 - 22_790_144) + (7_901_184 - 4_059_136) + (
        1_110_016 - 786_432)
    assert v["ecs.task.memory.limit_bytes", None] == 4096 * MIB
    # dd-agent has `"network": {}`; the pause container holds eth0/eth5, redis eth1
    assert v["ecs.task.network.receive_bytes_total", None] == 5338 + 4641 + 268_836_870
    assert v["ecs.task.network.transmit_bytes_total", None] == 648 + 690 + 455_081


def test_windows_stats() -> None:
    # the Windows capture's key is the DockerId of dd-agent in the v2 task
    d = pair("fargate-v2-2017", "fargate-windows")
    v = values(d.samples)
    # redis is RUNNING but has no stats in this map
    assert d.errors == ["no_stats"]
    vcpus = (17_031_250_000 - 15_828_125_000) / 9_953_053_100  # 20.5933849 - 10.6403318 s, 7 digits
    assert v["ecs.container.cpu.usage_vcpus", "dd-agent"] == pytest.approx(vcpus)
    assert v["ecs.container.memory.working_set_bytes", "dd-agent"] == 140_673_024  # privateworkingset
    assert v["ecs.container.memory.usage_bytes", "dd-agent"] == 210_485_248
    assert v["ecs.container.memory.limit_bytes", "dd-agent"] == 256 * MIB  # no stats limit
    # blkio fields are the string "None"; I/O comes from storage_stats
    assert v["ecs.container.io.read_bytes_total", "dd-agent"] == 248_714_240
    assert v["ecs.container.io.write_bytes_total", "dd-agent"] == 5_464_064
    assert v["ecs.container.io.read_ops_total", "dd-agent"] == 31_932
    assert v["ecs.container.io.write_ops_total", "dd-agent"] == 774
    assert v["ecs.task.network.receive_bytes_total", None] == 1_220_430_883  # "Ethernet 3"
    assert v["ecs.container.running", "redis"] == 1
    assert ("ecs.container.cpu.usage_vcpus", "redis") not in v


def test_managed_instances_cgroupv2_lowercase_blkio_and_shared_eth0() -> None:
    task = managed_instances_task()
    d = derive(task, load("managed-instances-2025-cgroupv2.stats"))
    v = values(d.samples)
    assert d.errors == []
    app, agent = "managed-instances-app", "datadog-agent"
    assert v["ecs.container.cpu.usage_vcpus", app] == pytest.approx((181_104_000 - 180_323_000) / 10_000_004_600)
    assert v["ecs.container.cpu.usage_vcpus", agent] == pytest.approx((4_000_614_000 - 3_946_429_000) / 10_000_589_074)
    # cgroup v2: usage - inactive_file
    assert v["ecs.container.memory.working_set_bytes", app] == 42_827_776 - 6_082_560
    assert v["ecs.container.memory.working_set_bytes", agent] == 398_942_208 - 149_512_192
    assert v["ecs.container.memory.anon_bytes", agent] == 149_770_240
    assert v["ecs.container.memory.file_bytes", agent] == 241_483_776
    assert ("ecs.container.memory.rss_bytes", agent) not in v
    # limit 18446744073709551615 is unlimited; the containers have no Memory: task 2048 MiB
    assert v["ecs.container.memory.limit_bytes", agent] == 2048 * MIB
    # lowercase `read`/`write` ops (exact-case matching would read 0 here)
    # 252:0 (device-mapper) repeats 259:0 under it: counted once
    assert v["ecs.container.io.read_bytes_total", app] == 1_875_968 + 7_593_984
    assert v["ecs.container.io.write_bytes_total", app] == 28_672
    assert v["ecs.container.io.read_bytes_total", agent] == 201_654_272 + 11_943_936
    assert v["ecs.container.io.write_bytes_total", agent] == 7_258_112
    assert ("ecs.container.io.read_ops_total", agent) not in v  # io_serviced_recursive null
    # both containers repeat the same eth0: counted once
    assert v["ecs.task.network.receive_bytes_total", None] == 163_710_528
    assert v["ecs.task.network.transmit_bytes_total", None] == 1_103_607


def test_managed_instances_without_networks() -> None:
    d = derive(managed_instances_task(), load("managed-instances-2025-no-networks.stats"))
    v = values(d.samples)
    assert d.errors == []
    assert not [k for k in v if "network" in k[0]]
    assert v["ecs.container.memory.working_set_bytes", "datadog-agent"] == 398_942_208 - 149_512_192


def test_task_with_tags_missing_and_extra_stats_entries() -> None:
    # task-with-tags' containers under the managed-instances stats' task id: datadog-agent's
    # DockerId matches, log_router has no entry, managed-instances-app is not in /task
    task = load("task-with-tags.task")
    for c in task["Containers"]:
        c["DockerId"] = c["DockerId"].replace("938f6d263c464aa5985dc67ab7f38a7e", "2207f63945be40abb2d7bca5a2661cfd")
    d = derive(task, load("managed-instances-2025-cgroupv2.stats"))
    v = values(d.samples)
    assert d.errors == ["no_stats"]  # log_router, running, no stats
    assert containers(d.samples) == {"log_router", "datadog-agent"}
    assert v["ecs.container.running", "log_router"] == 1
    assert ("ecs.container.cpu.usage_vcpus", "log_router") not in v
    # a running container without stats: the task's total is a gap, not datadog-agent's alone (the
    # extra key is not this task's, and counts for nothing)
    assert ("ecs.task.memory.working_set_bytes", None) not in v
    del task["Containers"][[c["Name"] for c in task["Containers"]].index("log_router")]
    assert values(derive(task, load("managed-instances-2025-cgroupv2.stats")).samples)[
        "ecs.task.memory.working_set_bytes", None] == 398_942_208 - 149_512_192
    assert v["ecs.task.ephemeral_storage.used_bytes", None] == 2298 * MIB
    assert v["ecs.task.ephemeral_storage.reserved_bytes", None] == 20496 * MIB
    image = {dict(s.tags)["container_name"]: dict(s.tags) for s in d.samples if s.name == "ecs.container.running"}
    assert image["datadog-agent"]["image"] == "public.ecr.aws/datadog/agent"
    assert image["datadog-agent"]["image_tag"] == "latest"


def test_health_and_restarts() -> None:
    task = load("task-with-tags.task")
    task["Containers"][0].update(RestartCount=3, Health={"status": "UNHEALTHY"})
    v = values(derive(task, {}).samples)
    assert v["ecs.container.healthy", "datadog-agent"] == 1  # "HEALTHY" in the capture
    assert v["ecs.container.healthy", "log_router"] == 0
    assert v["ecs.container.restart_count", "log_router"] == 3
    assert ("ecs.container.restart_count", "datadog-agent") not in v  # no restart policy, no count
    task["Containers"][1]["Health"] = {"status": "UNKNOWN"}
    assert ("ecs.container.healthy", "datadog-agent") not in values(derive(task, {}).samples)


# --- rates over two polls -----------------------------------------------------------------------


def _later(stats: dict[str, Any], seconds: int, cpu_ns: int, rx: int, tx: int) -> dict[str, Any]:
    """The same capture `seconds` later, with more CPU time and traffic."""
    out = copy.deepcopy(stats)
    for entry in out.values():
        if not entry:
            continue
        for key in ("read", "preread"):
            entry[key] = format_time_ns(parse_time_ns(entry[key]) + seconds * 10**9)
        entry["precpu_stats"] = copy.deepcopy(entry["cpu_stats"])
        entry["cpu_stats"]["cpu_usage"]["total_usage"] += cpu_ns
        for counters in (entry.get("networks") or {}).values():
            counters["rx_bytes"] += rx
            counters["tx_bytes"] += tx
    return out


def test_two_polls_rates_use_our_own_previous_sample() -> None:
    task = managed_instances_task()
    first = load("managed-instances-2025-cgroupv2.stats")
    second = _later(first, 40, cpu_ns=2_000_000_000, rx=80_000, tx=4_000)
    # simulate an agent that refreshed precpu 1 s before: our own 40 s delta must win
    for entry in second.values():
        entry["precpu_stats"]["cpu_usage"]["total_usage"] = entry["cpu_stats"]["cpu_usage"]["total_usage"] - 999
    v = values(derive(task, second, first).samples)
    assert v["ecs.container.cpu.usage_vcpus", "datadog-agent"] == pytest.approx(2_000_000_000 / 40e9)
    assert v["ecs.container.cpu.usage_vcpus", "managed-instances-app"] == pytest.approx(0.05)
    assert v["ecs.task.cpu.usage_vcpus", None] == pytest.approx(0.1)
    assert v["ecs.task.cpu.utilization_percent", None] == pytest.approx(0.1 / 1 * 100)
    # network: no network_rate_stats, so the counter delta over the read difference; eth0 once
    assert v["ecs.task.network.receive_bytes_per_second", None] == pytest.approx(80_000 / 40)
    assert v["ecs.task.network.transmit_bytes_per_second", None] == pytest.approx(4_000 / 40)
    assert v["ecs.task.network.receive_bytes_total", None] == 163_710_528 + 80_000


def test_same_read_twice_falls_back_to_precpu() -> None:
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    v = values(derive(task, stats, copy.deepcopy(stats)).samples)
    assert v["ecs.container.cpu.usage_vcpus", "dd-agent"] == pytest.approx(86_559_152 / 10_000_358_692)


def test_restart_negative_delta_and_no_precpu_give_no_cpu() -> None:
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    dd, ping = list(stats)
    stats[dd]["precpu_stats"]["cpu_usage"]["total_usage"] = 10**12  # counter went backwards
    stats[ping]["precpu_stats"] = {}  # first sample after a start
    stats[ping]["preread"] = "0001-01-01T00:00:00Z"
    d = derive(task, stats)
    v = values(d.samples)
    assert ("ecs.container.cpu.usage_vcpus", "dd-agent") not in v
    assert ("ecs.container.cpu.usage_vcpus", "apmtest-ping") not in v
    assert ("ecs.task.cpu.usage_vcpus", None) not in v
    assert v["ecs.task.cpu.limit_vcpus", None] == 1  # still known
    assert v["ecs.container.memory.working_set_bytes", "dd-agent"] == 156_966_912


def test_a_cpu_counter_that_jumped_gives_no_rate() -> None:
    """More CPU time than the host's online CPUs have in the interval is not usage: the counter jumped
    (a garbled value, or a restart that came back higher). No rate from that pair, as for a restart."""
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    task["Limits"]["CPU"] = 2  # a task as large as its host (Fargate caps a task at its size)
    dd, ping = list(stats)
    stats[dd]["cpu_stats"]["cpu_usage"]["total_usage"] += 2**50  # 112,590 vCPUs over 10 s, on 2 CPUs
    before = copy.deepcopy(stats)
    stats[ping]["cpu_stats"]["cpu_usage"]["total_usage"] += 2 * 10_000_000_000  # both CPUs busy for 10 s
    stats[ping]["read"] = format_time_ns(parse_time_ns(stats[ping]["read"]) + 10_000_000_000)
    v = values(derive(task, stats, before).samples)
    assert ("ecs.container.cpu.usage_vcpus", "dd-agent") not in v
    assert v["ecs.container.cpu.usage_vcpus", "apmtest-ping"] == pytest.approx(2.0)  # the host's whole


def test_read_not_after_preread_gives_no_cpu() -> None:
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    for entry in stats.values():
        entry["preread"] = entry["read"]
    v = values(derive(task, stats).samples)
    assert not [k for k in v if "cpu.usage" in k[0] or "cpu.utilization" in k[0]]


# --- odd shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", [None, {}, "oops", 42, []])
def test_container_stats_null_empty_or_junk(entry: Any) -> None:
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    dd = next(iter(stats))
    stats[dd] = entry
    d = derive(task, stats)
    v = values(d.samples)
    expected = "bad_stats" if entry not in (None, {}) else "no_stats"
    assert d.errors == [expected]
    assert v["ecs.container.running", "dd-agent"] == 1
    assert ("ecs.container.memory.usage_bytes", "dd-agent") not in v
    # the other container is untouched; the task's total is a gap, not the other container's alone
    assert v["ecs.container.memory.working_set_bytes", "apmtest-ping"] == 34_865_152
    assert ("ecs.task.memory.working_set_bytes", None) not in v


def test_one_bad_container_entry_does_not_hide_the_others() -> None:
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    task["Containers"].insert(0, "not a container")
    task["Containers"].insert(1, {"Name": "no-docker-id"})
    dd = next(iter(stats))
    stats[dd]["cpu_stats"] = "garbage"
    stats[dd]["memory_stats"] = [1, 2]
    stats[dd]["blkio_stats"] = {"io_service_bytes_recursive": [None, {"op": 7, "value": "x"}, {"op": "READ", "value": 5}]}
    stats[dd]["networks"] = {"eth1": "nope"}
    d = derive(task, stats)
    v = values(d.samples)
    assert d.errors == ["bad_container", "bad_container", "bad_stats"]  # dd-agent's CPU, memory, network
    assert v["ecs.container.running", "dd-agent"] == 1
    assert v["ecs.container.io.read_bytes_total", "dd-agent"] == 5
    assert ("ecs.container.cpu.usage_vcpus", "dd-agent") not in v
    assert v["ecs.container.cpu.usage_vcpus", "apmtest-ping"] == pytest.approx(6_672_562 / 9_999_801_725)
    assert v["ecs.task.network.receive_bytes_total", None] == 781_186_753  # apmtest-ping's copy only


@pytest.mark.parametrize("limit", [18446744073709551615, 9223372036854771712, 2**62, 0, None, "None"])
def test_memory_limit_sentinels_fall_back_to_the_task_definition(limit: Any) -> None:
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    task["Containers"][0]["Limits"]["Memory"] = 1024
    for entry in stats.values():
        entry["memory_stats"]["limit"] = limit
    v = values(derive(task, stats).samples)
    assert v["ecs.container.memory.limit_bytes", "dd-agent"] == 1024 * MIB  # the container's own
    assert v["ecs.container.memory.limit_bytes", "apmtest-ping"] == 3072 * MIB  # the task's


def test_real_stats_limit_is_used() -> None:
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    for entry in stats.values():
        entry["memory_stats"]["limit"] = 512 * MIB
    v = values(derive(task, stats).samples)
    assert v["ecs.container.memory.limit_bytes", "dd-agent"] == 512 * MIB
    assert v["ecs.container.memory.utilization_percent", "dd-agent"] == pytest.approx(156_966_912 / (512 * MIB) * 100)


@pytest.mark.parametrize("mib", [1e308, 1e-320])
def test_absurd_limits_never_export_infinity(mib: float) -> None:
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    task["Limits"]["Memory"] = mib
    task["Limits"]["CPU"] = 1e-320
    v = values(derive(task, stats).samples)
    assert all(math.isfinite(x) for x in v.values())
    assert v["ecs.task.memory.working_set_bytes", None] == 191_832_064
    assert ("ecs.task.cpu.utilization_percent", None) not in v  # 0.0093 / 1e-320 overflows


@pytest.mark.parametrize(("document", "path"), [("stats", ("memory_stats", "usage")),
                                                  ("task", ("Limits", "CPU")), ("task", ("Limits", "Memory"))])
def test_an_integer_past_the_float_range_is_left_out_alone(document: str, path: tuple[str, ...]) -> None:
    """JSON integers have no size limit; one that no float can hold is garbage in that one field: it
    must not cost the container's (or every container's) other series."""
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    target = next(iter(stats.values())) if document == "stats" else task
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = 10**400
    d = derive(task, stats)
    v = values(d.samples)
    assert d.errors == []
    assert v["ecs.container.running", "dd-agent"] == 1
    assert v["ecs.container.cpu.usage_vcpus", "apmtest-ping"] == pytest.approx(6_672_562 / 9_999_801_725)
    assert v["ecs.task.network.receive_bytes_total", None] == 781_187_362


@pytest.mark.parametrize(("document", "path", "series"), [
    ("stats", ("memory_stats", "usage"), "ecs.container.memory.usage_bytes"),
    ("stats", ("memory_stats", "stats", "rss"), "ecs.container.memory.rss_bytes"),
    ("stats", ("pids_stats", "current"), "ecs.container.pids"),
    ("stats", ("blkio_stats", "io_service_bytes_recursive", 0, "value"), "ecs.container.io.read_bytes_total"),
    ("stats", ("networks", "eth1", "rx_bytes"), "ecs.task.network.receive_bytes_total"),
    ("stats", ("network_rate_stats", "rx_bytes_per_sec"), "ecs.task.network.receive_bytes_per_second"),
    ("task", ("Containers", 0, "RestartCount"), "ecs.container.restart_count"),
    ("task", ("EphemeralStorageMetrics", "Utilized"), "ecs.task.ephemeral_storage.used_bytes"),
])
def test_a_negative_amount_is_left_out(document: str, path: tuple[Any, ...], series: str) -> None:
    """Bytes, counts and rates cannot be below 0: a negative one is junk, not a number to export."""
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    for entry in stats.values():
        entry["network_rate_stats"] = {"rx_bytes_per_sec": 10.0}
    target = next(iter(stats.values())) if document == "stats" else task
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = -4096
    got = [s.value for s in derive(task, stats).samples if s.name == series]
    assert all(value >= 0 for value in got), got


@pytest.mark.parametrize("bad", ["57344", 10**400, float("inf"), -1, None, {}, [8], True],
                         ids=["string", "10**400", "inf", "negative", "null", "object", "list", "true"])
@pytest.mark.parametrize("which", ["one", "all"])
def test_an_unusable_blkio_value_makes_the_io_total_a_gap_and_is_counted(bad: Any, which: str) -> None:
    """A block I/O entry for a read or a write whose value is there but is no usable number: the totals
    of its list are a gap that poll (0 would be a counter reset), counted as `bad_stats`; the other list
    (operations) and the container's other series stay."""
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    clean = values(derive(task, stats).samples)
    dd = next(iter(stats))
    entries = stats[dd]["blkio_stats"]["io_service_bytes_recursive"]
    for entry in [e for e in entries if e["op"] == "Write"][:1] if which == "one" else entries:
        entry["value"] = bad
    d = derive(task, stats)
    v = values(d.samples)
    assert d.errors == ["bad_stats"]
    assert ("ecs.container.io.read_bytes_total", "dd-agent") not in v
    assert ("ecs.container.io.write_bytes_total", "dd-agent") not in v
    for name in ("ecs.container.io.read_ops_total", "ecs.container.memory.usage_bytes"):
        assert v[name, "dd-agent"] == clean[name, "dd-agent"]
    assert v["ecs.container.io.read_bytes_total", "apmtest-ping"] == clean["ecs.container.io.read_bytes_total", "apmtest-ping"]


def test_blkio_entries_without_a_value_count_0_and_a_list_of_no_entries_is_a_gap() -> None:
    from agent.sources.ecs_stats import blkio_read_write

    read = {"major": 8, "minor": 0, "op": "Read", "value": 4096}
    assert blkio_read_write([read, {"major": 8, "minor": 0, "op": "Write"}]) == (4096, 0)
    assert blkio_read_write([read, {"major": 8, "minor": 0, "op": "Total", "value": "x"}]) == (4096, 0)  # not an I/O
    assert blkio_read_write([read, None, {"op": 7, "value": "x"}]) == (4096, 0)  # entries that are no entry
    assert blkio_read_write([0]) is None and blkio_read_write([{"major": 8}]) is None
    assert blkio_read_write([]) == blkio_read_write(None) == blkio_read_write("None") == (0, 0)


def test_a_negative_exit_code_is_kept() -> None:
    task, stats = load("ec2-bridge-2020.task"), load("ec2-bridge-2020.stats")
    stopped = next(c for c in task["Containers"] if c["Name"] == "nginx200")
    stopped["ExitCode"] = -1073741510  # Windows: an NTSTATUS read as a signed 32-bit integer
    assert values(derive(task, stats).samples)["ecs.container.exit_code", "nginx200"] == -1073741510


def test_working_set_rules() -> None:
    assert working_set_bytes({"usage": 100, "stats": {"total_inactive_file": 30, "cache": 50}}) == 70
    assert working_set_bytes({"usage": 100, "stats": {"cache": 50, "inactive_file": 10}}) == 50  # v1, no totals
    assert working_set_bytes({"usage": 100, "stats": {"inactive_file": 10, "anon": 1}}) == 90  # v2
    assert working_set_bytes({"usage": 100, "stats": {"inactive_file": 300}}) == 0  # never below 0
    assert working_set_bytes({"usage": 100}) == 100
    assert working_set_bytes({"usage": 100, "privateworkingset": 7}) == 7  # Windows
    assert working_set_bytes({}) is None
    assert working_set_bytes("junk") is None


def test_task_and_stats_of_the_wrong_shape() -> None:
    assert derive([], {}) == ([], ["bad_shape"])
    assert derive("task", None).errors == ["bad_shape"]
    d = derive(load("fargate-2023.task"), ["not", "a", "map"])
    assert d.errors[0] == "bad_shape"
    v = values(d.samples)
    assert v["ecs.container.running", "dd-agent"] == 1
    assert v["ecs.task.cpu.limit_vcpus", None] == 1
    assert derive({"Containers": 5}, {}).errors == []


def test_parse_time_ns() -> None:
    assert parse_time_ns("1970-01-01T00:00:01.000000001Z") == 1_000_000_001
    assert parse_time_ns("2023-06-20T01:19:45.077342978Z") - parse_time_ns("2023-06-20T01:19:35.076984286Z") == 10_000_358_692
    assert parse_time_ns("2021-10-29T10:25:20.5933849Z") % 10**9 == 593_384_900
    assert parse_time_ns("2021-10-29T12:25:20+02:00") == parse_time_ns("2021-10-29T10:25:20Z")
    assert parse_time_ns("0001-01-01T00:00:00Z") is None
    assert parse_time_ns("yesterday") is None
    assert parse_time_ns(None) is None


def test_every_series_has_a_known_kind_and_counters_are_totals() -> None:
    d = derive(managed_instances_task(), load("managed-instances-2025-cgroupv2.stats"))
    for s in d.samples:
        assert s.kind is (Kind.COUNTER if s.name.endswith("_total") else Kind.GAUGE), s.name
        assert isinstance(s.value, float)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(entry=_json, container=_json)
def test_never_raises_on_any_shape(entry: Any, container: Any) -> None:
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    dd = next(iter(stats))
    stats[dd] = entry
    task["Containers"].append(container)
    d = derive(task, stats, {dd: entry})
    json.dumps([s.value for s in d.samples])  # plain floats only
    assert ("ecs.container.memory.working_set_bytes", "apmtest-ping") in values(d.samples)


@settings(max_examples=200, deadline=None)
@given(mem=_json, cpu=_json, blkio=_json, nets=_json)
def test_never_raises_on_any_section(mem: Any, cpu: Any, blkio: Any, nets: Any) -> None:
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    dd = next(iter(stats))
    stats[dd].update(memory_stats=mem, cpu_stats=cpu, blkio_stats=blkio, networks=nets)
    d = derive(task, stats)
    assert "bad_container" not in d.errors
    assert values(d.samples)["ecs.container.running", "dd-agent"] == 1


# the parts of a stats entry `bad_stats` is about, and the fields of each (docs: README, ECS containers)
STATS_PARTS = {
    "cpu_stats": ["cpu_usage", "online_cpus", "system_cpu_usage"],
    "memory_stats": ["usage", "limit", "stats", "privateworkingset"],
    "blkio_stats": ["io_service_bytes_recursive", "io_serviced_recursive"],
    "storage_stats": ["read_size_bytes", "write_size_bytes", "read_count_normalized", "write_count_normalized"],
    "pids_stats": ["current"],
    "networks": ["eth0", "eth1"],
}
# no usable number: a string (not Windows' "None"), a boolean, a non-empty list, a number where an object
# is expected; a field of the right name holding one of those
_wrong_scalar = (st.text(min_size=1).filter(lambda t: t != "None") | st.booleans()
                 | st.lists(st.integers(), min_size=1, max_size=3))
_NOT_GIVEN = [None, {}, [], "None"]


# a block I/O list with no entry at all in it, or with a read or write whose value is no usable number
_bad_blkio_list = (st.lists(_wrong_scalar | st.integers() | st.none(), min_size=1, max_size=3)
                   | st.builds(lambda op, value: [{"major": 8, "minor": 0, "op": op, "value": value}],
                               st.sampled_from(["Read", "write", "READ"]),
                               _wrong_scalar | st.none() | st.integers(max_value=-1) | st.just(10**400)))


def _wrong_part(part: str) -> st.SearchStrategy[Any]:
    # a block I/O list that is null is cgroup v2's "none" (0 bytes): not wrong; one that is no list is
    field = (st.text(min_size=1).filter(lambda t: t != "None") | st.booleans() | st.integers() | _bad_blkio_list
             if part == "blkio_stats" else _wrong_scalar | st.none())
    fields = st.dictionaries(st.sampled_from(STATS_PARTS[part]), field, min_size=1)
    return _wrong_scalar | st.integers() | st.floats() | fields


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_part_of_wrong_json_types_is_bad_stats_once_an_entry(data: st.DataObject) -> None:
    """An entry whose parts are there but of the wrong JSON types gives none of their series: that is
    counted as one `bad_stats` for the entry, however many parts are bad; the other container and
    the entry's good parts are untouched."""
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    clean = values(derive(task, stats).samples)
    dd = next(iter(stats))
    bad = data.draw(st.lists(st.sampled_from(sorted(STATS_PARTS)), min_size=1, unique=True))
    for part in bad:
        stats[dd][part] = data.draw(_wrong_part(part), label=part)
    d = derive(task, stats)
    v = values(d.samples)
    assert d.errors == ["bad_stats"]
    assert v["ecs.container.running", "dd-agent"] == 1
    assert {k: x for k, x in v.items() if k[1] == "apmtest-ping"} == {k: x for k, x in clean.items() if k[1] == "apmtest-ping"}
    if "memory_stats" not in bad:
        assert v["ecs.container.memory.usage_bytes", "dd-agent"] == clean["ecs.container.memory.usage_bytes", "dd-agent"]


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(STATS_PARTS)), st.sampled_from(_NOT_GIVEN), min_size=1))
def test_a_part_absent_null_or_empty_is_no_error(parts: dict[str, Any]) -> None:
    """What real agents send for what they do not measure (`"pids_stats": {}` on Fargate, `null` lists on
    cgroup v2, `"None"` on Windows) carries nothing: no error."""
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    stats[next(iter(stats))].update(parts)
    assert derive(task, stats).errors == []


@pytest.mark.parametrize("name", ["ec2-awsvpc-2023-cgroupv2", "ec2-bridge-2020", "fargate-2021", "fargate-2023",
                                  "fargate-v2-2017-wrong-system-delta", "fargate-windows",
                                  "managed-instances-2025-cgroupv2", "managed-instances-2025-no-networks"])
def test_no_real_capture_has_unusable_parts(name: str) -> None:
    assert not [unusable_parts(e) for e in load(f"{name}.stats").values() if isinstance(e, dict) and unusable_parts(e)]


def test_host_memory_reported_as_the_limit_gives_way_to_the_task_limit() -> None:
    # EC2 awsvpc on cgroup v2: the stats `limit` of a container without its own limit is the host's
    # memory (4051226624); the kernel enforces the task's 1024 MiB, the smallest limit that applies
    fixtures = Path(__file__).parent / "fixtures"
    task = json.loads((fixtures / "ec2-awsvpc-host-limit.task.json").read_text())
    stats = json.loads((fixtures / "ec2-awsvpc-host-limit.stats.json").read_text())
    v = values(derive(task, stats).samples)
    assert v["ecs.container.memory.limit_bytes", "worker"] == 1024 * MIB
    working_set = 268_435_456 - 16_777_216
    assert v["ecs.container.memory.working_set_bytes", "worker"] == working_set
    assert v["ecs.container.memory.utilization_percent", "worker"] == pytest.approx(working_set / (1024 * MIB) * 100)
    assert v["ecs.task.memory.limit_bytes", None] == 1024 * MIB


MIBS = st.one_of(st.integers(0, 1 << 20), st.sampled_from([1e308, float(2**62 // MIB), 2**64, 1e-300]))


@settings(max_examples=300, deadline=None)
@given(stats_limit=st.one_of(st.none(), st.integers(0, 2**64)), container_mib=MIBS, task_mib=MIBS,
       usage=st.one_of(st.integers(0, 1 << 40), st.just(1e308)))
def test_memory_limit_is_the_smallest_limit_that_applies(stats_limit: int | None, container_mib: float,
                                                         task_mib: float, usage: float) -> None:
    """Each of the stats limit, the container's and the task's `Limits.Memory` is a limit only when it can
    be one: above 0, below the "unlimited" sentinels (so finite: 1e308 MiB is +Inf bytes), and not below
    the usage the kernel let the container reach."""
    from agent.sources.ecs_stats import UNLIMITED, memory_limit_bytes

    memory = {"usage": usage} if stats_limit is None else {"usage": usage, "limit": stats_limit}
    got = memory_limit_bytes(memory, {"Limits": {"Memory": container_mib}}, {"Limits": {"Memory": task_mib}})
    candidates = [m * MIB for m in (container_mib, task_mib)] + ([stats_limit] if stats_limit is not None else [])
    real = [c for c in candidates if 0 < c < UNLIMITED and c >= usage]
    # as the float every sample value is (a limit past 2**53 bytes is rounded, as it is exported)
    assert got == (float(min(real)) if real else None)


@settings(max_examples=300, deadline=None)
@given(disks=st.lists(st.tuples(st.integers(0, 1 << 40), st.integers(0, 1 << 40)), min_size=1, max_size=4,
                      unique=True), stacked=st.integers(0, 3))
def test_device_mapper_over_a_disk_counts_its_io_once(disks: list[tuple[int, int]], stacked: int) -> None:
    from agent.sources.ecs_stats import blkio_read_write

    entries = []
    for minor, (read, write) in enumerate(disks):
        entries += [{"major": 259, "minor": minor, "op": "Read", "value": read},
                    {"major": 259, "minor": minor, "op": "Write", "value": write}]
    for level in range(stacked):  # dm devices over the first disk repeat its numbers
        read, write = disks[0]
        entries += [{"major": 253, "minor": level, "op": "read", "value": read},
                    {"major": 253, "minor": level, "op": "write", "value": write}]
    assert blkio_read_write(entries) == (sum(r for r, _ in disks), sum(w for _, w in disks))


# --- a DockerId listed more than once -----------------------------------------------------------


def _pool() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """ec2-bridge-2020's task (no task-level limits: its totals are sums over the containers) with
    fargate-2023's two containers added in bridge mode, so that CPU, memory, the memory reservation
    and the per-container network all add up across five distinct DockerIds."""
    task, stats = load("ec2-bridge-2020.task"), load("ec2-bridge-2020.stats")
    fargate = load("fargate-2023.task")["Containers"]
    for c in fargate:
        c["Limits"]["Memory"] = 256
        c["Networks"] = [dict(n, NetworkMode="bridge") for n in c["Networks"]]
    stats.update(load("fargate-2023.stats"))
    return task, task.pop("Containers") + fargate, stats


def test_a_repeated_docker_id_counts_once() -> None:
    task, pool, stats = _pool()
    task["Containers"] = copy.deepcopy(pool)
    v = values(derive(task, stats).samples)
    task["Containers"] += [copy.deepcopy(pool[3]), dict(copy.deepcopy(pool[4]), Name="same-id-other-name")]
    d = derive(task, stats)
    assert values(d.samples) == v  # the same series, the same numbers
    assert d.errors == ["duplicate_container", "duplicate_container"]


@settings(max_examples=200, deadline=None)
@given(listed=st.lists(st.tuples(st.integers(0, 4), st.booleans()), max_size=12),
       unlisted=st.lists(st.integers(0, 4), max_size=3, unique=True))
def test_task_totals_are_sums_over_distinct_docker_ids(listed: list[tuple[int, bool]], unlisted: list[int]) -> None:
    """Whatever the repeats (under the same name or another), their order, and stats entries for
    containers the task does not list, the task totals are sums over the distinct DockerIds."""
    from agent.sources.ecs_stats import cpu_vcpus, interfaces

    task, pool, stats = _pool()
    task["Containers"] = [dict(copy.deepcopy(pool[i]), Name=f"copy-{n}") if renamed else copy.deepcopy(pool[i])
                          for n, (i, renamed) in enumerate(listed)]
    for i in unlisted:
        stats[f"unlisted-{i}"] = copy.deepcopy(stats[pool[i]["DockerId"]])
    first: dict[str, dict[str, Any]] = {}
    for c in task["Containers"]:
        first.setdefault(c["DockerId"], c)
    d = derive(task, stats)
    v = values(d.samples)

    entries = [stats[docker_id] for docker_id in first]
    cpu = [x for e in entries if (x := cpu_vcpus(e)) is not None]
    assert v.get(("ecs.task.cpu.usage_vcpus", None)) == (pytest.approx(sum(cpu)) if cpu else None)
    ws = [x for e in entries if e and (x := working_set_bytes(e["memory_stats"])) is not None]
    assert v.get(("ecs.task.memory.working_set_bytes", None)) == (pytest.approx(sum(ws)) if ws else None)
    running = [c for c in first.values() if c["KnownStatus"] == "RUNNING"]
    reservation = sum(c["Limits"]["Memory"] for c in running) * MIB
    assert v.get(("ecs.task.memory.reservation_bytes", None)) == (reservation if running else None)
    rx = [n["rx_bytes"] for e in entries for n in interfaces(e).values()]
    assert v.get(("ecs.task.network.receive_bytes_total", None)) == (sum(rx) if rx else None)
    assert containers(d.samples) == {c["Name"] for c in first.values()}
    assert d.errors.count("duplicate_container") == len(listed) - len(first)
