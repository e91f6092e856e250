"""`TASKLENS_HTTP_ADDR=[::]:port` listens on one dual-stack socket, as StatsD's `::` does: IPv4 and IPv6
clients both reach it."""

from __future__ import annotations

import socket

import pytest

from tests.support import free_port, http_get, wait_until


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6 or not socket.has_dualstack_ipv6():
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) or no dual-stack sockets on this machine")
def test_unspecified_ipv6_address_answers_both_families(sidecar_factory) -> None:
    port = free_port()
    sidecar = sidecar_factory(TASKLENS_HTTP_ADDR=f"[::]:{port}")
    wait_until(lambda: http_get(f"http://[::1]:{port}/health")[0] == 200, what="/health over ::1")
    assert http_get(f"http://127.0.0.1:{port}/health")[0] == 200
    assert f"HTTP on [::]:{port} (" in sidecar.log


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) or no dual-stack sockets on this machine")
def test_unspecified_ipv6_address_with_the_port_taken_over_ipv4_serves_ipv6(sidecar_factory) -> None:
    """Another process on 127.0.0.1:port (an app in the same network namespace): `[::]:port` served
    IPv6 before the dual-stack socket, and still does, with a warning, instead of refusing to start."""
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        sidecar = sidecar_factory(TASKLENS_HTTP_ADDR=f"[::]:{port}")
        wait_until(lambda: http_get(f"http://[::1]:{port}/health")[0] == 200, what="/health over ::1")
        assert "the port is taken over IPv4" in sidecar.log
