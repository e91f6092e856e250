"""Local mode: cgroup v2 and v1 trees written to a temporary directory (the layout of a real
/sys/fs/cgroup and /proc/self/cgroup), and the real host through psutil."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path

import psutil
import pytest

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch
from agent.sources.ecs_stats import derive
from agent.sources.local import LocalSource
from agent.sources.localstats import LocalStats, format_time_ns

MIB = 1024 * 1024
T0 = 1_700_000_000 * 10**9


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


V2 = {
    # inside a cgroup namespace our cgroup is "/" and the mount is our own cgroup
    "proc/self/cgroup": "0::/\n",
    "cg/cpu.stat": "usage_usec 5000000\nuser_usec 4000000\nsystem_usec 1000000\n",
    "cg/cpu.max": "50000 100000\n",
    "cg/memory.current": "104857600\n",
    "cg/memory.max": "268435456\n",
    "cg/memory.stat": "anon 52428800\nfile 41943040\ninactive_file 20971520\nactive_file 20971520\n",
    "cg/io.stat": "259:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n252:0 rbytes=100 wbytes=0 rios=1 wios=0\n",
    "cg/pids.current": "7\n",
}

V1 = {
    "proc/self/cgroup": ("12:memory:/docker/abc123\n11:cpu,cpuacct:/docker/abc123\n5:blkio:/docker/abc123\n"
                         "3:pids:/docker/abc123\n1:name=systemd:/docker/abc123\n0::/system.slice/containerd.service\n"),
    "cg/memory/docker/abc123/memory.usage_in_bytes": "50000000\n",
    "cg/memory/docker/abc123/memory.limit_in_bytes": "9223372036854771712\n",
    "cg/memory/docker/abc123/memory.stat": "cache 8000000\nrss 30000000\ntotal_inactive_file 6000000\ninactive_file 6000000\n",
    # no cgroup namespace, but only our own cgroup mounted: the files are at the controller root
    "cg/cpuacct/cpuacct.usage": "123000000000\n",
    "cg/cpu/cpu.cfs_quota_us": "200000\n",
    "cg/cpu/cpu.cfs_period_us": "100000\n",
    "cg/blkio/docker/abc123/blkio.throttle.io_service_bytes": (
        "8:0 Read 1000\n8:0 Write 2000\n8:0 Sync 3000\n8:0 Async 0\n8:0 Total 3000\nTotal 3000\n"),
    "cg/blkio/docker/abc123/blkio.throttle.io_serviced": "8:0 Read 3\n8:0 Write 4\n8:0 Total 7\nTotal 7\n",
    "cg/pids/docker/abc123/pids.current": "12\n",
}


class Clock:
    def __init__(self) -> None:
        self.ns = T0

    def __call__(self) -> int:
        return self.ns


def values(samples) -> dict[str, float]:
    return {s.name: s.value for s in samples}


def test_cgroup_v2_tree(tmp_path: Path) -> None:
    write_tree(tmp_path, V2)
    clock = Clock()
    local = LocalStats(str(tmp_path / "proc"), str(tmp_path / "cg"), clock_ns=clock)
    assert local.source == f"cgroup v2 {tmp_path / 'cg'}"
    assert local.container_name == socket.gethostname()  # the cgroup is "/": a container's hostname
    task = local.task("svc")
    assert task["Limits"]["CPU"] == 0.5  # cpu.max quota / period
    assert task["Limits"]["Memory"] == 256  # memory.max, MiB
    first = {local.docker_id: local.sample()}
    assert first[local.docker_id]["read"] == format_time_ns(T0)
    (tmp_path / "cg/cpu.stat").write_text("usage_usec 6000000\n")
    clock.ns += 2 * 10**9
    second = {local.docker_id: local.sample()}
    d = derive(task, second, first)
    assert d.errors == []
    v = values(d.samples)
    # 1 s of CPU in 2 s = 0.5 vCPU, 100 % of the 0.5-vCPU quota
    assert v["ecs.container.cpu.usage_vcpus"] == pytest.approx(0.5)
    assert v["ecs.container.cpu.utilization_percent"] == pytest.approx(100.0)
    assert v["ecs.task.cpu.limit_vcpus"] == 0.5
    assert v["ecs.container.memory.usage_bytes"] == 104_857_600
    assert v["ecs.container.memory.working_set_bytes"] == 104_857_600 - 20_971_520
    assert v["ecs.container.memory.limit_bytes"] == 268_435_456
    assert v["ecs.container.memory.utilization_percent"] == pytest.approx(83_886_080 / 268_435_456 * 100)
    assert v["ecs.container.memory.anon_bytes"] == 52_428_800
    assert v["ecs.container.io.read_bytes_total"] == 4096 + 100
    assert v["ecs.container.io.write_bytes_total"] == 8192
    assert v["ecs.container.io.read_ops_total"] == 2
    assert v["ecs.container.io.write_ops_total"] == 2
    assert v["ecs.container.pids"] == 7
    assert v["ecs.container.running"] == 1


def test_cgroup_v1_tree(tmp_path: Path) -> None:
    write_tree(tmp_path, V1)
    clock = Clock()
    local = LocalStats(str(tmp_path / "proc"), str(tmp_path / "cg"), clock_ns=clock)
    assert local.source.startswith("cgroup v1 ")
    assert local.container_name == "abc123"
    task = local.task()
    assert task["Limits"]["CPU"] == 2.0  # cfs quota 200000 / period 100000
    host_mib = psutil.virtual_memory().total // MIB
    assert task["Limits"]["Memory"] == host_mib  # the v1 limit is the "unlimited" sentinel
    first = {local.docker_id: local.sample()}
    (tmp_path / "cg/cpuacct/cpuacct.usage").write_text(str(123_000_000_000 + 3 * 10**9))
    clock.ns += 10 * 10**9
    v = values(derive(task, {local.docker_id: local.sample()}, first).samples)
    assert v["ecs.container.cpu.usage_vcpus"] == pytest.approx(0.3)
    assert v["ecs.container.cpu.utilization_percent"] == pytest.approx(15.0)  # of 2 vCPU
    assert v["ecs.container.memory.working_set_bytes"] == 50_000_000 - 6_000_000  # total_inactive_file
    assert v["ecs.container.memory.limit_bytes"] == host_mib * MIB
    assert v["ecs.container.memory.rss_bytes"] == 30_000_000
    assert v["ecs.container.io.read_bytes_total"] == 1000  # capitalised v1 ops; Total ignored
    assert v["ecs.container.io.write_bytes_total"] == 2000
    assert v["ecs.container.io.read_ops_total"] == 3
    assert v["ecs.container.pids"] == 12


def test_systemd_host_is_measured_as_the_host(tmp_path: Path) -> None:
    # on a laptop our cgroup is a login session: not a container, so measure the whole host
    write_tree(tmp_path, {
        "proc/self/cgroup": "0::/user.slice/user-1000.slice/session-2.scope\n",
        "cg/user.slice/user-1000.slice/session-2.scope/memory.current": "1000\n",
    })
    local = LocalStats(str(tmp_path / "proc"), str(tmp_path / "cg"))
    assert local.source == "host (psutil)"
    assert local.container_name == socket.gethostname()
    entry = local.sample()
    vm = psutil.virtual_memory()
    assert entry["memory_stats"]["limit"] == vm.total
    assert entry["cpu_stats"]["cpu_usage"]["total_usage"] > 0
    task = local.task()
    v = values(derive(task, {local.docker_id: entry}).samples)
    # working set = total - available, within what changed between the two readings
    assert abs(v["ecs.container.memory.working_set_bytes"] - (vm.total - vm.available)) < 0.05 * vm.total
    assert v["ecs.task.memory.limit_bytes"] == vm.total // MIB * MIB
    assert v["ecs.container.pids"] == pytest.approx(len(psutil.pids()), abs=50)


def test_missing_tree_falls_back_to_psutil(tmp_path: Path) -> None:
    local = LocalStats(str(tmp_path / "no-proc"), str(tmp_path / "no-cgroup"))
    assert local.source == "host (psutil)"
    entry = local.sample()
    assert entry["memory_stats"]["usage"] > 0
    assert isinstance(entry["networks"], dict) and "lo" not in entry["networks"]


async def test_local_source_publishes_the_ecs_families(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_tree(tmp_path, V2)
    hub = Hub(Identity(service="laptop", local=True))
    batches: list[Batch] = []
    hub.add_sink(type("S", (), {"name": "s", "accept": lambda self, b: batches.append(b)})())
    with caplog.at_level(logging.INFO, logger="tasklens.local"):
        source = LocalSource(Config(poll_interval=0.05), hub, proc=str(tmp_path / "proc"),
                             cgroup_root=str(tmp_path / "cg"))
        clock = Clock()
        source.stats.clock_ns = clock
        assert source.ready
        assert await source.poll_once()
        (tmp_path / "cg/cpu.stat").write_text("usage_usec 5250000\n")
        clock.ns += 10**9
        assert await source.poll_once()
    assert [r.getMessage() for r in caplog.records] == [
        f"local resources: measuring cgroup v2 {tmp_path / 'cg'} as container {socket.gethostname()!r}"]
    last = batches[-1]
    assert last.source == "local" and last.snapshot
    v = {s.name: s for s in last.samples}
    assert v["ecs.container.cpu.usage_vcpus"].value == pytest.approx(0.25)
    assert dict(v["ecs.container.cpu.usage_vcpus"].tags)["container_name"] == socket.gethostname()
    assert dict(v["ecs.container.cpu.usage_vcpus"].tags)["service"] == "laptop"  # the configured identity
    assert v["ecs.task.memory.working_set_bytes"].value == 83_886_080
    assert hub.identity.service == "laptop"  # local mode never replaces the identity
    assert hub.metrics.get("tasklens.local.polls") == 2
    status = source.status()
    assert status["mode"] == "local" and status["last_error"] is None


async def test_local_source_survives_a_failing_sample_and_stops(tmp_path: Path) -> None:
    hub = Hub(Identity(service="laptop", local=True))
    source = LocalSource(Config(poll_interval=0.05), hub, proc=str(tmp_path), cgroup_root=str(tmp_path))

    def broken() -> dict:
        raise PermissionError("denied")

    source.stats.sample = broken  # type: ignore[method-assign]
    assert not await source.poll_once()
    assert hub.metrics.get("tasklens.local.poll_errors", reason="PermissionError") == 1
    assert "denied" in source.status()["last_error"]
    stop = asyncio.Event()
    runner = asyncio.create_task(source.run(stop))
    deadline = time.monotonic() + 10
    while hub.metrics.get("tasklens.local.poll_errors", reason="PermissionError") < 3:
        assert time.monotonic() < deadline and not runner.done()
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(runner, 2)
    assert hub.metrics.get("tasklens.local.poll_errors", reason="PermissionError") >= 3


def test_unlimited_and_junk_cgroup_files(tmp_path: Path) -> None:
    write_tree(tmp_path, {**V2, "cg/cpu.max": "max 100000\n", "cg/memory.max": "max\n",
                          "cg/io.stat": "garbage\n\n259:0 rbytes=x wbytes=10\n", "cg/pids.current": "lots\n"})
    local = LocalStats(str(tmp_path / "proc"), str(tmp_path / "cg"))
    task = local.task()
    assert task["Limits"]["CPU"] == psutil.cpu_count()  # no quota: the machine's CPUs
    assert task["Limits"]["Memory"] == psutil.virtual_memory().total // MIB  # "max": no limit
    entry = local.sample()
    assert entry["blkio_stats"]["io_service_bytes_recursive"] == [{"major": 259, "minor": 0, "op": "write", "value": 10}]
    assert entry["memory_stats"]["limit"] == 2**64 - 1
    v = values(derive(task, {local.docker_id: entry}).samples)
    assert v["ecs.container.memory.limit_bytes"] == psutil.virtual_memory().total // MIB * MIB
    assert v["ecs.container.io.write_bytes_total"] == 10
    assert v["ecs.container.pids"] == pytest.approx(len(psutil.pids()), abs=50)  # psutil fallback
