"""`tasklens run` as a real process profiles a worker: the runtime's wiring, /status and /metrics."""

from __future__ import annotations

import asyncio
import json
import re

from tests.integrations.profilers.support import HOT_FUNCTION, until


async def test_tasklens_run_profiles_the_worker(pyroscope, start_worker, sidecar_factory, ptrace_ok):
    worker = start_worker()
    sidecar = sidecar_factory(TASKLENS_PYROSCOPE_URL=pyroscope.url, TASKLENS_PROFILE_MATCH=re.escape(worker.marker),
                              TASKLENS_PROFILE_WINDOW="1", TASKLENS_SERVICE="e2e-worker", TASKLENS_ENV="ci")
    await asyncio.to_thread(sidecar.wait_ready)
    try:
        await until(lambda: len(pyroscope.ingested) >= 2, 40, "profiles from the sidecar")
    except AssertionError:
        raise AssertionError(sidecar.log) from None

    code, body = await asyncio.to_thread(sidecar.get, "/status")
    assert code == 200
    profiler = json.loads(body)["components"]["profiler"]
    assert profiler["problem"] is None and profiler["pushes"] >= 2
    assert [(p["pid"], p["process"]) for p in profiler["processes"]] == [(worker.pid, "hot_worker.py")]
    code, metrics = await asyncio.to_thread(sidecar.get, "/metrics")
    assert re.search(r'^tasklens_profiler_processes\{.*service="e2e-worker".*\} 1\.0$', metrics, re.M), metrics
    assert re.search(r"^tasklens_profiler_pushes_total\{.*\} [1-9]", metrics, re.M)

    assert await asyncio.to_thread(sidecar.stop) == 0
    profile = pyroscope.ingested[-1]
    assert (profile.service, profile.kind, profile.labels["env"], profile.labels["process"]) == (
        "e2e-worker", "cpu", "ci", "hot_worker.py")
    assert profile.share(HOT_FUNCTION) >= 0.9
