"""Helpers for the reliability suite: read a running sidecar from outside, generate exact traffic,
measure memory, and the faults the suite injects (a TCP proxy that resets, black-holes or refuses,
and brokers the tests start and restart themselves).

The sidecar runs as a real process (`tests.support.Sidecar`); everything here looks at it the way an
operator would: its `/metrics`, its `/status`, its log, its RSS.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.sinks.prometheus import metric_name
from tests.support import Sidecar, free_port, http_get, until, wait_until

Labels = frozenset[tuple[str, str]]


# --- reading the sidecar ------------------------------------------------------------------------


class Scrape:
    """One `/metrics` exposition, parsed with prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum over the series of `name` whose labels include `labels` (0 when there is none)."""
        return sum(v for n, l, v in self.samples if n == name and all(l.get(k) == x for k, x in labels.items()))

    def has(self, name: str, **labels: str) -> bool:
        return any(n == name and all(l.get(k) == x for k, x in labels.items()) for n, l, _ in self.samples)

    def series(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [(l, v) for n, l, v in self.samples if n == name]

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """`{label value: value}` of `name`, summed over its other labels."""
        out: dict[str, float] = {}
        for n, l, v in self.samples:
            if n == name and label in l:
                out[l[label]] = out.get(l[label], 0.0) + v
        return out


def scrape(sidecar: Sidecar, timeout: float = 30.0) -> Scrape:
    # a long timeout: /metrics with 100,000 series takes seconds to render
    code, text = http_get(sidecar.url + "/metrics", timeout)
    assert code == 200, text
    return Scrape(text)


def status(sidecar: Sidecar) -> dict[str, Any]:
    code, text = sidecar.get("/status")
    assert code == 200, text
    return json.loads(text)


def statsd_lines(sidecar: Sidecar) -> int:
    return int(status(sidecar)["components"]["statsd"]["lines"])


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def least_squares_slope(xs: Iterable[float], ys: Iterable[float]) -> float:
    """The slope of the least-squares line through the points (e.g. RSS bytes per second)."""
    x, y = list(xs), list(ys)
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx if sxx else 0.0


# --- exact traffic ----------------------------------------------------------------------------


@dataclass
class CounterTraffic:
    """Counter lines over `contexts` series with integer values, packed into datagrams of up to
    `size` bytes: every sum is exact, so "sent" and "exported" can be compared with `==`."""

    prefix: str
    contexts: int
    size: int = 1432
    expected: dict[tuple[str, str], float] = field(default_factory=dict)  # (name, shard) -> sum sent
    lines: int = 0

    def name(self, i: int) -> tuple[str, str]:
        return f"{self.prefix}.c{i % 97}", f"s{i}"

    def datagrams(self, count: int, start: int = 0) -> Iterator[bytes]:
        """`count` datagrams; line k of the run has value (k % 7) + 1 on context k % contexts."""
        k = start
        for _ in range(count):
            parts: list[bytes] = []
            length = 0
            while True:
                name, shard = self.name(k % self.contexts)
                line = f"{name}:{k % 7 + 1}|c|#shard:{shard},load:yes".encode()
                if length + len(line) + 1 > self.size:
                    break
                parts.append(line)
                length += len(line) + 1
                key = (name, shard)
                self.expected[key] = self.expected.get(key, 0.0) + (k % 7 + 1)
                k += 1
            self.lines += len(parts)
            yield b"\n".join(parts)

    def exported(self, scrape: Scrape) -> dict[tuple[str, str], float]:
        """What the sidecar exports for the traffic's series, keyed like `expected`."""
        names = {metric_name(n) + "_total": n for n, _ in self.expected}
        return {(names[n], labels["shard"]): v for n, labels, v in scrape.samples
                if n in names and labels.get("load") == "yes"}


# --- faults -----------------------------------------------------------------------------------


