"""Memory handed back after a burst: the allocator the sidecar runs with, and when it trims."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent import memory
from tests.support import Sidecar, environ_of

# a burst of small objects, one in 2,000 of them kept (as the objects a storm leaves behind: counters,
# strings, dict entries made while it lasted), then the rest freed and a trim
BURST_SCRIPT = textwrap.dedent("""
    import json
    from agent import memory

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    memory.configure()
    memory.trim()
    baseline = rss()
    burst = [(f"storm.n{i}", i) for i in range(500_000)]
    kept = burst[::2000]
    peak = rss()
    del burst
    memory.trim()
    print(json.dumps({"grown": peak - baseline, "left": rss() - baseline, "kept": len(kept)}))
""")


def run_burst(pythonmalloc: str) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", BURST_SCRIPT], env={"PYTHONMALLOC": pythonmalloc, "PATH": "/usr/bin"},
                         capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(memory._function("malloc_trim") is None, reason="needs glibc (malloc_trim)")
def test_the_system_allocator_gives_a_burst_back_where_pymalloc_keeps_it() -> None:
    system, pymalloc = run_burst("malloc"), run_burst("pymalloc")
    assert system["grown"] > 40 * 2**20 and pymalloc["grown"] > 40 * 2**20, (system, pymalloc)
    # glibc hands back every free page; pymalloc keeps each 1 MiB arena that holds one live object
    assert system["left"] < system["grown"] / 10, system
    assert pymalloc["left"] > pymalloc["grown"] / 2, pymalloc


def test_a_burst_asks_for_a_second_trim_once_it_settled() -> None:
    memory.release_freed_memory()
    now = time.monotonic()
    assert not memory.second_trim_due(now)
    assert memory.second_trim_due(now + memory.SETTLE + 0.1)
    assert not memory.second_trim_due(now + memory.SETTLE + 0.2)  # once per burst


@pytest.mark.parametrize("given, expected", [(None, "malloc"), ("pymalloc", "pymalloc")])
def test_tasklens_run_runs_with_the_system_allocator_unless_told_otherwise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str | None, expected: str) -> None:
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    env = {"TASKLENS_STATSD_ADDR": "off"}
    if given is not None:
        env["PYTHONMALLOC"] = given
    sidecar = Sidecar(tmp_path, **env)
    try:
        sidecar.wait_ready()  # the same process id answers: exec, not a child
        assert environ_of(sidecar.proc.pid).get("PYTHONMALLOC") == expected
        assert sidecar.stop() == 0
    finally:
        if sidecar.proc.poll() is None:
            sidecar.proc.kill()
            sidecar.proc.wait()
