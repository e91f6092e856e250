"""Scale-in protection against the emulated ECS agent endpoint on loopback (as strict as the agent):
protect when busy, renew before expiry, release after the idle time; every documented error shape
counted and logged once, never blocking, never protected past the expiry."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import time

import pytest
from aiohttp import web

from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Kind, Sample
from agent.scaling.protection import (
    Protection,
    ProtectionError,
    ScaleInProtection,
    interpret,
    request_body,
)
from agent.sinks.prometheus import PrometheusSink
from tests.support import TASKLENS, clean_env, free_port, serve_app, until

ARN = "arn:aws:ecs:eu-west-1:123456789012:task/prod/0123456789abcdef"


# --- the agent's answers, as documented (spec: scaling.md 1.3) ----------------------------------


@pytest.mark.parametrize("status, body, reason", [
    (200, {"failure": {"Arn": ARN, "Detail": None, "Reason": "TASK_NOT_VALID"}}, "task_not_valid"),
    (200, {"failure": {"Arn": ARN, "Detail": None, "Reason": "DEPLOYMENT_BLOCKED"}}, "deployment_blocked"),
    (200, {"failure": {"Arn": ARN, "Detail": "x", "Reason": "SOMETHING_NEW"}}, "failure"),
    (400, {"requestID": "r", "error": {"Arn": ARN, "Code": "ThrottlingException", "Message": "Rate exceeded"}}, "throttled"),
    (400, {"error": {"Code": "DEPLOYMENT_BLOCKED", "Message": "m"}}, "deployment_blocked"),
    (504, {"error": {"Arn": ARN, "Code": "RequestCanceled", "Message": "Timed out calling ECS Task Protection API"}},
     "agent_timeout"),
    (404, {"error": {"Code": "ResourceNotFoundException", "Message": "Failed to find a task for the request"}},
     "not_found"),
    (400, {"error": {"Code": "InvalidParameterException", "Message": "bad"}}, "bad_request"),
    (403, {"error": {"Arn": ARN, "Code": "AccessDeniedException", "Message": "no task IAM role credentials"}},
     "access_denied"),
    (500, {"error": {"Code": "ServerException", "Message": "x"}}, "server_error"),
    (418, {"error": {"Code": "Teapot"}}, "http_4xx"),
    (429, "You have reached maximum request limit.", "throttled"),
    (502, "<html>bad gateway</html>", "server_error"),
    (200, "not json", "bad_reply"),
    (200, {"protection": {"ProtectionEnabled": "yes"}}, "bad_reply"),
    (200, [], "bad_reply"),
])
def test_every_error_shape_has_a_reason(status: int, body: object, reason: str) -> None:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    with pytest.raises(ProtectionError) as info:
        interpret(status, raw)
    assert info.value.reason == reason


def test_success_is_the_protection_object() -> None:
    body = {"protection": {"ExpirationDate": "2022-10-06T02:29:16Z", "ProtectionEnabled": True, "TaskArn": ARN}}
    assert interpret(200, json.dumps(body).encode()) == Protection(True, "2022-10-06T02:29:16Z", ARN)
    body = {"protection": {"ExpirationDate": None, "ProtectionEnabled": False, "TaskArn": ARN}}
    assert interpret(200, json.dumps(body).encode()) == Protection(False, None, ARN)
    assert request_body(True, 30) == {"ProtectionEnabled": True, "ExpiresInMinutes": 30}
    assert request_body(False, 30) == {"ProtectionEnabled": False}


# --- the emulated agent is as strict as the real one ----------------------------------------------


async def test_the_emulated_agent_refuses_what_the_agent_refuses(agent) -> None:
    fake, uri = agent
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async def put(body: object) -> tuple[int, dict]:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            async with session.put(uri + "/task-protection/v1/state", data=data) as r:
                return r.status, await r.json(content_type=None)

        for bad in ({"protectionEnabled": True}, {"ProtectionEnabled": True, "Extra": 1}, {"ExpiresInMinutes": 5},
                    {"ProtectionEnabled": "true"}, {"ProtectionEnabled": True, "ExpiresInMinutes": 0},
                    {"ProtectionEnabled": True, "ExpiresInMinutes": 2881}, {"ProtectionEnabled": True, "ExpiresInMinutes": 1.5},
                    b"{not json", [True]):
            status, answer = await put(bad)
            assert status == 400 and answer["error"]["Code"] == "InvalidParameterException", bad
        assert fake.requests == [] and len(fake.rejected) == 9
        status, answer = await put({"ProtectionEnabled": True})
        assert status == 200 and answer["protection"]["ProtectionEnabled"] is True
        assert fake.expires_at == fake.clock() + 120 * 60  # the agent's default expiry
        async with session.get(uri + "/task-protection/v1/state") as r:
            assert (await r.json())["protection"]["TaskArn"] == fake.task_arn


# --- the component --------------------------------------------------------------------------------


_made: list[ScaleInProtection] = []


@pytest.fixture(autouse=True)
async def close_clients():
    yield
    while _made:
        component = _made.pop()
        if component.client is not None:
            await component.client.close()


def make(uri: str | None, clock, rule: str = "jobs.in_progress>0", **kw) -> tuple[ScaleInProtection, Hub, PrometheusSink]:
    hub = Hub(Identity(service="thumbs", ecs_cluster="prod", task_id="t1"))
    sink = PrometheusSink(hub.metrics, hub.pull)
    hub.add_sink(sink)
    component = ScaleInProtection(rule, hub, uri, idle=60.0, expires_minutes=30, clock=clock,
                                  wall=getattr(clock, "wall", time.time), **kw)
    hub.add_sink(component)
    _made.append(component)
    return component, hub, sink


def in_progress(hub: Hub, value: float) -> None:
    hub.publish(Batch("statsd", [Sample("jobs.in_progress", value, Kind.GAUGE)]))


def states(hub: Hub, sink: PrometheusSink) -> dict[str, float]:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(sink.registry).decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name in ("tasklens_scaling_busy", "tasklens_scaling_protected")}


async def test_protect_renew_release(agent, fake_clock) -> None:
    fake, uri = agent
    component, hub, sink = make(uri, fake_clock)
    await component.step()
    assert fake.requests == [] and states(hub, sink) == {"tasklens_scaling_busy": 0.0, "tasklens_scaling_protected": 0.0}
    in_progress(hub, 2.0)
    await component.step()  # the first evaluation after the worker became busy
    assert fake.requests == [{"ProtectionEnabled": True, "ExpiresInMinutes": 30}] and fake.protected()
    assert states(hub, sink) == {"tasklens_scaling_busy": 1.0, "tasklens_scaling_protected": 1.0}
    assert component.status()["protected"] and component.status()["holding"] == ["jobs.in_progress>0"]
    for _ in range(14):  # busy for 14 minutes: no request (the protection lasts 30)
        fake_clock.advance(60)
        await component.step()
    assert len(fake.requests) == 1
    fake_clock.advance(61)  # less than 15 minutes left: renewed, well before the agent's expiry
    await component.step()
    assert len(fake.requests) == 2 and fake.protected()
    in_progress(hub, 0.0)
    await component.step()
    fake_clock.advance(59)
    await component.step()
    assert len(fake.requests) == 2 and fake.protected()  # idle, but not yet for 60 s
    fake_clock.advance(1)
    await component.step()
    assert fake.requests[-1] == {"ProtectionEnabled": False} and not fake.protected()
    assert states(hub, sink) == {"tasklens_scaling_busy": 0.0, "tasklens_scaling_protected": 0.0}
    for _ in range(5):
        fake_clock.advance(60)
        await component.step()
    assert len(fake.requests) == 3  # released once; idle costs nothing
    assert hub.metrics.get("tasklens.scaling.protection_requests", action="protect", result="ok") == 2
    assert hub.metrics.get("tasklens.scaling.protection_requests", action="release", result="ok") == 1


@pytest.mark.parametrize("status, body, reason", [
    (429, b"You have reached maximum request limit.", "throttled"),
    (400, {"requestID": "r", "error": {"Arn": ARN, "Code": "ThrottlingException", "Message": "Rate exceeded"}}, "throttled"),
    (504, {"error": {"Arn": ARN, "Code": "RequestCanceled", "Message": "Timed out calling ECS Task Protection API"}},
     "agent_timeout"),
    (403, {"error": {"Arn": ARN, "Code": "AccessDeniedException", "Message": "no creds"}}, "access_denied"),
    (500, {"error": {"Code": "ServerException", "Message": "x"}}, "server_error"),
    (200, {"failure": {"Arn": ARN, "Detail": None, "Reason": "DEPLOYMENT_BLOCKED"}}, "deployment_blocked"),
    # a well-formed answer that does not protect what was asked to be protected
    (200, {"protection": {"ExpirationDate": None, "ProtectionEnabled": False, "TaskArn": ARN}}, "not_confirmed"),
])
async def test_errors_are_counted_logged_once_and_retried_with_backoff(agent, fake_clock, caplog, status, body,
                                                                        reason) -> None:
    fake, uri = agent
    component, hub, _ = make(uri, fake_clock)
    fake.fail(status, body, times=3)
    in_progress(hub, 1.0)
    with caplog.at_level(logging.WARNING, "tasklens.scaling"):
        await component.step()
        assert hub.metrics.get("tasklens.scaling.protection_errors", reason=reason) == 1
        await component.step()  # within the backoff (5 s): no request
        assert len(fake.canned) == 2
        fake_clock.advance(5)
        await component.step()
        fake_clock.advance(10)
        await component.step()
        assert hub.metrics.get("tasklens.scaling.protection_errors", reason=reason) == 3
    assert len([r for r in caplog.records if "scale-in protection" in r.getMessage()]) == 1  # logged once
    assert not component.status()["protected"] and component.status()["consecutive_failures"] == 3
    fake_clock.advance(20)  # the backoff was 20 s after the third failure
    await component.step()
    assert fake.protected() and component.status()["protected"] and component.status()["last_error"] is None
    assert fake.requests == [{"ProtectionEnabled": True, "ExpiresInMinutes": 30}]


async def test_a_release_the_agent_does_not_confirm_is_retried_with_backoff(agent, fake_clock) -> None:
    fake, uri = agent
    component, hub, sink = make(uri, fake_clock)
    in_progress(hub, 1.0)
    await component.step()
    in_progress(hub, 0.0)
    await component.step()
    fake_clock.advance(60)
    still = {"protection": {"ExpirationDate": "2026-01-01T00:30:00Z", "ProtectionEnabled": True, "TaskArn": ARN}}
    fake.fail(200, still, times=2)
    await component.step()
    assert hub.metrics.get("tasklens.scaling.protection_errors", reason="not_confirmed") == 1
    assert hub.metrics.get("tasklens.scaling.protection_requests", action="release", result="error") == 1
    assert component.status()["last_answer"]["ProtectionEnabled"] is True
    assert states(hub, sink)["tasklens_scaling_protected"] == 1.0  # as far as anyone knows, it still is
    for _ in range(4):  # within the 5 s backoff: not asked again
        fake_clock.advance(1)
        await component.step()
    assert len(fake.canned) == 1
    fake_clock.advance(1)
    await component.step()  # the second refusal: backoff 10 s
    fake_clock.advance(10)
    await component.step()
    assert fake.requests[-1] == {"ProtectionEnabled": False} and not fake.protected()
    assert states(hub, sink)["tasklens_scaling_protected"] == 0.0
    assert hub.metrics.get("tasklens.scaling.protection_errors", reason="not_confirmed") == 2


async def test_a_release_applied_but_answered_late_is_followed_by_a_protect_when_busy_again(agent, fake_clock) -> None:
    """The agent applies a release and answers after the client's deadline (an answer lost, or its 504
    after the ECS call went through): the task may be unprotected, so a worker busy again protects it
    after the backoff, not at the renewal, half an expiry after the last protect."""
    fake, uri = agent
    component, hub, sink = make(uri, fake_clock, request_timeout=0.5)
    in_progress(hub, 1.0)
    await component.step()
    in_progress(hub, 0.0)
    await component.step()
    fake_clock.advance(60)
    fake.answer_late(2.0)
    await component.step()
    assert fake.requests[-1] == {"ProtectionEnabled": False} and not fake.protected()
    assert hub.metrics.get("tasklens.scaling.protection_errors", reason="timeout") == 1
    assert states(hub, sink)["tasklens_scaling_protected"] == 0.0  # not as far as anyone knows
    in_progress(hub, 1.0)
    fake_clock.advance(5)  # the backoff after one failure
    await component.step()
    assert fake.requests[-1] == {"ProtectionEnabled": True, "ExpiresInMinutes": 30} and fake.protected()
    assert states(hub, sink) == {"tasklens_scaling_busy": 1.0, "tasklens_scaling_protected": 1.0}
    in_progress(hub, 0.0)  # idle again: released as usual
    await component.step()
    fake_clock.advance(60)
    await component.step()
    assert fake.requests[-1] == {"ProtectionEnabled": False} and not fake.protected()


async def test_a_standalone_task_stops_trying(agent, fake_clock, caplog) -> None:
    fake, uri = agent
    component, hub, _ = make(uri, fake_clock)
    fake.fail(200, {"failure": {"Arn": ARN, "Detail": None, "Reason": "TASK_NOT_VALID"}})
    in_progress(hub, 1.0)
    await component.step()
    for _ in range(10):
        fake_clock.advance(600)
        await component.step()
    assert fake.requests == [] and not fake.canned
    assert component.status()["unavailable"].startswith("task_not_valid")
    assert hub.metrics.get("tasklens.scaling.protection_errors", reason="task_not_valid") == 1


async def test_agent_down_slow_never_blocks_and_the_expiry_ends_protection(agent, fake_clock) -> None:
    fake, uri = agent
    component, hub, _ = make(uri, fake_clock, request_timeout=0.5)
    in_progress(hub, 1.0)
    await component.step()
    assert fake.protected()
    in_progress(hub, 0.0)
    await component.step()
    fake_clock.advance(60)
    fake.fail(200, {"protection": {}}, delay=2.0)  # slower than the client's deadline
    started = time.monotonic()
    await component.step()
    assert time.monotonic() - started < 1.5
    assert hub.metrics.get("tasklens.scaling.protection_errors", reason="timeout") == 1
    # the agent then goes away altogether: the release keeps failing...
    component.client.url = f"http://127.0.0.1:{free_port()}/api/x/task-protection/v1/state"
    for _ in range(40):
        fake_clock.advance(60)
        await component.step()
    assert hub.metrics.get("tasklens.scaling.protection_errors", reason="connection") >= 5
    # ...and the protection still ends: the agent's expiry, 30 minutes after the last protect
    assert not fake.protected() and not component.status()["protected"]
    errors_then = hub.metrics.total("tasklens.scaling.protection_errors")
    for _ in range(10):  # once the expiry has passed there is nothing left to release
        fake_clock.advance(600)
        await component.step()
    assert hub.metrics.total("tasklens.scaling.protection_errors") == errors_then


async def test_without_ecs_agent_uri_it_says_so_once_and_carries_on(caplog) -> None:
    component, hub, sink = make(None, time.monotonic)
    component.tick = 0.01
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, "tasklens.scaling"):
        task = asyncio.create_task(component.run(stop))
        in_progress(hub, 1.0)
        for _ in range(200):
            if states(hub, sink).get("tasklens_scaling_busy") == 1.0:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 2)
    assert states(hub, sink) == {"tasklens_scaling_busy": 1.0, "tasklens_scaling_protected": 0.0}
    assert [r.getMessage() for r in caplog.records].count(
        "scale-in protection is unavailable: ECS_AGENT_URI is not set (not on ECS, or an agent older than 1.65.0); "
        "the busy state is still reported") == 1
    assert component.status()["unavailable"] == "ECS_AGENT_URI is not set"


async def test_cpu_rule_skips_the_sidecars_own_container(fake_clock) -> None:
    """The sidecar's own container name comes from its metadata (`${ECS_CONTAINER_METADATA_URI_V4}`)."""
    async def own(request: web.Request) -> web.Response:
        return web.json_response({"Name": "tasklens", "DockerId": "abc"})

    app = web.Application()
    app.router.add_get("/v4/abc", own)
    runner, base = await serve_app(app)
    try:
        component, hub, _ = make(None, fake_clock, rule="cpu>20%", metadata_url=f"{base}/v4/abc")
        cpu = "ecs.container.cpu.utilization_percent"
        hub.publish(Batch("ecs", [Sample(cpu, 95.0, Kind.GAUGE, (("container_name", "tasklens"),)),
                                  Sample(cpu, 5.0, Kind.GAUGE, (("container_name", "worker"),))], snapshot=True))
        await component.step()
        assert component.own_container == "tasklens" and not component.status()["busy"]
        hub.publish(Batch("ecs", [Sample(cpu, 1.0, Kind.GAUGE, (("container_name", "tasklens"),)),
                                  Sample(cpu, 25.0, Kind.GAUGE, (("container_name", "worker"),))], snapshot=True))
        await component.step()
        assert component.status()["busy"]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("poll, idle_after", [
    ("outage", 30.0),  # failed polls: the last CPU counts for the ECS source's stale limit, then idle
    ("stale", 0.0),  # polls that read the stats but give no CPU rate: idle at once
])
async def test_a_cpu_reading_that_stops_coming_ends_protection(agent, fake_clock, poll, idle_after) -> None:
    """Not protected for ever on a CPU reading that stopped coming: released after the stale limit
    and the idle time, and never renewed."""
    fake, uri = agent
    component, hub, _ = make(uri, fake_clock, rule="cpu>20%", poll_interval=10.0)
    tags = (("container_name", "worker"),)
    hub.publish(Batch("ecs", [Sample("ecs.container.cpu.utilization_percent", 80.0, Kind.GAUGE, tags),
                              Sample("ecs.container.memory.usage_bytes", 1e8, Kind.GAUGE, tags)], snapshot=True))
    await component.step()
    assert fake.requests == [{"ProtectionEnabled": True, "ExpiresInMinutes": 30}] and fake.protected()
    start = fake_clock()
    busy_until = None
    for _ in range(60 * 60):  # an hour of polls each second without CPU (the expiry is 30 min)
        fake_clock.advance(1)
        samples = [] if poll == "outage" else [Sample("ecs.container.memory.usage_bytes", 1e8, Kind.GAUGE, tags)]
        hub.publish(Batch("ecs", samples, snapshot=True))
        await component.step()
        if component.status()["busy"]:
            busy_until = fake_clock() - start
    assert (busy_until or 0.0) == idle_after
    released = [r for r in fake.requests if not r["ProtectionEnabled"]]
    assert len(fake.requests) == 2 and released == [{"ProtectionEnabled": False}] and not fake.protected()
    assert component.status()["idle_seconds"] >= 3600 - idle_after - 1


