"""The HTTP listener against peers that connect and do not finish a request: raw sockets on loopback
to a real `tasklens run`."""

from __future__ import annotations

import os
import resource
import select
import socket
import time

import pytest

from agent.http import ANSWERS_AT_ONCE, REQUEST_DEADLINE, STALL_DEADLINE
from tests.support import http_get, wait_until

MARGIN = 10.0  # seconds past the deadline a close may take on a loaded machine
LOW_SOFT_LIMIT = 1024  # open files: docker's default soft limit


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(REQUEST_DEADLINE + MARGIN)
    return sock


def closed_by_peer(sock: socket.socket, trickle: bytes = b"") -> bool:
    """Reads until the sidecar closes the connection (True) or the deadline and margin pass (False),
    sending `trickle` one byte each half second meanwhile (never a complete request)."""
    deadline = time.monotonic() + REQUEST_DEADLINE + MARGIN
    sent = 0
    while time.monotonic() < deadline:
        if sent < len(trickle):
            try:
                sock.send(trickle[sent:sent + 1])
            except OSError:  # reset: closed
                return True
            sent += 1
        readable, _, _ = select.select([sock], [], [], 0.5)  # the trickle's pace, or the close
        if readable:
            try:
                if not sock.recv(65536):
                    return True
            except OSError:
                return True
    return False


def test_connections_without_a_complete_request_are_closed_and_scrapes_go_on(sidecar_factory) -> None:
    sidecar = sidecar_factory()
    sidecar.wait_ready()
    silent = [connect(sidecar.http_port) for _ in range(50)]
    partial = [connect(sidecar.http_port) for _ in range(5)]
    for sock in partial:  # a request line and a header, never the blank line that ends them
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    idle = connect(sidecar.http_port)  # one request, then kept open and silent
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")
    trickling = connect(sidecar.http_port)
    try:
        status, body = http_get(sidecar.url + "/metrics")  # served while all of them are held open
        assert status == 200 and "tasklens_" in body
        assert closed_by_peer(trickling, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100)
        assert all(closed_by_peer(sock) for sock in silent + partial + [idle])
        assert http_get(sidecar.url + "/metrics")[0] == 200
    finally:
        for sock in silent + partial + [idle, trickling]:
            sock.close()
    assert sidecar.stop() == 0


