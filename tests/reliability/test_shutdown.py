"""Shutdown and crash of the sidecar process itself.

SIGTERM while a Datadog request is in flight (the intake holds its answer): the in-flight request
completes, the partial StatsD interval is flushed, every increment is delivered exactly once, and
the process exits 0 within its shutdown timeout. SIGTERM while the intake fails: the process still
exits in time and logs how many points it could not deliver. SIGKILL of the sidecar alone: the
worker's StatsD sends (UDP and Unix socket, the real client) neither block nor raise, and reach the
sidecar again once it is restarted on the same addresses.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from datadog.dogstatsd import DogStatsd

from tests.support import Sidecar, environ_of, free_port, wait_until
from tests.reliability.scenarios import DD_KEY
from tests.reliability.support import SteadyLoad, context_datagrams, poll, scrape, send_paced
from tests.sinks.intake import Intake, start_intake

WORKER = str(Path(__file__).with_name("worker.py"))


class TracingIntake(Intake):
    """The strict intake, also counting requests that started (to know one is in flight)."""

    def __init__(self, api_key: str) -> None:
        super().__init__(api_key)
        self.started = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.started += 1
        return await super().handle(request)


def delivered(intake: Intake, metric: str) -> float:
    return sum(value * (interval or 1) for _, value, _, _, interval in intake.points(metric))


@pytest.mark.slow
async def test_sigterm_during_a_flush_delivers_everything_once(tmp_path) -> None:
    async for intake in start_intake(TracingIntake(DD_KEY)):
        intake.delay = 2.0  # every answer is held: a request is in flight for 2 s
        sidecar = Sidecar(tmp_path, DD_API_KEY=DD_KEY, DD_DD_URL=intake.url, TASKLENS_FLUSH_INTERVAL="1",
                          TASKLENS_SHUTDOWN_TIMEOUT="10")
        statsd = DogStatsd(host="127.0.0.1", port=sidecar.statsd_port, disable_telemetry=True,
                           disable_buffering=True)
        try:
            await poll(lambda: sidecar.get("/ready")[0] == 200, 30, "sidecar ready")
            sent = 0
            deadline = time.monotonic() + 15
            while intake.started == len(intake.requests):  # until a request is held by the intake
                assert time.monotonic() < deadline, "no request reached the intake"
                statsd.increment("term.sent", 2)
                sent += 2
                await asyncio.sleep(0.02)
            for _ in range(5):  # and a few more: the interval still open when SIGTERM comes
                statsd.increment("term.sent", 2)
                sent += 2
            await poll(lambda: json.loads(sidecar.get("/status")[1])["components"]["statsd"]["lines"] == sent / 2,
                       10, "the last lines received")
            stopping = time.monotonic()
            sidecar.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(sidecar.proc.wait, 30)
            took = time.monotonic() - stopping
            log = sidecar.log
            assert code == 0, log
            assert took < 10, took
            assert "all points delivered before exit" in log
            assert delivered(intake, "term.sent") == sent
            assert intake.errors == []
        finally:
            statsd.close_socket()
            if sidecar.proc.poll() is None:
                sidecar.proc.kill()
                sidecar.proc.wait()


@pytest.mark.slow
async def test_sigterm_with_the_intake_down_exits_in_time_and_logs_the_loss(tmp_path) -> None:
    async for intake in start_intake(Intake(DD_KEY)):
        intake.always(503)
        sidecar = Sidecar(tmp_path, DD_API_KEY=DD_KEY, DD_DD_URL=intake.url, TASKLENS_FLUSH_INTERVAL="1",
                          TASKLENS_SHUTDOWN_TIMEOUT="4")
        try:
            await poll(lambda: sidecar.get("/ready")[0] == 200, 30, "sidecar ready")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"lost.jobs:5|c", ("127.0.0.1", sidecar.statsd_port))
            await poll(lambda: scrape(sidecar).value("tasklens_exporter_retries_total") >= 2, 20, "failed attempts")
            stopping = time.monotonic()
            sidecar.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(sidecar.proc.wait, 30)
            took = time.monotonic() - stopping
            log = sidecar.log
            assert code == 0, log
            assert took < 4 + 2, took
            found = re.search(r"datadog: (\d+) points could not be delivered before the shutdown deadline "
                              r"\(last error: http_503\)", log)
            assert found and int(found.group(1)) > 0, log
            assert intake.accepted("/api/v2/series") == 0
        finally:
            if sidecar.proc.poll() is None:
                sidecar.proc.kill()
                sidecar.proc.wait()


@pytest.fixture
def full_pipe() -> Iterator[int]:
    """The write end of a pipe whose buffer is full and that nobody reads: a write to it blocks, as
    stdout and stderr do under the awslogs driver's default blocking mode while CloudWatch Logs does not
    take the stream."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(write_end, True)  # the flag is the pipe's: the sidecar's writes must block
    yield write_end
    os.close(read_end)
    os.close(write_end)


