"""A real Prometheus server (Debian's `prometheus`) scraping a real sidecar, checked through its query API.

Three processes, all started here on free loopback ports: the ECS metadata emulator (`tasklens
emulate-ecs` serving a Fargate capture), the sidecar (`tasklens run`) and Prometheus scraping it every
second. StatsD comes from the `datadog` package's `DogStatsd` client. Then Prometheus's own
`/api/v1/query` must show the StatsD and ECS series with the task's identity labels, and a series
that stops being reported must disappear after the sidecar's TTL.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from datadog.dogstatsd import DogStatsd
from prometheus_client.parser import text_string_to_metric_families

from tests.support import FIXTURES, TASKLENS, Sidecar, clean_env, free_port, http_get, wait_until

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's `prometheus` package "
                                                         "(apt-get install -y prometheus)")

TASK = FIXTURES / "fargate-2023.task.json"
STATS = FIXTURES / "fargate-2023.stats.json"
IDENTITY = {"service": "akira-fargate-check", "ecs_cluster": "akira-fargate-check-cluster",
            "task_family": "akira-fargate-check", "task_revision": "1",
            "task_id": "67cd8a22b533459696d4ccab5278e009", "availability_zone": "ap-northeast-1d",
            "region": "ap-northeast-1", "launch_type": "FARGATE"}


def start(args: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=clean_env(**env))


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = start([TASKLENS, "emulate-ecs", "--task", str(TASK), "--stats", str(STATS), "--addr", f"127.0.0.1:{port}"],
                 tmp_path / "emulator.log")
    docker_id = json.loads(TASK.read_text())["Containers"][0]["DockerId"]
    url = f"http://127.0.0.1:{port}/v4/{docker_id}"
    try:
        wait_until(lambda: http_get(url + "/task")[0] == 200, 20, what="the ECS emulator")
        yield url
    finally:
        stop(proc)


@pytest.fixture
def sidecar(tmp_path: Path, emulator: str, request: pytest.FixtureRequest) -> Iterator[Sidecar]:
    extra = getattr(request, "param", {})  # more variables, by indirect parametrization
    s = Sidecar(tmp_path, ECS_CONTAINER_METADATA_URI_V4=emulator, TASKLENS_FLUSH_INTERVAL="1",
                TASKLENS_POLL_INTERVAL="1", **extra)
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


@pytest.fixture
def prometheus(tmp_path: Path, sidecar: Sidecar) -> Iterator[str]:
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: tasklens\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{sidecar.http_port}']\n")
    proc = start([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                  f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], tmp_path / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_get(url + "/-/ready")[0] == 200, 30, what="Prometheus ready")
        # targets are picked up a few seconds after start: wait for the first good scrape
        wait_until(lambda: query(url, 'up{job="tasklens"} == 1'), 30, interval=0.25, what="the first scrape")
        yield url
    finally:
        stop(proc)


def query(prometheus: str, promql: str) -> list[dict]:  # type: ignore[type-arg]
    status, body = http_get(f"{prometheus}/api/v1/query?query={urllib.parse.quote(promql)}")
    assert status == 200, body
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]  # type: ignore[no-any-return]


def one_series(prometheus: str, promql: str, value: float) -> dict[str, str]:
    """Wait until `promql` returns exactly one series with `value`; its labels."""
    def check() -> dict[str, str] | None:
        result = query(prometheus, promql)
        if len(result) == 1 and float(result[0]["value"][1]) == value:
            return result[0]["metric"]  # type: ignore[no-any-return]
        return None
    return wait_until(check, 30, interval=0.25, what=f"{promql} == {value} in Prometheus")  # type: ignore[no-any-return]


def test_prometheus_sees_statsd_and_ecs_series_with_identity_labels(sidecar: Sidecar, prometheus: str) -> None:
    statsd = DogStatsd(host="127.0.0.1", port=sidecar.statsd_port, disable_telemetry=True, disable_buffering=True)
    for _ in range(5):
        statsd.increment("jobs.done", tags=["queue:orders"])
    statsd.gauge("worker.busy", 3, tags=["pool:a"])
    for v in (0.2, 0.7, 3.0):
        statsd.histogram("job.seconds", v)
    statsd.close_socket()

    labels = one_series(prometheus, 'jobs_done_total{queue="orders"}', 5.0)
    assert {k: labels.get(k) for k in IDENTITY} == IDENTITY
    assert labels["job"] == "tasklens"
    assert one_series(prometheus, 'worker_busy{pool="a"}', 3.0)["service"] == "akira-fargate-check"
    # a StatsD histogram is a Prometheus histogram: 3 observations, 2 of them <= 1
    one_series(prometheus, "job_seconds_count", 3.0)
    one_series(prometheus, 'job_seconds_bucket{le="1.0"}', 2.0)
    # ECS: the working set worked by hand in the spec for this capture
    ecs = one_series(prometheus, 'ecs_container_memory_working_set_bytes{container_name="dd-agent"}', 156_966_912.0)
    assert {k: ecs.get(k) for k in IDENTITY} == IDENTITY
    info = one_series(prometheus, "ecs_task_info", 1.0)
    assert info["task_arn"].endswith("/67cd8a22b533459696d4ccab5278e009")


@pytest.mark.parametrize("sidecar", [{"TASKLENS_PROMETHEUS_TTL": "2"}], indirect=True)
def test_a_series_that_stops_being_reported_disappears_after_its_ttl(sidecar: Sidecar, prometheus: str) -> None:
    statsd = DogStatsd(host="127.0.0.1", port=sidecar.statsd_port, disable_telemetry=True, disable_buffering=True)
    statsd.gauge("one.off", 7, tags=["run:once"])
    statsd.close_socket()
    one_series(prometheus, "one_off", 7.0)
    seen = time.monotonic()
    # TTL 2 s: the sidecar drops it, the next scrape lacks it, Prometheus marks it stale
    wait_until(lambda: query(prometheus, "one_off") == [], 30, interval=0.25, what="one_off to go stale")
    assert time.monotonic() - seen < 15
    assert "one_off" not in sidecar.get("/metrics")[1]


def prometheus_counter(prometheus: str, name: str) -> float:
    """A counter from Prometheus's own `/metrics` (0 when it has not been created)."""
    status, body = http_get(prometheus + "/metrics")
    assert status == 200, body
    return sum(s.value for f in text_string_to_metric_families(body) for s in f.samples if s.name == name)


