"""py-spy's output pipes were read whole: a run that writes without end (a defect, a wrong binary, a
process whose stacks never repeat) grew the sidecar's memory until its window and OVERRUN were over.
What is read of each pipe is bounded (MAX_OUTPUT, MAX_STDERR); past it the run is stopped at once and
counted as `pyspy_failed`, and the other processes' profiles, and the next windows, go on."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from agent.config import Config
from agent.hub import Hub
from integrations.profilers.pyspy import MAX_OUTPUT, MAX_STDERR, OVERRUN, PySpyProfiler
from tests.integrations.profilers.support import until
from tests.support import clean_env

# A stand-in for py-spy: for one pid it writes past the bound on one of its pipes, then hangs (as a py-spy
# stuck on a process would: only the bound ends the run before its window and OVERRUN); for any other
# pid it writes a small profile and exits, as py-spy does.
FAKE = """#!{python}
import sys, time
pid = sys.argv[sys.argv.index("--pid") + 1]
if pid == "{flooded}":
    pipe, line = sys.{stream}.buffer, b"main (worker.py);spin (worker.py) 1\\n" * 1024
    for _ in range({limit} // len(line) + 2):
        pipe.write(line)
    pipe.flush()
    time.sleep(3600)
sys.stdout.buffer.write(b"main (worker.py);work (worker.py) 7\\n")
"""


@pytest.mark.parametrize("stream, limit", [("stdout", MAX_OUTPUT), ("stderr", MAX_STDERR)])
async def test_a_run_past_its_output_bound_is_stopped_counted_and_the_rest_go_on(
        tmp_path: Path, identity, pyroscope, stream: str, limit: int) -> None:
    marker = f"tasklens-flood-{uuid.uuid4().hex[:12]}"
    workers = {name: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"{marker}-{name}"],
                                      env=clean_env()) for name in ("flooded", "quiet")}
    fake = tmp_path / "py-spy"
    fake.write_text(FAKE.format(python=sys.executable, flooded=workers["flooded"].pid, stream=stream, limit=limit))
    fake.chmod(0o755)
    config = Config(pyroscope_url=pyroscope.url, profile_window=1.0, profile_match=re.escape(marker))
    profiler = PySpyProfiler(config, Hub(identity), py_spy=str(fake))
    metrics = profiler.hub.metrics
    stop = asyncio.Event()
    task = asyncio.create_task(profiler.run(stop))
    try:
        # stopped by the bound, not after its window and OVERRUN (the stand-in would hang for an hour)
        await until(lambda: metrics.get("tasklens.profiler.record_errors", reason="pyspy_failed") >= 1,
                    OVERRUN - 2, "the flooding run stopped and counted")
        [state] = [p["state"] for p in profiler.status()["processes"] if p["pid"] == workers["flooded"].pid]
        assert f"passed {limit} bytes" in state, state
        # the next window is tried again, and the quiet process's profiles are pushed meanwhile
        await until(lambda: metrics.get("tasklens.profiler.record_errors", reason="pyspy_failed") >= 2,
                    OVERRUN - 2, "a second window of the flooding process")
        await until(lambda: len(pyroscope.ingested) >= 2, 10, "the quiet process's windows pushed")
        assert all(set(p.stacks) == {"main (worker.py);work (worker.py)"} for p in pyroscope.ingested)
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        for worker in workers.values():
            worker.kill()
            worker.wait()
