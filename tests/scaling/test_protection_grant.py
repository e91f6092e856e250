"""Scale-in protection lasts what the ECS agent granted, not what was asked: an agent on loopback that
grants less (or more, or an ExpirationDate that is missing, garbage or past), on a clock of its own.
The sidecar renews at half of what was granted, and `/status` and `tasklens_scaling_protected` never
say protected past the agent's expiry."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Kind, Sample
from agent.scaling.protection import ProtectionError, ScaleInProtection, granted_seconds
from agent.sinks.prometheus import PrometheusSink
from tests.scaling.support import FakeClock
from tests.support import serve_app

ARN = "arn:aws:ecs:eu-west-1:123456789012:task/prod/0123456789abcdef"


def iso(t: float, nanos: bool = False) -> str:
    """A POSIX time as the agent writes it: whole seconds (cut down), or Go's RFC 3339 with nanoseconds."""
    whole = math.floor(t)
    stamp = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{min(int((t - whole) * 1e9), 999_999_999):09d}Z" if nanos else f"{stamp}Z"


class GrantingAgent:
    """The task-protection endpoint of an agent whose clock is `offset` seconds from the sidecar's wall
    clock, that grants `grant` seconds whatever was asked (None: what was asked), and takes `latency`
    seconds of the shared fake clock to answer (half before it applies the request: the ECS call).
    `date`: "agent" (a Date header of its clock, as any HTTP server), "none" or "garbage"."""

    def __init__(self, clock: FakeClock, grant: float | None, *, offset: float = 0.0, latency: float = 0.0,
                 date: str = "agent", nanos: bool = False) -> None:
        self.clock, self.grant, self.offset, self.latency = clock, grant, offset, latency
        self.date, self.nanos = date, nanos
        self.expiration: Callable[[float, float], Any] | None = None  # (agent now, expiry) -> ExpirationDate
        self.fail_releases = False
        self.expires_at: float | None = None  # on the agent's clock
        self.requests: list[dict[str, Any]] = []

    def now(self) -> float:
        return self.clock.wall() + self.offset

    def protected(self) -> bool:
        return self.expires_at is not None and self.now() < self.expires_at

    def remaining(self) -> float:
        return (self.expires_at or 0.0) - self.now()

    async def put(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        if not body["ProtectionEnabled"] and self.fail_releases:
            return web.json_response({"error": {"Code": "ServerException", "Message": "down"}}, status=500)
        self.clock.advance(self.latency / 2)  # the ECS call, then the request applies
        if body["ProtectionEnabled"]:
            self.expires_at = self.now() + (self.grant if self.grant is not None else body["ExpiresInMinutes"] * 60)
            expiration = (self.expiration(self.now(), self.expires_at) if self.expiration
                          else iso(self.expires_at, self.nanos))
        else:
            self.expires_at, expiration = None, None
        self.clock.advance(self.latency / 2)
        return web.json_response({"protection": {"ExpirationDate": expiration,
                                                 "ProtectionEnabled": body["ProtectionEnabled"], "TaskArn": ARN}})

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        if self.date == "agent":
            response.headers["Date"] = formatdate(self.now(), usegmt=True)
        elif self.date == "garbage":
            response.headers["Date"] = "yesterday-ish"
        else:
            response.headers.popall("Date", None)

    async def serve(self) -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_put("/api/abc/task-protection/v1/state", self.put)
        app.on_response_prepare.append(self.on_prepare)
        runner, base = await serve_app(app)
        return runner, f"{base}/api/abc"


def component_for(uri: str, clock: FakeClock, expires_minutes: int) -> tuple[ScaleInProtection, Hub, PrometheusSink]:
    hub = Hub(Identity(service="thumbs", ecs_cluster="prod", task_id="t1"))
    sink = PrometheusSink(hub.metrics, hub.pull)
    hub.add_sink(sink)
    component = ScaleInProtection("jobs.in_progress>0", hub, uri, idle=60.0, expires_minutes=expires_minutes,
                                  clock=clock, wall=clock.wall)
    hub.add_sink(component)
    return component, hub, sink


@contextlib.asynccontextmanager
async def protecting(agent: GrantingAgent, clock: FakeClock,
                     expires_minutes: int) -> AsyncIterator[tuple[ScaleInProtection, Hub, PrometheusSink]]:
    """The agent served, a component asking it for protection; both closed after."""
    runner, uri = await agent.serve()
    component, hub, sink = component_for(uri, clock, expires_minutes)
    try:
        yield component, hub, sink
    finally:
        await component.client.close()  # type: ignore[union-attr]
        await runner.cleanup()


def in_progress(hub: Hub, value: float) -> None:
    hub.publish(Batch("statsd", [Sample("jobs.in_progress", value, Kind.GAUGE)]))


def gauge(sink: PrometheusSink) -> float:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(sink.registry).decode()
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "tasklens_scaling_protected")


