"""The ECS source against a real metadata endpoint on loopback, exported through the real
Prometheus sink: every capture, rates over two polls, and every failure the spec lists."""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import logging
import time
import tracemalloc
from typing import Any
from urllib.parse import quote

import psutil
import pytest
from aiohttp import web
from tests.sources.ecs_helpers import FIXTURES, MetadataServer, load, managed_instances_task
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tests.support import Recorder, serve_app

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from agent.sinks.prometheus import PrometheusSink
from agent.sources.ecs import MAX_BODY, EcsSource, metadata_base_url
from agent.sources.ecs_stats import parse_time_ns
from agent.sources.localstats import format_time_ns
from tests.support import until as wait_for

MIB = 1024 * 1024


class Harness:
    def __init__(self, url: str, poll_interval: float = 0.2, timeout: float = 0.5, **kw: Any) -> None:
        self.config = Config(poll_interval=poll_interval, metadata_timeout=timeout, service="", tags=(("team", "core"),))
        self.hub = Hub(Identity(service="configured"))
        self.prometheus = PrometheusSink(self.hub.metrics, pull=self.hub.pull)
        self.recorder = Recorder()
        self.hub.add_sink(self.recorder)
        self.hub.add_sink(self.prometheus)
        self.source = EcsSource(self.config, self.hub, url, backoff_initial=0.05, **kw)

    def scrape(self) -> dict[tuple[str, str | None], float]:
        """Prometheus sample name and container_name -> value, as a scraper sees it."""
        out: dict[tuple[str, str | None], float] = {}
        for family in text_string_to_metric_families(generate_latest(self.prometheus.registry).decode()):
            for s in family.samples:
                if s.name.startswith("ecs_") and s.name != "ecs_task_info":
                    out[s.name, s.labels.get("container_name")] = s.value
        return out

    def labels(self, name: str) -> list[dict[str, str]]:
        text = generate_latest(self.prometheus.registry).decode()
        return [s.labels for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]

    def metric(self, name: str, **labels: str) -> float:
        return self.hub.metrics.get(name, **labels)


@pytest.fixture
async def harness(metadata: MetadataServer):
    h = Harness(metadata.url)
    yield h
    await h.source.aclose()


