"""This machine's resource usage as Docker-format container stats and an ECS-style `/task`.

Local mode and the metadata emulator both describe "the container we run in" this way, so that the
one derivation in `ecs_stats` turns it into the same metric families as on ECS. The container is the
cgroup of this process when its files are readable (cgroup v2, or v1 per controller), else the whole
host through psutil. `proc` and `cgroup_root` are parameters so tests can point at a fake tree.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

UINT64_MAX = 2**64 - 1


def format_time_ns(ns: int) -> str:
    """Unix nanoseconds -> RFC 3339 with nanoseconds, as the ECS agent writes `read`."""
    seconds, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return UINT64_MAX
    try:
        return int(text)
    except ValueError:
        return None


def _kv(path: Path) -> dict[str, int]:
    """`key value` lines (memory.stat, cpu.stat)."""
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def cgroup_paths(proc: str) -> dict[str, str]:
    """Controller -> cgroup path of this process; the unified (v2) hierarchy is under ""."""
    out: dict[str, str] = {}
    for line in (_read(Path(proc, "self", "cgroup")) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            out[controller.removeprefix("name=")] = parts[2]
    return out


def _systemd_unit(path: str) -> bool:
    # on a systemd host our cgroup is a login session or a service, not a container: measure the host
    return path.endswith((".scope", ".service")) or ".slice/" in path


class Cgroup:
    """Where this process's cgroup files are, and how to read them (v2 or v1)."""

    def __init__(self, proc: str = "/proc", root: str = "/sys/fs/cgroup") -> None:
        self.root = Path(root)
        self.paths = {c: p for c, p in cgroup_paths(proc).items() if not _systemd_unit(p)}
        self.v2 = self._dir("", "memory.current")  # None when there is no usable v2 hierarchy

    def _dir(self, controller: str, probe: str) -> Path | None:
        rel = self.paths.get(controller)
        if rel is None:
            return None
        base = self.root / controller if controller else self.root
        # without a cgroup namespace our cgroup is shown with the host's path; inside one, it is "/"
        for candidate in (base / rel.lstrip("/"), base):
            if (candidate / probe).exists():
                return candidate
        return None

    @property
    def name(self) -> str:
        """The last path component of our cgroup ("" at the root: then we are the host)."""
        rel = self.paths.get("") if self.v2 else self.paths.get("memory")
        return (rel or "").rstrip("/").rsplit("/", 1)[-1]

    def cpu_usage_ns(self) -> int | None:
        if self.v2:
            usec = _kv(self.v2 / "cpu.stat").get("usage_usec")
            return usec * 1000 if usec is not None else None
        d = self._dir("cpuacct", "cpuacct.usage")
        return _int(d / "cpuacct.usage") if d else None

    def cpu_quota_vcpus(self) -> float | None:
        quota: int | None
        period: int | None
        if self.v2:  # cpu.max: "<quota> <period>" or "max <period>"
            text = (_read(self.v2 / "cpu.max") or "max").split()
            try:
                quota, period = int(text[0]), int(text[1])
            except (ValueError, IndexError):
                return None
        else:
            d = self._dir("cpu", "cpu.cfs_quota_us")
            if d is None:
                return None
            quota, period = _int(d / "cpu.cfs_quota_us"), _int(d / "cpu.cfs_period_us")
        return quota / period if quota and quota > 0 and period else None  # v1 says -1 for none

    def memory(self) -> dict[str, Any] | None:
        if self.v2:
            usage = _int(self.v2 / "memory.current")
            limit = _int(self.v2 / "memory.max")
            stats = _kv(self.v2 / "memory.stat")
        else:
            d = self._dir("memory", "memory.usage_in_bytes")
            if d is None:
                return None
            usage, limit = _int(d / "memory.usage_in_bytes"), _int(d / "memory.limit_in_bytes")
            stats = _kv(d / "memory.stat")
        if usage is None:
            return None
        return {"usage": usage, "limit": limit if limit is not None else UINT64_MAX, "stats": stats}

    def blkio(self) -> dict[str, Any] | None:
        """Docker's `blkio_stats`: v2 io.stat gives lowercase ops, v1 the capitalised ones."""
        if self.v2:
            text = _read(self.v2 / "io.stat")
            if text is None:
                return None
            nbytes: list[dict[str, Any]] = []
            ops: list[dict[str, Any]] = []
            for line in text.splitlines():
                device, *fields = line.split() or [""]
                major, _, minor = device.partition(":")
                values = dict(f.split("=", 1) for f in fields if "=" in f)
                for op, key, into in (("read", "rbytes", nbytes), ("write", "wbytes", nbytes),
                                      ("read", "rios", ops), ("write", "wios", ops)):
                    if key in values and f"{major}{minor}{values[key]}".isdigit():
                        into.append({"major": int(major), "minor": int(minor), "op": op, "value": int(values[key])})
            return {"io_service_bytes_recursive": nbytes or None, "io_serviced_recursive": ops or None}
        # v1 at the hierarchy's root counts only the root group's own tasks, not the host's I/O: "/" is
        # that root when another controller shows a path of ours (no cgroup namespace; inside one, every
        # controller shows "/", our own). And a kernel counts throttle stats only on disks where some
        # cgroup set a limit (6.x: the file holds just "Total 0"), so no device line means "not counted
        # here", not "no I/O"
        if self.paths.get("blkio") == "/" and any(p not in ("", "/") for p in self.paths.values()):
            return None
        d = self._dir("blkio", "blkio.throttle.io_service_bytes")
        if d is None:
            return None
        nbytes = _blkio_v1(d / "blkio.throttle.io_service_bytes")
        if not nbytes:
            return None
        return {"io_service_bytes_recursive": nbytes,
                "io_serviced_recursive": _blkio_v1(d / "blkio.throttle.io_serviced")}

    def pids(self) -> int | None:
        if self.v2:
            return _int(self.v2 / "pids.current")
        d = self._dir("pids", "pids.current")
        return _int(d / "pids.current") if d else None


