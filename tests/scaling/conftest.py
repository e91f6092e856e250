"""Fixtures of the scaling tests: the queue tests' broker fixtures (beanstalkd and moto's server on free
ports, RabbitMQ's management API), and the emulated ECS agent's task-protection endpoint on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from email.utils import formatdate

import pytest
from aiohttp import web

from agent.scaling.agent_endpoint import TaskProtectionAgent
from tests.support import serve_app
from tests.integrations.queues.conftest import (  # noqa: F401 - fixtures re-exported
    aws_env,
    beanstalkd,
    moto_port,
    rabbitmq_management,
    unique,
)
from tests.scaling.support import FakeClock


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def agent(fake_clock: FakeClock) -> AsyncIterator[tuple[TaskProtectionAgent, str]]:
    """The emulated agent endpoint, on the same hand-moved clock as the component: (agent, ECS_AGENT_URI)."""
    fake = TaskProtectionAgent(clock=fake_clock.wall)
    app = web.Application()
    fake.add_routes(app)

    async def agent_date(request: web.Request, response: web.StreamResponse) -> None:
        # the agent's answers carry its own clock's Date (the sidecar measures the granted expiry by it)
        response.headers["Date"] = formatdate(fake_clock.wall(), usegmt=True)

    app.on_response_prepare.append(agent_date)
    runner, base = await serve_app(app)
    yield fake, f"{base}/api/0123456789abcdef-agent"
    await runner.cleanup()
