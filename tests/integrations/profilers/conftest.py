"""Fixtures for the profiling tests: a strict local Pyroscope, real worker processes, ptrace check."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from agent.config import load
from agent.identity import Identity, task_identity
from integrations.profilers.bootstrap import populate
from integrations.profilers.pyspy import failure_reason, find_py_spy
from tests.support import clean_env
from tests.integrations.profilers.pyroscope_fake import FakePyroscope, start_pyroscope
from tests.integrations.profilers.support import HOT_WORKER, WORKER_PYTHON, Worker, task_json


@pytest.fixture
def identity() -> Identity:
    return task_identity(load({}), task_json(), {})


@pytest.fixture
async def pyroscope() -> AsyncIterator[FakePyroscope]:
    async for fake in start_pyroscope(FakePyroscope()):
        yield fake
        assert fake.errors == [], "the local Pyroscope rejected a request"


@pytest.fixture
def spawn() -> Iterator[Callable[..., Worker]]:
    """Start a command as a worker (the stand-in worker, or a wrapper that execs it), not waiting for it:
    `wait_ready()` once it should be running the stand-in. Killed at the end of the test."""
    started: list[Worker] = []

    def run(argv: list[str], marker: str, env: dict[str, str] | None = None, cwd: str | None = None) -> Worker:
        proc = subprocess.Popen(argv, env=env or clean_env(), cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        worker = Worker(proc, marker)
        started.append(worker)
        return worker

    yield run
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.communicate()


@pytest.fixture
def start_worker(spawn: Callable[..., Worker]) -> Callable[..., Worker]:
    def start(seconds: float = 3600.0, env: dict[str, str] | None = None, cwd: str | None = None,
              marker: str = "") -> Worker:
        marker = marker or f"tasklens-test-{uuid.uuid4().hex[:12]}"
        worker = spawn([WORKER_PYTHON, HOT_WORKER, marker, str(seconds)], marker, env, cwd)
        worker.wait_ready()
        return worker

    return start


@pytest.fixture(scope="session")
def bootstrap_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tasklens profiler-bootstrap DIR`'s work, done once: the directory a worker puts on PYTHONPATH."""
    directory = tmp_path_factory.mktemp("bootstrap")
    populate(str(directory))
    return directory


@pytest.fixture(scope="session")
def ptrace_ok() -> str:
    """The py-spy binary, if it may read another process here; else the test is skipped, saying why."""
    py_spy = find_py_spy()
    if not py_spy:
        pytest.skip("py-spy is not installed (pip install py-spy)")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        probe = subprocess.run([py_spy, "dump", "--pid", str(child.pid), "--nonblocking"],
                               capture_output=True, text=True, timeout=30)
    finally:
        child.kill()
        child.wait()
    if probe.returncode != 0 and failure_reason(probe.stderr) == "ptrace_denied":
        pytest.skip(f"this machine refuses ptrace to py-spy: {probe.stderr.strip()[:200]}")
    assert probe.returncode == 0, probe.stderr
    return py_spy