def test_hostile_names_and_tags_are_ingested_without_a_drop(sidecar: Sidecar, prometheus: str) -> None:
    """Collisions after sanitising, the sidecar's own names, family suffixes, reserved and identity
    labels: every scrape stays good (`up` never 0) and Prometheus rejects no sample of it."""
    statsd = DogStatsd(host="127.0.0.1", port=sidecar.statsd_port, disable_telemetry=True, disable_buffering=True)
    for _ in range(7):
        statsd.increment("control.jobs", tags=["queue:orders"])
    statsd.increment("x")
    statsd.histogram("y", 0.5)
    statsd.gauge("a.b", 1)
    one_series(prometheus, 'control_jobs_total{queue="orders"}', 7.0)
    for name in ("x_total", "y_count", "y_bucket", "a-b", "a_b", "tasklens.http.scrapes", "ecs.task.info",
                 "queue.depth"):
        statsd.gauge(name, 12345)
    statsd.gauge("labels", 1, tags=["le:1", "quantile:0.5", "__name__:evil", "service:evil", "task_id:evil",
                                    "1st:x", "a-b:1"])
    statsd.gauge("dup.labels", 1, tags=["a-b:1", "a_b:2"])
    statsd.close_socket()
    labels = one_series(prometheus, 'labels{exported_le="1"}', 1.0)
    assert (labels["exported_service"], labels["exported_task_id"], labels["exported_quantile"]) == ("evil", "evil", "0.5")
    assert {k: labels.get(k) for k in IDENTITY} == IDENTITY and labels["exported_name__"] == "evil"
    scrapes = prometheus_counter(prometheus, "prometheus_target_scrapes_sample_duplicate_timestamp_total")
    # a few more scrapes with the hostile series in them
    wait_until(lambda: query(prometheus, 'count_over_time(up{job="tasklens"}[1m]) >= 8'), 30, interval=0.25,
               what="eight scrapes")
    assert query(prometheus, 'min_over_time(up{job="tasklens"}[1m]) == 0') == []  # never a failed scrape
    assert scrapes == prometheus_counter(prometheus, "prometheus_target_scrapes_sample_duplicate_timestamp_total") == 0
    for name in ("prometheus_target_scrapes_sample_out_of_order_total",
                 "prometheus_target_scrapes_sample_out_of_bounds_total",
                 "prometheus_target_scrapes_exceeded_sample_limit_total"):
        assert prometheus_counter(prometheus, name) == 0, name
    assert query(prometheus, "{__name__=~'.+'} == 12345") == []  # no shadowing name was ingested
    one_series(prometheus, 'control_jobs_total{queue="orders"}', 7.0)
    one_series(prometheus, "a_b", 1.0)
    one_series(prometheus, "ecs_task_info", 1.0)
    assert len(query(prometheus, 'tasklens_sink_points_rejected_total{sink="prometheus"}')) >= 4
