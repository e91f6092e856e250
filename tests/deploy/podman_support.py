"""podman for the image tests: the settings of scripts/containers.conf, a build of the image, and
servers on the test network's gateway that containers can reach (Datadog intake, Pyroscope).

Containers, pods and networks get a per-session suffix, so that two test sessions on one machine
(podman's storage is shared by every root user) never touch each other's.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
CONTAINERS_CONF = SCRIPTS / "containers.conf"
BASE_IMAGE = "localhost/tasklens-python:3.11-bookworm"  # scripts/podman-base.sh's default


def env(**values: str) -> list[str]:
    """`-e NAME=value` options for `podman run`."""
    return [flag for name, value in values.items() for flag in ("-e", f"{name}={value}")]


class PodmanUnavailable(Exception):
    """Why the image tests cannot run on this machine (the skip reason)."""


class Podman:
    def __init__(self) -> None:
        self.suffix = uuid.uuid4().hex[:8]
        self.env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
        self._created: list[tuple[str, str]] = []  # (kind, name), removed in reverse order

    @staticmethod
    def check() -> None:
        if shutil.which("podman") is None:
            raise PodmanUnavailable("podman is not installed (scripts/system-deps.sh installs it as root)")
        if os.geteuid() != 0:
            raise PodmanUnavailable(
                "the image tests run podman as root (scripts/containers.conf is for rootful podman)"
            )
        info = subprocess.run(
            ["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"],
            capture_output=True,
            text=True,
            env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)},
            timeout=60,
            check=False,
        )
        if info.returncode != 0:
            raise PodmanUnavailable(f"podman does not work here: {info.stderr.strip()[-400:]}")
        # the base image comes from debootstrap unless scripts/podman-base.sh made it already
        base = subprocess.run(
            ["podman", "image", "exists", BASE_IMAGE],
            capture_output=True,
            check=False,
            env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)},
            timeout=60,
        )
        if base.returncode != 0 and shutil.which("debootstrap") is None:
            raise PodmanUnavailable(
                "debootstrap is not installed, and the base image is not there to reuse "
                "(scripts/system-deps.sh installs it as root)"
            )

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args], capture_output=True, text=True, env=self.env, timeout=timeout, input=input, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def name(self, base: str) -> str:
        return f"tasklens-test-{base}-{self.suffix}"

    def script(self, name: str, *args: str, timeout: float = 900) -> str:
        """Run scripts/<name> with these settings; its last output line (the image name)."""
        result = subprocess.run(
            [str(SCRIPTS / name), *args], capture_output=True, text=True, env=self.env, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise AssertionError(
                f"{name} {' '.join(args)} -> {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result.stdout.strip().splitlines()[-1]

    # -- objects removed at the end of the session ---------------------------------------------

    def network(self, base: str, image: str) -> tuple[str, str]:
        """A bridge network: (name, gateway address, where the host's test servers listen). Its
        bridge (and so the gateway address) exists only while a container is on it: one sleeps there."""
        name = self.name(base)
        self("network", "create", name)
        self._created.append(("network", name))
        self.start(
            f"{base}-keeper", image, "--network", name, "--read-only", "--entrypoint", "sleep", command=("infinity",)
        )
        (subnet,) = json.loads(self("network", "inspect", name).stdout)[0]["subnets"]
        return name, subnet["gateway"]

    def pod(self, base: str, *options: str) -> str:
        name = self.name(base)
        self("pod", "create", "--name", name, *options)
        self._created.append(("pod", name))
        return name

    def start(self, base: str, image: str, *options: str, command: tuple[str, ...] = ()) -> str:
        """`podman run -d` a container named after `base`; the name is returned."""
        name = self.name(base)
        self._created.append(("container", name))
        self("run", "-d", "--name", name, *options, image, *command)
        return name

    def ip(self, container: str, network: str) -> str:
        return self(
            "inspect", container, "--format", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
        ).stdout.strip()

    def inspect(self, name: str) -> dict[str, Any]:
        inspected: list[dict[str, Any]] = json.loads(self("inspect", name).stdout)
        return inspected[0]

    def remove(self, kind: str, name: str) -> None:
        if kind == "container":
            self("rm", "-f", "-t", "0", name, check=False)
        elif kind == "pod":
            self("pod", "rm", "-f", "-t", "0", name, check=False)
        else:
            self("network", "rm", "-f", name, check=False)

    def cleanup(self) -> None:
        for kind, name in reversed(self._created):
            self.remove(kind, name)
        self._created.clear()


@contextmanager
def serve_on(host: str, app: web.Application, **runner_options: Any) -> Iterator[str]:
    """Serve `app` on host:<free port> from a thread with its own event loop (the tests themselves
    block on podman): yields the base URL. `host` is the test network's gateway, which containers
    on that network reach and nothing outside this machine does."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None, **runner_options)
    started = threading.Event()
    failed: list[OSError] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, host, 0).start())
        except OSError as exc:  # a bind that fails: reported to the test below
            failed.append(exc)
            return
        finally:
            started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not started.wait(10) or failed:
        raise AssertionError(f"the test server on {host} did not start: {failed}")
    port = runner.addresses[0][1]
    try:
        yield f"http://{host}:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
