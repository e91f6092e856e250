"""What every deploy artefact must satisfy, shared by the tests of the JSON example, the Terraform
renders and the compose file: the ECS API's own input shape (botocore's validator and service model)
plus the sidecar conventions of docs/deploy.md."""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import botocore.session
from botocore.validate import ParamValidator

from agent.config import SECRET_FIELDS, Config, ConfigError, env_name, load

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"

# Read by the sidecar outside `Config`: identity fallbacks and the ECS agent's injected variable.
EXTRA_SIDECAR_VARIABLES = frozenset({"DD_SERVICE", "DD_ENV", "DD_VERSION", "ECS_CONTAINER_METADATA_URI_V4"})
# Secrets that may only arrive through `secrets` (`valueFrom`). The Pyroscope URL is a secret field
# because it may embed a password; without one it can be plain environment.
SECRET_VARIABLES = frozenset(env_name(f) for f in fields(Config) if f.name in SECRET_FIELDS) - {"TASKLENS_PYROSCOPE_URL"}


# The task sizes Fargate takes: CPU units -> memory MiB (botocore's RegisterTaskDefinition `memory` doc).
FARGATE_MEMORY = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4097, 1024)),
    1024: tuple(range(2048, 8193, 1024)),
    2048: tuple(range(4096, 16385, 1024)),
    4096: tuple(range(8192, 30721, 1024)),
    8192: tuple(range(16384, 61441, 4096)),
    16384: tuple(range(32768, 122881, 8192)),
}


@cache
def sidecar_variables() -> frozenset[str]:
    """Every environment variable the sidecar reads, from the `Config` declaration itself."""
    return frozenset(env_name(f) for f in fields(Config) if f.name != "mappings") | EXTRA_SIDECAR_VARIABLES


@cache
def _register_task_definition_shape() -> Any:
    model = botocore.session.get_session().get_service_model("ecs")
    return model.operation_model("RegisterTaskDefinition").input_shape


def api_errors(params: dict[str, Any]) -> list[str]:
    """botocore's own validation of `RegisterTaskDefinition` input (types, required, enums)."""
    report = ParamValidator().validate(params, _register_task_definition_shape())
    return [report.generate_report()] if report.has_errors() else []


def is_sidecar(container: dict[str, Any]) -> bool:
    return "tasklens" in container.get("name", "") or "tasklens" in container.get("image", "")


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("environment", [])}


def config_errors(env: dict[str, str]) -> list[str]:
    """The values, not only the names: the sidecar's own configuration loader and queue URL parser
    must accept them."""
    try:
        config = load(env)
    except ConfigError as exc:
        return [f"the sidecar would refuse this configuration: {exc}"]
    from integrations.queues import parse

    errors = []
    with mock.patch.dict(os.environ, env, clear=True):  # password_env= is read from the environment
        for url in config.queues:
            try:
                parse(url)
            except ValueError as exc:
                errors.append(f"bad queue URL {url!r}: {exc}")
    return errors


def sidecar_errors(container: dict[str, Any], task: dict[str, Any]) -> list[str]:
    """The conventions of docs/deploy.md for the sidecar container."""
    errors: list[str] = []
    name = container.get("name")
    env = _env(container)
    unknown = sorted(set(env) - sidecar_variables())
    if unknown:
        errors.append(f"{name}: environment sets variables the sidecar does not read: {unknown}")
    leaked = sorted(set(env) & SECRET_VARIABLES)
    if leaked:
        errors.append(f"{name}: secrets in plain environment (use secrets/valueFrom): {leaked}")
    if re.search(r"://[^/@]*:[^/@]*@", env.get("TASKLENS_PYROSCOPE_URL", "")):
        errors.append(f"{name}: TASKLENS_PYROSCOPE_URL carries a password in plain environment")
    for secret in container.get("secrets", []):
        if not secret.get("valueFrom", "").startswith("arn:"):
            errors.append(f"{name}: secret {secret.get('name')} must be valueFrom a Secrets Manager or SSM ARN")
    # a queue URL may name further variables, holding broker passwords (`password_env=NAME`)
    password_envs = set(re.findall(r"[?&]password_env=([^&,]+)", env.get("TASKLENS_QUEUES", "")))
    unknown_secrets = sorted({s["name"] for s in container.get("secrets", [])} - sidecar_variables() - password_envs)
    if unknown_secrets:
        errors.append(f"{name}: secrets the sidecar does not read: {unknown_secrets}")
    placeholders = {s["name"]: "placeholder" for s in container.get("secrets", [])}
    errors.extend(f"{name}: {e}" for e in config_errors({**env, **placeholders}))
    health = container.get("healthCheck", {})
    if health.get("command") != ["CMD", "tasklens", "health"] or not health.get("startPeriod"):
        errors.append(f"{name}: healthCheck must be ['CMD', 'tasklens', 'health'] with a startPeriod")
    if container.get("readonlyRootFilesystem") is not True:
        errors.append(f"{name}: readonlyRootFilesystem must be true")
    if container.get("user", "0").split(":")[0] in ("0", "root"):
        errors.append(f"{name}: must run as a non-root user")
    if not 32 <= container.get("memoryReservation", 0) <= 64:
        errors.append(f"{name}: memoryReservation should be 32-64 MiB")
    if container.get("cpu", 0) > 64:
        errors.append(f"{name}: cpu reservation above 64 units")
    if container.get("stopTimeout", 0) < 25:
        errors.append(f"{name}: stopTimeout must leave time to flush (>= 25 s)")
    # Least exposure: where the worker shares the network namespace (awsvpc, host) StatsD listens on
    # loopback; bridge mode needs the container's interface for the link. HTTP leaves loopback only
    # with its port mapped (a scraper), and StatsD is never mapped.
    ports = {(p.get("containerPort"), p.get("protocol", "tcp")) for p in container.get("portMappings", [])}
    if (8125, "udp") in ports:
        errors.append(f"{name}: 8125/udp must not be mapped: StatsD stays inside the task")
    shared = task.get("networkMode", "bridge") in ("awsvpc", "host")
    statsd = env.get("TASKLENS_STATSD_ADDR", "0.0.0.0:8125")  # the image's default
    if statsd != ("127.0.0.1:8125" if shared else "0.0.0.0:8125"):
        errors.append(f"{name}: TASKLENS_STATSD_ADDR={statsd} in {task.get('networkMode')} mode: "
                      f"{'127.0.0.1:8125 (the worker shares the network namespace)' if shared else '0.0.0.0:8125'}")
    http = env.get("TASKLENS_HTTP_ADDR", "0.0.0.0:9102")
    if http not in ("127.0.0.1:9102", "0.0.0.0:9102") or (http == "0.0.0.0:9102") != ((9102, "tcp") in ports):
        errors.append(f"{name}: TASKLENS_HTTP_ADDR={http}: 127.0.0.1:9102, or 0.0.0.0:9102 with 9102/tcp mapped for a scraper")
    profiling_sidecar = env.get("TASKLENS_PYROSCOPE_URL") and env.get("TASKLENS_PROFILE_MODE", "sidecar") == "sidecar"
    caps = container.get("linuxParameters", {}).get("capabilities", {}).get("add", [])
    if profiling_sidecar and (task.get("pidMode") != "task" or "SYS_PTRACE" not in caps):
        errors.append(f"{name}: sidecar profiling needs pidMode 'task' and the SYS_PTRACE capability")
    if not profiling_sidecar and caps:
        errors.append(f"{name}: capabilities {caps} added without sidecar profiling")
    return errors


