"""The reason a failed poll is counted under, for what each client sees when the broker is not there, is
not a broker, or closes the connection: a refused port is `connection` at once (not the poll's timeout),
an answer in another protocol is `bad_reply`, a connection closed by the server is `connection`.

The "brokers" here are local asyncio TCP servers (a free port nothing listens on, a server that answers
garbage, one that accepts and closes); the forced close is the real RabbitMQ's, through its management API.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import psutil
import pytest

from tests.integrations.queues.support import port_open, private_server
from tests.support import free_port, until
from integrations.queues.source import POLL_ERRORS, QueueSource

TIMEOUT = 10.0  # the poll's: an immediate failure must come well within it
PROMPT = 4.0  # generous on a shared 2-core machine, still far from TIMEOUT

HTTP_400 = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
RANDOM = bytes(range(14, 250)) + b"\r\n"  # no line end until the last two bytes: a line of garbage
# RESP of the wrong shape or framing for Redis' handshake (HELLO answers a map holding `proto`, SELECT `+OK`)
HELLO_3 = b"%1\r\n+proto\r\n:3\r\n"
NOT_HELLO = {"ok": b"+OK\r\n", "negative": b":-5\r\n", "array": b"*1\r\n:1\r\n", "null": b"_\r\n",
             "proto-2": b"%1\r\n+proto\r\n:2\r\n", "no-proto": b"%1\r\n+server\r\n+redis\r\n",
             "bare-lf": b"+OK\n", "random-lf": bytes(range(14, 250)) + b"\n"}

URLS = {
    "redis": "redis://127.0.0.1:{port}/0?list=jobs",
    "redis-db": "redis://127.0.0.1:{port}/1?list=jobs",  # SELECT after HELLO
    "nats": "nats://127.0.0.1:{port}?stream=JOBS&consumer=worker",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:{port}/?queue=jobs",
    "management": "amqp://guest:guest@127.0.0.1:5672/?queue=jobs&management=http://127.0.0.1:{port}",
}

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    """Start a TCP server on loopback with a connection handler; its port."""
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def answers(garbage: bytes) -> Handler:
    """Answers `garbage` to whatever the client sends (a command, a protocol header), connection kept open."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(65536):
                writer.write(garbage)
                await writer.drain()
        finally:
            writer.close()
    return handler


def greets(garbage: bytes) -> Handler:
    """Speaks first, as a NATS server does, but garbage; connection kept open."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(garbage)
        try:
            while await reader.read(65536):
                pass
        finally:
            writer.close()
    return handler


def answers_and_closes(garbage: bytes) -> Handler:
    """Reads the client's first bytes, answers `garbage` and closes, as an HTTP server does on a bad request."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(garbage)
        await writer.drain()
        writer.close()
    return handler


