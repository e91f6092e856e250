"""The whole sidecar (`tasklens run`, a real process) exporting to the strict intake.

ECS metadata comes from the project's emulator serving a Fargate capture over loopback; StatsD comes
from the `datadog` package's real `DogStatsd` client. The flush interval is an hour, so nothing leaves
before SIGTERM: what the intake receives is what the shutdown flushed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import AsyncIterator

import pytest
from datadog.dogstatsd import DogStatsd

from agent.emulator import container_id, make_app
from tests.support import FIXTURES, Sidecar, serve_app, until
from tests.sinks.intake import Intake, start_intake

KEY = "fedcba9876543210fedcba9876543210"
TASK = str(FIXTURES / "fargate-2023.task.json")
STATS = str(FIXTURES / "fargate-2023.stats.json")
TASK_TAGS = ("service:akira-fargate-check", "ecs_cluster:akira-fargate-check-cluster",
             "task_family:akira-fargate-check", "task_revision:1", "task_id:67cd8a22b533459696d4ccab5278e009",
             "availability_zone:ap-northeast-1d", "region:ap-northeast-1", "launch_type:fargate")  # Datadog stores tags in lower case


@pytest.fixture
async def intake() -> AsyncIterator[Intake]:
    async for running in start_intake(Intake(KEY)):
        yield running
        assert running.errors == [], running.errors


@pytest.fixture
async def metadata_url() -> AsyncIterator[str]:
    runner, base = await serve_app(make_app(TASK, STATS))
    yield f"{base}/v4/{container_id(TASK)}"
    await runner.cleanup()


async def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    """`until` with the predicate in a thread: the metadata server runs on this test's event loop."""
    return await until(predicate, timeout, what, interval=0.1, in_thread=True)


def values(intake: Intake, metric: str, *tags: str) -> set[tuple[float, int]]:
    """The distinct (value, type) of a series' points (one point per ECS poll)."""
    found = {(p[1], p[3]) for p in intake.points(metric) if all(t in p[2] for t in tags)}
    assert found, (metric, tags)
    return found


HOUR_MARGIN = 60.0  # seconds the test below may take from the sidecar's start to its SIGTERM


@pytest.fixture
def sidecar(tmp_path, intake: Intake, metadata_url: str) -> AsyncIterator[Sidecar]:  # type: ignore[no-untyped-def]
    # the hour-long interval closes on the wall clock's hour (its StatsD interval, then the exporter's flush):
    # one that fell between the sends and the SIGTERM would send before it, and split the StatsD interval.
    # The process's clock is the machine's, so the test starts past the hour when one is near.
    left = 3600 - time.time() % 3600
    if left < HOUR_MARGIN:
        time.sleep(left + 1.0)  # nothing runs on the loop yet: the metadata server and the intake are idle
    s = Sidecar(tmp_path, DD_API_KEY=KEY, DD_DD_URL=intake.url, ECS_CONTAINER_METADATA_URI_V4=metadata_url,
                TASKLENS_FLUSH_INTERVAL="3600", TASKLENS_POLL_INTERVAL="1", TASKLENS_SHUTDOWN_TIMEOUT="10")
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait()


