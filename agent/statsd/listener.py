"""Sockets for the StatsD endpoint and the kernel's drop counters: the I/O edge, no parsing here.

UDP on `host:port` (IPv4 and IPv6: `0.0.0.0`/`::` bind one dual-stack socket, `127.0.0.1`/`localhost`
also bind `::1` when the machine has IPv6, since clients resolve `localhost` either way) and a Unix
datagram socket. Each socket asks for a large receive buffer: drops happen when the buffer fills
during a pause of the reader, and the kernel counts them in `/proc/net/udp*` (read by `udp_drops`).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger("tasklens")

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux: past net.core.rmem_max with CAP_NET_ADMIN


@dataclass
class Listener:
    name: str  # `udp:127.0.0.1:8125`, `udp:[::1]:8125`, `unix:/run/tasklens/dsd.socket`
    sock: socket.socket
    rcvbuf: int  # what the kernel granted (it doubles the request for its bookkeeping)
    inode: int  # to find the socket in /proc/net/udp*
    address: tuple[str, int] | str  # the bound address: the real port when 0 was asked for


def set_rcvbuf(sock: socket.socket, size: int) -> int:
    for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            break
        except OSError:
            continue
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def _listener(name: str, sock: socket.socket, rcvbuf: int) -> Listener:
    sock.setblocking(False)
    granted = set_rcvbuf(sock, rcvbuf)  # Linux doubles what it grants (the double is what it reports)
    if granted < 2 * rcvbuf:
        log.warning("StatsD %s: receive buffer %d bytes requested, %d granted; raise net.core.rmem_max "
                    "(sysctl) or give CAP_NET_ADMIN to avoid drops under load", name, rcvbuf, granted // 2)
    addr = sock.getsockname()
    return Listener(name, sock, granted, os.fstat(sock.fileno()).st_ino,
                    addr if isinstance(addr, str) else (addr[0], addr[1]))


def _bind_udp(family: int, host: str, port: int, dual_stack: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _udp_name(host: str, port: int) -> str:
    return f"udp:[{host}]:{port}" if ":" in host else f"udp:{host}:{port}"


def open_udp(host: str, port: int, rcvbuf: int) -> list[Listener]:
    """Bind the UDP listener(s) for `host:port`; raises OSError naming the address when it cannot."""
    try:
        if host in ("", "0.0.0.0", "::"):
            try:
                sock = _bind_udp(socket.AF_INET6, "::", port, dual_stack=True)
            except OSError as exc:
                if host == "::" or exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    raise
                sock = _bind_udp(socket.AF_INET, "0.0.0.0", port)  # no IPv6 on this machine
            port = sock.getsockname()[1]
            return [_listener(_udp_name(host or "0.0.0.0", port), sock, rcvbuf)]
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        addresses = list(dict.fromkeys((family, str(sockaddr[0])) for family, _, _, _, sockaddr in infos))
        first_family, first_host = addresses[0]
        sock = _bind_udp(first_family, first_host, port)
    except OSError as exc:
        raise OSError(exc.errno, f"StatsD UDP listener on {host}:{port} (TASKLENS_STATSD_ADDR): "
                                 f"{exc.strerror or exc}") from None
    port = sock.getsockname()[1]  # the real port when 0 was asked for
    listeners = [_listener(_udp_name(first_host, port), sock, rcvbuf)]
    extra = addresses[1:]
    if host in ("127.0.0.1", "localhost") and (socket.AF_INET6, "::1") not in addresses and socket.has_ipv6:
        extra.append((socket.AF_INET6, "::1"))
    for family, address in extra:  # companions are best effort: the main address is what was asked for
        try:
            listeners.append(_listener(_udp_name(address, port), _bind_udp(family, address, port), rcvbuf))
        except OSError as exc:
            log.info("StatsD: not listening on %s port %d too: %s", address, port, exc.strerror or exc)
    return listeners


def open_unix(path: str, rcvbuf: int) -> Listener:
    """Bind a Unix datagram socket; a stale socket file left by a crash is replaced, a live one is not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, f"StatsD socket {path} (TASKLENS_STATSD_SOCKET): exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # nobody is bound to it
        except OSError as exc:  # bound by a socket of another type (EPROTOTYPE), not ours to look at (EACCES)...
            raise OSError(exc.errno, f"StatsD socket {path} (TASKLENS_STATSD_SOCKET): in use or not ours to "
                                     f"replace ({exc.strerror or exc})") from None
        else:
            raise OSError(errno.EADDRINUSE, f"StatsD socket {path} (TASKLENS_STATSD_SOCKET): in use by another process")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o666)  # worker containers on the shared volume run as other users
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"StatsD socket {path} (TASKLENS_STATSD_SOCKET): {exc.strerror or exc}") from None
    return _listener(f"unix:{path}", sock, rcvbuf)


def udp_drops(tables: Mapping[str, str]) -> dict[int, int]:
    """Socket inode -> drops, from the text of `/proc/net/udp` and `/proc/net/udp6` (last column)."""
    out: dict[int, int] = {}
    for text in tables.values():
        lines = text.splitlines()
        if not lines:
            continue
        header = lines[0].split()
        try:
            # the header splits `tx_queue rx_queue` and `tr tm->when` that rows join with `:`; both
            # come before `inode`, so counting from the end matches rows and header
            inode_col, drops_col = header.index("inode") - len(header), header.index("drops") - len(header)
        except ValueError:
            continue
        for line in lines[1:]:
            cols = line.split()
            try:
                out[int(cols[inode_col])] = int(cols[drops_col])
            except (IndexError, ValueError):
                continue
    return out


def read_udp_tables(proc: str = "/proc") -> dict[str, str]:
    out = {}
    for name in ("udp", "udp6"):
        try:
            with open(os.path.join(proc, "net", name)) as fh:
                out[name] = fh.read()
        except OSError:
            continue
    return out