class FaultProxy:
    """A TCP proxy in front of a server, to break the connection the way networks do.

    Modes: `pass` (forward), `reset` (accept, then close with RST: ECONNRESET for the client),
    `blackhole` (accept and read, never answer: the client times out), and `refuse` (the port is
    closed: ECONNREFUSED). Counts the connections it broke per mode.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.mode = "pass"
        self.broken: dict[str, int] = {"reset": 0, "blackhole": 0}
        self.forwarded = 0
        self._server: asyncio.base_events.Server | None = None
        self._held: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def set_mode(self, mode: str) -> None:
        for w in self._held:
            w.transport.abort()
        self._held.clear()
        if mode == "refuse":
            await self.stop()
        elif self._server is None:
            await self.start()
        self.mode = mode

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        if mode == "reset":
            self.broken["reset"] += 1
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if mode == "blackhole":
            self.broken["blackhole"] += 1
            self._held.append(writer)
            try:
                while await reader.read(65536):
                    pass
            except (ConnectionError, OSError):
                pass
            return
        self.forwarded += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, request: bool) -> None:
            try:
                while data := await src.read(65536):
                    if request and self.mode != "pass":
                        # a kept-alive connection must not bypass a fault: break it before the
                        # request reaches the server (so the server never sees it: no duplicates)
                        self.broken[self.mode] = self.broken.get(self.mode, 0) + 1
                        writer.transport.abort()
                        break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                try:
                    dst.close()
                except Exception:
                    pass

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))


class BrokerProcess:
    """A broker on a fixed free port that the test can kill and start again (same port, same data)."""

    def __init__(self, argv: list[str], port: int) -> None:
        self.argv, self.port = argv, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"{self.argv[0]} exited"
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        wait_until(listening, timeout, what=f"{self.argv[0]} on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: a crash, not a clean shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


def redis_server(tmp_path: Path) -> BrokerProcess:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package `redis-server`)")
    port = free_port()
    (tmp_path / "redis").mkdir(exist_ok=True)
    # append-only file: the list survives a kill -9 and a restart, as on a real broker
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
            "--appendfsync", "always", "--dir", str(tmp_path / "redis")]
    return BrokerProcess(argv, port)


def beanstalkd_server(tmp_path: Path) -> BrokerProcess:
    binary = shutil.which("beanstalkd")
    if binary is None:
        pytest.skip("beanstalkd is not installed (Debian package `beanstalkd`)")
    port = free_port()
    (tmp_path / "binlog").mkdir(exist_ok=True)
    return BrokerProcess([binary, "-l", "127.0.0.1", "-p", str(port), "-b", str(tmp_path / "binlog"), "-f", "0"],
                         port)


class FlakyMetadata:
    """An ECS metadata endpoint (v4 paths) whose `/task` answer follows `mode`; `/task/stats` always
    answers, so that each failed poll has exactly one cause. Counts the `/task` requests per mode.

    Modes: `ok`, `http_500`, `slow` (answers after `slow_seconds`), `garbage` (truncated JSON),
    `wrong_shape` (valid JSON that is not a task), `refused` (the port is closed).
    """

    BODIES = {"garbage": b'{"Cluster": "c1", "TaskARN": "arn:aws:ecs:eu-west-1:1:task/c1/ab", "Contain',
              "wrong_shape": b'["not", "a", "task"]'}

    def __init__(self, task: bytes, stats: bytes, slow_seconds: float = 2.0) -> None:
        self.task, self.stats = task, stats
        self.slow_seconds = slow_seconds
        self.mode = "ok"
        self.served: dict[str, int] = {}
        self.port = free_port()
        self._runner: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v4/x"

    async def _task(self, request: Any) -> Any:
        from aiohttp import web

        mode = self.mode
        self.served[mode] = self.served.get(mode, 0) + 1
        if mode == "http_500":
            return web.Response(status=500, text='"agent error"', content_type="application/json")
        if mode == "slow":
            await asyncio.sleep(self.slow_seconds)
        return web.Response(body=self.BODIES.get(mode, self.task), content_type="application/json")

    async def _stats(self, request: Any) -> Any:
        from aiohttp import web

        return web.Response(body=self.stats, content_type="application/json")

    async def set_mode(self, mode: str) -> None:
        if mode == "refused":
            await self.stop()
        elif self._runner is None:
            await self.start()
        self.mode = mode

    async def start(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/v4/x/task", self._task)
        app.router.add_get("/v4/x/task/stats", self._stats)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None



# --- many live contexts (stalls, memory) -------------------------------------------------------


def context_datagrams(prefix: str, contexts: int, per_datagram: int = 40) -> list[bytes]:
    """One counter line (value 1) for each of `contexts` distinct contexts, `per_datagram` a datagram."""
    lines = [f"{prefix}.m{i % 100}:1|c|#id:{i}".encode() for i in range(contexts)]
    return [b"\n".join(lines[k:k + per_datagram]) for k in range(0, contexts, per_datagram)]


def send_paced(sidecar: Sidecar, datagrams: list[bytes], step: int = 100, timeout: float = 120.0) -> int:
    """Send `datagrams` `step` at a time, each step only once the sidecar counted its lines: a first
    sighting of a context is slow (parsed in Python), and a burst of them would overflow the socket
    buffer. Returns the sidecar's line count afterwards."""
    want = statsd_lines(sidecar)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for k in range(0, len(datagrams), step):
            for d in datagrams[k:k + step]:
                s.sendto(d, ("127.0.0.1", sidecar.statsd_port))
                want += sum(1 for line in d.split(b"\n") if line)
            wait_until(lambda: statsd_lines(sidecar) >= want, timeout, interval=0.02, what=f"{want} lines counted")
    return statsd_lines(sidecar)


class SteadyLoad:
    """A thread sending `datagrams` to the sidecar over and over, the whole list once per `period`
    seconds (every context touched in every interval), until `stop()`."""

    def __init__(self, port: int, datagrams: list[bytes], period: float = 1.0) -> None:
        self.port, self.datagrams, self.period = port, datagrams, period
        self.rounds = 0
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SteadyLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(30)

    def _run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not self._halt.is_set():
                started = time.monotonic()
                for d in self.datagrams:
                    s.sendto(d, ("127.0.0.1", self.port))
                self.rounds += 1
                self._halt.wait(max(0.0, self.period - (time.monotonic() - started)))


