"""Top processes by CPU and RSS (agent/processes.py): naming, ranking, bounded cardinality, and real
processes read through psutil."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.hub import Hub
from agent.identity import Identity
from agent.processes import Proc, ProcessSource, command_name, top
from tests.support import Recorder, wait_until

MIB = 1024 * 1024


@pytest.mark.parametrize("name,cmdline,expected", [
    ("python3.11", ["python3.11", "-u", "worker.py", "--queue", "x"], "python3.11:worker.py"),
    ("python", ["/usr/bin/python", "-m", "celery", "worker"], "python:celery"),
    ("python3", ["python3", "-c", "print(1)"], "python3:-c"),
    ("node", ["node", "/app/dist/server.js"], "node:server.js"),
    ("gunicorn", ["/venv/bin/gunicorn", "app:app"], "gunicorn"),
    ("", ["/usr/local/bin/worker", "--fast"], "worker"),
    ("java", ["java"], "java"),
    ("x" * 200, [], "x" * 64),
])
def test_command_names(name, cmdline, expected):
    assert command_name(name, cmdline) == expected


def test_top_groups_by_name_and_ranks():
    before = {1: Proc(1, "python:w.py", 10.0, 0), 2: Proc(2, "python:w.py", 5.0, 0), 3: Proc(3, "nginx", 1.0, 0),
              4: Proc(4, "old", 100.0, 0)}
    now = [Proc(1, "python:w.py", 15.0, 100 * MIB), Proc(2, "python:w.py", 6.0, 100 * MIB),
           Proc(3, "nginx", 1.5, 300 * MIB),
           Proc(4, "new", 1.0, MIB),  # pid 4 reused by another program: no CPU rate from the old one
           Proc(5, "fresh", 3.0, MIB)]  # not seen before: no rate yet
    got = {(s.name, s.tags[0][1]): s.value for s in top(before, now, 10.0, n=2)}
    assert got == {("ecs.task.process.cpu_vcpus", "python:w.py"): 0.6,  # (5 + 1) s over 10 s
                   ("ecs.task.process.cpu_vcpus", "nginx"): 0.05,
                   ("ecs.task.process.rss_bytes", "nginx"): 300 * MIB,
                   ("ecs.task.process.rss_bytes", "python:w.py"): 200 * MIB}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 50), st.text(min_size=1, max_size=5), st.floats(0, 1e4),
                          st.floats(0, 1e12)), max_size=300), st.integers(1, 10))
def test_never_more_than_n_names_per_metric(rows, n):
    procs = [Proc(pid, name, cpu, rss) for pid, name, cpu, rss in rows]
    before = {p.pid: Proc(p.pid, p.name, p.cpu_seconds / 2, 0) for p in procs}
    samples = top(before, procs, 10.0, n)
    for metric in ("ecs.task.process.cpu_vcpus", "ecs.task.process.rss_bytes"):
        assert len([s for s in samples if s.name == metric]) <= n


HOLDER = "import sys, time\nx = b'y' * (200 * 1024 * 1024)\nprint('ready', flush=True)\ntime.sleep(60)\n"
BURNER = "while True:\n    pass\n"


async def test_real_processes_are_named_with_their_cpu_and_rss(tmp_path: Path):
    (tmp_path / "holder.py").write_text(HOLDER)
    (tmp_path / "burner.py").write_text(BURNER)
    holder = subprocess.Popen([sys.executable, str(tmp_path / "holder.py")], stdout=subprocess.PIPE)
    burner = subprocess.Popen([sys.executable, str(tmp_path / "burner.py")])
    hub = Hub(Identity(service="t"))
    recorder = Recorder()
    hub.add_sink(recorder)
    source = ProcessSource(hub, interval=1.0, n=50)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        await source.poll_once()
        spent = psutil.Process(burner.pid).cpu_times()
        wait_until(lambda: sum(psutil.Process(burner.pid).cpu_times()[:2]) - sum(spent[:2]) >= 0.3,
                   what="the burner to burn 0.3 s of CPU")
        await source.poll_once()
    finally:
        holder.kill()
        burner.kill()
        holder.wait()
        burner.wait()
    got = {(s.name, dict(s.tags)["process"]): s.value for s in recorder.last("processes").samples}
    python = Path(sys.executable).name
    assert got[("ecs.task.process.rss_bytes", f"{python}:holder.py")] >= 200 * MIB
    assert got[("ecs.task.process.cpu_vcpus", f"{python}:burner.py")] > 0.05
    assert source.status()["last_error"] is None


def test_the_runtime_starts_it_only_when_configured():
    import asyncio

    from agent.config import Config
    from agent.runtime import Runtime

    async def names(config: Config) -> list[str]:
        runtime = Runtime(config, environ={})
        await runtime.build()
        for s in runtime.sources:
            if hasattr(s, "stop"):
                await s.stop()
        return [s.name for s in runtime.sources]

    off = asyncio.run(names(Config(statsd_addr=None, top_processes=0, status_page=False)))
    on = asyncio.run(names(Config(statsd_addr=None, top_processes=3, status_page=False)))
    assert "processes" not in off and "processes" in on
