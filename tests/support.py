"""Helpers the tests share: free ports, HTTP, waiting, the sidecar as a process. Fixtures live in the
conftest files; everything a test imports comes from here."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.model import Batch, Sample

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "ecs"  # copied from the shared captures, with their SOURCES.md
TASKLENS = str(Path(sys.executable).with_name("tasklens"))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def serve_app(app: web.Application, port: int = 0, **runner_options: Any) -> tuple[web.AppRunner, str]:
    """Serve an aiohttp app on loopback (a free port unless one is given): (runner to clean up, base URL)."""
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def until(predicate: Any, timeout: float = 20.0, what: str = "condition", *, interval: float = 0.05,
                in_thread: bool = False) -> Any:
    """The one way to wait in async tests: until `predicate()` is truthy (awaited when it returns a
    coroutine; run in a thread with `in_thread`, for blocking HTTP), returning its value. OSError means
    "not listening yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await asyncio.to_thread(predicate) if in_thread else predicate()
            if asyncio.iscoroutine(value):
                value = await value
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Recorder:
    """A sink that keeps every batch (to check what a source published, and when)."""

    name = "recorder"

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def accept(self, batch: Batch) -> None:
        self.batches.append(batch)

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()

    def last(self, source: str) -> Batch:
        return next(b for b in reversed(self.batches) if b.source == source)

    def samples(self) -> list[Sample]:
        return [s for b in self.batches for s in b.samples]


def environ_of(pid: int) -> dict[str, str]:
    """The environment process `pid` was started (or last exec'd) with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().partition("=")[::2] for item in raw.split(b"\0") if item)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKLENS_", "DD_", "ECS_"))}
    env.update(extra)
    return env


def remote_write_series(payloads: Any) -> list[tuple[dict[str, str], Any]]:
    """(labels, samples) of each time series the remote_write payloads carry, decoded as a receiver does
    (snappy, then the WriteRequest protobuf)."""
    import cramjam

    from agent.sinks.remote_write import pb

    out = []
    for payload in payloads:
        req = pb()["WriteRequest"]()
        req.ParseFromString(bytes(cramjam.snappy.decompress_raw(payload.body)))
        out += [({label.name: label.value for label in ts.labels}, ts.samples) for ts in req.timeseries]
    return out


def refused_alike(env: dict[str, str]) -> str:
    """The one line `tasklens check` and `tasklens run` both print for a configuration they refuse: each exits
    2, with the same stderr and nothing on stdout."""
    check, run = (subprocess.run([TASKLENS, command], env=env, capture_output=True, text=True, timeout=60)
                  for command in ("check", "run"))
    assert check.returncode == run.returncode == 2, (check.stderr, run.stderr)
    assert check.stderr == run.stderr and check.stdout == ""
    (line,) = check.stderr.splitlines()
    return line


class Sidecar:
    """`tasklens run` as a subprocess on free ports; stopped with SIGTERM at the end."""

    def __init__(self, tmp_path: Path, *, stdout: int | None = None, stderr: int | None = None,
                 closed: tuple[int, ...] = (), **env: str | None) -> None:
        """`env`: variables to set; a variable given as None is left unset (to come from a file).
        `stdout`, `stderr`: file descriptors for the sidecar's stdout (EMF records) and stderr (its log);
        by default both go to the log file. `closed`: of fds 0, 1, 2, those the sidecar starts without
        (a shell closes them and execs it: `2>&-`)."""
        self.http_port = free_port()
        self.statsd_port = free_port(socket.SOCK_DGRAM)
        self.log_path = tmp_path / f"sidecar-{self.http_port}.log"
        env.setdefault("TASKLENS_HTTP_ADDR", f"127.0.0.1:{self.http_port}")
        env.setdefault("TASKLENS_STATSD_ADDR", f"127.0.0.1:{self.statsd_port}")
        self._log = open(self.log_path, "wb")
        argv = [TASKLENS, "run"]
        if closed:
            argv = ["sh", "-c", 'exec "$0" run ' + " ".join(f"{fd}<&-" for fd in closed), TASKLENS]
        self.proc = subprocess.Popen(argv, env=clean_env(**{k: v for k, v in env.items() if v is not None}),
                                     stdout=self._log if stdout is None else stdout, stderr=self._log if stderr is None else stderr)
        self.url = f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.url + path)

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_until(lambda: self.get("/health")[0] == 200, timeout, what="sidecar /health")

    def stop(self, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
