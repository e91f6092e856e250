"""`tasklens send LINE...`: one datagram of StatsD lines to the sidecar, for trying things out.

Each line is checked with the sidecar's own parser first, so a typo is reported here (with the
reason the sidecar would count it under) instead of vanishing into a counter. Without `--addr` the
lines go where `tasklens run` listens: the same settings, read by the same `config.load`.
"""

from __future__ import annotations

import os
import socket

from agent.config import Config
from agent.statsd.parser import MAX_DATAGRAM, ParseError, parse_line

UDP_MAX = 65507  # the largest UDP payload over IPv4
EXAMPLE = "jobs.processed:1|c"


class SendError(ValueError):
    pass


def datagram(lines: list[str], limit: int = UDP_MAX) -> bytes:
    """The lines joined into one datagram of at most `limit` bytes (`UDP_MAX`, or `MAX_DATAGRAM` to a
    Unix socket); SendError names the first line the sidecar would refuse or skip (an empty line: the
    sidecar would receive nothing for it). A line is sent as its bytes were given: an argument that
    is not UTF-8 (`$'users.seen:\\xff|s'`) is the bytes the sidecar would receive from a client."""
    encoded = [os.fsencode(line) for line in lines]
    # the sidecar reads a datagram line by line: an argument holding newlines is that many lines
    for line in (part for arg in encoded for part in arg.split(b"\n")):
        shown = line[:80].decode(errors="replace") + ("..." if len(line) > 80 else "")
        try:
            empty = not line.strip() or parse_line(line) is None
        except ParseError as exc:
            raise SendError(f"{shown!r} would be refused ({exc.reason})") from None
        if empty:
            raise SendError(f"{shown!r} is an empty line: expected a StatsD line such as {EXAMPLE!r}")
    body = b"\n".join(encoded)
    if len(body) > min(MAX_DATAGRAM, limit):
        raise SendError(f"{len(body)} bytes do not fit in one datagram (at most {min(MAX_DATAGRAM, limit)})")
    return body


def listener(config: Config) -> tuple[str, int] | str:
    """Where a sidecar with this configuration receives StatsD: its UDP address (a wildcard host is
    reached on loopback), else its Unix socket path."""
    if config.statsd_addr is not None:
        host, port = config.statsd_addr
        if port == 0:  # "any free port": only the running sidecar knows which
            raise SendError("TASKLENS_STATSD_ADDR (or statsd_addr in the file) has port 0, any free port: "
                            "pass --addr")
        return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port
    if config.statsd_socket:
        return config.statsd_socket
    raise SendError("StatsD is off (TASKLENS_STATSD_ADDR or statsd_addr in the file is off, and no "
                    "TASKLENS_STATSD_SOCKET): pass --addr")


def send(target: tuple[str, int] | str, body: bytes) -> None:
    """One datagram to a `(host, port)` over UDP, or to a Unix datagram socket path."""
    if isinstance(target, str):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(body, target)
        return
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.sendto(body, target)
