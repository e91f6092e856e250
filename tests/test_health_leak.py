"""A real leaking worker under a real memory limit, watched end to end: its time to limit is forecast
from the ECS-format stats of its cgroup, the forecast matches when the kernel really kills it, and
the kill is counted as an OOM kill in what Prometheus scrapes.

The worker allocates (and writes) 4 MiB every 0.5 s in a cgroup v1 memory cgroup limited to
160 MiB (8 MiB/s: its last 2 s before the kill are above 90 % of the limit, so a poll delayed by a
busy machine still sees it there). A metadata endpoint on loopback answers like the ECS agent: `/task/stats` from that
cgroup's files (as the agent reads them, `failcnt` included), `/task` RUNNING until the process
dies, then STOPPED with ExitCode 137 (128 + SIGKILL). The sidecar's ECS source polls it every 0.2 s.
Skips, saying why, where no writable cgroup v1 memory controller exists.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch
from agent.sinks.prometheus import PrometheusSink
from agent.sources.ecs import EcsSource
from agent.sources.localstats import LocalStats
from tests.support import Recorder, serve_app

MEMORY = Path("/sys/fs/cgroup/memory")
MIB = 1024 * 1024
LIMIT = 160 * MIB
CHUNK, EVERY = 4 * MIB, 0.5  # 8 MiB/s
# each chunk at its time on the clock, not EVERY after the one before: on a busy machine a sleep that
# overshoots is made up, so the growth stays the same all its life (the countdowns assume it does)
LEAKY = f"""
import time
chunks, start = [], time.monotonic()
while True:
    chunks.append(b"x" * {CHUNK})  # written, so resident: the working set grows
    time.sleep(max(0.0, start + len(chunks) * {EVERY} - time.monotonic()))
