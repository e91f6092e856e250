"""Helpers of the queue tests (the fixtures are in conftest.py): waiting for ports and values, a clock
moved by hand, the exported series, broker processes started on free ports, and the drain and
backing-up checks every broker's test runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.sinks.prometheus import PrometheusSink
from tests.support import free_port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 20.0, up: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while port_open(port) != up:
        if time.monotonic() > deadline:
            raise AssertionError(f"port {port} not {'open' if up else 'closed'} after {timeout} s")
        time.sleep(0.05)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 15.0, interval: float = 0.1) -> Any:
    """Await `check()` until it returns a truthy value or stops raising AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await check()
            if value:
                return value
            error: Exception = AssertionError(f"still falsy: {value!r}")
        except AssertionError as exc:
            error = exc
        if time.monotonic() > deadline:
            raise error
        await asyncio.sleep(interval)


class Clock:
    """A monotonic clock the test moves by hand, so a trend's time axis is exact."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


# the backlog-per-task series every poll adds (agent/scaling/backlog.py), checked in tests/scaling
SCALING_SERIES = ("queue_backlog", "queue_tasks_estimate")


class Exported:
    """The Prometheus sink's /metrics text, parsed with prometheus_client's own parser."""

    def __init__(self, sink: PrometheusSink) -> None:
        self.sink = sink

    def samples(self) -> list[Any]:
        text = generate_latest(self.sink.registry).decode()
        return [s for family in text_string_to_metric_families(text) for s in family.samples]

    def queue(self, queue: str) -> dict[str, float]:
        """`{metric name: value}` of one queue's series (name without the `queue_` prefix)."""
        return {s.name.removeprefix("queue_"): s.value for s in self.samples()
                if s.name.startswith("queue_") and s.labels.get("queue") == queue
                and not s.name.startswith(SCALING_SERIES)}

    def labels(self, metric: str, queue: str) -> dict[str, str]:
        return next(s.labels for s in self.samples() if s.name == metric and s.labels.get("queue") == queue)


class Server:
    """A broker process on a fixed free port that a test can stop and start again."""

    def __init__(self, argv: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.argv, self.port, self.env = argv, port, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.argv[0]} did not listen on {self.port} within {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        wait_port(self.port, up=False)


@contextlib.contextmanager
def private_server(binary: str, argv: Callable[[str, int], list[str]]) -> Iterator[Server]:
    """A broker of our own (`argv(path to binary, free port)`), started, stopped after; the test is
    skipped where the binary is not installed."""
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed")
    port = free_port()
    server = Server(argv(path, port), port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def step_polls(source: Any, clock: Clock, change: Callable[[], Awaitable[None]], steps: int) -> None:
    """Poll `steps` times one simulated second apart, calling `change()` between polls."""
    for i in range(steps):
        assert await source.poll(), source.last_error
        if i < steps - 1:
            await change()
            clock.advance(1.0)


async def check_drain(source: Any, clock: Clock, exported: Exported, take: Callable[[int], Awaitable[None]],
                      depth: int, rate: int = 2, steps: int = 7) -> None:
    """Drain `rate` messages per simulated second from a queue holding `depth`, and check the trend.

    The config's window is 10 s: the trend appears once the polls span 5 s (half the window).
    """
    for i in range(steps):
        assert await source.poll(), source.last_error
        values = exported.queue(source.queue)
        assert values["depth"] == depth - rate * i
        if i < 5:
            assert "growth_rate" not in values and "backing_up" not in values, values
        if i < steps - 1:
            await take(rate)
            clock.advance(1.0)
    left = depth - rate * (steps - 1)
    assert values["growth_rate"] == pytest.approx(-rate, rel=1e-9)
    assert values["drain_seconds"] == pytest.approx(left / rate, rel=1e-9)
    assert values["backing_up"] == 0.0


async def check_backing_up(source: Any, clock: Clock, exported: Exported, put: Callable[[int], Awaitable[None]],
                           rate: int = 3, steps: int = 7) -> None:
    """Add `rate` messages per simulated second (threshold 5 in `config`): backing up, no drain estimate."""
    await step_polls(source, clock, lambda: put(rate), steps)
    values = exported.queue(source.queue)
    assert values["growth_rate"] == pytest.approx(rate, rel=1e-9)
    assert values["backing_up"] == 1.0
    assert "drain_seconds" not in values
