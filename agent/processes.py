"""The busiest processes in the task, by CPU and by resident memory, named by their command.

With `pidMode: task` the sidecar sees every process of the task (the same setting the profiler
uses), so a leak or a hot loop is pinned on a program, not only a container. Processes are grouped
by a short command name (`python:worker.py`, `gunicorn`), so 16 workers of one program are one
series, and only the top `n` names by CPU and the top `n` by RSS are exported: at most 2n names
whatever runs in the task. `ProcessSource` does the reading (psutil, in a thread); `top` and
`command_name` are pure.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from agent.hub import Hub
from agent.logs import RateLimitedLog
from agent.model import Batch, Sample

log = logging.getLogger("tasklens.processes")

INTERPRETERS = ("python", "node", "java", "ruby", "perl", "php", "bash", "sh", "dotnet", "bun", "deno")
MAX_NAME = 64
MIN_INTERVAL = 30.0  # seconds


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    name: str
    cpu_seconds: float  # user + system since the process started
    rss_bytes: float


def command_name(name: str, cmdline: Sequence[str]) -> str:
    """A stable, short label: the executable's name, and for an interpreter the script or module it
    runs (`python -m celery worker` -> `python:celery`, `node server.js` -> `node:server.js`)."""
    base = os.path.basename(name or (cmdline[0] if cmdline else "")) or "?"
    if base.rstrip("0123456789.").lower() in INTERPRETERS:
        args = list(cmdline[1:])
        while args:
            arg = args.pop(0)
            if arg == "-m" and args:
                return f"{base}:{args[0]}"[:MAX_NAME]
            if arg in ("-c", "-e"):
                return f"{base}:-c"[:MAX_NAME]
            if not arg.startswith("-"):
                return f"{base}:{os.path.basename(arg)}"[:MAX_NAME]
    return base[:MAX_NAME]


def top(before: Mapping[int, Proc], now: Iterable[Proc], seconds: float, n: int) -> list[Sample]:
    """Per command name: vCPUs used since `before` (processes seen both times; a pid reused by another
    command counts from 0) and resident bytes now; the top `n` names of each, as samples."""
    cpu: dict[str, float] = {}
    rss: dict[str, float] = {}
    for p in now:
        rss[p.name] = rss.get(p.name, 0.0) + p.rss_bytes
        old = before.get(p.pid)
        if old is not None and old.name == p.name and seconds > 0 and p.cpu_seconds >= old.cpu_seconds:
            cpu[p.name] = cpu.get(p.name, 0.0) + (p.cpu_seconds - old.cpu_seconds) / seconds
    out: list[Sample] = []
    for metric, values in (("cpu_vcpus", cpu), ("rss_bytes", rss)):
        for name, value in sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))[:n]:
            out.append(Sample(f"ecs.task.process.{metric}", value, tags=(("process", name),)))
    return out


def read_processes(names: dict[psutil.Process, str] | None = None) -> list[Proc]:
    """Every process this PID namespace shows (blocking: /proc reads). `names` caches each process's
    command name (psutil hands back the same Process object while the process lives, a new one for a
    reused pid): the command line is read once per process, not once per poll."""
    names = {} if names is None else names
    out, alive = [], set()
    for p in psutil.process_iter(["cpu_times", "memory_info"]):
        info: dict[str, Any] = p.info
        times, memory = info.get("cpu_times"), info.get("memory_info")
        if times is None or memory is None:  # gone, or not ours to read
            continue
        name = names.get(p)
        if name is None:
            try:
                name = names[p] = command_name(p.name(), p.cmdline())
            except (psutil.Error, OSError):
                continue
        alive.add(p)
        out.append(Proc(p.pid, name, times.user + times.system, float(memory.rss)))
    for gone in set(names) - alive:
        del names[gone]
    return out


class ProcessSource:
    """Publishes the top processes every `interval` seconds (the runtime uses the poll interval, at
    least `MIN_INTERVAL`: reading every process costs ~0.1 ms each, and a leak takes minutes)."""

    name = "processes"

    def __init__(self, hub: Hub, *, interval: float, n: int) -> None:
        self.hub = hub
        self.interval = interval
        self.n = n
        self._before: dict[int, Proc] = {}
        self._names: dict[psutil.Process, str] = {}
        self._at: float | None = None
        self._log = RateLimitedLog(log)
        self.last_error: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.poll_once()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            except TimeoutError:
                pass

    async def poll_once(self) -> None:
        try:
            procs = await asyncio.to_thread(read_processes, self._names)
        except Exception as exc:  # psutil on a strange /proc: count it, keep the sidecar going
            self.hub.metrics.inc("tasklens.processes.poll_errors", reason=type(exc).__name__)
            self.last_error = repr(exc)
            self._log.warning("poll", "reading the task's processes failed: %r", exc)
            return
        now = time.monotonic()
        seconds = now - self._at if self._at is not None else 0.0
        self.hub.publish(Batch(self.name, top(self._before, procs, seconds, self.n), snapshot=True))
        self._before, self._at, self.last_error = {p.pid: p for p in procs}, now, None

    def status(self) -> dict[str, Any]:
        return {"processes_seen": len(self._before), "top": self.n, "last_error": self.last_error}
