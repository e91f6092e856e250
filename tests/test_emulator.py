"""The ECS metadata emulator: fixture and live modes over real HTTP, read by the real ECS source,
and `tasklens emulate-ecs` feeding a real `tasklens run`."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.support import FIXTURES, TASKLENS, clean_env, free_port, http_get, serve_app, wait_until

from agent.config import Config
from agent.emulator import make_app, serve
from agent.hub import Hub
from agent.identity import Identity
from agent.sinks.prometheus import PrometheusSink
from agent.sources.ecs import EcsSource

PAIRS = [
    ("fargate-2023.task", "fargate-2023.stats"),
    ("ec2-bridge-2020.task", "ec2-bridge-2020.stats"),
    ("fargate-2021.task", "fargate-2021.stats"),
    ("ec2-awsvpc-2023-cgroupv2.task", "ec2-awsvpc-2023-cgroupv2.stats"),
    ("fargate-v2-2017.task", "fargate-v2-2017-wrong-system-delta.stats"),
    ("fargate-v2-2017.task", "fargate-windows.stats"),
    ("task-with-tags.task", "managed-instances-2025-cgroupv2.stats"),
    ("task-with-tags.task", "managed-instances-2025-no-networks.stats"),
]


def path(name: str) -> str:
    return str(FIXTURES / f"{name}.json")


@pytest.fixture
async def fargate() -> AsyncIterator[str]:
    runner, base = await serve_app(make_app(path("fargate-2023.task"), path("fargate-2023.stats")))
    yield base
    await runner.cleanup()


async def get(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read()


async def test_fixture_files_are_served_byte_for_byte(fargate: str) -> None:
    for route, name in (("/task", "fargate-2023.task"), ("/taskWithTags", "fargate-2023.task"),
                        ("/task/stats", "fargate-2023.stats")):
        status, body = await get(f"{fargate}/v4/anything{route}")
        assert status == 200
        assert body == (FIXTURES / f"{name}.json").read_bytes()
    status, body = await get(f"{fargate}/v3/anything/task")
    assert status == 200 and json.loads(body)["Family"] == "akira-fargate-check"


async def test_container_paths_follow_the_id_in_the_url(fargate: str) -> None:
    ping = "67cd8a22b533459696d4ccab5278e009-3344678718"
    status, body = await get(f"{fargate}/v4/{ping}")
    assert status == 200 and json.loads(body)["Name"] == "apmtest-ping"
    status, body = await get(f"{fargate}/v4/{ping}/stats")
    assert json.loads(body)["memory_stats"]["usage"] == 34_865_152
    # an id that names no container: the first one, as "this container"
    status, body = await get(f"{fargate}/v4/unknown")
    assert json.loads(body)["Name"] == "dd-agent"
    status, body = await get(f"{fargate}/v4/unknown/stats")
    assert json.loads(body)["memory_stats"]["usage"] == 160_886_784


async def test_unknown_paths_and_unreadable_files(tmp_path) -> None:
    runner, base = await serve_app(make_app(str(tmp_path / "missing.json"), path("fargate-2023.stats")))
    try:
        status, body = await get(f"{base}/v4/x/nothing-here")
        assert status == 404 and isinstance(json.loads(body), str)
        status, body = await get(f"{base}/v4/x/task")
        assert status == 500 and "cannot read the task file" in json.loads(body)
        status, body = await get(f"{base}/v4/x")
        assert status == 500
    finally:
        await runner.cleanup()
    with pytest.raises(ValueError):
        make_app(path("fargate-2023.task"), None)


@pytest.mark.parametrize(("task", "stats"), PAIRS)
async def test_the_ecs_source_reads_every_pair(task: str, stats: str) -> None:
    runner, base = await serve_app(make_app(path(task), path(stats)))
    hub = Hub(Identity(service="configured"))
    source = EcsSource(Config(), hub, f"{base}/v4/abc")
    try:
        assert await source.poll_once()
        assert hub.identity.task_arn == json.loads((FIXTURES / f"{task}.json").read_text())["TaskARN"]
        assert hub.metrics.total("tasklens.ecs.poll_errors") == 0
    finally:
        await source.aclose()
        await runner.cleanup()


@pytest.mark.parametrize(("task", "stats"), PAIRS)
async def test_every_pair_renders_every_series_without_a_clash(tmp_path, task: str, stats: str) -> None:
    """Each capture, as is and with a `RestartCount` on every container (a restart policy), through the
    ECS source, the health monitor and the Prometheus sink: every series the sidecar makes is on
    `/metrics` (none left out for sharing a family), among them a restart counter per container."""
    for restarts in (None, 2):
        doc = json.loads((FIXTURES / f"{task}.json").read_text())
        if restarts is not None:
            for container in doc["Containers"]:
                container["RestartCount"] = restarts
        task_file = tmp_path / f"{task}-{restarts}.json"
        task_file.write_text(json.dumps(doc))
        runner, base = await serve_app(make_app(str(task_file), path(stats)))
        hub = Hub(Identity(service="configured"))
        sink = PrometheusSink(hub.metrics, pull=hub.pull)
        hub.add_sink(sink)
        source = EcsSource(Config(), hub, f"{base}/v4/abc")
        try:
            assert await source.poll_once() and await source.poll_once()
            families = list(text_string_to_metric_families(sink.render().decode()))
        finally:
            await source.aclose()
            await runner.cleanup()
        assert not hub.metrics.get("tasklens.prometheus.render_conflicts"), task
        counted = {s.labels["container_name"]: s.value for f in families for s in f.samples
                   if s.name == "ecs_container_restarts_total"}
        running = {s.labels["container_name"] for f in families for s in f.samples if s.name == "ecs_container_running"}
        assert counted == {name: float(restarts or 0) for name in running}, (task, restarts)
        assert running or all(c.get("Type") == "CNI_PAUSE" for c in doc["Containers"])  # ECS's own only


@pytest.mark.parametrize("files", [("fargate-2023.task", "fargate-2023.stats"), None])
async def test_task_protection_reports_the_arn_of_the_task_served(files: tuple[str, str] | None) -> None:
    """The agent's task-protection answers name the task `/task` serves (a fixture's, or this machine's
    live one), not a made-up ARN of another region and account."""
    runner, base = await serve_app(make_app(*(map(path, files) if files else (None, None))))
    try:
        _, body = await get(f"{base}/v4/x/task")
        arn = json.loads(body)["TaskARN"]
        _, body = await get(f"{base}/api/x/task-protection/v1/state")
        assert json.loads(body)["protection"]["TaskArn"] == arn
        async with aiohttp.ClientSession() as session, session.put(
                f"{base}/api/x/task-protection/v1/state", json={"ProtectionEnabled": True}) as response:
            assert response.status == 200 and (await response.json())["protection"]["TaskArn"] == arn
    finally:
        await runner.cleanup()


async def test_live_mode_serves_this_machine() -> None:
    runner, base = await serve_app(make_app(None, None))
    try:
        _, body = await get(f"{base}/v4/x/task")
        task = json.loads(body)
        (container,) = task["Containers"]
        assert task["LaunchType"] == "LOCAL" and container["KnownStatus"] == "RUNNING"
        _, body = await get(f"{base}/v4/x/task/stats")
        stats = json.loads(body)
        entry = stats[container["DockerId"]]
        assert entry["memory_stats"]["usage"] > 0
        assert entry["cpu_stats"]["cpu_usage"]["total_usage"] > 0
        # refreshed at most once a second, like the agent: a second read is the same sample
        _, again = await get(f"{base}/v4/x/task/stats")
        assert json.loads(again)[container["DockerId"]]["read"] == entry["read"]
        _, own = await get(f"{base}/v4/x/stats")
        assert json.loads(own)["read"] == entry["read"]

        hub = Hub(Identity(service="configured"))
        source = EcsSource(Config(), hub, f"{base}/v4/x")
        seen: list = []
        hub.add_sink(type("S", (), {"name": "s", "accept": lambda self, b: seen.append(b)})())
        # the first sample has no precpu; CPU appears once the emulator refreshes (after 1 s)
        deadline = time.monotonic() + 10
        while not any(s.name == "ecs.container.cpu.usage_vcpus" for s in (seen[-1].samples if seen else [])):
            assert time.monotonic() < deadline, "no CPU rate from the live emulator"
            assert await source.poll_once()
            await asyncio.sleep(0.1)
        await source.aclose()
        values = {s.name: s.value for s in seen[-1].samples if s.name.startswith("ecs.container.")}
        assert values["ecs.container.cpu.usage_vcpus"] >= 0
        assert values["ecs.container.memory.working_set_bytes"] > 0
        assert values["ecs.container.running"] == 1
        assert hub.identity.launch_type == "LOCAL"
    finally:
        await runner.cleanup()


async def test_serve_logs_the_variable_to_export(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    with caplog.at_level(logging.INFO, logger="tasklens.emulator"):
        server = asyncio.create_task(serve("127.0.0.1", port, path("fargate-2023.task"), path("fargate-2023.stats")))
        deadline = time.monotonic() + 5
        while "ECS_CONTAINER_METADATA_URI_V4" not in caplog.text:
            assert time.monotonic() < deadline and not server.done()
            await asyncio.sleep(0.02)
    url = re.search(r"ECS_CONTAINER_METADATA_URI_V4=(\S+)", caplog.text).group(1)
    assert url == f"http://127.0.0.1:{port}/v4/67cd8a22b533459696d4ccab5278e009-2860414825"
    status, body = await get(url + "/task")
    assert status == 200 and json.loads(body)["Family"] == "akira-fargate-check"
    server.cancel()
    with pytest.raises(asyncio.CancelledError):
        await server
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(url + "/task")


def test_emulate_ecs_refuses_missing_or_unreadable_fixtures(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for args, expected in ((["--task", str(tmp_path / "nope.json"), "--stats", path("fargate-2023.stats")],
                            "--task " + str(tmp_path / "nope.json") + ": no such file"),
                           (["--task", path("fargate-2023.task"), "--stats", str(bad)], "not readable JSON"),
                           (["--example", "nope"], "invalid choice")):
        run = subprocess.run([TASKLENS, "emulate-ecs", "--addr", f"127.0.0.1:{free_port()}", *args],
                             env=clean_env(), capture_output=True, text=True, timeout=30)
        assert run.returncode == 2 and expected in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_emulate_ecs_serves_a_packaged_example_and_exits_0_on_sigterm() -> None:
    port = free_port()
    emulator = subprocess.Popen([TASKLENS, "emulate-ecs", "--addr", f"127.0.0.1:{port}", "--example", "fargate"],
                                env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/v4/x/task")[0] == 200, 20, what="emulator")
        status, body = http_get(f"http://127.0.0.1:{port}/v4/x/task")
        assert json.loads(body)["Family"] == "akira-fargate-check"
        assert http_get(f"http://127.0.0.1:{port}/v2/metadata")[0] == 404  # only the paths its help lists
    finally:
        emulator.terminate()
        code = emulator.wait(10)
    assert code == 0, emulator.stderr.read() if emulator.stderr else ""


def test_emulate_ecs_feeds_a_real_sidecar(sidecar_factory) -> None:
    port = free_port()
    emulator = subprocess.Popen(
        [TASKLENS, "emulate-ecs", "--addr", f"127.0.0.1:{port}", "--task", path("fargate-2023.task"),
         "--stats", path("fargate-2023.stats")], env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/v4/x/task")[0] == 200, 20, what="emulator")
        sidecar = sidecar_factory(ECS_CONTAINER_METADATA_URI_V4=f"http://127.0.0.1:{port}/v4/x",
                                  TASKLENS_POLL_INTERVAL="1")
        try:
            sidecar.wait_ready()
        except AssertionError:
            raise AssertionError(sidecar.log) from None
        wait_until(lambda: "ecs_container_memory_working_set_bytes" in sidecar.get("/metrics")[1], 20,
                   what="ECS series at /metrics")
        text = sidecar.get("/metrics")[1]
        line = next(x for x in text.splitlines() if x.startswith("ecs_container_memory_working_set_bytes{")
                    and 'container_name="dd-agent"' in x)
        assert float(line.rsplit(" ", 1)[1]) == 156_966_912
        assert 'task_id="67cd8a22b533459696d4ccab5278e009"' in line
        assert sidecar.get("/ready")[0] == 200
        status = json.loads(sidecar.get("/status")[1])
        assert status["components"]["ecs"]["last_error"] is None
        assert sidecar.stop() == 0
    finally:
        emulator.terminate()
        emulator.wait(10)


def test_sidecar_outlives_a_dead_endpoint_and_recovers_when_it_starts(sidecar_factory) -> None:
    port = free_port()  # nothing listens here yet
    sidecar = sidecar_factory(ECS_CONTAINER_METADATA_URI_V4=f"http://127.0.0.1:{port}/v4/x", TASKLENS_POLL_INTERVAL="1")
    try:
        sidecar.wait_ready()
    except AssertionError:
        raise AssertionError(sidecar.log) from None
    wait_until(lambda: 'tasklens_ecs_poll_errors_total{reason="connection"' in sidecar.get("/metrics")[1], 20,
               what="connection errors counted")
    assert sidecar.get("/ready")[0] == 503
    assert sidecar.get("/health")[0] == 200
    emulator = subprocess.Popen(
        [TASKLENS, "emulate-ecs", "--addr", f"127.0.0.1:{port}", "--task", path("ec2-bridge-2020.task"),
         "--stats", path("ec2-bridge-2020.stats")], env=clean_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: sidecar.get("/ready")[0] == 200, 20, what="recovery")
        text = sidecar.get("/metrics")[1]
        assert 'ecs_container_exit_code{' in text and 'container_name="nginx200"' in text
        assert sidecar.log.count("ECS metadata poll failed (connection)") == 1  # rate-limited
        assert "recovered after" in sidecar.log
        assert sidecar.stop() == 0
    finally:
        emulator.terminate()
        emulator.wait(10)


@pytest.mark.parametrize("shape", ['{"Containers": NaN}', '{"Containers": 5}', '{"Containers": "abc"}', "7"])
async def test_a_task_file_changed_to_a_wrong_shape_after_start_is_no_container(tmp_path, shape: str) -> None:
    """The file is re-read at every request: one of the wrong shape is "no such container" (404), never
    a handler that raised (`NaN`, `5`: not iterable)."""
    task = tmp_path / "task.json"
    task.write_text(shape)
    runner, base = await serve_app(make_app(str(task), path("fargate-2023.stats")))
    try:
        for route in ("", "/stats"):
            status, body = await get(f"{base}/v4/x{route}")
            assert status == 404 and json.loads(body) == "no such container"
    finally:
        await runner.cleanup()