def raw(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()




def test_metadata_base_url() -> None:
    assert metadata_base_url({"ECS_CONTAINER_METADATA_URI_V4": " http://169.254.170.2/v4/abc \n"}) == \
        "http://169.254.170.2/v4/abc"
    assert metadata_base_url({"ECS_CONTAINER_METADATA_URI": "http://169.254.170.2/v3/abc/"}) == \
        "http://169.254.170.2/v3/abc"
    both = {"ECS_CONTAINER_METADATA_URI_V4": "http://a/v4/1", "ECS_CONTAINER_METADATA_URI": "http://a/v3/1"}
    assert metadata_base_url(both) == "http://a/v4/1"
    assert metadata_base_url({"ECS_CONTAINER_METADATA_URI_V4": "  "}) is None
    assert metadata_base_url({}) is None


@pytest.mark.parametrize("url", ["169.254.170.2/v4/x", "ftp://host/v4/x", "http://[bad/v4"])
async def test_a_url_that_is_not_http_is_counted_not_fatal(url: str) -> None:
    h = Harness(url)
    assert not await h.source.poll_once()
    assert h.metric("tasklens.ecs.poll_errors", reason="bad_url") == 1
    assert "ECS_CONTAINER_METADATA_URI_V4" in h.source.status()["last_error"]
    await h.source.aclose()


# --- every capture over HTTP, checked at /metrics -----------------------------------------------

# (task, stats) -> Prometheus series worked out by hand from the files (see test_ecs_stats.py)
CASES: dict[str, tuple[Any, Any, dict[tuple[str, str | None], float]]] = {
    "fargate-2023": (raw("fargate-2023.task"), raw("fargate-2023.stats"), {
        ("ecs_container_cpu_usage_vcpus", "dd-agent"): 86_559_152 / 10_000_358_692,
        ("ecs_container_memory_working_set_bytes", "dd-agent"): 156_966_912,
        ("ecs_container_memory_usage_bytes", "apmtest-ping"): 34_865_152,
        ("ecs_container_io_write_bytes_total", "dd-agent"): 57_344,
        ("ecs_task_network_receive_bytes_total", None): 781_187_362,
        ("ecs_task_ephemeral_storage_reserved_bytes", None): 21499 * MIB,
    }),
    "ec2-bridge-2020": (raw("ec2-bridge-2020.task"), raw("ec2-bridge-2020.stats"), {
        ("ecs_container_exit_code", "nginx200"): 3,
        ("ecs_container_running", "nginx200"): 0,
        ("ecs_container_pids", "nginx300"): 2,
        ("ecs_container_io_read_bytes_total", "nginx300"): 3_452_928,
        ("ecs_task_network_receive_bytes_total", None): 2156 + 100 + 2066,
    }),
    "fargate-2021": (raw("fargate-2021.task"), raw("fargate-2021.stats"), {
        ("ecs_container_memory_limit_bytes", "essential"): 512 * MIB,
        ("ecs_container_exit_code", "non"): 42,
        ("ecs_task_cpu_limit_vcpus", None): 0.25,
    }),
    "ec2-awsvpc-2023-cgroupv2": (raw("ec2-awsvpc-2023-cgroupv2.task"), raw("ec2-awsvpc-2023-cgroupv2.stats"), {
        ("ecs_task_memory_working_set_bytes", None): 303_104,
        ("ecs_task_cpu_usage_vcpus", None): 0.0,
        ("ecs_task_memory_limit_bytes", None): 1024 * MIB,
    }),
    "fargate-v2-2017": (raw("fargate-v2-2017.task"), raw("fargate-v2-2017-wrong-system-delta.stats"), {
        ("ecs_container_io_read_bytes_total", "dd-agent"): 5_578_752 + 95_875_072,
        ("ecs_task_network_receive_bytes_total", None): 5338 + 4641 + 268_836_870,
    }),
    "fargate-windows": (raw("fargate-v2-2017.task"), raw("fargate-windows.stats"), {
        ("ecs_container_memory_working_set_bytes", "dd-agent"): 140_673_024,
        ("ecs_container_io_read_bytes_total", "dd-agent"): 248_714_240,
    }),
    "managed-instances-2025-cgroupv2": (managed_instances_task(), raw("managed-instances-2025-cgroupv2.stats"), {
        ("ecs_container_memory_working_set_bytes", "datadog-agent"): 398_942_208 - 149_512_192,
        ("ecs_container_io_read_bytes_total", "managed-instances-app"): 1_875_968 + 7_593_984,
        ("ecs_task_network_receive_bytes_total", None): 163_710_528,
    }),
    "managed-instances-2025-no-networks": (managed_instances_task(), raw("managed-instances-2025-no-networks.stats"), {
        ("ecs_container_memory_working_set_bytes", "managed-instances-app"): 42_827_776 - 6_082_560,
    }),
    "task-with-tags": (raw("task-with-tags.task"), raw("managed-instances-2025-cgroupv2.stats"), {
        ("ecs_container_running", "log_router"): 1,
        ("ecs_task_ephemeral_storage_used_bytes", None): 2298 * MIB,
        ("ecs_task_memory_limit_bytes", None): 2048 * MIB,
    }),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_every_capture_over_http(case: str, metadata: MetadataServer, harness: Harness) -> None:
    task, stats, expected = CASES[case]
    metadata.serve(task, stats)
    assert await harness.source.poll_once()
    got = harness.scrape()
    for key, value in expected.items():
        assert got.get(key) == pytest.approx(value, rel=1e-12), key
    assert harness.source.ready
    assert harness.metric("tasklens.ecs.poll_errors") == 0
    assert "~internal~ecs~pause" not in {k[1] for k in got}


async def test_identity_and_tags_from_the_task(metadata: MetadataServer, harness: Harness) -> None:
    metadata.serve(raw("fargate-2023.task"), raw("fargate-2023.stats"))
    await harness.source.poll_once()
    ident = harness.hub.identity
    assert (ident.ecs_cluster, ident.task_id, ident.region, ident.launch_type) == (
        "akira-fargate-check-cluster", "67cd8a22b533459696d4ccab5278e009", "ap-northeast-1", "FARGATE")
    (labels,) = [lb for lb in harness.labels("ecs_container_memory_working_set_bytes")
                 if lb["container_name"] == "dd-agent"]
    assert labels["image"] == "public.ecr.aws/b1o7r7e0/akira-agent-fgcheck"
    assert labels["image_tag"] == "9"
    assert labels["task_id"] == "67cd8a22b533459696d4ccab5278e009"
    assert labels["team"] == "core"
    (info,) = harness.labels("ecs_task_info")
    assert info["task_arn"].endswith("/67cd8a22b533459696d4ccab5278e009")
    status = harness.source.status()
    assert status["containers"] == 2 and status["last_error"] is None and status["last_success"]


def _with_lone_surrogates(data: Any) -> Any:
    """Every string of `data` (keys too) ending in a lone surrogate, which JSON writes as `\\ud800`."""
    if isinstance(data, str):
        return data + "\ud800"
    if isinstance(data, list):
        return [_with_lone_surrogates(v) for v in data]
    if isinstance(data, dict):
        return {_with_lone_surrogates(k): _with_lone_surrogates(v) for k, v in data.items()}
    return data


async def test_lone_surrogate_escapes_become_text_every_output_can_hold(metadata: MetadataServer,
                                                                          harness: Harness) -> None:
    """JSON allows `\\ud800` alone; no UTF-8 output (OTLP, remote_write, Datadog) can hold it: every
    string read from the endpoint has it as `?`, and the task's series are still published."""
    task = load("fargate-2023.task")
    task["Containers"] = [{**c, "Name": c["Name"] + "\ud800", "Labels": _with_lone_surrogates(c.get("Labels", {}))}
                          for c in task["Containers"]]
    task["Family"] += "\udfff"
    metadata.serve(json.dumps(task).encode(), raw("fargate-2023.stats"))
    assert b"\\ud800" in metadata.task
    assert await harness.source.poll_once()
    batch = harness.recorder.last("ecs")
    texts = [t for s in batch.samples for kv in s.tags for t in kv] + [t for kv in harness.hub.identity.tags for t in kv]
    assert texts and all(t.encode("utf-8") for t in texts)  # raises on a lone surrogate
    assert {"dd-agent?", "apmtest-ping?"} <= {v for s in batch.samples for k, v in s.tags if k == "container_name"}


async def test_json_nested_too_deep_is_bad_json(metadata: MetadataServer, harness: Harness) -> None:
    metadata.serve(b"[" * 50_000, b"{}")  # within MAX_VALUES (200,000 of them are too_large)
    assert not await harness.source.poll_once()
    assert harness.metric("tasklens.ecs.poll_errors", reason="bad_json") == 1


def _later(stats: dict[str, Any], seconds: int, cpu_ns: int, rx: int) -> dict[str, Any]:
    out = copy.deepcopy(stats)
    for entry in out.values():
        entry["read"] = format_time_ns(parse_time_ns(entry["read"]) + seconds * 10**9)
        entry["preread"] = format_time_ns(parse_time_ns(entry["read"]) - 10**9)  # the agent's own 1 s
        entry["precpu_stats"] = copy.deepcopy(entry["cpu_stats"])  # nothing in the last second
        entry["cpu_stats"]["cpu_usage"]["total_usage"] += cpu_ns
        entry["precpu_stats"]["cpu_usage"]["total_usage"] += cpu_ns
        for counters in (entry.get("networks") or {}).values():
            counters["rx_bytes"] += rx
    return out


async def test_two_polls_rates_and_dedupe_on_read(metadata: MetadataServer, harness: Harness) -> None:
    task, first = managed_instances_task(), load("managed-instances-2025-cgroupv2.stats")
    metadata.serve(task, first)
    await harness.source.poll_once()
    assert ("ecs_task_network_receive_bytes_per_second", None) not in harness.scrape()  # one poll only
    second = _later(first, 20, cpu_ns=3_000_000_000, rx=50_000)
    metadata.serve(task, second)
    await harness.source.poll_once()
    got = harness.scrape()
    # over our 20 s between polls, not the agent's last second (which saw no CPU)
    assert got["ecs_container_cpu_usage_vcpus", "datadog-agent"] == pytest.approx(3e9 / 20e9)
    assert got["ecs_task_cpu_usage_vcpus", None] == pytest.approx(2 * 3e9 / 20e9)
    assert got["ecs_task_cpu_utilization_percent", None] == pytest.approx(30.0)  # of the task's 1 vCPU
    assert got["ecs_task_network_receive_bytes_per_second", None] == pytest.approx(50_000 / 20)
    # the agent has not refreshed: same `read` again -> still the rate between the two samples
    await harness.source.poll_once()
    again = harness.scrape()
    assert again["ecs_container_cpu_usage_vcpus", "datadog-agent"] == pytest.approx(0.15)
    assert again["ecs_task_network_receive_bytes_per_second", None] == pytest.approx(2500.0)
    assert harness.metric("tasklens.ecs.polls") == 3


# --- failures -----------------------------------------------------------------------------------


async def test_down_at_start_then_recovers_by_itself() -> None:
    server = MetadataServer()
    await server.start()
    port = server.port
    await server.stop()  # nothing listens there now
    h = Harness(f"http://127.0.0.1:{port}/v4/x", poll_interval=0.2)
    stop = asyncio.Event()
    runner = asyncio.create_task(h.source.run(stop))
    try:
        await wait_for(lambda: h.metric("tasklens.ecs.poll_errors", reason="connection") >= 2, what="connection errors")
        assert not h.source.ready
        assert h.hub.identity.service == "configured"
        assert h.source.status()["last_error_reason"] == "connection"
        server.serve(raw("fargate-2023.task"), raw("fargate-2023.stats"))
        await server.start(port)
        await wait_for(lambda: h.source.ready, what="recovery")
        assert h.hub.identity.task_id == "67cd8a22b533459696d4ccab5278e009"
        assert h.scrape()["ecs_container_memory_working_set_bytes", "dd-agent"] == 156_966_912
        assert h.source.status()["consecutive_failures"] == 0
    finally:
        stop.set()
        await asyncio.wait_for(runner, 5)
        await server.stop()
    assert runner.done() and runner.exception() is None


async def test_down_later_keeps_identity_and_recovers(metadata: MetadataServer) -> None:
    metadata.serve(raw("fargate-2023.task"), raw("fargate-2023.stats"))
    h = Harness(metadata.url, poll_interval=0.2)
    stop = asyncio.Event()
    runner = asyncio.create_task(h.source.run(stop))
    try:
        await wait_for(lambda: h.source.ready, what="first poll")
        await metadata.stop()
        await wait_for(lambda: h.metric("tasklens.ecs.poll_errors", reason="connection") >= 1, what="an error")
        # the identity stays; the container series go (a gap, not a stale value)
        assert h.hub.identity.task_id == "67cd8a22b533459696d4ccab5278e009"
        (info,) = h.labels("ecs_task_info")
        assert info["task_id"] == "67cd8a22b533459696d4ccab5278e009"
        assert h.scrape() == {}
        await metadata.start(metadata.port)
        await wait_for(lambda: ("ecs_container_running", "dd-agent") in h.scrape(), what="recovery")
    finally:
        stop.set()
        await asyncio.wait_for(runner, 5)


async def test_slow_past_the_timeout(metadata: MetadataServer) -> None:
    metadata.serve(raw("fargate-2023.task"), raw("fargate-2023.stats"))
    metadata.delay = 3.0
    h = Harness(metadata.url, timeout=0.2)
    started = time.monotonic()
    assert not await h.source.poll_once()
    assert time.monotonic() - started < 2.0  # gave up at the timeout, did not wait for the answer
    assert h.metric("tasklens.ecs.poll_errors", reason="timeout") == 1
    metadata.delay = 0
    assert await h.source.poll_once()
    await h.source.aclose()


@pytest.mark.parametrize(("status", "reason"), [(500, "http_5xx"), (503, "http_5xx"), (404, "http_4xx")])
async def test_http_errors(status: int, reason: str, metadata: MetadataServer, harness: Harness) -> None:
    metadata.serve(raw("fargate-2023.task"), raw("fargate-2023.stats"))
    assert await harness.source.poll_once()
    metadata.status = status
    assert not await harness.source.poll_once()
    assert harness.metric("tasklens.ecs.poll_errors", reason=reason) == 1
    assert harness.hub.identity.task_id == "67cd8a22b533459696d4ccab5278e009"
    assert harness.source.ready  # it was ready once; /ready does not flap on one failure
    assert "HTTP %d" % status in harness.source.status()["last_error"]


PASSWORD = "S3cr/et pw@x"  # a generated password: `/`, a space and `@` in it, percent-encoded in the URL


@pytest.mark.parametrize("body", [
    b"oops\n2026-12-07 00:00:00,000 ERROR tasklens: FORGED LINE \x1b[31mred\x1b[0m",
    b"\x00\r\x85" + "a\u2028b\u200ec\ufeff".encode() + b"\x07" * 50,
    ("denied for admin:" + PASSWORD).encode(),
    ("denied: http://admin:" + quote(PASSWORD, safe="") + "@host/v4/x").encode(),
    json.dumps({"error": "bad auth " + PASSWORD}).encode(),
], ids=["forged-line", "controls", "password", "url-echoed", "json"])
async def test_what_is_shown_of_a_failed_poll_has_no_credential_and_no_line_break(
        body: bytes, metadata: MetadataServer, caplog: pytest.LogCaptureFixture) -> None:
    """The URL's credentials and the endpoint's answer reach /status, `check` and the log: masked, with
    no control character from the endpoint (a line break there forges a log line)."""
    metadata.serve(raw("fargate-2023.task"), raw("fargate-2023.stats"))
    url = metadata.url.replace("http://", f"http://admin:{quote(PASSWORD, safe='')}@")
    h = Harness(url)
    caplog.set_level(logging.INFO)
    assert await h.source.poll_once()
    metadata.status, metadata.error_body = 500, body
    assert not await h.source.poll_once()
    status = h.source.status()
    logged = [r.getMessage() for r in caplog.records]
    for text in [status["base_url"], status["last_error"], *logged]:
        for secret in (PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD)):
            assert secret not in text
        assert text.isprintable(), text
    assert "HTTP 500" in status["last_error"] and status["base_url"].startswith("http://admin:***@")
    await h.source.aclose()


@pytest.mark.parametrize(("task", "stats", "reason"), [
    (raw("fargate-2023.task")[:1000], raw("fargate-2023.stats"), "bad_json"),  # truncated
    (raw("fargate-2023.task"), raw("fargate-2023.stats")[:-40], "bad_json"),
    (b"\xff\xfe not utf-8", raw("fargate-2023.stats"), "bad_json"),
    (b'"agent failed to fetch"', raw("fargate-2023.stats"), "bad_shape"),  # a JSON string
    (b"[1, 2, 3]", raw("fargate-2023.stats"), "bad_shape"),
    (b'{"Cluster": "x"}', raw("fargate-2023.stats"), "bad_shape"),  # no TaskARN
    (b'{"TaskARN": "arn:aws:ecs:r:1:task/c/t", "Containers": 7}', b"{}", "bad_shape"),
    (b'{"TaskARN": "arn:aws:ecs:r:1:task/c/t"}', b"{}", None),  # a task with no containers yet
    (raw("fargate-2023.task"), b'["not", "a", "map"]', "bad_shape"),
])
async def test_bad_bodies(task: bytes, stats: bytes, reason: str | None, metadata: MetadataServer,
                          harness: Harness) -> None:
    metadata.serve(task, stats)
    ok = await harness.source.poll_once()
    assert ok is (reason is None)
    if reason:
        assert harness.metric("tasklens.ecs.poll_errors", reason=reason) == 1
        assert harness.hub.metrics.total("tasklens.ecs.poll_errors") == 1  # one reason per poll


async def test_stats_failure_still_publishes_the_task_state(metadata: MetadataServer, harness: Harness,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """`/task` answers, `/task/stats` fails at every poll: the task's state and identity go out, the
    sidecar is ready (the identity is what it waits for), the failure is counted once a poll (not again
    as `no_stats` per container) and the start-up line is written once (it was, every poll)."""
    metadata.serve(raw("ec2-bridge-2020.task"), raw("ec2-bridge-2020.stats"))
    metadata.stats_status = 500
    with caplog.at_level(logging.INFO, logger="tasklens.ecs"):
        for _ in range(4):
            assert not await harness.source.poll_once()
    got = harness.scrape()
    assert got["ecs_container_exit_code", "nginx200"] == 3
    assert got["ecs_container_running", "nginx100"] == 1
    assert ("ecs_container_memory_usage_bytes", "nginx100") not in got
    assert harness.hub.identity.task_family == "three-nginx" and harness.source.ready
    assert harness.metric("tasklens.ecs.poll_errors", reason="http_5xx") == 4
    assert harness.hub.metrics.total("tasklens.ecs.container_errors") == 0
    assert sum("ECS mode: metadata from" in r.getMessage() for r in caplog.records) == 1


async def test_one_bad_container_entry_does_not_hide_the_others(metadata: MetadataServer, harness: Harness) -> None:
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    task["Containers"].insert(0, {"DockerId": 12, "Name": ["x"]})
    dd = next(iter(stats))
    stats[dd] = "corrupt"
    metadata.serve(task, stats)
    assert await harness.source.poll_once()
    got = harness.scrape()
    assert got["ecs_container_memory_working_set_bytes", "apmtest-ping"] == 34_865_152
    assert got["ecs_container_running", "dd-agent"] == 1
    assert harness.metric("tasklens.ecs.container_errors", reason="bad_container") == 1
    assert harness.metric("tasklens.ecs.container_errors", reason="bad_stats") == 1


@pytest.mark.parametrize("capture", ["fargate-2023", "ec2-bridge-2020"])
async def test_a_repeated_docker_id_counts_once(capture: str, metadata: MetadataServer, harness: Harness,
                                                caplog: pytest.LogCaptureFixture) -> None:
    h = harness
    task, stats = load(f"{capture}.task"), load(f"{capture}.stats")
    metadata.serve(task, stats)
    assert await h.source.poll_once()
    clean = {k: v for k, v in h.scrape().items() if k[0].startswith("ecs_task_")}
    assert clean["ecs_task_memory_working_set_bytes", None] > 0
    first, second = task["Containers"][0], task["Containers"][1]
    renamed = dict(copy.deepcopy(second), Name="second-name")
    task["Containers"] += [copy.deepcopy(first), renamed, copy.deepcopy(first)]
    stats["not-in-the-task"] = copy.deepcopy(stats[first["DockerId"]])  # an entry /task does not list
    metadata.serve(task, stats)
    with caplog.at_level(logging.WARNING, logger="tasklens.ecs"):
        assert await h.source.poll_once()
        assert await h.source.poll_once()
    got = h.scrape()
    assert {k: v for k, v in got.items() if k[0].startswith("ecs_task_")} == pytest.approx(clean)
    assert ("ecs_container_running", "second-name") not in got
    assert got["ecs_container_running", second["Name"]] == 1
    assert h.metric("tasklens.ecs.container_errors", reason="duplicate_container") == 6  # 3 per poll
    assert h.hub.identity.containers[second["DockerId"]][0] == ("container_name", second["Name"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "DockerId" in warnings[0], warnings


async def test_errors_are_logged_once_per_interval(metadata: MetadataServer, caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(metadata.url, log_interval=60.0)
    metadata.serve(raw("fargate-2023.task"), raw("fargate-2023.stats"))
    metadata.status = 500
    with caplog.at_level(logging.INFO, logger="tasklens.ecs"):
        for _ in range(5):
            await h.source.poll_once()
        metadata.status = 404
        for _ in range(3):
            await h.source.poll_once()
        metadata.status = 200
        await h.source.poll_once()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "http_5xx" in warnings[0] and "http_4xx" in warnings[1]
    assert h.metric("tasklens.ecs.poll_errors", reason="http_5xx") == 5
    assert h.metric("tasklens.ecs.poll_errors", reason="http_4xx") == 3
    assert any("recovered after 8" in r.getMessage() for r in caplog.records)
    await h.source.aclose()


async def test_a_flapping_endpoint_logs_its_recoveries_once_per_interval(metadata: MetadataServer,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """One answer 200, the next 500, and so on: one failure line and one recovery line an interval, not
    one each a poll; every failure still counted."""
    h = Harness(metadata.url, log_interval=60.0)
    metadata.serve(raw("fargate-2023.task"), raw("fargate-2023.stats"))
    with caplog.at_level(logging.INFO, logger="tasklens.ecs"):
        for _ in range(10):
            metadata.status = 500
            assert not await h.source.poll_once()
            metadata.status = 200
            assert await h.source.poll_once()
    recovered = [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()]
    assert recovered == ["ECS metadata poll recovered after 1 failed attempts"], recovered
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert h.metric("tasklens.ecs.poll_errors", reason="http_5xx") == 10
    await h.source.aclose()


async def test_self_metrics_and_status(metadata: MetadataServer, harness: Harness) -> None:
    metadata.serve(raw("fargate-2023.task"), raw("fargate-2023.stats"))
    before = time.time()
    await harness.source.poll_once()
    assert harness.metric("tasklens.ecs.polls") == 1
    assert 0 < harness.metric("tasklens.ecs.poll_duration_seconds") < 5
    assert before <= harness.metric("tasklens.ecs.last_success_timestamp") <= time.time()
    text = generate_latest(harness.prometheus.registry).decode()
    assert "tasklens_ecs_polls_total" in text
    assert "tasklens_ecs_last_success_timestamp" in text
    json.dumps(harness.source.status())  # /status serialises it


async def test_run_stops_promptly(metadata: MetadataServer) -> None:
    metadata.serve(raw("fargate-2023.task"), raw("fargate-2023.stats"))
    h = Harness(metadata.url, poll_interval=30)
    stop = asyncio.Event()
    runner = asyncio.create_task(h.source.run(stop))
    await wait_for(lambda: h.source.ready, what="first poll")
    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(runner, 2)
    assert time.monotonic() - started < 1
    assert h.metric("tasklens.ecs.polls") == 1


# --- hostile endpoints: a body that never ends, a redirect ----------------------------------------


class HostileMetadata:
    """A metadata endpoint that answers well until `mode` says otherwise: `endless` streams a body
    without end (chunked, no length), `huge` announces a body over the cap, `redirect` sends `/task` to
    another path that serves a different, valid task (following it would change the identity)."""

    def __init__(self, task: bytes, stats: bytes) -> None:
        self.task, self.stats = task, stats
        self.mode = "ok"
        self.streamed = 0  # bytes of the endless body written before the client went away
        self.redirected_followed = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/task/stats"):
            return web.Response(body=self.stats, content_type="application/json")
        if self.mode == "redirect":
            raise web.HTTPFound("/elsewhere/task")
        if self.mode == "huge":
            return web.Response(body=b" " * (MAX_BODY + 1) + self.task, content_type="application/json")
        if self.mode == "endless":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            chunk = b'{"pad": "' + b"x" * 65536
            try:
                while True:  # until the client closes the connection
                    await response.write(chunk)
                    self.streamed += len(chunk)
            except (ConnectionError, RuntimeError):
                return response
        return web.Response(body=self.task, content_type="application/json")

    async def elsewhere(self, request: web.Request) -> web.Response:
        self.redirected_followed += 1
        other = json.loads(self.task)
        other["TaskARN"] = "arn:aws:ecs:eu-west-1:1:task/evil/00000000000000000000000000000000"
        return web.Response(body=json.dumps(other).encode(), content_type="application/json")


@pytest.fixture
async def hostile() -> Any:
    server = HostileMetadata(raw("fargate-2023.task"), raw("fargate-2023.stats"))
    app = web.Application()
    app.router.add_get("/v4/x/task", server.handle)
    app.router.add_get("/v4/x/task/stats", server.handle)
    app.router.add_get("/elsewhere/task", server.elsewhere)
    runner, base = await serve_app(app, shutdown_timeout=0.1)
    server.url = base + "/v4/x"  # type: ignore[attr-defined]
    yield server
    await runner.cleanup()


@pytest.mark.parametrize("mode", ["endless", "huge", "redirect"])
async def test_refused_answers_leave_nothing_behind(mode: str, hostile: HostileMetadata) -> None:
    """Each refusal frees what it read at once, without the cyclic collector (which the sidecar runs
    rarely, and not during flushes): before, each endless body refused kept 4 MiB in a reference cycle."""
    h = Harness(hostile.url, timeout=10.0)  # type: ignore[attr-defined]
    assert await h.source.poll_once()
    hostile.mode = mode
    assert not await h.source.poll_once()  # the first one allocates what every poll reuses
    gc.collect()
    gc.disable()
    tracemalloc.start()
    # what the client side holds: not the hostile server's bodies (served from this process)
    server_side = [tracemalloc.Filter(False, __file__), tracemalloc.Filter(False, "*/aiohttp/web_*")]
    try:
        before = tracemalloc.take_snapshot().filter_traces(server_side)
        for _ in range(5):
            assert not await h.source.poll_once()
        after = tracemalloc.take_snapshot().filter_traces(server_side)
    finally:
        tracemalloc.stop()
        gc.enable()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert held < MAX_BODY, held
    assert h.metric("tasklens.ecs.poll_errors", reason="redirect" if mode == "redirect" else "too_large") == 6
    await h.source.aclose()


@pytest.mark.parametrize(("mode", "reason"), [("endless", "too_large"), ("huge", "too_large"),
                                              ("redirect", "redirect")])
async def test_a_hostile_answer_is_refused_counted_and_the_identity_kept(
        mode: str, reason: str, hostile: HostileMetadata) -> None:
    h = Harness(hostile.url, timeout=10.0)  # type: ignore[attr-defined]
    assert await h.source.poll_once()
    task_id = h.hub.identity.task_id
    rss_before = psutil.Process().memory_info().rss
    hostile.mode = mode
    started = time.monotonic()
    assert not await h.source.poll_once()
    # refused as soon as the cap was passed, not at the 10 s timeout; nothing buffered past the cap
    assert time.monotonic() - started < 5.0
    assert psutil.Process().memory_info().rss - rss_before < 4 * MAX_BODY
    assert h.metric("tasklens.ecs.poll_errors", reason=reason) == 1
    assert h.source.status()["last_error_reason"] == reason
    assert h.hub.identity.task_id == task_id  # the last identity is kept
    assert hostile.redirected_followed == 0
    if mode == "endless":
        assert MAX_BODY < hostile.streamed < 64 * MAX_BODY
    hostile.mode = "ok"
    assert await h.source.poll_once()  # and it recovers by itself
    await h.source.aclose()


async def test_huge_names_in_the_task_cannot_make_every_series_huge(metadata: MetadataServer,
                                                                  harness: Harness) -> None:
    """Names within the body cap can still be megabytes: each would be a label of every series (of every
    StatsD series too, through the identity), so /metrics would repeat it on every line. ECS names are
    at most 255 characters, an ARN at most 2048: longer ones are cut there."""
    task = load("fargate-2023.task")
    task["Family"] = "f" * 1_000_000
    task["Cluster"] = "c" * 1_000_000
    task["TaskARN"] = "arn:aws:ecs:ap-northeast-1:1:task/x/" + "t" * 1_000_000
    task["Containers"][0].update(Name="n" * 100_000, Image="i" * 100_000 + ":" + "v" * 100_000)
    metadata.serve(task, raw("fargate-2023.stats"))
    assert await harness.source.poll_once()
    text = generate_latest(harness.prometheus.registry)
    assert len(text) < 1024 * 1024, len(text)  # it was 295 MB
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            assert all(len(v) <= (2048 if k == "task_arn" else 255) for k, v in s.labels.items()), s.name
    assert harness.hub.identity.task_family == "f" * 255


async def test_a_task_with_more_containers_than_ecs_allows_is_refused(metadata: MetadataServer,
                                                                      harness: Harness) -> None:
    """ECS runs at most 10 containers in a task (a few more with the ones it adds). 55,000 of them fit
    in the body cap, and deriving and rendering their series held the event loop for seconds."""
    metadata.serve(raw("fargate-2023.task"), raw("fargate-2023.stats"))
    assert await harness.source.poll_once()
    task = load("fargate-2023.task")
    task["TaskARN"] = task["TaskARN"][:-4] + "ffff"
    task["Containers"] = [{"DockerId": f"d{i}", "Name": f"n{i}", "KnownStatus": "RUNNING"} for i in range(1000)]
    metadata.serve(task, raw("fargate-2023.stats"))
    assert not await harness.source.poll_once()
    assert harness.metric("tasklens.ecs.poll_errors", reason="bad_shape") == 1
    assert harness.scrape() == {}  # a gap
    assert harness.hub.identity.task_id == "67cd8a22b533459696d4ccab5278e009"  # the last identity kept


async def test_stats_of_containers_not_in_the_task_are_not_kept(metadata: MetadataServer, harness: Harness) -> None:
    """Only the task's containers are derived, so only their stats are kept for the next poll's rates,
    not the entries of unknown ids that fit in the body cap (75,000 of them kept about 32 MB between
    polls, as measured by tracemalloc)."""
    stats = load("fargate-2023.stats")
    for i in range(20_000):
        stats[f"unknown-{i}"] = {"read": "2023-06-20T01:19:45.077342978Z", "unknown": [i]}
    metadata.serve(raw("fargate-2023.task"), stats)
    del stats
    for _ in range(2):
        assert await harness.source.poll_once()
    await asyncio.sleep(0)  # one turn of the loop: the handle that woke this task holds the last answer
    gc.collect()
    unknown = sum(1 for o in gc.get_objects() if isinstance(o, dict) and "unknown" in o and "read" in o)
    assert unknown == 0, unknown  # it was 20,000: kept for the next poll
    assert harness.scrape()["ecs_container_memory_working_set_bytes", "dd-agent"] == 156_966_912
