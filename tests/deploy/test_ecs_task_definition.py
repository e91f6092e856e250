"""The plain task-definition example (deploy/ecs) against the ECS API shape and the sidecar rules."""

from __future__ import annotations

import copy
import json

from tests.deploy.deploy_checks import DEPLOY, task_definition_errors

EXAMPLE = DEPLOY / "ecs" / "task-definition.json"


def load() -> dict:
    return json.loads(EXAMPLE.read_text())


def test_example_is_a_valid_register_task_definition_input() -> None:
    assert task_definition_errors(load()) == []


def test_example_wires_worker_to_sidecar() -> None:
    task = load()
    worker, sidecar = task["containerDefinitions"]
    assert worker["dependsOn"] == [{"containerName": "tasklens", "condition": "HEALTHY"}]
    assert sidecar["essential"] is False and worker["essential"] is True
    env = {e["name"]: e["value"] for e in worker["environment"]}
    assert (env["DD_AGENT_HOST"], env["DD_DOGSTATSD_PORT"]) == ("127.0.0.1", "8125")
    # the service name is the same for the worker's own StatsD tags and the sidecar's identity
    sidecar_env = {e["name"]: e["value"] for e in sidecar["environment"]}
    assert env["DD_SERVICE"] == sidecar_env["TASKLENS_SERVICE"] == task["family"]


def test_checker_catches_what_the_example_must_not_do() -> None:
    """The validator is not vacuous: each broken copy is rejected for the right reason."""
    def broken(edit) -> str:
        task = copy.deepcopy(load())
        edit(task)
        return "\n".join(task_definition_errors(task))

    sidecar = lambda t: t["containerDefinitions"][1]  # noqa: E731
    assert "secrets in plain environment" in broken(
        lambda t: sidecar(t)["environment"].append({"name": "DD_API_KEY", "value": "abc"}))
    assert "TASKLENS_STATS_ADDR" in broken(
        lambda t: sidecar(t)["environment"].append({"name": "TASKLENS_STATS_ADDR", "value": "0.0.0.0:8125"}))
    assert "Invalid type for parameter containerDefinitions[1].cpu" in broken(lambda t: sidecar(t).update(cpu="32"))
    assert "pidMode" in broken(lambda t: t.pop("pidMode"))
    # least exposure: StatsD on every interface of an awsvpc task, or mapped, or HTTP open unmapped
    assert "TASKLENS_STATSD_ADDR=0.0.0.0:8125 in awsvpc mode" in broken(lambda t: sidecar(t).update(environment=[
        {**e, "value": "0.0.0.0:8125"} if e["name"] == "TASKLENS_STATSD_ADDR" else e for e in sidecar(t)["environment"]]))
    assert "8125/udp must not be mapped" in broken(
        lambda t: sidecar(t)["portMappings"].append({"containerPort": 8125, "protocol": "udp"}))
    assert "TASKLENS_HTTP_ADDR=0.0.0.0:9102: 127.0.0.1:9102, or 0.0.0.0:9102 with 9102/tcp mapped" in broken(
        lambda t: sidecar(t).update(portMappings=[]))
    assert "undeclared volume" in broken(lambda t: t.update(volumes=[]))
    assert "non-root" in broken(lambda t: sidecar(t).pop("user"))
    assert "dependsOn HEALTHY" in broken(lambda t: sidecar(t).pop("healthCheck"))
    assert "refuse this configuration: TASKLENS_POLL_INTERVAL='soon'" in broken(
        lambda t: sidecar(t)["environment"].append({"name": "TASKLENS_POLL_INTERVAL", "value": "soon"}))
    assert "bad queue URL 'redis://cache:6379/0'" in broken(
        lambda t: sidecar(t)["environment"].append({"name": "TASKLENS_QUEUES", "value": "redis://cache:6379/0"}))
