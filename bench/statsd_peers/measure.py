"""What the benchmark reads from the machine: socket drops, CPU and memory of a process tree, and the
rate-controlled sender processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time
from dataclasses import dataclass

import psutil


def parse_udp_drops(text: str, port: int) -> int | None:
    """The kernel's `drops` column of `/proc/net/udp{,6}` for sockets bound to local `port`
    (summed: a server may bind one socket per address family)."""
    total, found = 0, False
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 13 and int(cols[1].rpartition(":")[2], 16) == port:
            total += int(cols[12])
            found = True
    return total if found else None


def udp_drops(port: int, proc: str = "/proc") -> int | None:
    """None when no socket is bound to the port (the server is not listening)."""
    out = None
    for name in ("net/udp", "net/udp6"):
        try:
            with open(os.path.join(proc, name)) as fh:
                drops = parse_udp_drops(fh.read(), port)
        except OSError:
            continue
        if drops is not None:
            out = (out or 0) + drops
    return out


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process and its live children (and of children it has reaped)."""
    total = 0.0
    for p in _tree(pid):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def rss_bytes(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


# -- senders -------------------------------------------------------------------------------------


@dataclass
class Sent:
    sender: int
    datagrams: int
    seconds: float
    errors: int


def _send(sender: int, datagrams: list[bytes], start: int, rate: float, seconds: float,
          addr: tuple[str, int], core: int | None, out: mp.Queue[Sent]) -> None:
    """Send `datagrams` in a cycle from index `start` at `rate` per second for `seconds`: every ~1 ms
    send what is due, but never more than 2 ms worth at once: a sender that was descheduled catches
    up at twice the rate instead of in one burst that only a large socket buffer would absorb."""
    if core is not None:
        os.sched_setaffinity(0, {core})
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(addr)
    send, size = sock.send, len(datagrams)
    pos, sent, errors = start % size, 0, 0
    total = int(rate * seconds)
    burst = max(1, int(rate * 0.002))
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while sent < total:
        now = time.perf_counter()
        if now >= deadline + 0.5:  # the sender cannot keep up: stop, the report shows the real rate
            break
        due = min(total, int((now - t0) * rate) + 1, sent + burst) - sent
        try:
            for _ in range(due):
                send(datagrams[pos])
                sent += 1
                pos = pos + 1 if pos + 1 < size else 0
        except OSError:  # ENOBUFS, or ECONNREFUSED if the server went away: count, go on
            errors += 1
        time.sleep(0.001)
    out.put(Sent(sender, sent, time.perf_counter() - t0, errors))
    sock.close()


def send(pools: list[list[bytes]], starts: list[int], datagrams_per_second: float, seconds: float,
         addr: tuple[str, int], core: int | None) -> list[Sent]:
    """Run one sender process per pool (forked: the pools are shared copy-on-write, not pickled)
    and wait for them; results in pool order."""
    ctx = mp.get_context("fork")
    results: mp.Queue[Sent] = ctx.Queue()
    rate = datagrams_per_second / len(pools)
    procs = [ctx.Process(target=_send, args=(i, pool, start, rate, seconds, addr, core, results), daemon=True)
             for i, (pool, start) in enumerate(zip(pools, starts))]
    for p in procs:
        p.start()
    out = sorted((results.get(timeout=seconds + 30) for _ in procs), key=lambda s: s.sender)
    for p in procs:
        p.join(timeout=5)
    return out