"""


def cgroup_v1_memory() -> Path | None:
    if not (MEMORY / "memory.limit_in_bytes").exists() or not os.access(MEMORY, os.W_OK):
        return None
    path = MEMORY / f"tasklens-leak-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError:
        return None
    return path


@pytest.fixture
def cgroup():
    path = cgroup_v1_memory()
    if path is None:
        pytest.skip("needs a writable cgroup v1 memory controller at /sys/fs/cgroup/memory (root)")
    (path / "memory.limit_in_bytes").write_text(str(LIMIT))
    if (path / "memory.memsw.limit_in_bytes").exists():  # no swap to hide in: the limit is the limit
        (path / "memory.memsw.limit_in_bytes").write_text(str(LIMIT))
    (path / "memory.swappiness").write_text("0")
    yield path
    for _ in range(50):  # the killed process leaves the cgroup a moment after it is reaped
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.1)


class FakeAgent:
    """The ECS agent's two endpoints, answering from the live cgroup and the live process."""

    def __init__(self, cgroup: Path, tmp: Path) -> None:
        proc = tmp / "proc"
        (proc / "self").mkdir(parents=True)
        (proc / "self" / "cgroup").write_text(f"4:memory:/{cgroup.name}\n")
        self.stats = LocalStats(str(proc), "/sys/fs/cgroup")
        self.cgroup = cgroup
        self.process: subprocess.Popen[bytes] | None = None
        self.died_at: float | None = None

    def start_worker(self) -> None:
        procs = self.cgroup / "cgroup.procs"
        # in the cgroup before it allocates: the shell moves itself, then becomes the worker (a
        # preexec_fn can deadlock in a process with threads, as pytest's is after other tests)
        self.process = subprocess.Popen(
            ["sh", "-c", 'echo $$ > "$1" && exec "$2" -c "$3"', "sh", str(procs), sys.executable, LEAKY])

        def reap() -> None:
            assert self.process is not None
            self.process.wait()
            self.died_at = time.time()

        threading.Thread(target=reap, daemon=True).start()

    def task(self) -> dict[str, Any]:
        assert self.process is not None
        code = self.process.poll()
        container = {"DockerId": "leaky", "Name": "leaky-worker", "Image": "example/leaky:1",
                     "KnownStatus": "RUNNING" if code is None else "STOPPED",
                     "Limits": {"CPU": 256, "Memory": LIMIT // MIB}, "Type": "NORMAL",
                     "StartedAt": "2026-01-01T00:00:00Z"}
        if code is not None:
            container["ExitCode"] = 128 - code if code < 0 else code  # killed by signal 9: 137
        return {"Cluster": "c", "TaskARN": "arn:aws:ecs:eu-west-1:1:task/c/t1", "Family": "leaky",
                "Revision": "1", "KnownStatus": "RUNNING", "Limits": {"CPU": 0.25, "Memory": LIMIT // MIB},
                "Containers": [container]}

    def app(self) -> web.Application:
        async def task(request: web.Request) -> web.Response:
            return web.json_response(self.task())

        async def stats(request: web.Request) -> web.Response:
            if self.process is None or self.process.poll() is not None:
                return web.json_response({"leaky": {}})  # as the agent shows a stopped container
            entry = await asyncio.to_thread(self.stats.sample)
            entry["memory_stats"]["failcnt"] = int((self.cgroup / "memory.failcnt").read_text())
            return web.json_response({"leaky": entry})

        app = web.Application()
        app.router.add_get("/v4/x/task", task)
        app.router.add_get("/v4/x/task/stats", stats)
        return app


class TimedRecorder(Recorder):
    """Also notes when each batch was published (the forecast's "now")."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def accept(self, batch: Batch) -> None:
        super().accept(batch)
        self.times.append(time.time())


def scrape(prometheus: PrometheusSink, name: str) -> float | None:
    for family in text_string_to_metric_families(generate_latest(prometheus.registry).decode()):
        for s in family.samples:
            if s.name == name and s.labels.get("container_name") == "leaky-worker":
                return s.value
    return None


async def test_a_leaking_worker_is_forecast_then_oom_killed_and_counted(cgroup: Path, tmp_path: Path):
    agent = FakeAgent(cgroup, tmp_path)
    runner, url = await serve_app(agent.app())
    # a 3 s trend window: the forecast starts once 1.5 s of polls are in (MIN_COVERAGE)
    config = Config(poll_interval=0.2, metadata_timeout=2.0, memory_trend_window=60.0)
    hub = Hub(Identity(service="leaky"))
    prometheus = PrometheusSink(hub.metrics, pull=hub.pull)
    recorder = TimedRecorder()
    hub.add_sink(recorder)
    hub.add_sink(prometheus)
    source = EcsSource(config, hub, url + "/v4/x")
    source.health.memory_window = 3.0  # the setting's floor is 60 s; a test has seconds, not minutes
    stop = asyncio.Event()
    agent.start_worker()
    started = time.time()
    poller = asyncio.create_task(source.run(stop))
    forecasts: list[tuple[float, float]] = []  # (when, predicted kill time)
    try:
        deadline = time.monotonic() + 60
        while scrape(prometheus, "ecs_container_oom_kills_total") != 1.0:
            assert time.monotonic() < deadline, (
                f"no OOM kill counted within 60 s: worker exit {agent.process.poll() if agent.process else None}, "
                f"working set {scrape(prometheus, 'ecs_container_memory_working_set_bytes')}, "
                f"restarts {scrape(prometheus, 'ecs_container_restarts_total')}, status {source.status()}")
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await poller
        await runner.cleanup()
        if agent.process is not None and agent.process.poll() is None:
            agent.process.kill()

    assert agent.process is not None and agent.process.returncode == -9  # the kernel's OOM killer
    died = agent.died_at
    assert died is not None
    for when, batch in zip(recorder.times, recorder.batches):
        for sample in batch.samples:
            if sample.name == "ecs.container.memory.time_to_limit_seconds":
                forecasts.append((when, when + sample.value))  # type: ignore[operator]
    rates = [s.value for b in recorder.batches for s in b.samples if s.name == "ecs.container.memory.growth_bytes_per_hour"]
    assert forecasts and rates, "no forecast was published before the kill"
    errors = [(died - when, predicted - died) for when, predicted in forecasts]
    print(f"worker lived {died - started:.2f} s; growth {rates[-1] / MIB / 3600:.1f} MiB/s (nominal "
          f"{CHUNK / EVERY / MIB:.0f}); (seconds before the kill, forecast error s): "
          + ", ".join(f"({a:.2f}, {e:+.2f})" for a, e in errors))
    # the measured growth is the worker's: 8 MiB/s nominal, less when the machine is busy (sleep overshoots)
    assert 0.6 * CHUNK / EVERY <= rates[-1] / 3600 <= 1.15 * CHUNK / EVERY
    # every countdown said when the kernel would kill it: within 1 s, or 30 % of the time left
    for left, error in errors:
        assert abs(error) <= max(1.0, 0.3 * left), (left, error)
    assert scrape(prometheus, "ecs_container_restarts_total") == 0.0
    assert scrape(prometheus, "ecs_container_memory_peak_working_set_bytes") >= 0.8 * LIMIT  # type: ignore[operator]
