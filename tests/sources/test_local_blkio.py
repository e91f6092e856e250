"""Local mode's block I/O on cgroup v1: a blkio cgroup that counts nothing here (the hierarchy's root,
or a throttle file without a device line) is measured as the host, through psutil."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil
import pytest

from agent.sources.ecs_stats import derive
from agent.sources.localstats import LocalStats
from tests.sources.test_local import write_tree
from tests.support import wait_until

MIB = 1024 * 1024


def v1_tree(blkio_path: str, service_bytes: str, serviced: str) -> dict[str, str]:
    rel = blkio_path.lstrip("/")
    blkio = f"cg/blkio/{rel}/" if rel else "cg/blkio/"
    return {
        "proc/self/cgroup": f"7:blkio:{blkio_path}\n4:memory:/process_api/abc\n2:cpuacct:/\n0::/\n",
        "cg/memory/process_api/abc/memory.usage_in_bytes": "50000000\n",
        "cg/memory/process_api/abc/memory.limit_in_bytes": "9223372036854771712\n",
        blkio + "blkio.throttle.io_service_bytes": service_bytes,
        blkio + "blkio.throttle.io_serviced": serviced,
    }


def io_values(local: LocalStats) -> dict[str, float]:
    return {s.name: s.value for s in derive(local.task(), {local.docker_id: local.sample()}).samples
            if s.name.startswith("ecs.container.io.")}


@pytest.mark.parametrize(("blkio_path", "service_bytes"), [
    ("/", "Total 0\n"),  # this machine's root blkio cgroup on a 6.x kernel
    ("/", "8:0 Read 10\n8:0 Write 20\n8:0 Total 30\nTotal 30\n"),  # the root group's own tasks only
    ("/docker/abc", "Total 0\n"),  # no disk with a throttle rule: the kernel counts nothing
    ("/docker/abc", ""),
])
def test_blkio_that_counts_nothing_here_is_the_hosts(tmp_path: Path, blkio_path: str, service_bytes: str) -> None:
    write_tree(tmp_path, v1_tree(blkio_path, service_bytes, service_bytes.replace("10", "1").replace("20", "2")))
    local = LocalStats(str(tmp_path / "proc"), str(tmp_path / "cg"))
    assert local.source.endswith("; block I/O of the host (psutil)")
    host = psutil.disk_io_counters(perdisk=False)
    if host is None:
        pytest.skip("psutil sees no disk on this machine")
    entry = local.sample()
    assert entry["memory_stats"]["usage"] == 50_000_000  # the other controllers still read the cgroup
    v = io_values(local)
    # the host's counters only grow: at least what psutil read just before
    assert v["ecs.container.io.write_bytes_total"] >= host.write_bytes > 0
    assert v["ecs.container.io.read_ops_total"] >= host.read_count > 0


def test_blkio_with_device_lines_is_the_cgroups(tmp_path: Path) -> None:
    write_tree(tmp_path, v1_tree("/docker/abc", "8:0 Read 1000\n8:0 Write 2000\nTotal 3000\n",
                                 "8:0 Read 3\n8:0 Write 4\nTotal 7\n"))
    local = LocalStats(str(tmp_path / "proc"), str(tmp_path / "cg"))
    assert "block I/O" not in local.source
    assert io_values(local) == {"ecs.container.io.read_bytes_total": 1000, "ecs.container.io.write_bytes_total": 2000,
                                "ecs.container.io.read_ops_total": 3, "ecs.container.io.write_ops_total": 4}


def test_blkio_at_the_root_of_a_cgroup_namespace_is_the_cgroups(tmp_path: Path) -> None:
    """Inside a cgroup namespace every controller shows "/": that is our own cgroup, its lines count
    (a diff review: the "/" rule alone reported the host's I/O there)."""
    tree = v1_tree("/", "8:0 Read 1000\n8:0 Write 2000\nTotal 3000\n", "8:0 Read 3\n8:0 Write 4\nTotal 7\n")
    tree["proc/self/cgroup"] = "7:blkio:/\n4:memory:/\n2:cpuacct:/\n0::/\n"
    tree = {k.replace("cg/memory/process_api/abc/", "cg/memory/"): v for k, v in tree.items()}
    write_tree(tmp_path, tree)
    local = LocalStats(str(tmp_path / "proc"), str(tmp_path / "cg"))
    assert "block I/O" not in local.source
    assert io_values(local)["ecs.container.io.write_bytes_total"] == 2000


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_real_sidecar_counts_direct_writes_on_this_machine(tmp_path: Path, sidecar_factory) -> None:
    # dd runs in the sidecar's cgroup (both are this test's children), so whatever local mode measures
    # (the cgroup, or the host when the cgroup counts nothing) holds its writes
    sidecar = sidecar_factory(TASKLENS_POLL_INTERVAL="0.5")
    sidecar.wait_ready()
    name = "ecs_container_io_write_bytes_total"
    wait_until(lambda: _metric(sidecar.get("/metrics")[1], name) is not None, what=name)
    before = _metric(sidecar.get("/metrics")[1], name)
    assert before is not None
    target = tmp_path / "big"
    done = subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", "count=32", "oflag=direct"],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"dd oflag=direct refused here: {done.stderr.decode().strip()}")
    os.sync()
    wait_until(lambda: (_metric(sidecar.get("/metrics")[1], name) or 0) - before >= 32 * MIB, what=f"{name} +32 MiB")
