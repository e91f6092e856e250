#!/usr/bin/env python3
"""The local-development project (deploy/compose/compose.yaml) with podman, where neither Docker
nor a container registry is at hand. With Docker, run `docker compose up --build` instead.

    python scripts/podman-compose.py up   [--project NAME] [--no-ports] [--tasklens-image IMAGE]
    python scripts/podman-compose.py down [--project NAME]

The services, their commands, environment, read-only flags, volumes, health checks and start order
come from compose.yaml itself. Like compose, every service gets a container on one network of the
project and is reached by its service name. What differs:
  - images only a registry has are replaced by local stand-ins built from Debian's packages
    (deploy/compose/standins: redis, prometheus); Grafana has no Debian package and is left out;
  - images are built on the base from scripts/podman-base.sh (see scripts/podman-build.sh).
`up` returns once every service has started (and those others wait for are healthy); it prints
each service's address on the project network.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
COMPOSE_DIR = ROOT / "deploy" / "compose"
ENV = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(SCRIPTS / "containers.conf"))}

# registry-only images -> the Dockerfile of their local stand-in; None: no stand-in, left out
STANDINS: dict[str, str | None] = {
    "redis:7.2-alpine": "standins/redis.Dockerfile",
    "prom/prometheus:v2.53.0": "standins/prometheus.Dockerfile",
    "grafana/grafana:11.1.0": None,
}


def podman(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=capture, text=True, env=ENV, check=False)
    if check and result.returncode != 0:
        sys.exit(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def script(name: str, *args: str) -> str:
    result = subprocess.run([str(SCRIPTS / name), *args], capture_output=True, text=True, env=ENV, check=False)
    if result.returncode != 0:
        sys.exit(f"{name} failed:\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1]


def build(tag: str, context: Path, dockerfile: Path, base: str) -> str:
    """Build an image on the stand-in base; pip and apt reach their indexes through the host's
    network and CA bundle, mounted for the build only."""
    result = subprocess.run(
        [
            "podman",
            "build",
            "--format",
            "docker",
            "--network",
            "host",
            "-v",
            "/etc/ssl/certs:/etc/ssl/certs:ro",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "-f",
            str(dockerfile),
            "-t",
            tag,
            str(context),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"building {tag} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return tag


def images(services: dict[str, Any], tasklens_image: str | None) -> dict[str, str | None]:
    """service -> the local image it runs (None: left out)."""
    base = script("podman-base.sh")
    tasklens = tasklens_image or script("podman-build.sh", "localhost/tasklens:dev")
    out: dict[str, str | None] = {}
    for name, service in services.items():
        image = service.get("image")
        if image in STANDINS:
            dockerfile = STANDINS[image]
            out[name] = (
                None
                if dockerfile is None
                else build(f"localhost/tasklens-standin-{name}:dev", COMPOSE_DIR, COMPOSE_DIR / dockerfile, base)
            )
        elif image == "tasklens:dev":
            out[name] = tasklens
        elif "build" in service and isinstance(service["build"], str):
            context = COMPOSE_DIR / service["build"]
            out[name] = build(f"localhost/tasklens-compose-{context.name}:dev", context, context / "Dockerfile", base)
        else:
            sys.exit(f"service {name}: no local image for {image!r}")
    return out


def start_order(services: dict[str, Any]) -> list[str]:
    order: list[str] = []

    def visit(name: str, seen: tuple[str, ...] = ()) -> None:
        if name in order:
            return
        if name in seen:
            sys.exit(f"depends_on cycle through {name}")
        for dep in services[name].get("depends_on", {}):
            visit(dep, seen + (name,))
        order.append(name)

    for name in services:
        visit(name)
    return order


def healthy(container: str, service: dict[str, Any]) -> bool:
    test = service.get("healthcheck", {}).get("test")
    if test:  # the compose file's own check, run in the container
        argv = test[1:] if test[0] == "CMD" else ["sh", "-c", test[1] if isinstance(test, list) else test]
        return podman("exec", container, *argv, check=False).returncode == 0
    return podman("healthcheck", "run", container, check=False).returncode == 0  # the image's HEALTHCHECK


def wait_healthy(container: str, service: dict[str, Any], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not healthy(container, service):
        if time.monotonic() > deadline:
            logs = podman("logs", container, check=False)
            sys.exit(f"{container} not healthy after {timeout:.0f} s:\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}")
        time.sleep(0.5)


def up(project: str, publish: bool, tasklens_image: str | None) -> None:
    services = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())["services"]
    local = images(services, tasklens_image)
    if podman("network", "exists", project, check=False).returncode != 0:
        podman("network", "create", project)
    addresses: dict[str, str] = {}
    for name in start_order(services):
        service, image = services[name], local[name]
        if image is None:
            print(f"{name}: left out (no local stand-in for {service['image']})", file=sys.stderr)
            continue
        for dep, condition in service.get("depends_on", {}).items():
            if local[dep] is not None and condition.get("condition") == "service_healthy":
                wait_healthy(f"{project}-{dep}", services[dep])
        argv = ["run", "-d", "--name", f"{project}-{name}", "--network", project, "--network-alias", name]
        if service.get("read_only"):
            argv.append("--read-only")
        if service.get("healthcheck", {}).get("disable"):
            argv.append("--no-healthcheck")
        for key, value in service.get("environment", {}).items():
            argv += ["-e", f"{key}={value}"]
        for volume in service.get("volumes", []):
            source, _, rest = volume.partition(":")
            argv += ["-v", f"{(COMPOSE_DIR / source).resolve()}:{rest}"]
        if publish:
            for port in service.get("ports", []):  # host addresses as given, else loopback only
                argv += ["-p", port if str(port).count(":") == 2 else f"127.0.0.1:{port}"]
        argv.append(image)
        argv += [str(a) for a in service.get("command", [])]
        podman(*argv)
        addresses[name] = podman(
            "inspect",
            f"{project}-{name}",
            "--format",
            f'{{{{(index .NetworkSettings.Networks "{project}").IPAddress}}}}',
        ).stdout.strip()
    print(json.dumps(addresses))


def down(project: str) -> None:
    containers = podman("ps", "-a", "--filter", f"network={project}", "--format", "{{.Names}}", check=False)
    if containers.stdout.split():  # all at once: podman stops them in parallel, 10 s each at most
        podman("rm", "-f", "-t", "10", *containers.stdout.split(), check=False)
    podman("network", "rm", "-f", project, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--project", default="tasklens-dev", help="container and network name prefix")
    parser.add_argument("--no-ports", action="store_true", help="publish no port on the host (tests)")
    parser.add_argument("--tasklens-image", help="an image built already (default: build localhost/tasklens:dev)")
    args = parser.parse_args()
    if args.command == "up":
        up(args.project, not args.no_ports, args.tasklens_image)
    else:
        down(args.project)


if __name__ == "__main__":
    main()
