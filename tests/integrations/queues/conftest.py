"""Fixtures for the queue tests: a hub with a real Prometheus sink, a controllable clock, and the
brokers that are not always running (beanstalkd, moto's SQS server, RabbitMQ's management plugin),
started by the tests themselves on free ports."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import Recorder, free_port  # noqa: F401 (the queue tests import them from here)

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from agent.sinks.prometheus import PrometheusSink

IDENTITY = Identity(service="worker", env="test", ecs_cluster="c1", task_id="t1")


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
                if s.name.startswith("queue_") and s.labels.get("queue") == queue}

    def labels(self, metric: str, queue: str) -> dict[str, str]:
        return next(s.labels for s in self.samples() if s.name == metric and s.labels.get("queue") == queue)


@pytest.fixture
def config() -> Config:
    return Config(queue_poll_interval=0.2, queue_trend_window=10.0, queue_backlog_threshold=5.0)


@pytest.fixture
def hub() -> Hub:
    hub = Hub(IDENTITY)
    hub.add_sink(Recorder())
    hub.add_sink(PrometheusSink(hub.metrics, hub.pull))
    return hub


@pytest.fixture
def recorder(hub: Hub) -> Recorder:
    return hub.sinks[0]  # type: ignore[return-value]


@pytest.fixture
def exported(hub: Hub) -> Exported:
    return Exported(hub.sinks[1])  # type: ignore[arg-type]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def unique() -> str:
    """A name no other test (or engineer) on the shared brokers uses."""
    return "tl-" + uuid.uuid4().hex[:10]


# --- brokers the tests start -----------------------------------------------------------------


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


@pytest.fixture
def beanstalkd(tmp_path: Path) -> Iterator[Server]:
    """beanstalkd on a free port, with a binlog so that its jobs survive a restart."""
    binary = shutil.which("beanstalkd")
    if binary is None:
        pytest.skip("beanstalkd is not installed (Debian package `beanstalkd`)")
    port = free_port()
    (tmp_path / "binlog").mkdir()
    server = Server([binary, "-l", "127.0.0.1", "-p", str(port), "-b", str(tmp_path / "binlog")], port)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_port() -> Iterator[int]:
    """moto's server mode (SQS + CloudWatch) on a free port, for the whole session."""
    server = _moto_server()
    server.start(60.0)
    yield server.port
    server.stop()


def _moto_server(port: int | None = None) -> Server:
    binary = Path(sys.executable).with_name("moto_server")
    if not binary.exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = port or free_port()
    return Server([str(binary), "-H", "127.0.0.1", "-p", str(port)], port)


@pytest.fixture
def moto_factory() -> Iterator[Callable[[int | None], Server]]:
    """A private moto server a test may stop (its state is lost on restart)."""
    started: list[Server] = []

    def make(port: int | None = None) -> Server:
        server = _moto_server(port)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials for the standard AWS chain (moto accepts any)."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


RABBITMQ_MANAGEMENT = "http://127.0.0.1:15672"


@pytest.fixture(scope="session")
def rabbitmq_management() -> str:
    """RabbitMQ's management API: enable the plugin when it is not on (the broker itself runs)."""
    if not port_open(5672):
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")
    if not port_open(15672):
        tool = shutil.which("rabbitmq-plugins")
        if tool is None:
            pytest.skip("rabbitmq-plugins is not available to enable the management API")
        subprocess.run([tool, "enable", "rabbitmq_management"], check=True, capture_output=True, timeout=120)
        wait_port(15672, timeout=60)
    deadline = time.monotonic() + 60
    while True:  # the port opens before the API answers
        try:
            req = urllib.request.Request(RABBITMQ_MANAGEMENT + "/api/overview")
            req.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return RABBITMQ_MANAGEMENT
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("RabbitMQ management API did not answer")
        time.sleep(0.2)


@pytest.fixture
async def stop_event() -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    yield stop
    stop.set()


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