def never_claimed_past(component: ScaleInProtection, agent: GrantingAgent) -> None:
    """`/status` says protected only while the agent's protection holds, and for no longer than it holds."""
    status = component.status()
    if status["protected"]:
        assert agent.protected(), status
        assert status["protected_for_seconds"] <= agent.remaining() + 0.05, (status, agent.remaining())


async def busy_for(component: ScaleInProtection, hub: Hub, sink: PrometheusSink, agent: GrantingAgent,
                   clock: FakeClock, seconds: int) -> None:
    """Busy, one evaluation a second (as `run` does); checked before and after every one."""
    for _ in range(seconds):
        clock.advance(1)
        never_claimed_past(component, agent)
        in_progress(hub, 1.0)
        await component.step()
        never_claimed_past(component, agent)
        assert gauge(sink) == 0.0 or agent.protected()
        assert agent.protected(), f"the agent's protection lapsed while busy, after {len(agent.requests)} requests"


# --- the outside tester's case: 4 minutes asked, 60 s granted ----------------------------------------


@pytest.mark.parametrize("offset", [0.0, 3600.0, -3600.0], ids=["same-clock", "agent-an-hour-ahead",
                                                                "agent-an-hour-behind"])
async def test_a_shorter_grant_is_renewed_at_half_of_it_and_never_claimed_past(offset) -> None:
    clock = FakeClock()
    agent = GrantingAgent(clock, 60.0, offset=offset)
    async with protecting(agent, clock, 4) as (component, hub, sink):
        in_progress(hub, 1.0)
        await component.step()
        assert agent.requests == [{"ProtectionEnabled": True, "ExpiresInMinutes": 4}] and agent.protected()
        status = component.status()
        assert status["protected"] and 58 <= status["protected_for_seconds"] <= 60, status  # not 240
        assert gauge(sink) == 1.0
        await busy_for(component, hub, sink, agent, clock, 600)  # 10 minutes busy: never a gap
        # renewed every half of the 59 s counted (the Date is whole seconds: one is taken off), not every 2 min
        assert 19 <= len(agent.requests) <= 22, len(agent.requests)
        assert all(r == {"ProtectionEnabled": True, "ExpiresInMinutes": 4} for r in agent.requests)
        assert hub.metrics.total("tasklens.scaling.protection_errors") == 0, component.last_error
        in_progress(hub, 0.0)
        for _ in range(61):
            clock.advance(1)
            await component.step()
            never_claimed_past(component, agent)
        assert agent.requests[-1] == {"ProtectionEnabled": False} and not agent.protected()
        assert not component.status()["protected"] and gauge(sink) == 0.0


async def test_a_grant_that_lapses_unrenewed_is_not_claimed_past_its_end() -> None:
    """The renewals fail (the agent goes on answering, but not to this task): the status turns
    unprotected when the 60 s the agent granted end, not when the 4 minutes asked would have."""
    clock = FakeClock()
    agent = GrantingAgent(clock, 60.0)
    async with protecting(agent, clock, 4) as (component, hub, sink):
        in_progress(hub, 1.0)
        await component.step()
        component.client.url += "-gone"  # type: ignore[union-attr]  # a 404 from now on
        turned = None
        for second in range(1, 240):
            clock.advance(1)
            never_claimed_past(component, agent)
            await component.step()
            if turned is None and not component.status()["protected"]:
                turned = second
                assert gauge(sink) == 0.0
        assert turned is not None and turned <= 60, turned
        assert hub.metrics.get("tasklens.scaling.protection_errors", reason="http_4xx") >= 2


# --- every grant, clock offset and answer time --------------------------------------------------------