async def test_sigterm_delivers_statsd_and_ecs_points_with_exact_values(sidecar: Sidecar, intake: Intake) -> None:
    await wait_for(lambda: sidecar.get("/ready")[0] == 200, what="sidecar ready")
    statsd = DogStatsd(host="127.0.0.1", port=sidecar.statsd_port, disable_telemetry=True, disable_buffering=True)
    for v in range(1, 11):
        statsd.histogram("job.seconds", v, tags=["queue:orders"])
    statsd.gauge("worker.busy", 3, tags=["pool:a"])
    statsd.event("deployed", "v42", alert_type="success", tags=["team:pay"])
    statsd.service_check("worker.can_connect", DogStatsd.WARNING, message="slow broker")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        for _ in range(3):  # what a client sampling at 0.5 sends for 3 of its 6 increments
            raw.sendto(b"jobs.done:1|c|@0.5", ("127.0.0.1", sidecar.statsd_port))
        # a container id the task does not have: no container tags, so the same series as the lines above
        raw.sendto(b"jobs.done:2|c|c:0123456789abcdef", ("127.0.0.1", sidecar.statsd_port))
    statsd.close_socket()

    def received() -> bool:
        status = json.loads(sidecar.get("/status")[1])
        return status["components"]["statsd"]["lines"] >= 17
    await wait_for(received, what="the StatsD lines to be received")
    status = sidecar.get("/status")[1]
    assert '"datadog"' in status and KEY not in status and KEY[-8:] not in status
    # at least one more ECS poll, so counters have a previous sighting (a fixed 1.2 s was not always one
    # on a loaded machine)
    polled = json.loads(status)["components"]["ecs"]["last_success"]
    await wait_for(lambda: json.loads(sidecar.get("/status")[1])["components"]["ecs"]["last_success"] != polled,
                   what="one more ECS poll")
    assert intake.requests == []  # nothing sent yet: it is all pending in the sidecar

    sidecar.proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(sidecar.proc.wait, 30)
    log = sidecar.log
    assert code == 0, log
    assert "datadog: all points delivered before exit" in log
    assert KEY not in log

    # StatsD: the worked examples, exact
    hour = 3600
    ((_, rate, tags, kind, interval),) = intake.points("jobs.done")
    assert (rate, kind, interval) == (8 / hour, 2, hour)  # 3 x 1 at rate 0.5 = 6, and 2, in the interval
    assert set(TASK_TAGS) <= set(tags)
    got = {m: intake.points(m)[0][1] for m in intake.metrics() if m.startswith("job.seconds.")}
    assert got == {"job.seconds.max": 10.0, "job.seconds.median": 5.0, "job.seconds.avg": 5.5,
                   "job.seconds.count": 10 / hour, "job.seconds.95percentile": 10.0}
    assert "queue:orders" in intake.points("job.seconds.max")[0][2]
    assert values(intake, "worker.busy", "pool:a", *TASK_TAGS) == {(3.0, 3)}
    assert [(e["title"], e["text"], e["alert_type"]) for e in intake.events] == [("deployed", "v42", "success")]
    assert set(TASK_TAGS) | {"team:pay"} <= set(intake.events[0]["tags"])
    assert [(c["check"], c["status"], c["message"]) for c in intake.checks] == [
        ("worker.can_connect", 1, "slow broker")]
    # ECS: the numbers worked by hand in the spec for this capture (container dd-agent)
    assert values(intake, "ecs.container.memory.working_set_bytes", "container_name:dd-agent", *TASK_TAGS) == {
        (156_966_912.0, 3)}
    ((vcpus, _),) = values(intake, "ecs.container.cpu.usage_vcpus", "container_name:dd-agent")
    assert vcpus == pytest.approx(86_559_152 / 10_000_358_692, rel=1e-12)
    # the capture does not change between polls: cumulative counters arrive as zero deltas, never raw
    totals = [p for m in intake.metrics() if m.endswith("_total") for p in intake.points(m)]
    assert totals and all(value == 0.0 and kind == 1 for _, value, _, kind, _ in totals)
    ((_, _, info_tags, _, _),) = intake.points("ecs.task.info")
    assert "task_arn:arn:aws:ecs:ap-northeast-1:601427279990:task/akira-fargate-check-cluster/" \
           "67cd8a22b533459696d4ccab5278e009" in info_tags


async def test_check_output_does_not_show_the_key(metadata_url: str) -> None:
    from tests.support import TASKLENS, clean_env

    proc = await asyncio.create_subprocess_exec(  # async: the metadata emulator runs on this loop
        TASKLENS, "check", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=clean_env(DD_API_KEY=KEY, ECS_CONTAINER_METADATA_URI_V4=metadata_url))
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr
    assert b"DD_API_KEY" in stdout and b"akira-fargate-check" in stdout
    assert KEY.encode() not in stdout + stderr


async def test_statsd_reaches_the_intake_within_one_interval(tmp_path, intake: Intake, metadata_url: str) -> None:  # type: ignore[no-untyped-def]
    s = Sidecar(tmp_path, DD_API_KEY=KEY, DD_DD_URL=intake.url, ECS_CONTAINER_METADATA_URI_V4=metadata_url,
                TASKLENS_FLUSH_INTERVAL="2")
    try:
        await wait_for(lambda: s.get("/ready")[0] == 200, what="sidecar ready")
        statsd = DogStatsd(host="127.0.0.1", port=s.statsd_port, disable_telemetry=True, disable_buffering=True)
        sent = time.monotonic()
        statsd.gauge("latency.probe", 1)
        statsd.close_socket()
        while not intake.points("latency.probe"):
            assert time.monotonic() - sent < 10, "never arrived"
            await asyncio.sleep(0.02)
        took = time.monotonic() - sent
        # the StatsD interval closes within 2 s, the exporter flushes 0.2 s after that boundary: the
        # sample arrives within one interval plus the offset (and some slack for a loaded machine)
        assert took < 2.2 + 2.3, took
    finally:
        s.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(s.proc.wait, 30) == 0
