"""A worker in bootstrap mode loads pyroscope-io in a background thread after start-up: the sidecar
looked for it only before each window, so a new worker's first window was taken before the library
showed in its memory maps and pushed too, the same CPU under two applications. A window during which
the process started profiling itself is dropped.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from tests.integrations.profilers.support import profiler_for, stopped, until
from tests.support import clean_env

# prepended to the copied pyroscope-io: its import (in the bootstrap's thread) waits for the test
GATE = ("import os as _os, time as _time\n"
        "while not _os.path.exists(_os.environ['PYROSCOPE_IMPORT_GATE']):\n"
        "    _time.sleep(0.02)\n")


async def test_a_process_that_starts_profiling_itself_during_a_window_is_not_pushed(
        pyroscope, start_worker, ptrace_ok, identity, bootstrap_dir, tmp_path):
    gated = tmp_path / "bootstrap"
    shutil.copytree(bootstrap_dir, gated)
    package = gated / "pyroscope" / "__init__.py"
    package.write_text(GATE + package.read_text())
    gate = tmp_path / "import-now"
    env = clean_env(PYTHONPATH=str(gated), TASKLENS_PYROSCOPE_URL=pyroscope.url, TASKLENS_PROFILE_WINDOW="1",
                    TASKLENS_SERVICE="self-profiled", PYROSCOPE_IMPORT_GATE=str(gate))
    worker = start_worker(env=env)
    maps = Path(f"/proc/{worker.pid}/maps")
    profiler = profiler_for(pyroscope.url, worker.marker, identity, window=3.0)
    stop = asyncio.Event()
    task = asyncio.create_task(profiler.run(stop))
    await until(lambda: profiler._spies, 20, "py-spy sampling the worker")  # its first window is open
    assert "pyroscope" not in maps.read_text()
    gate.touch()  # the bootstrap's thread imports pyroscope-io now, in the middle of the window
    await until(lambda: "pyroscope" in maps.read_text(), 20, "pyroscope-io loaded by the bootstrap")
    await until(lambda: profiler.status()["processes"] == [], 20, "the process left alone")
    await until(lambda: pyroscope.pushed, 20, "the worker's own pushes")
    await stopped(profiler, stop, task)
    assert pyroscope.ingested == []  # its first window too: nothing under the sidecar's application
    assert {s.labels["service_name"] for s in pyroscope.pushed} == {"self-profiled"}
    assert profiler.hub.metrics.total("tasklens.profiler.record_errors") == 0
    assert profiler.hub.metrics.total("tasklens.profiler.pushes") == 0
