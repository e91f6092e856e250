"""Fixtures shared by every test; the helpers they use are in tests/support.py."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Sidecar


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
