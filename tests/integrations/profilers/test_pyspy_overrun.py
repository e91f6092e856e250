"""A py-spy run that never ends (stuck on a process, a defect) held one of the 4 sampling slots for
ever and was never counted: with 4 such processes sampling stopped for good, silently. Past its window
and OVERRUN it is interrupted (SIGINT, then killed) and counted as `pyspy_failed`."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from pathlib import Path

from agent.config import Config
from agent.hub import Hub
from integrations.profilers.pyspy import INTERRUPT_GRACE, OVERRUN, PySpyProfiler
from tests.integrations.profilers.support import until
from tests.support import clean_env


async def test_a_py_spy_that_hangs_is_ended_and_counted(tmp_path: Path, identity) -> None:
    fake = tmp_path / "py-spy"
    fake.write_text("#!/bin/sh\nexec sleep 3600\n")  # a py-spy that never ends
    fake.chmod(0o755)
    marker = f"tasklens-hung-{uuid.uuid4().hex[:12]}"
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", marker], env=clean_env())
    try:
        config = Config(pyroscope_url="http://127.0.0.1:9", profile_window=1.0, profile_match=re.escape(marker))
        profiler = PySpyProfiler(config, Hub(identity), py_spy=str(fake))
        stop = asyncio.Event()
        task = asyncio.create_task(profiler.run(stop))
        try:
            await until(lambda: profiler.hub.metrics.get("tasklens.profiler.record_errors", reason="pyspy_failed") >= 1,
                        1.0 + OVERRUN + INTERRUPT_GRACE + 5.0, "the hung py-spy ended and counted")
            assert "did not end within its 1 s window" in profiler.status()["processes"][0]["state"]
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
    finally:
        worker.kill()
        worker.wait()