def latency(url: str, timeout: float = 5.0) -> float:
    """Seconds for one GET of `url` to answer 200 (a new connection each time, as a health checker)."""
    started = time.perf_counter()
    code, _ = http_get(url, timeout)
    took = time.perf_counter() - started
    assert code == 200, code
    return took


# --- the worst input within the StatsD limits (bench/worst_case_memory.py, test_hostile_memory.py) ---


def memory_sidecar(tmp: Path, flush: float, ttl: int = 10) -> tuple[Sidecar, int, RssSampler]:
    """A ready sidecar whose contexts expire `ttl` s after their last line and series `ttl` s after their
    last update (at least two flushes: `Config.series_ttl`), scraped once (the first rendering's memory is
    part of its baseline): the sidecar, its RSS now, and a sampler of its peak RSS from now on."""
    sidecar = Sidecar(tmp, TASKLENS_FLUSH_INTERVAL=f"{flush:g}", TASKLENS_STATSD_CONTEXT_TTL=str(ttl),
                      TASKLENS_PROMETHEUS_TTL=str(ttl))
    try:
        sidecar.wait_ready()
        scrape(sidecar)
    except BaseException:
        sidecar.stop()
        raise
    return sidecar, rss_bytes(sidecar.proc.pid), RssSampler(sidecar.proc.pid)


class RssSampler:
    """The peak RSS of a process, sampled every `every` seconds on a thread until `stop()`."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._halt = threading.Event()
        self._every = every
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._halt.is_set():
            try:
                self.peak = max(self.peak, int(self.process.memory_info().rss))
            except psutil.Error:
                return
            self._halt.wait(self._every)

    def stop(self) -> int:
        self._halt.set()
        self._thread.join(5)
        return self.peak


def tag_storm(contexts: int, start: int = 0) -> list[bytes]:
    """One line per context, each at both tag limits (100 tags, ~4,000 bytes), every tag unique to its
    context: the most memory a context can hold (nothing shared), charged the least per byte held."""
    out = []
    for i in range(start, start + contexts):
        tags = ",".join(f"k{j:02d}:{i:08d}{'x' * 24}" for j in range(100))
        out.append(f"hostile.tags.{i}:1|c|#{tags}".encode())
    return out


def shared_tag_storm(contexts: int) -> list[bytes]:
    """One counter line per context, distinct names, every one with the same 100 tags (a 4,000-byte tag
    field): the tags are charged once (the tag pool), so the context count is reached before the context
    bytes, and every series' labels are charged again by the Prometheus sink (its label bytes fill)."""
    tags = ",".join(f"k{j:02d}:" + "v" * 34 for j in range(100)).encode()
    return [b"hostile.shared.%d:1|c|#%s" % (i, tags) for i in range(contexts)]


def event_storm(count: int, text_bytes: int = 60_000) -> list[bytes]:
    """`count` events of ~60 KB each (one per datagram): past the per-interval event bytes."""
    text = "e" * text_bytes
    return [f"_e{{{len(str(i)) + 6},{len(text)}}}:event {i}|{text}|#storm:yes".encode() for i in range(count)]


def histogram_flood(values: int, per_line: int = 6_000, salt: int = 0, rates: int = 1) -> list[bytes]:
    """`values` distinct timer values of one context, `per_line` packed in each line (`flood.latency:
    0.37:0.74:...|ms`), a line a datagram: the most histogram values a worker can send per byte. With
    `rates` > 1, the lines take turns among that many spellings of the sample rate 1 (none, `@1.0`,
    `@1.00`, ...): as many slots of the context, whose values are sorted with their weights as for
    mixed rates, while every value still counts once."""
    out = []
    for n, start in enumerate(range(salt * values, (salt + 1) * values, per_line)):
        packed = ":".join(f"{(i * 0.37) % 1e6:.2f}" for i in range(start, min((salt + 1) * values, start + per_line)))
        rate = "|@1." + "0" * (n % rates) if n % rates else ""
        out.append(f"flood.latency:{packed}|ms{rate}|#flood:yes".encode())
    return out


def set_storm(contexts: int, members: int, member_bytes: int = 32, salt: int = 0) -> list[bytes]:
    """`members` distinct members of `member_bytes` bytes spread over `contexts` sets, ~60 KB datagrams."""
    lines = [b"hostile.set.%d:%0*d|s" % (m % contexts, member_bytes, m + salt * members) for m in range(members)]
    per = 60_000 // (len(lines[0]) + 1)
    return [b"\n".join(lines[k:k + per]) for k in range(0, len(lines), per)]


async def poll(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    """`until` for a blocking predicate (HTTP to the sidecar): it runs in a thread."""
    return await until(predicate, timeout, what, interval=0.1, in_thread=True)
