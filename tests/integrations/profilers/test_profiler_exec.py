"""A worker started through a wrapper that execs Python (`sh -c '...; exec python worker.py'`, a pyenv
shim): exec keeps the pid and start time, so the sidecar that saw the wrapper first skipped it for
good (not Python) or labelled every profile with the wrapper's name. What a process runs is part of
its identity: after the exec it is examined again and labelled with what it runs now.
"""

from __future__ import annotations

import asyncio
import uuid

from tests.integrations.profilers.support import (
    HOT_FUNCTION, HOT_WORKER, WORKER_PYTHON, profiler_for, stopped, until,
)

# waits for a file, then execs the stand-in worker; the marker is on the wrapper's command line too
SHELL_WRAPPER = 'while [ ! -e "$1" ]; do sleep 0.05; done; exec "$2" "$3" "$0" 3600'
PYTHON_WRAPPER = ("import os, sys, time\n"
                  "while not os.path.exists(sys.argv[1]): time.sleep(0.05)\n"
                  "os.execv(sys.argv[2], sys.argv[2:])\n")


async def test_a_shell_that_execs_python_is_profiled_once_it_does(pyroscope, spawn, ptrace_ok, identity, tmp_path):
    marker = f"tasklens-exec-{uuid.uuid4().hex[:12]}"
    gate = tmp_path / "exec-now"
    worker = spawn(["/bin/sh", "-c", SHELL_WRAPPER, marker, str(gate), WORKER_PYTHON, HOT_WORKER], marker)
    profiler = profiler_for(pyroscope.url, marker, identity, window=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(profiler.run(stop))
    metrics = profiler.hub.metrics
    # the shell is not Python: py-spy says so, and the sidecar skips it
    await until(lambda: metrics.get("tasklens.profiler.record_errors", reason="not_python") == 1, 20,
                "the shell skipped")
    gate.touch()
    await asyncio.to_thread(worker.wait_ready)  # the same pid now runs the worker
    await until(lambda: any(p.share(HOT_FUNCTION) >= 0.9 for p in pyroscope.ingested), 20, "the worker profiled")
    [shown] = profiler.status()["processes"]
    assert (shown["pid"], shown["process"], shown["state"]) == (worker.pid, "hot_worker.py", "profiling")
    assert shown["command"] == f"{WORKER_PYTHON} {HOT_WORKER} {marker} 3600"
    await stopped(profiler, stop, task)
    assert {p.labels["process"] for p in pyroscope.ingested} == {"hot_worker.py"}
    assert metrics.get("tasklens.profiler.record_errors", reason="not_python") == 1  # the shell, once


async def test_a_process_being_profiled_that_execs_another_program_is_labelled_with_it(pyroscope, spawn, ptrace_ok,
                                                                                     identity, tmp_path):
    marker = f"tasklens-exec-{uuid.uuid4().hex[:12]}"
    gate = tmp_path / "exec-now"
    worker = spawn([WORKER_PYTHON, "-c", PYTHON_WRAPPER, str(gate), WORKER_PYTHON, HOT_WORKER, marker, "3600"],
                   marker)
    profiler = profiler_for(pyroscope.url, marker, identity, window=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(profiler.run(stop))
    # Python already, so sampled from the start under the name of what it runs first (idle: nothing pushed)
    await until(lambda: [p["windows"] for p in profiler.status()["processes"]] == [2], 20, "two windows")
    assert profiler.status()["processes"][0]["process"] == WORKER_PYTHON.rsplit("/", 1)[-1]
    gate.touch()
    await asyncio.to_thread(worker.wait_ready)
    await until(lambda: any(p.labels["process"] == "hot_worker.py" for p in pyroscope.ingested), 20,
                "profiles labelled with what it runs now")
    [shown] = profiler.status()["processes"]
    assert (shown["pid"], shown["process"]) == (worker.pid, "hot_worker.py")
    assert shown["command"] == f"{WORKER_PYTHON} {HOT_WORKER} {marker} 3600"
    seen = len(pyroscope.ingested)
    await until(lambda: len(pyroscope.ingested) >= seen + 2, 20, "two more profiles")
    await stopped(profiler, stop, task)
    for profile in pyroscope.ingested[seen:]:
        assert profile.labels["process"] == "hot_worker.py" and profile.share(HOT_FUNCTION) >= 0.9
    assert profiler.hub.metrics.total("tasklens.profiler.record_errors") == 0
