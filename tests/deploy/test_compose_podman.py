"""The local-development project run for real: deploy/compose/compose.yaml started with podman by
scripts/podman-compose.py (its services, commands, environment and start order; Debian stand-ins
for the registry-only Redis and Prometheus images; Grafana left out), then asked through
Prometheus's own API: it scrapes the sidecar, sees the worker's StatsD and the queue, and evaluates
the alert rules."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.support import http_get, wait_until
from tests.deploy.deploy_checks import DEPLOY
from tests.deploy.podman_support import SCRIPTS, Podman

COMPOSE = [sys.executable, str(SCRIPTS / "podman-compose.py")]


@pytest.fixture(scope="module")
def project(podman: Podman, image: str) -> Iterator[dict[str, str]]:
    name = podman.name("dev")
    up = subprocess.run(
        [*COMPOSE, "up", "--project", name, "--no-ports", "--tasklens-image", image],
        capture_output=True,
        text=True,
        env=podman.env,
        timeout=900,
        check=False,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "grafana: left out" in up.stderr
        addresses = json.loads(up.stdout.strip().splitlines()[-1])
        # Prometheus answers 503 until its storage is open
        wait_until(
            lambda: http_get(f"http://{addresses['prometheus']}:9090/-/ready")[0] == 200,
            timeout=60,
            interval=0.5,
            what="Prometheus ready",
        )
        yield addresses
    finally:
        subprocess.run(
            [*COMPOSE, "down", "--project", name], capture_output=True, env=podman.env, timeout=120, check=False
        )
        assert podman("ps", "-a", "--filter", f"name={name}", "--format", "{{.Names}}").stdout.strip() == ""


def prometheus(project: dict[str, str], path: str, **query: str) -> Any:
    url = f"http://{project['prometheus']}:9090/api/v1/{path}"
    status, body = http_get(f"{url}?{urllib.parse.urlencode(query)}" if query else url, timeout=5)
    assert status == 200, body
    return json.loads(body)["data"]


def test_every_service_but_grafana_runs(project: dict[str, str]) -> None:
    assert set(project) == {"redis", "ecs-metadata", "tasklens", "worker", "producer", "prometheus"}


def test_prometheus_scrapes_the_sidecar(project: dict[str, str]) -> None:
    def target_up() -> bool:
        targets = prometheus(project, "targets")["activeTargets"]
        return [(t["labels"]["job"], t["labels"]["instance"], t["health"]) for t in targets] == [
            ("tasklens", "tasklens:9102", "up")
        ]

    wait_until(target_up, timeout=60, interval=1, what="Prometheus scraping tasklens:9102")

    def series(query: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = prometheus(project, "query", query=query)["result"]
        return result

    # the worker's DogStatsD, through the sidecar, in Prometheus; and the queue the sidecar polls
    wait_until(
        lambda: series('worker_jobs_total{service="orders-worker",env="dev",outcome="ok"}'),
        timeout=60,
        interval=1,
        what="the worker's jobs in Prometheus",
    )
    wait_until(
        lambda: series('queue_depth{queue="jobs",queue_type="redis",service="orders-worker"}'),
        timeout=60,
        interval=1,
        what="the Redis queue's depth in Prometheus",
    )


def test_prometheus_evaluates_the_alert_rules(project: dict[str, str]) -> None:
    shipped = yaml.safe_load((DEPLOY / "alerts" / "prometheus" / "tasklens.rules.yml").read_text())
    names = [r["alert"] for g in shipped["groups"] for r in g["rules"]]

    def evaluated() -> list[dict[str, Any]]:
        rules = [r for g in prometheus(project, "rules")["groups"] for r in g["rules"]]
        return rules if rules and all(not r["lastEvaluation"].startswith("0001-") for r in rules) else []

    rules = wait_until(evaluated, timeout=60, interval=1, what="a rule evaluation")
    assert [r["name"] for r in rules] == names
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