# --- an agent whose answer comes in pieces, is too large, or redirects ----------------------------


def expiration_in(minutes: float) -> str:
    """An ExpirationDate that far after now (these hand-written agents answer with the real Date)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + minutes * 60))


def protected_answer(enabled: bool = True, expiration: str | None = None) -> bytes:
    return json.dumps({"protection": {"ExpirationDate": (expiration or expiration_in(30)) if enabled else None,
                                      "ProtectionEnabled": enabled, "TaskArn": ARN}}).encode()


async def serve_agent(handler) -> tuple[web.AppRunner, str, list[web.Request]]:
    """A hand-written agent endpoint on loopback: (runner, ECS_AGENT_URI, the requests it got)."""
    seen: list[web.Request] = []

    async def put(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        await request.read()
        return await handler(request)

    app = web.Application()
    app.router.add_put("/api/abc/task-protection/v1/state", put)
    runner, base = await serve_app(app)
    return runner, f"{base}/api/abc", seen


def in_pieces(pieces: list[bytes], pause: float, *, declared: int | None = None):
    """An answer written piece by piece with a pause between them (the TCP segments of a slow agent);
    chunked unless a Content-Length is declared."""
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        if declared is not None:
            response.content_length = declared
        await response.prepare(request)
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(pause)  # the agent's behaviour under test, not a wait of the test
            await response.write(piece)
        await response.write_eof()
        return response
    return handler


@pytest.mark.parametrize("declared", [None, len(protected_answer())], ids=["chunked", "content-length"])
async def test_an_answer_in_two_pieces_is_read_whole(fake_clock, declared) -> None:
    expiration = expiration_in(30)
    body = protected_answer(expiration=expiration)
    runner, uri, seen = await serve_agent(in_pieces([body[:10], body[10:]], 0.2, declared=declared))
    try:
        component, hub, sink = make(uri, fake_clock)
        in_progress(hub, 1.0)
        await component.step()
        assert hub.metrics.total("tasklens.scaling.protection_errors") == 0, component.last_error
        assert hub.metrics.get("tasklens.scaling.protection_requests", action="protect", result="ok") == 1
        assert states(hub, sink) == {"tasklens_scaling_busy": 1.0, "tasklens_scaling_protected": 1.0}
        assert component.status()["last_answer"] == {"ProtectionEnabled": True,
                                                      "ExpirationDate": expiration, "TaskArn": ARN}
        fake_clock.advance(60)
        await component.step()
        assert len(seen) == 1  # confirmed: no retry
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("declared", [None, 70000], ids=["chunked", "content-length"])
async def test_an_answer_over_the_cap_is_refused_and_counted(fake_clock, declared) -> None:
    piece = b" " * 16384  # JSON allows the whitespace: only the size is wrong
    answer = protected_answer()
    pieces = [piece] * 4 + [b" " * (70000 - 4 * 16384 - len(answer)) + answer]
    runner, uri, _ = await serve_agent(in_pieces(pieces, 0.0, declared=declared))
    try:
        component, hub, sink = make(uri, fake_clock)
        in_progress(hub, 1.0)
        await component.step()
        assert hub.metrics.get("tasklens.scaling.protection_errors", reason="too_large") == 1
        assert "65536" in component.status()["last_error"]
        assert states(hub, sink) == {"tasklens_scaling_busy": 1.0, "tasklens_scaling_protected": 0.0}
    finally:
        await runner.cleanup()


async def test_a_redirect_is_not_followed_and_counted_as_such(fake_clock) -> None:
    async def redirect_to_itself(request: web.Request) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": str(request.url)})

    runner, uri, seen = await serve_agent(redirect_to_itself)
    try:
        component, hub, _ = make(uri, fake_clock)
        in_progress(hub, 1.0)
        await component.step()
        assert hub.metrics.get("tasklens.scaling.protection_errors", reason="redirect") == 1
        assert hub.metrics.get("tasklens.scaling.protection_errors", reason="connection") == 0
        assert len(seen) == 1 and "307" in component.status()["last_error"]
        assert component.status()["consecutive_failures"] == 1  # and it backs off like any failure
    finally:
        await runner.cleanup()


# --- a hostile ECS_AGENT_URI ----------------------------------------------------------------------


HOSTILE_URIS = {
    "label-too-long": "http://" + "a" * 70 + ".example/api/x",
    "unicode-label-too-long": "http://ü" + "a" * 70 + ".example/api/x",
    "unicode-host-invalid": "http://\u2100x.example/api/x",
    "unicode-zero-width": "http://a\u200b.example/api/x",
    "port-out-of-range": "http://127.0.0.1:99999/api/x",
    "port-zero": "http://127.0.0.1:0/api/x",
    "port-not-a-number": "http://127.0.0.1:abc/api/x",
    "no-scheme": "169.254.170.2/api/x",
    "non-http-scheme": "ftp://169.254.170.2/api/x",
    "no-host": "http:///api/x",
    "space-in-host": "http://a b/api/x",
    "query": "http://169.254.170.2/api/x?y=1",
}


@pytest.mark.parametrize("uri", HOSTILE_URIS.values(), ids=HOSTILE_URIS.keys())
async def test_a_hostile_agent_uri_is_refused_once_and_the_busy_state_still_reported(caplog, uri) -> None:
    component, hub, sink = make(uri, time.monotonic)
    component.tick = 0.01
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, "tasklens.scaling"):
        task = asyncio.create_task(component.run(stop))
        in_progress(hub, 1.0)
        await until(lambda: task.done() or states(hub, sink).get("tasklens_scaling_busy") == 1.0, 5,
                    "the busy state")
        await until(lambda: task.done() or hub.metrics.total("tasklens.scaling.protection_errors"), 5,
                    "a counted error")
        stop.set()
        await asyncio.wait_for(task, 2)  # raises if the component crashed
    assert states(hub, sink) == {"tasklens_scaling_busy": 1.0, "tasklens_scaling_protected": 0.0}
    assert hub.metrics.get("tasklens.scaling.protection_errors", reason="bad_url") == 1
    assert hub.metrics.total("tasklens.scaling.protection_errors") == 1  # said once, not retried
    assert component.status()["unavailable"].startswith("ECS_AGENT_URI=")
    warnings = [r.getMessage() for r in caplog.records if "ECS_AGENT_URI" in r.getMessage()]
    assert len(warnings) == 1 and "invalid" in warnings[0], warnings


@pytest.mark.parametrize("uri", HOSTILE_URIS.values(), ids=HOSTILE_URIS.keys())
def test_check_warns_of_a_hostile_agent_uri_as_the_component_reads_it(uri) -> None:
    from agent.cli import agent_uri_warning

    component, _, _ = make(uri, time.monotonic)
    assert agent_uri_warning({"ECS_AGENT_URI": uri}) == f"{component.invalid_uri}; scale-in protection is unavailable"
    assert agent_uri_warning({"ECS_AGENT_URI": "http://169.254.170.2/api/abc-123"}) is None
    assert agent_uri_warning({}) is None


def test_check_shows_the_agent_uri_warning() -> None:
    env = clean_env(TASKLENS_SCALE_IN_PROTECTION="cpu>20%", ECS_AGENT_URI="http://a b/api/x",
                    TASKLENS_STATSD_ADDR="off", TASKLENS_HTTP_ADDR=f"127.0.0.1:{free_port()}")
    check = subprocess.run([TASKLENS, "check"], env=env, capture_output=True, text=True, timeout=30)
    warnings = json.loads(check.stdout)["warnings"]
    assert [w for w in warnings if w.startswith("ECS_AGENT_URI=")], (warnings, check.stderr)
    assert "ECS_AGENT_URI=" in check.stderr


# these go out: a request to them fails otherwise (port 0: a refused connection)
UNREQUESTABLE = {k: v for k, v in HOSTILE_URIS.items() if k not in ("space-in-host", "query", "port-zero")}


@pytest.mark.parametrize("url", [u + "/task-protection/v1/state" for u in UNREQUESTABLE.values()],
                         ids=UNREQUESTABLE.keys())
async def test_any_failure_of_a_request_is_counted_never_a_crash(agent, fake_clock, url) -> None:
    """Past the check at start (the URL swapped afterwards): whatever a request raises, bar
    cancellation, is a counted error with a reason and a backoff."""
    _, uri = agent
    component, hub, sink = make(uri, fake_clock)
    assert component.client is not None
    component.client.url = url
    in_progress(hub, 1.0)
    await component.step()  # raises if anything escapes the request
    assert hub.metrics.get("tasklens.scaling.protection_errors", reason="bad_url") == 1, component.last_error
    assert hub.metrics.get("tasklens.scaling.protection_requests", action="protect", result="error") == 1
    assert states(hub, sink) == {"tasklens_scaling_busy": 1.0, "tasklens_scaling_protected": 0.0}
    assert component.status()["consecutive_failures"] == 1


async def test_cancelling_a_request_is_not_a_failure(fake_clock) -> None:
    answer = asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        await answer.wait()
        return web.Response(body=protected_answer(), content_type="application/json")

    runner, uri, seen = await serve_agent(held)
    try:
        component, hub, _ = make(uri, fake_clock)
        in_progress(hub, 1.0)
        step = asyncio.create_task(component.step())
        await until(lambda: seen, 5, "the request to reach the agent")
        step.cancel()
        with pytest.raises(asyncio.CancelledError):
            await step
        assert hub.metrics.total("tasklens.scaling.protection_errors") == 0
        assert component.status()["consecutive_failures"] == 0
    finally:
        answer.set()
        await runner.cleanup()
