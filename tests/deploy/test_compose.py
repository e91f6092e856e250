"""The local development setup (deploy/compose): the compose file against the Compose
specification schema, its environment against what the sidecar and the datadog client read, its
file references, and the whole pipeline run outside Docker (no engine here): Redis, the ECS
metadata emulator, the sidecar and the example worker and producer, with the compose file's own
commands and environment, down to the series Prometheus would scrape."""

from __future__ import annotations

import copy
import json
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import datadog
import jsonschema
import pytest
import yaml

from tests.support import TASKLENS, clean_env, free_port, http_get, wait_until
from tests.deploy.deploy_checks import DEPLOY, config_errors, exec_form, sidecar_variables

COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
SCHEMA = COMPOSE_DIR / "schema" / "compose-spec.json"
TASKLENS_SERVICES = ("tasklens", "ecs-metadata")


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))


def schema_errors(doc: dict) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in validator().iter_errors(doc)]


def test_valid_against_the_compose_specification() -> None:
    assert schema_errors(load()) == []


def test_schema_rejects_what_compose_rejects() -> None:
    doc = load()
    broken = copy.deepcopy(doc)
    broken["services"]["worker"]["depends_on"]["redis"]["condition"] = "healthy"
    assert any("depends_on" in e for e in schema_errors(broken))
    broken = copy.deepcopy(doc)
    broken["services"]["tasklens"]["enviroment"] = {}  # a typo
    assert any("enviroment" in e for e in schema_errors(broken))


def test_sidecar_environment_is_what_the_sidecar_reads() -> None:
    services = load()["services"]
    for name in TASKLENS_SERVICES:
        env = set(services[name].get("environment", {}))
        unknown = env - sidecar_variables()
        assert not unknown, f"{name} sets variables the sidecar does not read: {sorted(unknown)}"
        assert config_errors({k: str(v) for k, v in services[name].get("environment", {}).items()}) == []
    assert services["tasklens"]["environment"]["TASKLENS_HTTP_ADDR"] == "0.0.0.0:9102"
    assert services["tasklens"]["environment"]["TASKLENS_STATSD_ADDR"] == "0.0.0.0:8125"


def test_worker_statsd_environment_is_what_the_datadog_client_reads() -> None:
    client_source = Path(datadog.dogstatsd.base.__file__).read_text()
    env = load()["services"]["worker"]["environment"]
    for name in (n for n in env if n.startswith("DD_")):
        assert f'"{name}"' in client_source or f"'{name}'" in client_source, f"the datadog client does not read {name}"
    # compose networking: the sidecar by its service name, on the port it listens on
    assert env["DD_AGENT_HOST"] == "tasklens" and env["DD_DOGSTATSD_PORT"] == "8125"
    assert env["DD_SERVICE"] == load()["services"]["tasklens"]["environment"]["TASKLENS_SERVICE"]


def test_file_references_exist() -> None:
    doc = load()
    for name, service in doc["services"].items():
        build = service.get("build")
        if isinstance(build, str):
            build = {"context": build}
        if build:
            context = (COMPOSE_DIR / build["context"]).resolve()
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source}"


