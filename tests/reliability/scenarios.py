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
from tests.support import FIXTURES, TASKLENS, Sidecar, clean_env, free_port, wait_until
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
        try:
            wait_until(up, 20, what="the ECS emulator")
        except AssertionError:
            self.stop()
            raise

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
    socket_drops: float  # datagrams the kernel dropped (its own counter for the socket)
    packets_received: float
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

    @property
    def accounted(self) -> bool:
        """Every datagram sent was either received or dropped by the kernel and counted as such."""
        return self.packets_received + self.socket_drops == self.datagrams_sent

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
    emulator = sidecar = None
    try:
        import redis as redis_client

        redis.start()
        emulator = Emulator()

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
        scrapes: list[float] = []
        sent_counts = [0] * len(pool)
        stop = threading.Event()
        started = time.monotonic()

        def watch() -> None:  # an operator's view once a second: RSS, a Prometheus scrape
            while not stop.wait(1.0):
                rss.append((time.monotonic() - started, rss_bytes(sidecar.proc.pid)))
                t = time.monotonic()
                flushes.append(scrape(sidecar).value("tasklens_statsd_flush_duration_seconds"))
                scrapes.append(time.monotonic() - t)

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
            wait_until(lambda: traffic.exported(scrape(sidecar)) == expected, flush_interval * 3 + 30,
                       what="every counter exported")
        except AssertionError:
            pass
        try:  # /metrics copies the receive counters once a second: let the copy catch up
            wait_until(lambda: (lambda s: s.value("tasklens_statsd_packets_total")
                                + s.value("tasklens_statsd_socket_drops_total") >= datagrams)(scrape(sidecar)),
                       10, what="the receive counters on /metrics")
        except AssertionError:
            pass
        stop.set()
        watcher.join()
        final = scrape(sidecar)
        result = LoadResult(
            seconds=elapsed, lines_sent=lines_sent, datagrams_sent=datagrams, lines_received=lines_received,
            expected=expected, exported=traffic.exported(final),
            socket_drops=final.value("tasklens_statsd_socket_drops_total"),
            packets_received=final.value("tasklens_statsd_packets_total"),
            parse_errors=final.value("tasklens_statsd_parse_errors_total"),
            rss=rss, flush_durations=flushes, flush_interval=flush_interval,
            queue_depth=final.value("queue_depth", queue="jobs") if final.has("queue_depth") else None,
            working_set=final.value("ecs_container_memory_working_set_bytes", container_name="dd-agent")
            if final.has("ecs_container_memory_working_set_bytes") else None,
            ecs_poll_errors=final.value("tasklens_ecs_poll_errors_total"),
            queue_poll_errors=final.value("tasklens_queue_poll_errors_total"),
        )
        result.extra["status"] = status(sidecar)["components"]["statsd"]
        result.extra["scrape_seconds"] = scrapes
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
        if emulator is not None:
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


@dataclass
class StormResult:
    names: int
    max_contexts: int
    seconds_sending: float
    keep_expected: dict[str, float]
    keep_exported: dict[str, float]
    contexts_after_storm: float
    contexts_dropped: float
    cardinality_errors: float  # new contexts refused: at the cap, or while the receive side was behind
    lines_sent: int
    lines_received: int
    storm_series_exported: int  # storm series on /metrics right after the storm
    storm_series_after_ttl: int
    contexts_after_ttl: float
    new_context_after_ttl: float  # a counter sent after the TTL: accepted again?
    rss_baseline: int
    rss_peak: int
    rss_after_ttl: int
    scrape_seconds: float  # one /metrics scrape right after the storm (with the cap full)


KEEP = 10  # contexts that exist before the storm and are sent all through it


