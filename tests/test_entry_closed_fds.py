"""`tasklens run` started with stdin, stdout or stderr closed (`2>&-`, a supervisor that closes them) stops
like any other: SIGTERM flushes and exits 0. The entry point opens /dev/null onto the closed ones first
(agent/entry.py); otherwise the next descriptor opened (uvloop's epoll) takes the number, and libuv aborts
the process when it closes a descriptor below 3."""

from __future__ import annotations

import itertools
import os

import pytest

CLOSED_SETS = [c for n in (1, 2, 3) for c in itertools.combinations((0, 1, 2), n)]


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="reads the descriptors from /proc")
@pytest.mark.parametrize("closed", CLOSED_SETS, ids=lambda c: "closed-" + "".join(map(str, c)))
def test_sigterm_exits_0_with_standard_descriptors_closed_at_start(sidecar_factory, closed: tuple[int, ...]) -> None:
    sidecar = sidecar_factory(closed=closed, TASKLENS_SHUTDOWN_TIMEOUT="5")
    sidecar.wait_ready()
    opened = {fd: os.readlink(f"/proc/{sidecar.proc.pid}/fd/{fd}") for fd in closed}
    assert sidecar.stop() == 0
    assert opened == {fd: os.devnull for fd in closed}
    assert "Assertion" not in sidecar.log
    if 2 not in closed:
        assert "stopping: flushing" in sidecar.log and sidecar.log.rstrip().endswith("stopped"), sidecar.log[-2000:]
