"""The image built and run for real with podman (deploy/docker/Dockerfile, scripts/podman-*.sh).

Built once per session on the local stand-in base; run as users run it: non-root, read-only root,
its own health check, reached from other containers, and in a pod with a worker the way an ECS task
with awsvpc and pidMode task looks to the sidecar. Skipped, with the reason, where podman cannot run
(TASKLENS_REQUIRE_PODMAN=1 turns that skip into a failure).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from aiohttp import web

from tests.support import http_get, wait_until
from tests.deploy.podman_support import Podman, env, serve_on
from tests.integrations.profilers.pyroscope_fake import FakePyroscope
from tests.sinks.intake import Intake

# what a container's python finds in the image: the C loop, compilers, the process's user
PROBE = """
import json, os, shutil
import agent.statsd._fast as fast
print(json.dumps({"fast": fast.__file__, "uid": os.getuid(), "gid": os.getgid(),
                  "compilers": [c for c in ("gcc", "cc", "c99", "gcc-12", "x86_64-linux-gnu-gcc-12",
                                            "aarch64-linux-gnu-gcc-12", "clang", "tcc") if shutil.which(c)]}))
"""

# A worker: DogStatsD with the datadog client to DD_AGENT_HOST, and some CPU for the profiler.
WORKER = """
import hashlib, time
from datadog import DogStatsd
statsd = DogStatsd()  # DD_AGENT_HOST, DD_DOGSTATSD_PORT
def burn_cpu_for_the_profiler():
    digest = b""
    for i in range(20000):
        digest = hashlib.sha256(digest + i.to_bytes(4, "big")).digest()
while True:
    burn_cpu_for_the_profiler()
    statsd.increment("worker.jobs", tags=["kind:resize"])
    time.sleep(0.05)
