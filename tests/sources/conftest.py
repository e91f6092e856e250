"""Fixtures of the ECS source tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.sources.ecs_helpers import MetadataServer


@pytest.fixture
async def metadata() -> AsyncIterator[MetadataServer]:
    """A metadata endpoint on loopback whose answers a test can change between polls."""
    server = MetadataServer()
    await server.start()
    yield server
    await server.stop()