def large_exposition(sidecar) -> None:
    """Fills the sidecar with 60,000 wide counters, each its own family: over 10 MB of `/metrics`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as statsd:
        for i in range(0, 60_000, 40):
            statsd.sendto(b"\n".join(b"stalled.reader.padding.%s.%d:1|c|#k:%s" % (b"x" * 150, n, b"v" * 100)
                                     for n in range(i, i + 40)), ("127.0.0.1", sidecar.statsd_port))
            if i % 4000 == 0:
                time.sleep(0.05)  # no kernel drops: every series arrives
    until_big = time.monotonic() + 60
    while len(http_get(sidecar.url + "/metrics", timeout=10)[1]) < 10_000_000:
        assert time.monotonic() < until_big, "the exposition never grew past 10 MB"
        time.sleep(0.5)


def test_metrics_requests_whose_peer_hung_up_cost_nothing_and_are_counted(sidecar_factory) -> None:
    """200 peers that ask for a large `/metrics` and hang up at once: each one waited its turn, then
    rendered and wrote for nobody (a scrape behind them took 21.7 s, and nothing was counted)."""
    sidecar = sidecar_factory(TASKLENS_FLUSH_INTERVAL="1")
    sidecar.wait_ready()
    large_exposition(sidecar)
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", sidecar.http_port), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    started = time.monotonic()
    assert http_get(sidecar.url + "/metrics", timeout=60)[0] == 200
    assert time.monotonic() - started < 5.0  # one rendering and a write, not 200
    wait_until(lambda: abandoned(http_get(sidecar.url + "/metrics", timeout=10)[1], "gone") > 0, 10,
               what="the hang-ups counted")
    assert sidecar.stop() == 0


@pytest.mark.parametrize("stalled, within", [
    (3, STALL_DEADLINE),  # more than the scrape slots
    (8, STALL_DEADLINE),
    (ANSWERS_AT_ONCE - 1, STALL_DEADLINE),  # as many as can be written at once, with the scrape
    (ANSWERS_AT_ONCE + 8, 2 * STALL_DEADLINE),  # more: the scrape waits for the first ones to be dropped
])
def test_peers_that_ask_for_metrics_and_stop_reading_are_dropped_and_scrapes_go_on(sidecar_factory, stalled,
                                                                                   within) -> None:
    """Peers that ask for a large `/metrics` and never read: each held one of the two scrape slots
    until its write deadline, and every other scrape waited (44 s behind 8 of them)."""
    sidecar = sidecar_factory(TASKLENS_FLUSH_INTERVAL="1")
    sidecar.wait_ready()
    large_exposition(sidecar)
    readers = []
    for _ in range(stalled):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", sidecar.http_port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
        readers.append(sock)
    try:
        time.sleep(1.0)  # they are being served, stalled
        started = time.monotonic()
        assert http_get(sidecar.url + "/metrics", timeout=60)[0] == 200
        assert time.monotonic() - started < within
        wait_until(lambda: abandoned(http_get(sidecar.url + "/metrics", timeout=10)[1], "stalled") >= stalled,
                   within + MARGIN, what="every peer that stopped reading dropped")
    finally:
        for sock in readers:
            sock.close()
    assert sidecar.stop() == 0


def abandoned(exposition: str, reason: str) -> float:
    """`tasklens_http_scrapes_abandoned_total` for one reason (`gone`, `stalled`)."""
    found = [line for line in exposition.splitlines()
             if line.startswith("tasklens_http_scrapes_abandoned_total") and f'reason="{reason}"' in line]
    return float(found[0].split()[-1]) if found else 0.0


def test_held_connections_leave_health_answerable_under_a_low_open_files_limit(sidecar_factory) -> None:
    """Docker's soft limit on open files is often 1024, its hard one far higher: 1,100 connections held
    open took every descriptor, and `/health` (and the resource poll) failed with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * LOW_SOFT_LIMIT:
        pytest.skip(f"the hard limit on open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_SOFT_LIMIT, hard))  # the sidecar inherits it
    try:
        sidecar = sidecar_factory()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    sidecar.wait_ready()
    held = [connect(sidecar.http_port) for _ in range(LOW_SOFT_LIMIT + 100)]
    try:
        assert http_get(sidecar.url + "/health")[0] == 200  # within REQUEST_DEADLINE: they are all held
    finally:
        for sock in held:
            sock.close()
    assert sidecar.stop() == 0


def test_connections_over_the_limit_close_the_oldest_idle_ones_and_health_answers(sidecar_factory) -> None:
    """With a hard limit of 1024 open files too (nothing to raise), 1,100 connections held open took
    every descriptor: `/health` and the resource poll failed with EMFILE."""
    sidecar = sidecar_factory()
    # before it reads the limit at start (its imports alone take longer than this)
    resource.prlimit(sidecar.proc.pid, resource.RLIMIT_NOFILE, (LOW_SOFT_LIMIT, LOW_SOFT_LIMIT))
    sidecar.wait_ready()
    assert resource.prlimit(sidecar.proc.pid, resource.RLIMIT_NOFILE) == (LOW_SOFT_LIMIT, LOW_SOFT_LIMIT)
    held = [connect(sidecar.http_port) for _ in range(LOW_SOFT_LIMIT + 100)]
    try:
        assert http_get(sidecar.url + "/health")[0] == 200  # within REQUEST_DEADLINE: they are all held
        assert len(os.listdir(f"/proc/{sidecar.proc.pid}/fd")) < LOW_SOFT_LIMIT
        status, body = http_get(sidecar.url + "/metrics", timeout=10)
        assert status == 200 and over_limit(body) > 0
    finally:
        for sock in held:
            sock.close()
    assert sidecar.stop() == 0
    assert "Too many open files" not in sidecar.log


def over_limit(exposition: str) -> float:
    found = [line for line in exposition.splitlines() if line.startswith("tasklens_http_connections_over_limit_total")]
    return float(found[0].split()[-1]) if found else 0.0



def test_a_connection_closed_over_the_limit_is_not_also_counted_as_its_peer_gone() -> None:
    """A request read from a connection the limit closed finds its transport closing: that is counted
    once, as over the limit (`ConnectionLimit`), not a second time as a scrape whose peer hung up (a
    review counted 1,174 closings for 1,100 peers)."""
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request

    from agent.http import CLOSED_KEPT, closed_here, gone

    transport = mock.Mock()
    transport.is_closing.return_value = True
    hung_up, by_the_limit = mock.Mock(), mock.Mock()
    closed_here(by_the_limit)
    assert gone(make_mocked_request("GET", "/metrics", protocol=hung_up, transport=transport))
    assert not gone(make_mocked_request("GET", "/metrics", protocol=by_the_limit, transport=transport))
    for _ in range(CLOSED_KEPT):  # bounded: the oldest are let go
        closed_here(mock.Mock())
    assert gone(make_mocked_request("GET", "/metrics", protocol=by_the_limit, transport=transport))
    transport.is_closing.return_value = False
    assert not gone(make_mocked_request("GET", "/metrics", protocol=hung_up, transport=transport))


MALFORMED = {  # each answered 400 by aiohttp itself, before any handler or middleware
    "header_too_long": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    "too_many_headers": b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(40)) + b"\r\n",
    "not_http": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello\r\n\r\n",
    "bad_version": b"GET /health HTTP/9\r\n\r\n",
    "bad_header_name": b"GET /health HTTP/1.1\r\nBad Header: 1\r\n\r\n",
    "bad_content_length": b"POST /health HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
}