async def closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts and closes at once (a load balancer or a container port with nothing behind it)."""
    writer.close()


async def failed_poll(config, hub, url: str) -> tuple[str, float]:
    """One poll of `url` that must fail: (the one reason it was counted under, seconds it took)."""
    source = QueueSource(config, hub, f"{url}&timeout={TIMEOUT:g}")
    started = time.monotonic()
    assert not await source.poll()
    elapsed = time.monotonic() - started
    counted = {r: n for r in POLL_ERRORS if (n := hub.metrics.get("tasklens.queue.poll_errors", queue=source.queue,
                                                                    reason=r))}
    assert len(counted) == 1 and sum(counted.values()) == 1, counted
    await source._close()
    return next(iter(counted)), elapsed


@pytest.mark.parametrize("kind", list(URLS))
async def test_refused_port_is_connection_at_once(config, hub, kind):
    reason, elapsed = await failed_poll(config, hub, URLS[kind].format(port=free_port()))
    assert (reason, kind) == ("connection", kind)
    assert elapsed < PROMPT  # nats-py retried every 2 s until the poll timed out


@pytest.mark.parametrize("kind, handler", [
    ("redis", answers(HTTP_400)),
    ("redis", answers(RANDOM)),
    ("nats", greets(HTTP_400)),
    ("nats", greets(RANDOM)),
    ("rabbitmq", answers_and_closes(HTTP_400)),
    ("rabbitmq", answers_and_closes(RANDOM)),
    ("management", answers(RANDOM)),
    ("management", answers_and_closes(RANDOM)),
], ids=["redis-http", "redis-random", "nats-http", "nats-random", "rabbitmq-http", "rabbitmq-random",
        "management-random", "management-random-close"])
async def test_garbage_answer_is_bad_reply_at_once(config, hub, serve, kind, handler):
    port = await serve(handler)
    reason, elapsed = await failed_poll(config, hub, URLS[kind].format(port=port))
    assert (reason, kind) == ("bad_reply", kind)
    assert elapsed < PROMPT


@pytest.mark.parametrize("kind, answer", [("redis", a) for a in NOT_HELLO.values()] + [("redis-db", HELLO_3)],
                         ids=[*NOT_HELLO, "hello-then-no-ok-to-select"])
async def test_redis_answer_of_the_wrong_shape_is_bad_reply_at_once(config, hub, serve, kind, answer):
    """Valid RESP that is not what Redis answers (redis-py raised an AttributeError on `+OK` to HELLO:
    `error`), and lines ended by a bare LF on an open connection (redis-py: "closed by server")."""
    port = await serve(answers(answer))
    reason, elapsed = await failed_poll(config, hub, URLS[kind].format(port=port))
    assert (reason, answer) == ("bad_reply", answer)
    assert elapsed < PROMPT


@pytest.mark.parametrize("kind", list(URLS))
async def test_accepted_then_closed_is_connection_at_once(config, hub, serve, kind):
    port = await serve(closes)
    reason, elapsed = await failed_poll(config, hub, URLS[kind].format(port=port))
    assert (reason, kind) == ("connection", kind)
    assert elapsed < PROMPT


# --- what real brokers say ----------------------------------------------------------------------


@pytest.fixture
def nats_with_password(tmp_path):
    with private_server("nats-server", lambda binary, port: [
            binary, "-a", "127.0.0.1", "-p", str(port), "--user", "worker", "--pass", "right", "-js", "-sd",
            str(tmp_path)]) as server:
        yield server


async def test_nats_refused_credentials_are_auth(config, hub, nats_with_password):
    # nats-py raises the server's -ERR 'Authorization Violation' at connect as a plain nats Error
    url = f"nats://worker:wrong@127.0.0.1:{nats_with_password.port}?stream=JOBS&consumer=worker"
    reason, elapsed = await failed_poll(config, hub, url)
    assert reason == "auth"
    assert elapsed < PROMPT


# the JetStream API subjects a poll publishes to: a user lacking any of them is refused that request
NATS_POLL_SUBJECTS = {"consumer_info": "$JS.API.CONSUMER.INFO.>", "stream_info": "$JS.API.STREAM.INFO.>",
                      "msg_get": "$JS.API.STREAM.MSG.GET.>"}


@pytest.fixture
def nats_with_users(tmp_path):
    """A NATS server with an `admin` user and a `worker` user per subject of a poll, who may use every
    other subject of a poll but that one."""
    users = ["{user: admin, password: admin}"]
    for missing in NATS_POLL_SUBJECTS:
        allowed = ", ".join(f'"{s}"' for k, s in NATS_POLL_SUBJECTS.items() if k != missing)
        users.append(f'{{user: "no_{missing}", password: p, permissions: {{publish: {{allow: [{allowed}]}}, '
                     f'subscribe: {{allow: ["_INBOX.>"]}}}}}}')

    def argv(binary: str, port: int) -> list[str]:
        conf = tmp_path / "nats.conf"
        conf.write_text(f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: "{tmp_path}" }}\n'
                        f"authorization {{ users = [\n{chr(10).join(users)}\n] }}\n")
        return [binary, "-c", str(conf)]

    with private_server("nats-server", argv) as server:
        yield server


@pytest.mark.parametrize("missing", list(NATS_POLL_SUBJECTS))
async def test_nats_request_the_user_may_not_make_is_auth_at_once(config, hub, nats_with_users, missing):
    """The server answers a refused request with a permissions violation, which nats-py only passes to
    the error callback: without `_ask`, the poll waited out its timeout and was counted as `timeout`."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    port = nats_with_users.port
    nc = await nats.connect(f"nats://admin:admin@127.0.0.1:{port}")
    js = nc.jetstream()
    await js.add_stream(name="JOBS", subjects=["jobs.>"])
    await js.add_consumer("JOBS", ConsumerConfig(durable_name="worker", ack_policy=AckPolicy.EXPLICIT))
    await js.publish("jobs.a", b"waiting")  # a backlog: the poll asks for the oldest message's age
    try:
        url = f"nats://no_{missing}:p@127.0.0.1:{port}?stream=JOBS&consumer=worker"
        reason, elapsed = await failed_poll(config, hub, url)
        assert reason == "auth"
        assert elapsed < PROMPT
        # the user with every subject polls (the server itself refuses nothing else)
        source = QueueSource(config, hub, f"nats://admin:admin@127.0.0.1:{port}?stream=JOBS&consumer=worker")
        assert await source.poll(), source.last_error
        await source._close()
    finally:
        await nc.close()


