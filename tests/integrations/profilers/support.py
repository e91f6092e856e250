"""Helpers shared by the profiling tests: the stand-in worker, the task fixture, polling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
