"""Fixtures of the image tests: podman (or a skip that says why), the image built once per session,
and a network of its own."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.deploy.podman_support import Podman, PodmanUnavailable


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    try:
        Podman.check()
    except PodmanUnavailable as exc:
        # CI sets TASKLENS_REQUIRE_PODMAN=1 where podman must work: there a skip would hide a failure
        if os.environ.get("TASKLENS_REQUIRE_PODMAN") == "1":
            pytest.fail(f"TASKLENS_REQUIRE_PODMAN=1 but {exc}")
        pytest.skip(str(exc))
    runner = Podman()
    try:
        yield runner
    finally:
        runner.cleanup()


@pytest.fixture(scope="session")
def image(podman: Podman) -> Iterator[str]:
    """deploy/docker/Dockerfile built on the local stand-in base (scripts/podman-build.sh), or the
    image TASKLENS_TEST_IMAGE names (built by that script before, to try a test again quickly)."""
    if os.environ.get("TASKLENS_TEST_IMAGE"):
        yield os.environ["TASKLENS_TEST_IMAGE"]
        return
    tag = podman.script("podman-build.sh", f"localhost/tasklens-test:{podman.suffix}")
    try:
        yield tag
    finally:
        podman.cleanup()  # containers first: they hold the image
        podman("rmi", "-f", tag, check=False)


@pytest.fixture(scope="session")
def network(podman: Podman, image: str) -> tuple[str, str]:
    """(name, gateway): containers on it reach each other by name and the host at the gateway."""
    return podman.network("net", image)
