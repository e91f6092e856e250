"""The memory HTTP peers can make the sidecar hold: requests that never end their headers.

A peer that sends large headers and never the blank line after them had the sidecar hold about 1.5 MiB
a connection, for up to 4096 connections (1,000 took it to 1.49 GiB). Now a request has at most
HEADERS_MAX header lines, and at most CONNECTIONS_MAX connections are open (over it the oldest one
without a request under way is closed): the memory they can hold is bounded whatever the peers do.
"""

from __future__ import annotations

import socket
import time

from agent.http import CONNECTIONS_MAX, HEADERS_MAX
from tests.reliability.support import rss_bytes, scrape
from tests.support import http_get, wait_until

FIELD = 8000  # under aiohttp's 8190 bytes a line


def half_request(port: int, headers: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-Pad-%d: %s\r\n" % (i, b"a" * FIELD) for i in range(headers - 1))
    try:
        sock.sendall(head)  # never the blank line that ends the headers
    except BlockingIOError:
        pass  # the rest stays in our buffer: the sidecar holds less
    return sock


def test_peers_that_never_end_their_headers_hold_bounded_memory(sidecar_factory) -> None:
    sidecar = sidecar_factory(TASKLENS_STATSD_ADDR="off")
    sidecar.wait_ready()
    before = rss_bytes(sidecar.proc.pid) / 2**20
    held = []
    try:
        for _ in range(3 * CONNECTIONS_MAX):
            held.append(half_request(sidecar.http_port, HEADERS_MAX))
        # every peer accepted (each one past the limit closes an older one), before the 5 s request deadline
        wait_until(lambda: scrape(sidecar).value("tasklens_http_connections_over_limit_total")
                   >= 2 * CONNECTIONS_MAX - 1, 4, what="the peers past the limit")
        time.sleep(0.5)  # and what the last of them sent read
        grown = rss_bytes(sidecar.proc.pid) / 2**20 - before
        over = scrape(sidecar).value("tasklens_http_connections_over_limit_total")
        # 384 peers of 248 KB each: 95 MB sent; what the sidecar holds is bounded by CONNECTIONS_MAX of them
        assert grown < 96, f"RSS grew {grown:.0f} MiB"
        assert over >= 2 * CONNECTIONS_MAX - 1
    finally:
        for sock in held:
            sock.close()
    # one header line more than HEADERS_MAX is refused
    sock = socket.create_connection(("127.0.0.1", sidecar.http_port), timeout=5)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * HEADERS_MAX + b"\r\n")
    assert sock.recv(100).split(b"\r\n")[0].endswith(b" 400 Bad Request")
    sock.close()
    assert http_get(sidecar.url + "/health")[0] == 200
    assert sidecar.stop() == 0