"""


def metric_value(body: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of `name` whose labels include `labels` (None if absent)."""
    for line in body.splitlines():
        m = re.match(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            return float(m.group(2))
    return None


def scrape(url: str) -> str:
    status, body = http_get(url)
    assert status == 200, (status, body[:500])
    return body


def exit_code(podman: Podman, container: str) -> int:
    return int(podman.inspect(container)["State"]["ExitCode"])


def test_image_builds_with_the_c_loop_and_no_compiler(podman: Podman, image: str) -> None:
    probe = json.loads(podman("run", "--rm", "--entrypoint", "python", image, "-c", PROBE).stdout)
    assert probe["fast"].endswith(".so"), probe  # the compiled loop, not the Python fallback
    assert probe["compilers"] == [], probe
    assert (probe["uid"], probe["gid"]) == (10001, 10001)
    inspected = podman.inspect(image)
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    assert inspected["Healthcheck"]["Test"] == ["CMD", "tasklens", "health"]
    assert (config["Entrypoint"], config["Cmd"], config["StopSignal"]) == (["tasklens"], ["run"], "SIGTERM")
    assert set(config["ExposedPorts"]) == {"9102/tcp", "8125/udp"}


def test_image_size_budget(podman: Podman, image: str) -> None:
    """What the image adds on top of its base, on disk (docs/deploy.md has the measured sizes)."""
    base = podman.inspect(image)["Config"]["Labels"]["tasklens.base"]
    assert base  # the stand-in base's label: the layers below are the base's
    layers = json.loads(podman("history", "--format", "json", image).stdout)
    added = sum(int(layer["size"]) for layer in layers if "ADD file:" not in layer.get("CreatedBy", ""))
    assert 20e6 < added < 260e6, added


@pytest.fixture
def intake(network: tuple[str, str]) -> Any:
    """The Datadog intake fake, on the network's gateway (where containers reach the host)."""
    fake = Intake()
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    with serve_on(network[1], app, auto_decompress=False) as url:  # the intake checks the raw body
        fake.url = url
        yield fake


def test_sidecar_container_as_users_run_it(
    podman: Podman, image: str, network: tuple[str, str], intake: Intake
) -> None:
    """Read-only root, UID 10001, the image's own health check, /metrics and StatsD reached from
    another container by name, and SIGTERM -> exit 0 with the last interval flushed to Datadog."""
    net, _ = network
    # the flush interval is longer than the test: only the flush at SIGTERM can send the counter
    settings = env(
        TASKLENS_SERVICE="image-test", DD_API_KEY=intake.api_key, DD_DD_URL=intake.url, TASKLENS_FLUSH_INTERVAL="300"
    )
    sidecar = podman.start("sidecar", image, "--network", net, "--read-only", *settings)
    wait_until(
        lambda: podman("healthcheck", "run", sidecar, check=False).returncode == 0,
        timeout=30,
        interval=0.2,
        what="the image's health check",
    )
    state = podman.inspect(sidecar)
    assert state["HostConfig"]["ReadonlyRootfs"] is True
    status = podman("exec", sidecar, "cat", "/proc/1/status").stdout
    assert re.search(r"^Uid:\s+10001\s", status, re.MULTILINE), status
    assert podman("exec", sidecar, "touch", "/usr/local/written", check=False).returncode != 0

    # another container on the network: StatsD in, /metrics out, by the sidecar's name
    peer = podman(
        "run",
        "--rm",
        "--network",
        net,
        "--entrypoint",
        "python",
        image,
        "-c",
        f"""
import urllib.request
from datadog import DogStatsd
DogStatsd(host={sidecar!r}, port=8125).increment("image.last_interval", 3, tags=["from:peer"])
with urllib.request.urlopen("http://{sidecar}:9102/metrics", timeout=5) as r:
    print(r.status)
    print(r.read().decode())
""",
    ).stdout
    assert peer.startswith("200\n") and "# TYPE tasklens_" in peer, peer[:500]
    ip = podman.ip(sidecar, net)
    wait_until(
        lambda: (metric_value(scrape(f"http://{ip}:9102/metrics"), "tasklens_statsd_packets_total") or 0) >= 1,
        timeout=10,
        what="the sidecar counting the peer's StatsD packet",
    )
    assert intake.points("image.last_interval") == []  # not flushed yet

    podman("stop", "-t", "30", sidecar)  # SIGTERM, the image's STOPSIGNAL
    assert exit_code(podman, sidecar) == 0, podman("logs", sidecar).stderr[-2000:]
    points = intake.points("image.last_interval")
    # a DogStatsD count leaves as a rate over the flush interval, as the Datadog agent sends it
    assert round(sum(value * (interval or 1) for _, value, _, _, interval in points), 6) == 3, (
        intake.errors,
        intake.requests,
        intake.metrics(),
        podman("logs", sidecar).stderr[-3000:],
    )
    assert "from:peer" in points[0][2] and "service:image-test" in points[0][2]
    assert intake.errors == []


@pytest.fixture
def pyroscope(network: tuple[str, str]) -> Any:
    fake = FakePyroscope()
    app = web.Application()
    app.router.add_post("/ingest", fake.ingest)
    with serve_on(network[1], app) as url:
        fake.url = url
        yield fake


def test_pod_like_an_awsvpc_task(
    podman: Podman, image: str, network: tuple[str, str], pyroscope: FakePyroscope
) -> None:
    """A worker container and the sidecar in one pod (shared network and PID namespace, like an ECS
    task with awsvpc and pidMode task), the metadata emulator standing in for ECS: the worker's
    DogStatsD reaches the sidecar over 127.0.0.1, StatsD bound to loopback is out of reach of other
    containers, /metrics is reachable for a scraper, and py-spy in the sidecar samples the worker."""
    net, _ = network
    pod = podman.pod("task", "--network", net, "--share", "net,ipc,uts,pid")
    try:
        metadata = podman.start(
            "metadata", image, "--pod", pod, "--read-only", command=("emulate-ecs", "--addr", "127.0.0.1:51678")
        )
        settings = env(
            ECS_CONTAINER_METADATA_URI_V4="http://127.0.0.1:51678/v4/sidecar",
            TASKLENS_SERVICE="orders-worker",
            # what the Terraform modules set in awsvpc mode: StatsD on loopback, HTTP for the scraper
            TASKLENS_STATSD_ADDR="127.0.0.1:8125",
            TASKLENS_HTTP_ADDR="0.0.0.0:9102",
            TASKLENS_FLUSH_INTERVAL="1",
            TASKLENS_POLL_INTERVAL="2",
            TASKLENS_PYROSCOPE_URL=pyroscope.url,
            TASKLENS_PROFILE_WINDOW="2",
            TASKLENS_PROFILE_MATCH="burn_cpu_for_the_profiler|DogStatsd",
        )
        sidecar = podman.start("pod-sidecar", image, "--pod", pod, "--read-only", "--cap-add", "SYS_PTRACE", *settings)
        worker_settings = env(DD_AGENT_HOST="127.0.0.1", DD_DOGSTATSD_PORT="8125")
        podman.start(
            "worker", image, "--pod", pod, "--read-only", "--entrypoint", "python", *worker_settings, command=("-c", WORKER)
        )
        infra = podman("pod", "inspect", pod, "--format", "{{.InfraContainerID}}").stdout.strip()
        ip = podman.ip(infra, net)
        metrics = f"http://{ip}:9102/metrics"

        def jobs() -> float | None:
            return metric_value(scrape(metrics), "worker_jobs_total", kind="resize", service="orders-worker")

        wait_until(lambda: (jobs() or 0) > 0, timeout=60, interval=0.5, what="the worker's DogStatsD on /metrics")
        body = scrape(metrics)
        # the task identity comes from the emulator, which describes its own container as the task
        task_id = podman.inspect(metadata)["Id"]
        jobs_lines = [line for line in body.splitlines() if line.startswith("worker_jobs_total{")]
        assert jobs_lines and all(task_id in line and 'ecs_cluster="local"' in line for line in jobs_lines), jobs_lines

        # StatsD on 127.0.0.1 inside the pod: a container outside it cannot inject metrics
        flushes = metric_value(body, "tasklens_statsd_flushes_total") or 0
        inject = f"from datadog import DogStatsd; DogStatsd(host={ip!r}, port=8125).increment('outside.injected')"
        podman("run", "--rm", "--network", net, "--entrypoint", "python", image, "-c", inject)
        wait_until(
            lambda: (metric_value(scrape(metrics), "tasklens_statsd_flushes_total") or 0) >= flushes + 2,
            timeout=20,
            what="two more StatsD flushes",
        )
        assert "outside_injected" not in scrape(metrics)

        # py-spy in the sidecar sees the worker's process through the shared PID namespace
        wait_until(
            lambda: any(i.stacks and i.share("burn_cpu_for_the_profiler") > 0 for i in pyroscope.ingested),
            timeout=60,
            interval=0.5,
            what="a profile of the worker",
        )
        assert pyroscope.errors == []

        podman("stop", "-t", "30", sidecar)
        assert exit_code(podman, sidecar) == 0, podman("logs", sidecar).stderr[-2000:]
    finally:  # now, not at the end of the session: its worker burns CPU for the profiler
        podman.remove("pod", pod)