def sigterm(sidecar: Sidecar) -> tuple[int, float]:
    """SIGTERM: the exit code and the seconds it took."""
    stopping = time.monotonic()
    sidecar.proc.send_signal(signal.SIGTERM)
    code = sidecar.proc.wait(30)
    return code, time.monotonic() - stopping


@pytest.mark.slow
def test_sigterm_with_stdout_blocked_exits_in_time(sidecar_factory, full_pipe: int) -> None:
    """The EMF records go to stdout; a write blocked there may stay blocked, but the exit must not wait
    for it."""
    sidecar = sidecar_factory(stdout=full_pipe, TASKLENS_CLOUDWATCH="emf", TASKLENS_CLOUDWATCH_INTERVAL="1",
                              TASKLENS_FLUSH_INTERVAL="1", TASKLENS_CLOUDWATCH_METRICS="*", TASKLENS_SHUTDOWN_TIMEOUT="3")
    sidecar.wait_ready()
    # StatsD flushes on the boundaries EMF writes on: two flushes, and the first record is held
    wait_until(lambda: scrape(sidecar).value("tasklens_statsd_flushes_total") >= 2, 10, what="two intervals")
    assert not scrape(sidecar).has("tasklens_exporter_points_sent_total", exporter="emf")
    assert sidecar.get("/health")[0] == 200  # the event loop goes on meanwhile
    code, took = sigterm(sidecar)
    assert code == 0, sidecar.log
    assert took < 3 + 1, took
    assert "component emf did not finish in time" in sidecar.log


@pytest.mark.slow
def test_a_blocked_stderr_never_stalls_the_sidecar_nor_its_exit(sidecar_factory, full_pipe: int) -> None:
    """The log goes to stderr, which the awslogs driver blocks as it blocks stdout: a log line must wait
    for it on a thread of its own, never on the event loop (start-up, `/health`, the SIGTERM flush)."""
    sidecar = sidecar_factory(stderr=full_pipe, TASKLENS_FLUSH_INTERVAL="1", TASKLENS_SHUTDOWN_TIMEOUT="3")
    sidecar.wait_ready(timeout=20)  # start-up logs several lines
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"blocked.log:1|c", ("127.0.0.1", sidecar.statsd_port))
    wait_until(lambda: scrape(sidecar).value("blocked_log_total") == 1, 10, what="a line counted")
    code, took = sigterm(sidecar)
    assert code == 0
    assert took < 3 + 1, took


def at(sidecar: Sidecar, http: int, udp: int) -> Sidecar:
    """A sidecar started on addresses chosen by the test (to start another one on the same)."""
    sidecar.http_port, sidecar.statsd_port, sidecar.url = http, udp, f"http://127.0.0.1:{http}"
    return sidecar


@pytest.mark.slow
def exec_done(pid: int) -> bool:
    """Whether `tasklens run` has started itself again with the system allocator (memory.py)."""
    try:
        return environ_of(pid).get("PYTHONMALLOC") == "malloc"
    except OSError:  # in the middle of the exec
        return False


