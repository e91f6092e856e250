"""`tasklens run` started with stdin, stdout or stderr closed (`2>&-`, a supervisor that closes them) stops
like any other: SIGTERM flushes and exits 0. The entry point opens /dev/null onto the closed ones first
(agent/entry.py); otherwise the next descriptor opened (uvloop's epoll) takes the number, and libuv aborts
the process when it closes a descriptor below 3."""

from __future__ import annotations

import itertools
import os
import shlex
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support import TASKLENS, clean_env, free_port, http_get, wait_until

CLOSED_SETS = [c for n in (1, 2, 3) for c in itertools.combinations((0, 1, 2), n)]


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="reads the descriptors from /proc")
@pytest.mark.parametrize("closed", CLOSED_SETS, ids=lambda c: "closed-" + "".join(map(str, c)))
def test_sigterm_exits_0_with_standard_descriptors_closed_at_start(tmp_path: Path, closed: tuple[int, ...]) -> None:
    http_port = free_port()
    env = clean_env(TASKLENS_HTTP_ADDR=f"127.0.0.1:{http_port}",
                    TASKLENS_STATSD_ADDR=f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", TASKLENS_SHUTDOWN_TIMEOUT="5")
    log = tmp_path / "sidecar.log"
    log.touch()
    # the shell closes them and execs: the sidecar is the process started with those descriptors closed
    redirections = " ".join(f"{fd}<&-" if fd in closed else f"{fd}>>{shlex.quote(str(log))}" for fd in (0, 1, 2)
                            if fd in closed or fd != 0)
    proc = subprocess.Popen(["sh", "-c", f'exec {shlex.quote(TASKLENS)} run {redirections}'], env=env,
                            stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{http_port}/health")[0] == 200, 30, what="sidecar /health")
        opened = {fd: os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in closed}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert opened == {fd: os.devnull for fd in closed}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    assert "Assertion" not in text
    if 2 not in closed:
        assert "stopping: flushing" in text and text.rstrip().endswith("stopped"), text[-2000:]