def errors_total(exposition: str, reason: str) -> float:
    found = [line for line in exposition.splitlines()
             if line.startswith("tasklens_http_errors_total{") and f'reason="{reason}"' in line]
    assert found, f"tasklens_http_errors_total{{reason={reason!r}}} not exported"
    return float(found[0].split()[-1])


def test_malformed_requests_get_their_400_each_counted_and_health_answers(sidecar_factory) -> None:
    """aiohttp answers a malformed request itself (its 400 never reaches the middleware): each is counted
    in `tasklens_http_errors_total{reason="bad_request"}`, a good request on the next connection answers."""
    sidecar = sidecar_factory()
    sidecar.wait_ready()
    assert errors_total(http_get(sidecar.url + "/metrics")[1], "bad_request") == 0
    assert errors_total(http_get(sidecar.url + "/metrics")[1], "server_error") == 0
    for name, request in MALFORMED.items():
        with connect(sidecar.http_port) as sock:
            sock.sendall(request)
            answer = sock.recv(65536)
        assert answer.split(b" ", 2)[1] == b"400", (name, answer[:100])
    wait_until(lambda: errors_total(http_get(sidecar.url + "/metrics")[1], "bad_request") == len(MALFORMED), 10)
    status, body = http_get(sidecar.url + "/metrics")
    assert status == 200 and errors_total(body, "server_error") == 0
    assert http_get(sidecar.url + "/health")[0] == 200
    assert sidecar.stop() == 0


async def test_a_failing_handler_is_counted_as_a_server_error_and_a_malformed_request_as_bad() -> None:
    """The counting logger with aiohttp's real request handlers: a handler that raises gets aiohttp's 500
    (`server_error`), a malformed request its 400 (`bad_request`); a good answer counts nothing."""
    import asyncio

    from aiohttp import web

    from agent.http import CountingLogger
    from agent.selfmetrics import SelfMetrics

    async def fails(request: web.Request) -> web.Response:
        raise RuntimeError("a defect")

    async def fine(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/fails", fails)
    app.router.add_get("/fine", fine)
    metrics = SelfMetrics()
    runner = web.AppRunner(app, access_log=None, logger=CountingLogger(metrics))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    async def ask(request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        answer = await reader.read(65536)
        writer.close()
        return answer

    try:
        assert (await ask(b"GET /fine HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).split(b" ")[1] == b"200"
        assert (await ask(b"GET /fails HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).split(b" ")[1] == b"500"
        assert (await ask(MALFORMED["bad_version"])).split(b" ")[1] == b"400"
    finally:
        await runner.cleanup()
    counted = {r: metrics.get("tasklens.http.errors", reason=r) for r in ("bad_request", "server_error")}
    assert counted == {"bad_request": 1, "server_error": 1}