def _blkio_v1(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in (_read(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].replace(":", "", 1).isdigit() and parts[2].isdigit():
            major, _, minor = parts[0].partition(":")
            out.append({"major": int(major), "minor": int(minor), "op": parts[1], "value": int(parts[2])})
    return out


# --- the host, through psutil (when no cgroup file answers) ---------------------------------------


def host_cpu_usage_ns() -> int:
    t = psutil.cpu_times()
    busy = t.user + t.system + sum(getattr(t, f, 0.0) for f in ("nice", "irq", "softirq", "steal"))
    return int(busy * 1e9)


def host_memory() -> dict[str, Any]:
    vm = psutil.virtual_memory()
    usage = vm.total - vm.free
    # shaped like cgroup v2 so that working set = usage - inactive_file = total - available
    return {"usage": usage, "limit": vm.total,
            "stats": {"inactive_file": max(0, vm.available - vm.free),
                      "file": getattr(vm, "cached", 0) + getattr(vm, "buffers", 0)}}


def host_blkio() -> dict[str, Any]:
    io = psutil.disk_io_counters(perdisk=False)
    if io is None:
        return {"io_service_bytes_recursive": None, "io_serviced_recursive": None}
    return {"io_service_bytes_recursive": [{"major": 0, "minor": 0, "op": "read", "value": io.read_bytes},
                                           {"major": 0, "minor": 0, "op": "write", "value": io.write_bytes}],
            "io_serviced_recursive": [{"major": 0, "minor": 0, "op": "read", "value": io.read_count},
                                      {"major": 0, "minor": 0, "op": "write", "value": io.write_count}]}


def networks() -> dict[str, dict[str, int]]:
    """Interfaces of our network namespace (the container's, or the host's), loopback excluded."""
    out = {}
    for name, c in psutil.net_io_counters(pernic=True).items():
        if name == "lo":
            continue
        out[name] = {"rx_bytes": c.bytes_recv, "rx_packets": c.packets_recv, "rx_errors": c.errin,
                     "rx_dropped": c.dropin, "tx_bytes": c.bytes_sent, "tx_packets": c.packets_sent,
                     "tx_errors": c.errout, "tx_dropped": c.dropout}
    return out


class LocalStats:
    """Samples this machine as one container; each sample carries the previous one as `precpu`."""

    def __init__(self, proc: str = "/proc", cgroup_root: str = "/sys/fs/cgroup",
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.cgroup = Cgroup(proc, cgroup_root)
        self.clock_ns = clock_ns
        self.container_name = self.cgroup.name or socket.gethostname()
        self.docker_id = "local-" + (self.cgroup.name or socket.gethostname())
        self._previous: dict[str, Any] = {}

    @property
    def source(self) -> str:
        """What is measured, for the log and `/status`."""
        if self.cgroup.v2:
            return f"cgroup v2 {self.cgroup.v2}"
        if self.cgroup.memory() is not None:
            where = "cgroup v1 " + ", ".join(f"{c}:{p}" for c, p in sorted(self.cgroup.paths.items()) if c)
            return where + ("" if self.cgroup.blkio() is not None else "; block I/O of the host (psutil)")
        return "host (psutil)"

    def sample(self) -> dict[str, Any]:
        """Blocking (file reads): call it in a thread from async code."""
        cpu = self.cgroup.cpu_usage_ns()
        cpu_stats = {"cpu_usage": {"total_usage": cpu if cpu is not None else host_cpu_usage_ns()},
                     "online_cpus": psutil.cpu_count() or os.cpu_count() or 1}
        pids = self.cgroup.pids()
        stats = {
            "read": format_time_ns(self.clock_ns()),
            "preread": self._previous.get("read", "0001-01-01T00:00:00Z"),
            "name": self.container_name,
            "id": self.docker_id,
            "cpu_stats": cpu_stats,
            "precpu_stats": self._previous.get("cpu_stats", {}),
            "memory_stats": self.cgroup.memory() or host_memory(),
            "blkio_stats": blkio if (blkio := self.cgroup.blkio()) is not None else host_blkio(),
            "pids_stats": {"current": pids if pids is not None else len(psutil.pids())},
            "networks": networks(),
        }
        self._previous = stats
        return stats

    def task(self, service: str = "") -> dict[str, Any]:
        """An ECS-style `/task` with this machine as its one container, limits as configured."""
        quota = self.cgroup.cpu_quota_vcpus()
        vcpus = quota or float(psutil.cpu_count() or 1)
        memory = self.cgroup.memory()
        limit = memory["limit"] if memory and memory["limit"] < 2**62 else psutil.virtual_memory().total
        name = self.container_name
        try:
            started = int(psutil.Process(1).create_time() * 1e9)
        except (psutil.Error, OSError):
            started = int(psutil.boot_time() * 1e9)
        task_id = self.docker_id.removeprefix("local-")
        return {
            "Cluster": "local",
            "TaskARN": f"arn:aws:ecs:local:000000000000:task/local/{task_id}",
            "Family": service or name,
            "Revision": "0",
            "DesiredStatus": "RUNNING",
            "KnownStatus": "RUNNING",
            "LaunchType": "LOCAL",
            "Limits": {"CPU": vcpus, "Memory": limit // (1024 * 1024)},
            "Containers": [{
                "DockerId": self.docker_id,
                "Name": name,
                "DockerName": name,
                "Image": "local",
                "DesiredStatus": "RUNNING",
                "KnownStatus": "RUNNING",
                "Limits": {"CPU": round(vcpus * 1024), "Memory": limit // (1024 * 1024)},
                "StartedAt": format_time_ns(started),
                "Type": "NORMAL",
                "Networks": [{"NetworkMode": "host"}],
            }],
        }
