"""The HTTP listener against peers that connect and do not finish a request: raw sockets on loopback
to a real `tasklens run`."""

from __future__ import annotations

import select
import socket
import time

from agent.http import REQUEST_DEADLINE
from tests.support import http_get

MARGIN = 10.0  # seconds past the deadline a close may take on a loaded machine


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