def run_storm(tmp_path: Path, names: int, max_contexts: int, ttl: float, prometheus_ttl: float = 5.0,
              flush_interval: float = 1.0) -> StormResult:
    """`names` one-off counter names over a Unix socket, with KEEP long-lived counters throughout.

    The context TTL must outlast the storm, else its first names expire and make room for later ones.
    """
    path = str(tmp_path / "dsd.socket")
    sidecar = Sidecar(tmp_path, TASKLENS_STATSD_SOCKET=path, TASKLENS_STATSD_ADDR="off",
                      TASKLENS_STATSD_MAX_CONTEXTS=str(max_contexts), TASKLENS_STATSD_CONTEXT_TTL=str(ttl),
                      TASKLENS_PROMETHEUS_TTL=str(prometheus_ttl), TASKLENS_FLUSH_INTERVAL=str(flush_interval))
    try:
        sidecar.wait_ready()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.connect(path)  # blocking: a full receive queue makes the sender wait, never drops
        keep: dict[str, float] = {}
        sent_lines = 0

        def send_keep(round_: int) -> None:
            nonlocal sent_lines
            lines = [f"keep.c{i}:{round_ % 5 + 1}|c|#storm:no".encode() for i in range(KEEP)]
            for i in range(KEEP):
                keep[f"keep_c{i}_total"] = keep.get(f"keep_c{i}_total", 0.0) + round_ % 5 + 1
            sock.send(b"\n".join(lines))
            sent_lines += KEEP

        def exported_keep() -> dict[str, float]:
            s = scrape(sidecar)
            return {n: v for n, l, v in s.samples if n.startswith("keep_c") and l.get("storm") == "no"}

        for r in range(3):
            send_keep(r)
        wait_until(lambda: exported_keep() == keep, 10 + 3 * flush_interval, what="the long-lived counters")
        time.sleep(1.0)
        baseline = rss_bytes(sidecar.proc.pid)

        peak = [baseline]
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.2):
                peak.append(rss_bytes(sidecar.proc.pid))
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()

        started = time.perf_counter()
        per_datagram = 3000
        for first in range(0, names, per_datagram):
            lines = [b"storm.n%d:1|c" % i for i in range(first, min(first + per_datagram, names))]
            sock.send(b"\n".join(lines))
            sent_lines += len(lines)
            send_keep(first // per_datagram)  # the existing contexts keep being updated during the storm
        sending = time.perf_counter() - started
        # /metrics copies the receive counters once a second: wait for the copy, not just /status
        wait_until(lambda: scrape(sidecar).value("tasklens_statsd_lines_total") >= sent_lines, 120,
                   what="every storm line received")
        wait_until(lambda: exported_keep() == keep, 60 + 3 * flush_interval, what="the long-lived counters")
        # a flush reaches /metrics in chunks (server.py `_publish_paused`): the one that completed the
        # long-lived counters may still be publishing the storm's series; once the flush counter has
        # moved on from here, it is published whole
        flushes = scrape(sidecar).value("tasklens_statsd_flushes_total")
        wait_until(lambda: scrape(sidecar).value("tasklens_statsd_flushes_total") > flushes, 10 + 3 * flush_interval,
                   what="a whole flush after the long-lived counters")
        t = time.monotonic()
        after = scrape(sidecar)
        scrape_seconds = time.monotonic() - t
        received = int(after.value("tasklens_statsd_lines_total"))
        storm_sent, keep_sent = sent_lines, dict(keep)
        storm_exported = sum(1 for n, _, _ in after.samples if n.startswith("storm_n"))
        contexts_after_storm = after.value("tasklens_statsd_contexts")
        dropped = after.value("tasklens_statsd_contexts_dropped_total")
        # a storm that leaves the receive side over a quarter behind is refused as `overload` until it
        # catches up (docs/statsd.md): as fast as a loaded machine takes it, part of it is
        cardinality = sum(after.value("tasklens_statsd_parse_errors_total", reason=reason)
                          for reason in ("cardinality_limit", "overload"))
        keep_exported = exported_keep()

        # the storm stops; the long-lived counters go on; the one-off contexts expire after the TTL
        deadline = time.monotonic() + ttl + prometheus_ttl * 2 + 3 * flush_interval + 20
        r = 1000
        while time.monotonic() < deadline:
            send_keep(r)
            r += 1
            s = scrape(sidecar)
            if s.value("tasklens_statsd_contexts") == KEEP and not any(n.startswith("storm_n") for n, _, _ in s.samples):
                break
            time.sleep(0.5)
        sock.send(b"after.storm:7|c")
        wait_until(lambda: scrape(sidecar).has("after_storm_total"), 10 + 3 * flush_interval, what="a new context")
        time.sleep(1.0)
        stop.set()
        watcher.join()
        final = scrape(sidecar)
        sock.close()
        return StormResult(
            names=names, max_contexts=max_contexts, seconds_sending=sending, keep_expected=keep_sent,
            keep_exported=keep_exported, contexts_after_storm=contexts_after_storm, contexts_dropped=dropped,
            cardinality_errors=cardinality, lines_sent=storm_sent, lines_received=received,
            storm_series_exported=storm_exported,
            storm_series_after_ttl=sum(1 for n, _, _ in final.samples if n.startswith("storm_n")),
            contexts_after_ttl=final.value("tasklens_statsd_contexts"),
            new_context_after_ttl=final.value("after_storm_total"),
            rss_baseline=baseline, rss_peak=max(peak), rss_after_ttl=rss_bytes(sidecar.proc.pid),
            scrape_seconds=scrape_seconds,
        )
    finally:
        if sidecar.proc.poll() is None:
            sidecar.proc.kill()
            sidecar.proc.wait()


@dataclass
class DatadogFaultsResult:
    sent: dict[str, float]  # phase -> counter total sent in that phase
    delivered: dict[str, float]  # phase -> what the intake accepted (rate x interval, summed)
    answered_500: int
    broken: dict[str, int]  # by the proxy: resets, black-holed requests
    intake_errors: list[str]
    metrics: Any  # the final Scrape
    recovery_seconds: float  # from the end of the blackout to the first accepted request
    exit_code: int
    log: str


DD_KEY = "0123456789abcdef0123456789abcdef"


async def run_datadog_faults(tmp_path: Path, phases: list[tuple[str, float]]) -> DatadogFaultsResult:
    """The sidecar exporting to the strict intake through a `FaultProxy`; `phases` are (fault, seconds)
    with faults `ok`, `http_500`, `timeout`, `reset`, `blackout` (connection refused). A counter is
    sent all through each phase; at the end the intake must hold each phase's total exactly once."""
    import asyncio

    from datadog.dogstatsd import DogStatsd

    from tests.reliability.support import FaultProxy, poll
    from tests.sinks.intake import Intake, start_intake

    async for intake in start_intake(Intake(DD_KEY)):
        proxy = FaultProxy(int(intake.url.rsplit(":", 1)[1]))
        await proxy.start()
        sidecar = Sidecar(tmp_path, DD_API_KEY=DD_KEY, DD_DD_URL=proxy.url, TASKLENS_FLUSH_INTERVAL="1",
                          TASKLENS_DATADOG_TIMEOUT="1", TASKLENS_SHUTDOWN_TIMEOUT="10")
        statsd = DogStatsd(host="127.0.0.1", port=sidecar.statsd_port, disable_telemetry=True,
                           disable_buffering=True)
        sent: dict[str, float] = {}
        blackout_end = None
        try:
            await poll(lambda: sidecar.get("/ready")[0] == 200, 30, "sidecar ready")
            for i, (fault, seconds) in enumerate(phases):
                phase = f"{i}-{fault}"
                intake.always(500 if fault == "http_500" else None)
                await proxy.set_mode({"ok": "pass", "http_500": "pass", "timeout": "blackhole", "reset": "reset",
                                      "blackout": "refuse"}[fault])
                end = time.monotonic() + seconds
                accepted = len([r for r in intake.requests if r[1] == 202])
                n = 0

                def going_on() -> bool:
                    if time.monotonic() < end:
                        return True
                    # a recovery phase lasts until the exporter delivered again (its backoff from the
                    # fault before may outlast the phase), so that each fault meets a fresh exporter
                    return (fault == "ok" and time.monotonic() < end + 60
                            and len([r for r in intake.requests if r[1] == 202]) == accepted)
                while going_on():
                    n += 1
                    statsd.increment("faults.sent", n % 3 + 1, tags=[f"phase:{phase}"])
                    sent[phase] = sent.get(phase, 0.0) + n % 3 + 1
                    await asyncio.sleep(0.05)
                if fault == "blackout":
                    blackout_end = time.monotonic()
                    accepted_before = len([r for r in intake.requests if r[1] == 202])
            intake.always(None)
            await proxy.set_mode("pass")
            recovery = 0.0
            if blackout_end is not None:
                await poll(lambda: len([r for r in intake.requests if r[1] == 202]) > accepted_before, 120,
                           "the first accepted request after the blackout")
                recovery = time.monotonic() - blackout_end

            def delivered() -> dict[str, float]:
                out: dict[str, float] = {}
                for _, value, tags, _kind, interval in intake.points("faults.sent"):
                    phase = next(t for t in tags if t.startswith("phase:"))[len("phase:"):]
                    out[phase] = out.get(phase, 0.0) + value * (interval or 1)
                return out
            await poll(lambda: delivered() == sent, 120, "every phase's counter delivered")
            await poll(lambda: scrape(sidecar).value("tasklens_exporter_buffer_points") == 0, 30, "empty buffer")
            final = scrape(sidecar)
            got = delivered()
            code = await asyncio.to_thread(sidecar.stop)
        finally:
            statsd.close_socket()
            if sidecar.proc.poll() is None:
                sidecar.proc.kill()
                sidecar.proc.wait()
            await proxy.stop()
        return DatadogFaultsResult(sent=sent, delivered=got,
                                   answered_500=sum(1 for _, status in intake.requests if status == 500),
                                   broken=dict(proxy.broken), intake_errors=list(intake.errors), metrics=final,
                                   recovery_seconds=recovery, exit_code=code, log=sidecar.log)
    raise AssertionError("the intake did not start")
