"""What every server under test provides: start in the foreground pinned to a core, say when it is
ready, and report what it has counted so far (cumulative), keyed its own way."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

from statsd_peers.measure import free_port, udp_drops
from statsd_peers.traffic import Context


@dataclass
class Reading:
    """Cumulative since the server started. `lines` is None when the server keeps no line count."""

    lines: float | None
    values: dict[Hashable, float] = field(default_factory=dict)  # by the server's keys
    extra: dict[str, float] = field(default_factory=dict)  # the server's own error/drop counters


class ServerError(RuntimeError):
    pass


class Server:
    name = ""
    accepts_tags = True
    note = ""  # one line for the report: what this server does with the traffic

    def __init__(self, workdir: Path, flush_interval: float, core: int | None) -> None:
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flush_interval = flush_interval
        self.core = core
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    # -- to override -----------------------------------------------------------------------------

    def missing(self) -> str | None:
        """Why this server cannot run here (not installed ...), or None."""
        return None

    def command(self) -> tuple[list[str], dict[str, str | None], Path | None]:
        """argv, environment changes (None: remove the variable), working directory."""
        raise NotImplementedError

    def ready(self) -> bool:
        return udp_drops(self.port) is not None

    def read(self) -> Reading:
        raise NotImplementedError

    def sum_key(self, ctx: Context) -> Hashable | None:
        """The key of `read().values` holding the counter sum / number of values of `ctx`."""
        return None

    def gauge_key(self, ctx: Context) -> Hashable | None:
        """The key holding the last value of gauge `ctx`; None where the server cannot tell."""
        return None

    # -- common ----------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def start(self, timeout: float = 60.0) -> None:
        argv, env, cwd = self.command()
        if self.core is not None:
            argv = ["taskset", "-c", str(self.core), *argv]  # taskset execs: same pid
        environ = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, env=environ, cwd=cwd, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        if nice:  # the server is a session of its own: with autogroups its nice counts only within it
            try:
                with open(f"/proc/{self.proc.pid}/autogroup", "w") as fh:
                    fh.write(str(nice))
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if self.ready():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"{self.name} not ready after {timeout:.0f}s: {self.log_tail()}")

    def stop(self) -> None:
        # the whole session we started: netdata leaves a spawn-server child behind otherwise
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"


def http_get(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())