@pytest.mark.skipif(not port_open(5672), reason="RabbitMQ is not running on 127.0.0.1:5672")
async def test_rabbitmq_unknown_vhost_is_connection(config, hub, unique):
    # the broker answers Connection.Open with Connection.Close (NOT_ALLOWED): it closed the connection
    reason, elapsed = await failed_poll(config, hub, f"amqp://guest:guest@127.0.0.1:5672/{unique}?queue=jobs")
    assert reason == "connection"
    assert elapsed < PROMPT


# --- a real connection the real broker closes ---------------------------------------------------


def _amqp_ports() -> set[int]:
    """Local ports of this process's established connections to RabbitMQ."""
    return {c.laddr.port for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port == 5672 and c.status == psutil.CONN_ESTABLISHED}


def _close_connection(management: str, name: str) -> bool:
    """DELETE /api/connections/{name} (the management API's force close, as `rabbitmqctl close_connection`);
    False while the API does not list the connection yet (its statistics lag)."""
    request = urllib.request.Request(f"{management}/api/connections/{urllib.parse.quote(name, safe='')}",
                                     method="DELETE")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    request.add_header("X-Reason", "tasklens test: forced close")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status in (200, 204)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise AssertionError(f"DELETE {name}: HTTP {exc.code} {json.loads(exc.read() or b'{}')}") from None


@pytest.mark.skipif(not port_open(5672), reason="RabbitMQ is not running on 127.0.0.1:5672")
async def test_rabbitmq_connection_closed_by_the_broker_is_connection(config, hub, unique, rabbitmq_management):
    setup = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    try:
        await (await setup.channel()).declare_queue(unique, auto_delete=False)
        before = _amqp_ports()
        source = QueueSource(config, hub, f"amqp://guest:guest@127.0.0.1:5672/?queue={unique}&timeout={TIMEOUT:g}")
        assert await source.poll(), source.last_error
        (port,) = _amqp_ports() - before  # the probe's connection
        name = f"127.0.0.1:{port} -> 127.0.0.1:5672"
        await until(lambda: asyncio.to_thread(_close_connection, rabbitmq_management, name), timeout=30,
                    what=f"the management API to close {name}")
        await until(lambda: port not in _amqp_ports(), what="the broker's close to reach the client")

        started = time.monotonic()
        assert not await source.poll()
        assert time.monotonic() - started < PROMPT
        assert hub.metrics.get("tasklens.queue.poll_errors", queue=unique, reason="connection") == 1
        assert hub.metrics.get("tasklens.queue.poll_errors", queue=unique, reason="error") == 0
        assert "CONNECTION_FORCED" in (source.last_error or "")
        # the next poll reconnects
        assert await source.poll(), source.last_error
        await source._close()
    finally:
        await (await setup.channel()).queue_delete(unique)
        await setup.close()