@settings(max_examples=40)
# grants from 60 s: the agent takes whole minutes (ExpiresInMinutes >= 1); a 10 s grant with 3 s answers
# left under 5 s between renewals, and the sidecar renewed at every tick (still protected throughout)
@given(expires_minutes=st.sampled_from([1, 4, 30]), grant=st.integers(60, 3 * 3600),
       offset=st.floats(-2 * 86400, 2 * 86400, allow_nan=False), latency=st.floats(0.0, 3.0, allow_nan=False),
       nanos=st.booleans(), date=st.sampled_from(["agent", "none"]), fraction=st.floats(0.0, 0.999))
def test_never_claimed_past_the_grant_and_renewed_before_it_ends(expires_minutes, grant, offset, latency, nanos,
                                                                 date, fraction) -> None:
    """Whatever the agent grants (shorter or longer than asked), whatever its clock (measured by the
    answer's Date; without one, the agent's clock is taken to be ours), however long it takes to
    answer: the task stays protected while busy, and is never said protected past the agent's expiry,
    nor for more than was asked."""
    if date == "none":
        offset = 0.0  # without a Date, the only measure is our own clock

    async def scenario() -> None:
        clock = FakeClock()
        clock.t += fraction  # the sidecar's clocks need not be on a whole second
        agent = GrantingAgent(clock, float(grant), offset=offset, latency=latency, date=date, nanos=nanos)
        async with protecting(agent, clock, expires_minutes) as (component, hub, sink):
            in_progress(hub, 1.0)
            await component.step()
            assert agent.protected() and component.status()["protected"], component.last_error
            span = min(grant, expires_minutes * 60)
            assert component.status()["protected_for_seconds"] <= span + 0.05
            await busy_for(component, hub, sink, agent, clock, min(int(2.5 * span) + 5, 3600))
            assert hub.metrics.total("tasklens.scaling.protection_errors") == 0, component.last_error
            # renewed at about half of what was granted: not more often than a third of it
            assert len(agent.requests) <= min(int(2.5 * span) + 5, 3600) / (span / 3) + 2, len(agent.requests)

    asyncio.run(scenario())


# --- an ExpirationDate that cannot be used ------------------------------------------------------------


BAD_EXPIRATIONS: dict[str, Callable[[float, float], Any]] = {
    "missing": lambda now, expiry: None,
    "garbage": lambda now, expiry: "soon",
    "a-number": lambda now, expiry: expiry,
    "no-zone": lambda now, expiry: iso(expiry)[:-1],
    "a-date-only": lambda now, expiry: iso(expiry)[:10],
    "in-the-past": lambda now, expiry: iso(now - 60),
    "the-answer-time": lambda now, expiry: iso(now),
    "year-out-of-range": lambda now, expiry: "99999-01-01T00:00:00Z",
}


@pytest.mark.parametrize("expiration", BAD_EXPIRATIONS.values(), ids=BAD_EXPIRATIONS.keys())
async def test_an_unusable_expiration_is_a_counted_failure_never_a_claim(expiration) -> None:
    clock = FakeClock()
    agent = GrantingAgent(clock, None)
    agent.expiration = expiration
    async with protecting(agent, clock, 30) as (component, hub, sink):
        in_progress(hub, 1.0)
        await component.step()
        assert agent.protected()  # it did protect: only until when is unknown
        assert hub.metrics.get("tasklens.scaling.protection_errors", reason="bad_expiry") == 1
        assert hub.metrics.get("tasklens.scaling.protection_requests", action="protect", result="error") == 1
        status = component.status()
        assert not status["protected"] and status["protected_for_seconds"] is None and gauge(sink) == 0.0
        assert status["last_error"].startswith("protect: bad_expiry") and status["consecutive_failures"] == 1
        clock.advance(1)
        await component.step()
        assert len(agent.requests) == 1  # backed off like any failure
        agent.expiration = None  # the agent answers properly again
        clock.advance(4)
        await component.step()
        assert len(agent.requests) == 2 and component.status()["protected"] and gauge(sink) == 1.0


