"""Fixtures shared by every test; the helpers they use are in tests/support.py."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support import Sidecar

# Properties check results, not speed: on a loaded 2-core machine one slow example must not fail a run
# (Hypothesis's default is 200 ms an example, and a health check on slow data generation). A test that
# means to bound time says so in its own @settings; benchmarks in bench/ measure speed.
settings.register_profile("tasklens", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tasklens")


@pytest.fixture
def sidecar_factory(tmp_path: Path) -> Iterator:
    started: list[Sidecar] = []

    def start(**env: str | None) -> Sidecar:
        s = Sidecar(tmp_path, **env)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


@pytest.fixture(scope="session")
def promtool() -> str:
    """Debian's promtool, or a skip that says which package brings it."""
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    return tool
