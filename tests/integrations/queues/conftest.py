"""Fixtures for the queue tests: a hub with a real Prometheus sink, a controllable clock, and the
brokers that are not always running (beanstalkd, moto's SQS server, RabbitMQ's management plugin),
started by the tests themselves on free ports."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from tests.support import Recorder, free_port

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from agent.sinks.prometheus import PrometheusSink

pytest.register_assert_rewrite("tests.integrations.queues.support")  # its checks assert: show the values
from tests.integrations.queues.support import Clock, Exported, Server, port_open, wait_port  # noqa: E402

IDENTITY = Identity(service="worker", env="test", ecs_cluster="c1", task_id="t1")


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
