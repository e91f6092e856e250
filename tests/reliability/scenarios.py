"""The long-running reliability scenarios, parameterised by size and duration.

The suite runs them short (tests/reliability/test_load.py, test_cardinality.py); `bench/soak.py`
runs them for minutes and prints the numbers. Each returns what it measured; the callers decide
what to assert or print.

Load: the sidecar as a real process with everything on at once: ECS polling (the emulator serving a
Fargate capture), queue polling (its own redis-server), `/metrics` scraped every second, and StatsD
counter traffic at a steady rate over UDP. Cardinality storm: one-off names over a Unix datagram
socket (which blocks the sender instead of dropping, so the counts are exact whatever the speed).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.emulator import container_id
from tests.conftest import FIXTURES, TASKLENS, Sidecar, clean_env, free_port, wait_until
from tests.reliability.support import (CounterTraffic, least_squares_slope, redis_server, rss_bytes, scrape,
                                       statsd_lines, status)

TASK = str(FIXTURES / "fargate-2023.task.json")
STATS = str(FIXTURES / "fargate-2023.stats.json")
QUEUE_DEPTH = 42
DD_AGENT_WORKING_SET = 156_966_912.0  # worked by hand in the ECS spec for this capture


class Emulator:
    """`tasklens emulate-ecs` serving the Fargate capture, as a process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([TASKLENS, "emulate-ecs", "--task", TASK, "--stats", STATS,
                                      "--addr", f"127.0.0.1:{self.port}"], env=clean_env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}/v4/{container_id(TASK)}"

        def up() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        wait_until(up, 20, what="the ECS emulator")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@dataclass
class LoadResult:
    seconds: float
    lines_sent: int
    datagrams_sent: int
    lines_received: int
    expected: dict[tuple[str, str], float]
    exported: dict[tuple[str, str], float]
    socket_drops: float
    parse_errors: float
    rss: list[tuple[float, int]]  # (seconds since start, bytes)
    flush_durations: list[float]
    flush_interval: float
    queue_depth: float | None
    working_set: float | None
    ecs_poll_errors: float
    queue_poll_errors: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lost_lines(self) -> int:
        return self.lines_sent - self.lines_received

    def rss_slope(self, warmup: float) -> float:
        """Bytes per second, least squares over the samples after `warmup` seconds."""
        points = [(t, r) for t, r in self.rss if t >= warmup]
        return least_squares_slope([t for t, _ in points], [r for _, r in points])

    def rss_growth(self, warmup: float) -> int:
        after = [r for t, r in self.rss if t >= warmup]
        return max(after) - after[0]


def run_load(tmp_path: Path, seconds: float, lines_per_second: float, contexts: int = 500,
             flush_interval: float = 2.0) -> LoadResult:
    redis = redis_server(tmp_path)
    redis.start()
    emulator = Emulator()
    sidecar = None
    try:
        import redis as redis_client

        r = redis_client.Redis(port=redis.port)
        r.delete("jobs")
        r.rpush("jobs", *range(QUEUE_DEPTH))
        sidecar = Sidecar(tmp_path, ECS_CONTAINER_METADATA_URI_V4=emulator.url,
                          TASKLENS_QUEUES=f"redis://127.0.0.1:{redis.port}/0?list=jobs&interval=1",
                          TASKLENS_POLL_INTERVAL="1", TASKLENS_FLUSH_INTERVAL=str(flush_interval))
        wait_until(lambda: sidecar.get("/ready")[0] == 200, 30, what="sidecar ready")

        traffic = CounterTraffic("load", contexts)
        pool = list(traffic.datagrams(contexts))  # cycled through; each datagram's sums are known
        lines_per_datagram = traffic.lines / len(pool)
        per_second = lines_per_second / lines_per_datagram
        sums_per_datagram = _per_datagram_sums(traffic, pool)

        rss: list[tuple[float, int]] = []
        flushes: list[float] = []
        sent_counts = [0] * len(pool)
        stop = threading.Event()
        started = time.monotonic()

        def watch() -> None:  # an operator's view once a second: RSS, a Prometheus scrape
            while not stop.wait(1.0):
                rss.append((time.monotonic() - started, rss_bytes(sidecar.proc.pid)))
                flushes.append(scrape(sidecar).value("tasklens_statsd_flush_duration_seconds"))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        datagrams = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            address = ("127.0.0.1", sidecar.statsd_port)
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                i = datagrams % len(pool)
                sock.sendto(pool[i], address)
                sent_counts[i] += 1
                datagrams += 1
                ahead = datagrams / per_second - (time.perf_counter() - t0)
                if ahead > 0.001:
                    time.sleep(ahead)
            elapsed = time.perf_counter() - t0
        lines_sent = sum(c * pool[i].count(b"\n") + c for i, c in enumerate(sent_counts))
        try:
            wait_until(lambda: statsd_lines(sidecar) >= lines_sent, 30, what="every line received")
        except AssertionError:
            pass  # lost lines: reported, and the caller's assertion says how many
        lines_received = statsd_lines(sidecar)
        expected: dict[tuple[str, str], float] = {}
        for i, c in enumerate(sent_counts):
            for key, v in sums_per_datagram[i].items():
                expected[key] = expected.get(key, 0.0) + c * v
        # the last interval is exported at the next flush boundary
        try:
            wait_until(lambda: traffic.exported(scrape(sidecar)) == expected, flush_interval * 3 + 5,
                       what="every counter exported")
        except AssertionError:
            pass
        stop.set()
        watcher.join()
        final = scrape(sidecar)
        result = LoadResult(
            seconds=elapsed, lines_sent=lines_sent, datagrams_sent=datagrams, lines_received=lines_received,
            expected=expected, exported=traffic.exported(final),
            socket_drops=final.value("tasklens_statsd_socket_drops_total"),
            parse_errors=final.value("tasklens_statsd_parse_errors_total"),
            rss=rss, flush_durations=flushes, flush_interval=flush_interval,
            queue_depth=final.value("queue_depth", queue="jobs") if final.has("queue_depth") else None,
            working_set=final.value("ecs_container_memory_working_set_bytes", container_name="dd-agent")
            if final.has("ecs_container_memory_working_set_bytes") else None,
            ecs_poll_errors=final.value("tasklens_ecs_poll_errors_total"),
            queue_poll_errors=final.value("tasklens_queue_poll_errors_total"),
        )
        result.extra["status"] = status(sidecar)["components"]["statsd"]
        result.extra["ecs_polls"] = final.value("tasklens_ecs_polls_total")
        result.extra["queue_polls"] = final.value("tasklens_queue_polls_total")
        result.extra["cpu_seconds"] = sum(psutil_cpu(sidecar.proc.pid))
        code = sidecar.stop()
        result.extra["exit_code"] = code
        return result
    finally:
        if sidecar is not None and sidecar.proc.poll() is None:
            sidecar.proc.kill()
            sidecar.proc.wait()
        emulator.stop()
        redis.kill()


def psutil_cpu(pid: int) -> tuple[float, float]:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user, t.system


def _per_datagram_sums(traffic: CounterTraffic, pool: list[bytes]) -> list[dict[tuple[str, str], float]]:
    """What each datagram of the pool adds to each series (parsed back from its own bytes)."""
    out = []
    for datagram in pool:
        sums: dict[tuple[str, str], float] = {}
        for line in datagram.split(b"\n"):
            name, _, rest = line.partition(b":")
            value, _, tail = rest.partition(b"|")
            shard = tail.split(b"#shard:")[1].split(b",")[0].decode()
            key = (name.decode(), shard)
            sums[key] = sums.get(key, 0.0) + float(value)
        out.append(sums)
    return out