def task_definition_errors(task: dict[str, Any]) -> list[str]:
    """Everything wrong with a `RegisterTaskDefinition` input holding a worker and the sidecar."""
    errors = api_errors(task)
    if errors:  # the checks below assume the API's types
        return errors
    containers = task.get("containerDefinitions", [])
    names = [c.get("name") for c in containers]
    if len(set(names)) != len(names):
        errors.append(f"container names are not unique: {names}")
    volumes = {v.get("name") for v in task.get("volumes", [])}
    for c in containers:
        for dep in c.get("dependsOn", []):
            if dep.get("containerName") not in names:
                errors.append(f"{c.get('name')}: dependsOn unknown container {dep.get('containerName')!r}")
            if dep.get("condition") == "HEALTHY":
                target = next((t for t in containers if t.get("name") == dep.get("containerName")), {})
                if not target.get("healthCheck"):
                    errors.append(f"{c.get('name')}: dependsOn HEALTHY {target.get('name')!r} which has no healthCheck")
        for vf in c.get("volumesFrom", []):
            if vf.get("sourceContainer") not in names:
                errors.append(f"{c.get('name')}: volumesFrom unknown container {vf.get('sourceContainer')!r}")
        for mp in c.get("mountPoints", []):
            if mp.get("sourceVolume") not in volumes:
                errors.append(f"{c.get('name')}: mountPoint of undeclared volume {mp.get('sourceVolume')!r}")
    sidecars = [c for c in containers if is_sidecar(c)]
    if len(sidecars) != 1:
        errors.append(f"expected exactly one tasklens container, found {len(sidecars)}")
    for c in sidecars:
        errors.extend(sidecar_errors(c, task))
    if not any(c.get("essential") for c in containers):
        errors.append("no essential container")
    if "FARGATE" in task.get("requiresCompatibilities", []):
        if task.get("networkMode") != "awsvpc":
            errors.append("Fargate needs networkMode awsvpc")
        if not task.get("cpu") or not task.get("memory"):
            errors.append("Fargate needs task-level cpu and memory")
        elif int(task["memory"]) not in FARGATE_MEMORY.get(int(task["cpu"]), ()):
            errors.append(f"Fargate takes no task of {task['cpu']} CPU units and {task['memory']} MiB")
    return errors


def datadog_unparsed(payload: dict[str, Any], model: str) -> bool:
    """True when Datadog's own API client cannot parse the payload as `model` ("dashboard" or
    "monitor"): a wrong widget type, enum value or field type. (The client keeps what it cannot
    parse as an "unparsed" object instead of raising, and flags the whole tree.)"""
    from datadog_api_client import Configuration
    from datadog_api_client.model_utils import validate_and_convert_types
    from datadog_api_client.v1.model.dashboard import Dashboard
    from datadog_api_client.v1.model.monitor import Monitor

    cls = {"dashboard": Dashboard, "monitor": Monitor}[model]
    parsed = validate_and_convert_types(payload, (cls,), [model], True, True, Configuration())
    return bool(parsed._unparsed)


# --- the Dockerfile --------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    logical = ""
    for line in text.splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        logical = ""
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions(DOCKERFILE.read_text())
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in final_stage():
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def exec_form(keyword: str) -> list[str]:
    (args,) = [a for k, a in final_stage() if k == keyword]
    if keyword == "HEALTHCHECK":
        args = args.split(" CMD ", 1)[1]
    return json.loads(args)