def test_prometheus_and_grafana_configuration() -> None:
    services = load()["services"]
    prometheus = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["tasklens:9102"]
    rules = yaml.safe_load((DEPLOY / "alerts" / "prometheus" / "tasklens.rules.yml").read_text())
    down = next(r for g in rules["groups"] for r in g["rules"] if r["alert"] == "TasklensSidecarDown")
    assert re.fullmatch(re.search(r'job=~"([^"]+)"', down["expr"]).group(1), job["job_name"])
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    assert any(Path(t).match(prometheus["rule_files"][0]) for t in mounts.values())

    grafana_mounts = {t: s for s, t in (v.split(":")[:2] for v in services["grafana"]["volumes"])}
    provider = yaml.safe_load((COMPOSE_DIR / "grafana" / "provisioning" / "dashboards" / "tasklens.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert (COMPOSE_DIR / grafana_mounts[path] / "tasklens-worker.json").is_file()
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/tasklens-worker.json"


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    config = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    (tmp_path / "rules").mkdir()
    shutil.copy(DEPLOY / "alerts" / "prometheus" / "tasklens.rules.yml", tmp_path / "rules")
    config["rule_files"] = [str(tmp_path / "rules" / "*.yml")]  # the mounted directory, here
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 13 rules found" in result.stdout


# --- the pipeline, outside Docker ------------------------------------------------------------------


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server not installed (Debian package `redis-server`)")
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        wait_until(up, timeout=15, what="redis-server")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def compose_command(service: dict) -> list[str]:
    """The service's command as its container would run it: the tasklens image's ENTRYPOINT and CMD
    come from its Dockerfile, the example worker's `python` is this interpreter."""
    if service.get("image") == "tasklens:dev":
        entrypoint = exec_form("ENTRYPOINT")
        return [TASKLENS, *entrypoint[1:], *service.get("command", exec_form("CMD"))]
    return [sys.executable, *service["command"][1:]]


def test_pipeline_runs_outside_docker(redis_port: int, tmp_path: Path) -> None:
    services = load()["services"]
    hosts = {"redis:6379": f"127.0.0.1:{redis_port}"}
    metadata_port, http_port, statsd_port = free_port(), free_port(), free_port(socket.SOCK_DGRAM)
    hosts["ecs-metadata:51678"] = f"127.0.0.1:{metadata_port}"

    def localize(env: dict[str, str]) -> dict[str, str]:
        out = {}
        for key, value in env.items():
            for compose_host, local in hosts.items():
                value = str(value).replace(compose_host, local)
            out[key] = value
        return out

    procs: list[subprocess.Popen] = []

    def start(name: str, command: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        log = open(tmp_path / f"{name}.log", "wb")
        procs.append(subprocess.Popen(command, env=clean_env(**env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT))

    try:
        emulator = compose_command(services["ecs-metadata"])
        emulator[emulator.index("--addr") + 1] = f"127.0.0.1:{metadata_port}"
        start("ecs-metadata", emulator, {})
        sidecar_env = localize(services["tasklens"]["environment"])
        sidecar_env.update(TASKLENS_HTTP_ADDR=f"127.0.0.1:{http_port}", TASKLENS_STATSD_ADDR=f"127.0.0.1:{statsd_port}")
        wait_until(lambda: http_get(f"http://127.0.0.1:{metadata_port}/v4/compose/task")[0] == 200, 20,
                   what="the metadata emulator")
        start("tasklens", compose_command(services["tasklens"]), sidecar_env)
        worker_env = localize(services["worker"]["environment"])
        worker_env.update(DD_AGENT_HOST="127.0.0.1", DD_DOGSTATSD_PORT=str(statsd_port))
        wait_until(lambda: http_get(f"http://127.0.0.1:{http_port}/health")[0] == 200, 30, what="sidecar /health")
        for name in ("producer", "worker"):
            env = worker_env if name == "worker" else localize(services[name]["environment"])
            start(name, compose_command(services[name]), env, cwd=COMPOSE_DIR / "worker")

        def scraped() -> str | None:
            status, body = http_get(f"http://127.0.0.1:{http_port}/metrics")
            wanted = ('worker_jobs_total{', 'queue_depth{', 'ecs_task_info{', 'tasklens_statsd_lines_total{')
            return body if status == 200 and all(w in body for w in wanted) else None

        body = wait_until(scraped, timeout=60, interval=0.5, what="worker, queue, ECS and self series on /metrics")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    jobs = next(l for l in body.splitlines() if l.startswith("worker_jobs_total{") and 'outcome="ok"' in l)
    # the worker's own StatsD series carry the sidecar's identity (service from the compose file)
    assert 'service="orders-worker"' in jobs and 'env="dev"' in jobs and 'kind="' in jobs
    depth = next(l for l in body.splitlines() if l.startswith("queue_depth{"))
    assert 'queue="jobs"' in depth and 'queue_type="redis"' in depth
    assert procs[1].returncode == 0  # the sidecar exits cleanly on SIGTERM
