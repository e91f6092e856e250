"""Helpers shared by the profiling tests: the stand-in worker, the task fixture, polling."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from integrations.profilers.pyspy import PySpyProfiler
from tests.support import FIXTURES
from tests.support import until  # noqa: F401 (the profiler tests import it from here)

HERE = Path(__file__).resolve().parent
HOT_WORKER = str(HERE / "hot_worker.py")
HOT_FUNCTION = "crunch_numbers_hot"
# Workers run on the base interpreter, outside the project's venv: like a worker image, it has no
# pyroscope-io of its own, so only the bootstrap directory can bring it.
WORKER_PYTHON = getattr(sys, "_base_executable", sys.executable)
TASK_FIXTURE = FIXTURES / "fargate-2023.task.json"


def task_json() -> dict:
    return json.loads(TASK_FIXTURE.read_text())


class Worker:
    def __init__(self, proc: subprocess.Popen[str], marker: str) -> None:
        self.proc = proc
        self.marker = marker
        self.pid = proc.pid
        self.threads_at_start: list[str] = []

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the worker prints `ready <threads>` first, at once
        word, _, threads = line.strip().partition(" ")
        assert word == "ready", f"worker did not start: {line!r}"
        self.threads_at_start = threads.split(",")

    def finish(self, timeout: float = 30.0) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


def profiler_for(url: str, marker: str, identity: Identity, window: float = 2.0, **settings: object
                 ) -> PySpyProfiler:
    """A sidecar-mode profiler of the processes whose command line holds `marker` (a test's own)."""
    config = Config(pyroscope_url=url, profile_window=window, profile_match=re.escape(marker), **settings)
    return PySpyProfiler(config, Hub(identity))


async def scans(profiler: PySpyProfiler, more: int) -> None:
    """Wait until the profiler has listed the processes `more` more times."""
    target = profiler.hub.metrics.get("tasklens.profiler.scans") + more
    await until(lambda: profiler.hub.metrics.get("tasklens.profiler.scans") >= target, 30, f"{more} more scans")


async def stopped(profiler: PySpyProfiler, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await asyncio.wait_for(task, 20)
