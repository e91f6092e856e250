"""A py-spy run that has exited while its output is still being read: the SIGINT of a stop (SIGTERM)
or of an overrun raised ProcessLookupError, the window was lost and counted as an `internal` error.
Every signal to a run is sent as to one that may be gone, on the stock loop and on uvloop (which
`tasklens run` uses when installed).

The py-spy stand-in writes its stacks and exits at once, but a child of its keeps the output pipe
open for a while (its first run only): the window is still being read when the signal is sent.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from integrations.profilers.pyspy import OVERRUN, PySpyProfiler
from tests.integrations.profilers.pyroscope_fake import FakePyroscope, start_pyroscope
from tests.integrations.profilers.support import WORKER_PYTHON, Worker, stopped, until

STACK = "main (job.py);spin (job.py) 7"
WINDOW = 1.0
# the stand-in's first run: stacks out, pid written, exit; its child holds the output pipe for $HOLD s
FAKE_PY_SPY = f"""#!/bin/sh
dir=$(dirname "$0")
echo "{STACK}"
if [ ! -e "$dir/held" ]; then
    touch "$dir/held"
    (sleep "$HOLD") 2>/dev/null &
    echo $$ > "$dir/exited.tmp" && mv "$dir/exited.tmp" "$dir/exited"
fi
exit 0
"""
RUNNERS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


def fake_py_spy(directory: Path, hold: float) -> Path:
    directory.mkdir()
    script = directory / "py-spy"
    script.write_text(FAKE_PY_SPY.replace('"$HOLD"', f"{hold:g}"))
    script.chmod(0o755)
    return script


def exited(directory: Path) -> bool:
    """The stand-in's first run wrote its stacks and is gone (reaped), while its output stays open."""
    pid = directory / "exited"
    return pid.exists() and not os.path.exists(f"/proc/{pid.read_text().strip()}")


async def window_cut_short(py_spy: Path, marker: str, identity: Identity, overrun: bool) -> None:
    async for pyroscope in start_pyroscope(FakePyroscope()):
        config = Config(pyroscope_url=pyroscope.url, profile_window=WINDOW, profile_match=marker)
        profiler = PySpyProfiler(config, Hub(identity), py_spy=str(py_spy))
        metrics = profiler.hub.metrics
        stop = asyncio.Event()
        task = asyncio.create_task(profiler.run(stop))
        await until(lambda: exited(py_spy.parent), 20, "the first py-spy run gone, its output still open")
        if overrun:  # past its window and OVERRUN, the run is interrupted as one that hangs would be
            await until(lambda: metrics.total("tasklens.profiler.pushes") >= 1, WINDOW + OVERRUN + 15,
                        "the window pushed after the overrun")
        await stopped(profiler, stop, task)  # SIGTERM: the window in flight is cut short, and still pushed
        assert metrics.get("tasklens.profiler.record_errors", reason="internal") == 0
        assert metrics.total("tasklens.profiler.record_errors") == 0
        assert pyroscope.ingested and pyroscope.ingested[0].stacks == {STACK.rsplit(" ", 1)[0]: 7}
        assert pyroscope.errors == []


def idle_process(spawn: Callable[..., Worker]) -> str:
    """A process for the stand-in to 'sample': its marker, for TASKLENS_PROFILE_MATCH."""
    marker = f"tasklens-signal-{uuid.uuid4().hex[:12]}"
    spawn([WORKER_PYTHON, "-c", "import time; time.sleep(120)", marker], marker)
    return marker


@pytest.mark.parametrize("loop", RUNNERS)
def test_a_stop_while_an_exited_run_is_read_still_pushes_its_window(loop, spawn, identity, tmp_path):
    py_spy = fake_py_spy(tmp_path / "spy", hold=3)
    RUNNERS[loop](window_cut_short(py_spy, idle_process(spawn), identity, overrun=False))


@pytest.mark.slow
@pytest.mark.parametrize("loop", RUNNERS)
def test_an_overrun_of_an_exited_run_still_pushes_its_window(loop, spawn, identity, tmp_path):
    py_spy = fake_py_spy(tmp_path / "spy", hold=WINDOW + OVERRUN + 1)
    RUNNERS[loop](window_cut_short(py_spy, idle_process(spawn), identity, overrun=True))