def test_sigterm_while_the_sidecar_starts_stops_it_the_usual_way(tmp_path, monkeypatch) -> None:
    """A SIGTERM right after the exec, before the event loop handles signals (ECS stops a task that
    way when it is stopped as it starts): exit 0 with "stopped" logged, never death by the signal."""
    monkeypatch.delenv("PYTHONMALLOC", raising=False)  # else there is no exec to wait for
    sidecar = Sidecar(tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not exec_done(sidecar.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert exec_done(sidecar.proc.pid), sidecar.log
        sidecar.proc.send_signal(signal.SIGTERM)
        assert sidecar.stop() == 0, sidecar.log
        assert "stopped" in sidecar.log
    finally:
        if sidecar.proc.poll() is None:
            sidecar.proc.kill()
            sidecar.proc.wait()


def test_sigkill_of_the_sidecar_never_blocks_or_breaks_the_worker(tmp_path) -> None:
    path = str(tmp_path / "dsd.socket")
    http, udp = free_port(), free_port(socket.SOCK_DGRAM)
    env = dict(TASKLENS_HTTP_ADDR=f"127.0.0.1:{http}", TASKLENS_STATSD_ADDR=f"127.0.0.1:{udp}",
               TASKLENS_STATSD_SOCKET=path, TASKLENS_FLUSH_INTERVAL="1")
    first = at(Sidecar(tmp_path, **env), http, udp)
    second = worker = None
    out = tmp_path / "worker.json"
    try:
        first.wait_ready()
        worker = subprocess.Popen([sys.executable, WORKER, str(udp), path, "8", str(out)])
        wait_until(lambda: scrape(first).value("worker_jobs_total", transport="uds") > 0
                   and scrape(first).value("worker_jobs_total", transport="udp") > 0, 10, what="worker metrics")
        first.proc.kill()  # SIGKILL: no cleanup, the socket file stays behind
        first.proc.wait()
        time.sleep(2.0)  # the worker goes on sending to nobody
        assert worker.poll() is None
        second = at(Sidecar(tmp_path, **env), http, udp)  # same addresses, same socket path
        second.wait_ready()
        # the worker's sends reach the new sidecar on both transports, without a worker restart
        wait_until(lambda: scrape(second).value("worker_jobs_total", transport="uds") > 0
                   and scrape(second).value("worker_jobs_total", transport="udp") > 0, 10, what="metrics again")
        assert worker.wait(30) == 0
        result = json.loads(out.read_text())
        print("worker:", result)
        assert result["errors"] == []
        assert result["sends"] > 1000
        # a blocked send would last as long as the sidecar was gone (over 2 s); the margin below
        # that is for a loaded CI machine's scheduling, not for the client
        assert result["slowest_seconds"] < 1.0, result
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        for s in (first, second):
            if s is not None and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()


@pytest.mark.slow
def test_scrapers_that_stop_reading_never_hold_the_exit_past_the_deadline(tmp_path) -> None:
    """Three `/metrics` answers of megabytes that nobody reads (a scraper hung, a peer that asks and
    stops): SIGTERM still exits 0 within TASKLENS_SHUTDOWN_TIMEOUT (each answer would otherwise hold
    its write deadline, one after another, and aiohttp waits 60 s for them)."""
    sidecar = Sidecar(tmp_path, TASKLENS_FLUSH_INTERVAL="1", TASKLENS_SHUTDOWN_TIMEOUT="2")
    stuck: list[socket.socket] = []
    try:
        sidecar.wait_ready()
        send_paced(sidecar, context_datagrams("wide." + "x" * 150, 40_000))  # about 8 MB of /metrics
        wait_until(lambda: scrape(sidecar).value("tasklens_statsd_contexts") >= 40_000, 30, what="40,000 contexts")
        for _ in range(3):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", sidecar.http_port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read the answer
            stuck.append(s)
        # the answers are being written, and nobody reads them
        wait_until(lambda: len(select.select(stuck, [], [], 0)[0]) >= 2, 30, what="two answers under way")
        code, took = sigterm(sidecar)
        assert code == 0, sidecar.log
        assert took < 2 + 1, took
        assert "last interval flushed" in sidecar.log
    finally:
        for s in stuck:
            s.close()
        if sidecar.proc.poll() is None:
            sidecar.proc.kill()
            sidecar.proc.wait()


SPY_ON_THE_IMPORT = """
import json, signal, sys
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "agent.cli":  # what the process has done by the time it imports the command line
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
            imported = sorted(set(sys.modules) - before)
            print(json.dumps([sorted(s.name for s in blocked), imported]), flush=True)
            sys.exit(0)
before = set(sys.modules)
sys.meta_path.insert(0, Spy())
sys.argv = ["tasklens"] + sys.argv[1:]
from agent.entry import main
main()
"""


@pytest.mark.parametrize("command, blocked", [("run", ["SIGHUP", "SIGINT", "SIGTERM"]), ("check", [])])
def test_run_blocks_the_stop_signals_before_it_imports_the_command_line(command, blocked) -> None:
    """The imports of the command line take about 0.1 s: `run` blocks the stop signals before them (a
    SIGTERM then is remembered, not fatal), and only `run` does. Nothing is imported before but the
    entry point itself (not even `signal`, which imports enum and functools): the block is the first
    thing the sidecar's code does."""
    out = subprocess.run([sys.executable, "-c", SPY_ON_THE_IMPORT, command], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert json.loads(out) == [blocked, ["agent", "agent.entry"]]
    from importlib.metadata import entry_points

    assert {e.value for e in entry_points(group="console_scripts", name="tasklens")} == {"agent.entry:main"}


@pytest.mark.slow
def test_sigterm_at_100k_contexts_and_a_1s_flush_flushes_the_last_interval_in_time(tmp_path) -> None:
    sidecar = Sidecar(tmp_path, TASKLENS_FLUSH_INTERVAL="1", TASKLENS_SHUTDOWN_TIMEOUT="10")
    load = None
    try:
        sidecar.wait_ready()
        datagrams = context_datagrams("storm", 100_000)
        send_paced(sidecar, datagrams)
        load = SteadyLoad(sidecar.statsd_port, datagrams).start()  # still sending when SIGTERM comes
        wait_until(lambda: load.rounds >= 3, 30, what="three rounds of 100,000 contexts")
        stopping = time.monotonic()
        sidecar.proc.send_signal(signal.SIGTERM)
        code = sidecar.proc.wait(30)
        took = time.monotonic() - stopping
        log = sidecar.log
        print(f"SIGTERM to exit: {took:.2f} s")
        assert code == 0, log
        assert took < 10, took  # the shutdown deadline
        assert "did not finish in time" not in log
        # the last interval reached the sinks: every context (with its lines or an idle counter's zero)
        flushed = re.search(r"StatsD: last interval flushed \((\d+) samples\) before stopping", log)
        assert flushed and int(flushed.group(1)) >= 100_000, log
    finally:
        if load is not None:
            load.stop()
        if sidecar.proc.poll() is None:
            sidecar.proc.kill()
            sidecar.proc.wait()
