"""Which processes of the task to profile: the facts come from /proc (psutil), the choice is pure.

With `pidMode: task` the sidecar sees every process of the task. It profiles the Python processes
that are not itself (nor its parents, nor the py-spy it runs), or, with `TASKLENS_PROFILE_MATCH`,
those whose command line matches the pattern. A process is known by (pid, start time), so a reused pid is a new
process; what it runs is known by its executable and command line, which an `exec` changes (a shell or a
pyenv shim that execs Python keeps its pid and start time): a new `Target.key`, examined and labelled again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import psutil

from agent.model import Tags
from agent.urlmask import mask_command
from integrations.profilers.sitecustomize import is_python, process_name

_CMDLINE_SHOWN = 200


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """What /proc says about one process."""

    pid: int
    ppid: int
    started: float  # psutil create_time
    exe: str  # "" when unreadable (another user without SYS_PTRACE)
    cmdline: tuple[str, ...]
    cgroup: str = ""  # the text of /proc/<pid>/cgroup


@dataclass(frozen=True, slots=True)
class Target:
    pid: int
    started: float
    process: str  # label: what it runs (`worker.py`, `app.main`, `celery`)
    command: str  # for logs and /status: masked (urlmask.mask_command)
    cgroup: str  # names its container once the task metadata is known (`container_name`)
    exe: str
    cmdline: tuple[str, ...]

    @property
    def lifetime(self) -> tuple[int, float]:
        """The process from its start to its exit, whatever it execs: one py-spy at a time on it."""
        return self.pid, self.started

    @property
    def key(self) -> tuple[int, float, str, tuple[str, ...]]:
        """The process and what it runs now: after an exec it is a new target (a shell that was not
        Python may now be; a label taken from the shim is wrong). The scan reads both anyway."""
        return self.pid, self.started, self.exe, self.cmdline


def lineage(procs: Iterable[ProcessInfo], pid: int) -> set[int]:
    """`pid` and its ancestors: the sidecar and whatever started it are never profiled."""
    parent = {p.pid: p.ppid for p in procs}
    out = {pid}
    up = parent.get(pid, 0)
    while up and up not in out:
        out.add(up)
        up = parent.get(up, 0)
    return out


def container_name(cgroup: str, containers: Mapping[str, Tags]) -> str:
    """The container a process runs in, from its cgroup path and the task's DockerIds.

    EC2: `.../docker/<64 hex>` or `/ecs/<task>/<64 hex>`; Fargate: `/ecs/<task>/<task>-<n>`;
    systemd: `docker-<64 hex>.scope`.
    """
    if not containers:
        return ""
    for line in cgroup.splitlines():
        path = line.split(":", 2)[-1]
        for part in reversed(path.split("/")):
            part = part.removeprefix("docker-").removesuffix(".scope")
            if part in containers:
                return dict(containers[part]).get("container_name", "")
    return ""


def select(procs: Iterable[ProcessInfo], exclude: set[int], match: re.Pattern[str] | None) -> list[Target]:
    """The processes to profile, but not those in `exclude` (the sidecar's lineage, its py-spy runs)."""
    out = []
    for p in procs:
        if p.pid in exclude or not p.cmdline:
            continue
        command = " ".join(p.cmdline)
        wanted = match.search(command) if match else is_python(p.exe or p.cmdline[0])
        if wanted:
            # shown masked (a worker's `--db postgresql://app:pw@db/app --api-key=...`), cut after masking
            out.append(Target(p.pid, p.started, process_name(p.cmdline), mask_command(p.cmdline)[:_CMDLINE_SHOWN],
                              p.cgroup, p.exe, p.cmdline))
    return out


def scan(proc: str = "/proc") -> list[ProcessInfo]:
    """Every visible process (psutil), with its cgroup; kernel threads and vanished ones left out."""
    out = []
    for p in psutil.process_iter(["pid", "ppid", "create_time", "exe", "cmdline"], ad_value=None):
        info = p.info
        if not info.get("cmdline"):
            continue
        try:
            with open(os.path.join(proc, str(info["pid"]), "cgroup")) as fh:
                cgroup = fh.read()
        except OSError:
            cgroup = ""
        out.append(ProcessInfo(info["pid"], info["ppid"] or 0, info["create_time"] or 0.0, info["exe"] or "",
                               tuple(info["cmdline"]), cgroup))
    return out


def loads_pyroscope(maps: str) -> bool:
    """A process that loaded pyroscope-io (the bootstrap) profiles itself: do not profile it twice."""
    return "/pyroscope/_native" in maps or "/pyroscope_io/" in maps


def profiles_itself(pid: int, proc: str = "/proc") -> bool:
    try:
        with open(os.path.join(proc, str(pid), "maps")) as fh:
            return loads_pyroscope(fh.read())
    except OSError:
        return False