async def test_an_unusable_expiration_still_leads_to_a_release_when_idle() -> None:
    """The agent protected the task: once idle, the sidecar releases it, claimed or not."""
    clock = FakeClock()
    agent = GrantingAgent(clock, None)
    agent.expiration = BAD_EXPIRATIONS["garbage"]
    async with protecting(agent, clock, 30) as (component, hub, _):
        in_progress(hub, 1.0)
        await component.step()
        in_progress(hub, 0.0)
        for _ in range(61):
            clock.advance(1)
            await component.step()
        assert agent.requests[-1] == {"ProtectionEnabled": False} and not agent.protected()


async def test_a_longer_grant_counts_as_asked_and_is_released_until_the_agents_end() -> None:
    """Asked 30 minutes, granted 2 hours: claimed and renewed as 30 minutes; a release that keeps
    failing is retried past the 30 minutes, up to the 2 hours the agent said it holds."""
    clock = FakeClock()
    agent = GrantingAgent(clock, 7200.0)
    async with protecting(agent, clock, 30) as (component, hub, sink):
        in_progress(hub, 1.0)
        await component.step()
        assert 1799 <= component.status()["protected_for_seconds"] <= 1800
        for _ in range(15 * 60 - 2):
            clock.advance(1)
            await component.step()
        assert len(agent.requests) == 1  # renewed at half of the 30 minutes, not of the 2 hours
        clock.advance(3)
        await component.step()
        assert len(agent.requests) == 2
        agent.fail_releases = True
        in_progress(hub, 0.0)
        for _ in range(45 * 60):  # 45 minutes idle, every release refused: past the 30 minutes asked
            clock.advance(1)
            await component.step()
        assert not component.status()["protected"] and agent.protected()
        agent.fail_releases = False
        for _ in range(301):  # the backoff is at most 5 minutes
            clock.advance(1)
            await component.step()
        assert agent.requests[-1] == {"ProtectionEnabled": False} and not agent.protected()


@pytest.mark.parametrize("date", ["none", "garbage"])
async def test_without_a_usable_date_the_grant_counts_from_the_send_time(date) -> None:
    clock = FakeClock()
    agent = GrantingAgent(clock, 60.0, date=date, latency=2.0)
    async with protecting(agent, clock, 4) as (component, hub, sink):
        in_progress(hub, 1.0)
        await component.step()
        # 60 s from when the agent applied it (1 s after the send), counted from the send: 61 s less 1
        assert component.status()["protected_for_seconds"] == pytest.approx(59.0, abs=0.05)
        await busy_for(component, hub, sink, agent, clock, 300)
        assert hub.metrics.total("tasklens.scaling.protection_errors") == 0


async def test_without_a_date_an_agent_clock_far_behind_is_a_counted_failure() -> None:
    """No Date to measure the agent's clock by, and an ExpirationDate already past on ours: not
    claimed (counted as `bad_expiry`); the documented limit of the fallback."""
    clock = FakeClock()
    agent = GrantingAgent(clock, 60.0, date="none", offset=-3600.0)
    async with protecting(agent, clock, 4) as (component, hub, sink):
        in_progress(hub, 1.0)
        await component.step()
        assert hub.metrics.get("tasklens.scaling.protection_errors", reason="bad_expiry") == 1
        assert not component.status()["protected"] and gauge(sink) == 0.0


# --- granted_seconds itself ---------------------------------------------------------------------------


def test_granted_seconds_counts_by_the_answers_date_less_its_resolution() -> None:
    date = "Mon, 07 Dec 2026 10:00:00 GMT"
    assert granted_seconds("2026-12-07T10:01:00Z", date, 0.0) == 59.0
    assert granted_seconds("2026-12-07T10:01:00.500000000Z", date, 0.0) == 59.5
    assert granted_seconds("2026-12-07T11:01:00+01:00", date, 0.0) == 59.0
    # no usable Date: from our wall clock when the request was sent
    sent = 1796637600.0  # 2026-12-07T10:00:00Z
    assert granted_seconds("2026-12-07T10:01:00Z", None, sent) == 60.0
    assert granted_seconds("2026-12-07T10:01:00Z", "not a date", sent) == 60.0
    for bad in (None, "", "soon", "2026-12-07T10:01:00", "2026-12-07T10:00:00Z", "2026-12-07T10:00:00.5Z"):
        with pytest.raises(ProtectionError) as info:
            granted_seconds(bad, date, 0.0)
        assert info.value.reason == "bad_expiry"
