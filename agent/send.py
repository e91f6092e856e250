"""`tasklens send LINE...`: one datagram of StatsD lines to the sidecar, for trying things out.

Each line is checked with the sidecar's own parser first, so a typo is reported here (with the
reason the sidecar would count it under) instead of vanishing into a counter.
"""

from __future__ import annotations

import socket

from agent.statsd.parser import MAX_DATAGRAM, ParseError, parse_line

UDP_MAX = 65507  # the largest UDP payload over IPv4


class SendError(ValueError):
    pass


def datagram(lines: list[str]) -> bytes:
    """The lines joined into one datagram; SendError names the first line the sidecar would refuse."""
    encoded = [line.encode() for line in lines]
    # the sidecar reads a datagram line by line: an argument holding newlines is that many lines
    for line in (part for arg in encoded for part in arg.split(b"\n")):
        try:
            parse_line(line)
        except ParseError as exc:
            shown = line[:80].decode(errors="replace") + ("..." if len(line) > 80 else "")
            raise SendError(f"{shown!r} would be refused ({exc.reason})") from None
    body = b"\n".join(encoded)
    if len(body) > min(MAX_DATAGRAM, UDP_MAX):
        raise SendError(f"{len(body)} bytes do not fit in one datagram (at most {UDP_MAX})")
    return body


def send(host: str, port: int, body: bytes) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.sendto(body, (host, port))
