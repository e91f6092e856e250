"""Scale-in protection: protect the task through the ECS agent while the worker is busy.

`$ECS_AGENT_URI/task-protection/v1/state` takes `PUT {"ProtectionEnabled": bool, "ExpiresInMinutes": n}`
(docs/scaling.md has the request and every answer shape). The component evaluates the busy rule once a
second over the latest metrics (it is a sink of the hub: it sees the ECS source's CPU and the StatsD
gauges as they are published) and:

- busy and not protected, or protected for less than half of what the agent granted: PUT protection
  with the expiry;
- idle for `TASKLENS_SCALE_IN_IDLE` seconds while protected: PUT release.

Never protected forever: every protection carries an expiry (default 30 min), so a sidecar that dies
or hangs leaves the task protected at most that long. The protection counted as ours is what the agent
granted, never more than what was asked (`granted_seconds`): an agent that grants less is renewed at
half of what it granted, and `/status` never says protected past it. Failures are counted by reason, logged at most
once a minute per reason, retried with a backoff (5 s doubling to 5 min), and never block anything
else: the requests run in this component's own task with a 5 s deadline. A task that ECS says is not
in a service (`TASK_NOT_VALID`) stops trying, and so does an `ECS_AGENT_URI` no request could use
(checked once at start; counted once as `bad_url`). Any failure of a request but its cancellation is
a counted error, never a crash of the component. Protection is not released on SIGTERM: the task is
stopping anyway, and a stop already under way is not held back by protection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import yarl

from agent.capped import read_capped
from agent.hub import Hub
from agent.logs import RateLimitedLog
from agent.model import Batch, Kind, Sample
from agent.scaling import BUSY, PROTECTED
from agent.scaling.busy import Observations, Rule, evaluate, parse_rule
from agent.urlmask import mask_secrets, url_passwords

log = logging.getLogger("tasklens.scaling")

ENV_AGENT_URI = "ECS_AGENT_URI"
PATH = "/task-protection/v1/state"
REQUEST_TIMEOUT = 5.0  # the agent gives up on ECS after 4 s and on its own connection after 5 s
BACKOFF_FIRST, BACKOFF_MAX = 5.0, 300.0
PUBLISH_EVERY = 15.0  # seconds between state samples when nothing changes
MAX_BODY = 65536  # the agent's answers are a few hundred bytes
MAX_EXPIRES_MINUTES = 2880  # the most the agent grants (48 h)
DATE_RESOLUTION = 1.0  # an HTTP Date is whole seconds, cut down: the agent's clock may be up to this much later

# error codes and failure reasons of the agent's answers -> our bounded `reason` label
_CODES = {
    "ThrottlingException": "throttled",
    "RequestCanceled": "agent_timeout",
    "AccessDeniedException": "access_denied",
    "ResourceNotFoundException": "not_found",
    "InvalidParameterException": "bad_request",
    "ServerException": "server_error",
    "DEPLOYMENT_BLOCKED": "deployment_blocked",
    "TASK_NOT_VALID": "task_not_valid",
}
PERMANENT = frozenset({"task_not_valid"})  # a standalone task: protection does not apply to it


class ProtectionError(Exception):
    def __init__(self, reason: str, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.reason, self.status = reason, status


@dataclass(frozen=True)
class Protection:
    """What the agent said: the `protection` object of a successful answer."""

    enabled: bool
    expiration: str | None  # ISO time from the agent, None when not protected
    task_arn: str | None
    date: str | None = None  # the answer's HTTP `Date` header: the agent's clock when it answered


def request_body(enabled: bool, expires_minutes: int | None) -> dict[str, Any]:
    """The PUT body with the agent's exact field names (it refuses unknown fields)."""
    body: dict[str, Any] = {"ProtectionEnabled": enabled}
    if enabled and expires_minutes is not None:
        body["ExpiresInMinutes"] = expires_minutes
    return body


def interpret(status: int, body: bytes) -> Protection:
    """The agent's answer as a Protection, or ProtectionError with a bounded reason. A 200 may carry
    a `failure` (ECS refused for this task), so success is the presence of `protection`."""
    try:
        doc: Any = json.loads(body)
    except ValueError:
        doc = None
    if status == 429:
        raise ProtectionError("throttled", "the agent's request rate limit (HTTP 429)", status)
    if isinstance(doc, Mapping):
        protection, failure, error = doc.get("protection"), doc.get("failure"), doc.get("error")
        if status == 200 and isinstance(protection, Mapping) and isinstance(protection.get("ProtectionEnabled"), bool):
            expiration = protection.get("ExpirationDate")
            arn = protection.get("TaskArn")
            return Protection(protection["ProtectionEnabled"], expiration if isinstance(expiration, str) else None,
                              arn if isinstance(arn, str) else None)
        if isinstance(failure, Mapping):
            reason = str(failure.get("Reason") or "")
            raise ProtectionError(_CODES.get(reason, "failure"), f"ECS failure {reason}: {failure.get('Detail')}", status)
        if isinstance(error, Mapping):
            code = str(error.get("Code") or "")
            raise ProtectionError(_CODES.get(code, _by_status(status)),
                                  f"HTTP {status} {code}: {str(error.get('Message') or '')[:200]}", status)
    if status >= 400 or status < 200:
        raise ProtectionError(_by_status(status), f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}", status)
    raise ProtectionError("bad_reply", f"HTTP {status} without a protection object: {body[:200]!r}", status)


def _timestamp(text: str) -> float | None:
    """An ISO 8601 time with a zone (`2022-10-06T02:29:16Z`, Go's nanoseconds too) as a POSIX time."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None  # no zone: no telling when it is


def _http_date(text: str | None) -> float | None:
    """An HTTP `Date` header (`Mon, 07 Dec 2026 10:39:07 GMT`, always GMT) as a POSIX time."""
    if not text:
        return None
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return (parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)).timestamp()


def granted_seconds(expiration: str | None, date: str | None, sent_wall: float) -> float:
    """How long the protection the agent confirmed lasts, counted from when the request was sent (so
    never past the agent's own expiry), or ProtectionError `bad_expiry` for an `ExpirationDate` that is
    missing, unparseable or not in the future.

    The `ExpirationDate` is the agent's (ECS's) clock, which may differ from ours: the span is measured
    against the answer's own `Date` header (the agent's clock when it answered, after the request was
    sent), less its one-second resolution; only without a usable `Date` is it measured against our
    wall clock when the request was sent (`sent_wall`). The caller caps it at what was asked."""
    if expiration is None:
        raise ProtectionError("bad_expiry", "protected without an ExpirationDate: no telling until when", 200)
    expires = _timestamp(expiration)
    if expires is None:
        raise ProtectionError("bad_expiry", f"ExpirationDate {expiration[:80]!r} is not a time with a zone", 200)
    answered = _http_date(date)
    if answered is not None:
        granted, since = expires - answered - DATE_RESOLUTION, f"the answer's Date {date!r}"
    else:
        granted, since = expires - sent_wall, "the time the request was sent"
    if not granted > 0:
        raise ProtectionError("bad_expiry", f"ExpirationDate {expiration[:80]!r} is not after {since}", 200)
    return granted


def _by_status(status: int) -> str:
    if status >= 500:
        return "server_error"
    if status >= 400:
        return "http_4xx"
    return "bad_reply"


_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")  # a DNS label, as IDNA encodes it
# aiohttp >= 3.10 raises NonHttpUrlClientError (not an InvalidURL) for other schemes
_BAD_URL = (aiohttp.InvalidURL, getattr(aiohttp, "NonHttpUrlClientError", aiohttp.InvalidURL), ValueError)


def invalid_uri(agent_uri: str, exc: ValueError) -> str:
    """Why `agent_uri` cannot be used (`endpoint_url`'s error), as the component and `tasklens check` say it."""
    return f"{ENV_AGENT_URI}={agent_uri[:200]!r} is invalid: {exc}"


def endpoint_url(agent_uri: str) -> str:
    """The task-protection URL under `agent_uri` (`http://169.254.170.2/api/<id>` on ECS), or ValueError
    saying what is wrong: checked once at start, so a hostile value is one clear error, not a
    failure (or a crash) per request."""
    try:
        url = yarl.URL(agent_uri.strip())
        host = url.raw_host  # IDNA-encoded; a label too long to encode raises UnicodeError (a ValueError)
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc})") from None
    if url.scheme not in ("http", "https") or not host:
        raise ValueError("expected an http URL with a host, like http://169.254.170.2/api/<id>")
    if url.query_string or url.fragment or url.user is not None:
        raise ValueError("expected no user, query or fragment: the endpoint's path is appended to it")
    if url.explicit_port == 0:  # (yarl refuses a port past 65535) nothing listens on 0: every request would fail
        raise ValueError("port 0: expected a port from 1 to 65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.rstrip(".").split(".")
        if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
            raise ValueError(f"{host[:80]!r} is not a host name (labels of 1-63 letters, digits and "
                             "hyphens; 253 characters at most)") from None
    return str(url).rstrip("/") + PATH


def _as_protection_error(exc: Exception, timeout: float) -> ProtectionError:
    """Any failure of a request as a counted reason (cancellation is not a failure: never caught)."""
    if isinstance(exc, TimeoutError):
        return ProtectionError("timeout", f"no answer within {timeout:g} s")
    if isinstance(exc, _BAD_URL):  # a URL aiohttp or yarl will not request (UnicodeError is a ValueError)
        return ProtectionError("bad_url", f"{type(exc).__name__}: {exc} (check {ENV_AGENT_URI})")
    if isinstance(exc, aiohttp.ClientConnectionError | OSError):
        return ProtectionError("connection", f"{type(exc).__name__}: {exc}")
    if isinstance(exc, aiohttp.ClientError):  # a malformed answer: bad status line, headers, chunks
        return ProtectionError("bad_reply", f"{type(exc).__name__}: {exc}")
    return ProtectionError("unexpected", f"{type(exc).__name__}: {exc}")


class ProtectionClient:
    """PUT requests to the agent's task-protection endpoint; one session, a deadline per request."""

    def __init__(self, agent_uri: str, timeout: float = REQUEST_TIMEOUT) -> None:
        self.url = endpoint_url(agent_uri)  # ValueError for a URI no request could use
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def put(self, enabled: bool, expires_minutes: int | None) -> Protection:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            # not followed: the agent never redirects, and a PUT that did would go to whoever it names
            async with self._session.put(self.url, json=request_body(enabled, expires_minutes),
                                         allow_redirects=False) as response:
                if 300 <= response.status < 400:
                    raise ProtectionError("redirect", f"HTTP {response.status} to "
                                          f"{response.headers.get('Location', '')[:200]!r}: not followed",
                                          response.status)
                answer = interpret(response.status,
                                   await read_capped(response, MAX_BODY, lambda: _too_large(response.status)))
                return replace(answer, date=response.headers.get("Date"))
        except ProtectionError:
            raise
        except Exception as exc:  # anything but cancellation: a counted failure, never a crash
            raise _as_protection_error(exc, self.timeout) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _too_large(status: int) -> ProtectionError:
    return ProtectionError("too_large", f"HTTP {status}: answer over {MAX_BODY} bytes: refused", status)


@dataclass
class State:
    """What we know of the task's protection, on the monotonic clock."""

    busy: bool = False
    idle_since: float | None = None
    confirmed_until: float | None = None  # protected, as the agent confirmed, until then
    granted: float | None = None  # seconds the last confirmed protection lasts (at most what was asked)
    possibly_until: float | None = None  # may be protected until then (a protect whose answer was lost)
    next_attempt: float = 0.0
    failures: int = 0
    disabled: str | None = None  # why no request is made at all

    def protected(self, now: float) -> bool:
        return self.confirmed_until is not None and now < self.confirmed_until

    def maybe_protected(self, now: float) -> bool:
        until = max(self.confirmed_until or 0.0, self.possibly_until or 0.0)
        return now < until


def decide(state: State, busy: bool, now: float, idle: float, expires_minutes: int) -> str | None:
    """The request to make now: "protect", "release" or None. Updates the busy/idle bookkeeping."""
    state.busy = busy
    if busy:
        state.idle_since = None
    elif state.idle_since is None:
        state.idle_since = now
    if state.disabled or now < state.next_attempt:
        return None
    if busy:
        remaining = (state.confirmed_until or now) - now
        span = state.granted if state.confirmed_until is not None and state.granted is not None \
            else expires_minutes * 60
        return "protect" if remaining < span / 2 else None
    assert state.idle_since is not None
    if state.maybe_protected(now) and now - state.idle_since >= idle:
        return "release"
    return None


class ScaleInProtection:
    """A component (its own loop) and a sink (it watches every batch for the rule's metrics)."""

    name = "scaling:protection"

    def __init__(self, rule: Rule | str, hub: Hub, agent_uri: str | None, *, idle: float = 60.0,
                 expires_minutes: int = 30, metadata_url: str | None = None, tick: float = 1.0,
                 request_timeout: float = REQUEST_TIMEOUT, clock: Callable[[], float] = time.monotonic,
                 poll_interval: float = 10.0, wall: Callable[[], float] = time.time) -> None:
        self.rule = parse_rule(rule) if isinstance(rule, str) else rule
        self.hub = hub
        self.idle, self.expires_minutes, self.tick = idle, expires_minutes, tick
        self.metadata_url = metadata_url
        self.clock, self.wall = clock, wall  # wall: only without the answer's Date (granted_seconds)
        self.seen = Observations(self.rule, poll_interval, clock)
        self.state = State()
        self.client: ProtectionClient | None = None
        self.invalid_uri: str | None = None  # why ECS_AGENT_URI cannot be used
        if not agent_uri:
            self.state.disabled = f"{ENV_AGENT_URI} is not set"
        else:
            try:
                self.client = ProtectionClient(agent_uri, request_timeout)
            except ValueError as exc:
                self.invalid_uri = invalid_uri(agent_uri, exc)
                self.state.disabled = self.invalid_uri
        self.own_container: str | None = None
        self.holding: list[str] = []
        self.last_error: str | None = None
        self.last_answer: dict[str, Any] | None = None
        self._published: tuple[bool, bool] | None = None
        self._published_at = -float("inf")
        self._log = RateLimitedLog(log)

    # -- sink side: observe -------------------------------------------------------------------

    def accept(self, batch: Batch) -> None:
        if batch.source != self.name:
            self.seen.observe(batch, self.hub.identity.added_tags)

    # -- component side -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        if self.invalid_uri is not None:  # no request could use it: one counted error, not one per request
            self.hub.metrics.inc("tasklens.scaling.protection_errors", reason="bad_url")
            self.last_error = self.invalid_uri
            log.warning("scale-in protection is unavailable: %s; the busy state is still reported", self.invalid_uri)
        elif self.client is None:
            log.warning("scale-in protection is unavailable: %s is not set (not on ECS, or an agent older than "
                        "1.65.0); the busy state is still reported", ENV_AGENT_URI)
        try:
            while not stop.is_set():
                await self.step()
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.tick)
                except TimeoutError:
                    pass
        finally:
            if self.client is not None:
                await self.client.close()

    async def step(self) -> None:
        """One evaluation, and at most one request."""
        if self.metadata_url and self.own_container is None and self.rule.uses_cpu:
            self.own_container = await self._own_container()
        busy, self.holding = evaluate(self.rule, self.seen, self.own_container)
        now = self.clock()
        action = decide(self.state, busy, now, self.idle, self.expires_minutes)
        if action is not None and self.client is not None:
            await self._request(action == "protect", now)
        self._publish(self.clock())

    async def _request(self, enabled: bool, sent: float) -> None:
        state, metrics = self.state, self.hub.metrics
        action = "protect" if enabled else "release"
        asked = self.expires_minutes * 60
        expiry = sent + asked  # from our send time: never later than the agent's
        sent_wall = self.wall()
        confirmed = state.confirmed_until
        if enabled:
            state.possibly_until = max(state.possibly_until or 0.0, expiry)
        else:  # once asked, a release may have been applied, whatever becomes of its answer: a busy
            # worker protects again at once (decide), and the release is retried until answered
            state.possibly_until = max(state.possibly_until or 0.0, confirmed or 0.0)
            state.confirmed_until = None
        assert self.client is not None
        try:
            answer = await self.client.put(enabled, self.expires_minutes if enabled else None)
        except ProtectionError as exc:
            self._failed(action, exc)
            return
        self.last_answer = {"ProtectionEnabled": answer.enabled, "ExpirationDate": answer.expiration,
                            "TaskArn": answer.task_arn}
        if not answer.enabled:
            state.confirmed_until = None
        elif not enabled:  # the agent says the release was not applied: protected as before
            state.confirmed_until = confirmed
        if answer.enabled != enabled:
            # a well-formed answer that does not say what was asked: not a success, or `decide` would
            # ask again every tick; a release keeps the task possibly protected, so it is retried
            self._failed(action, ProtectionError(
                "not_confirmed", f"asked ProtectionEnabled={enabled}, the agent answered {answer.enabled}", 200))
            return
        if enabled:
            try:
                granted = granted_seconds(answer.expiration, answer.date, sent_wall)
            except ProtectionError as exc:  # protected, but until when is unknown: the PUT reset the
                state.confirmed_until = None  # expiry, so the earlier one no longer holds either
                self._failed(action, exc)
                return
            # longer than asked: counted as asked, but it may hold that long (a release is tried till then)
            state.possibly_until = max(state.possibly_until or 0.0, sent + min(granted, MAX_EXPIRES_MINUTES * 60))
            state.granted = min(granted, asked)
        metrics.inc("tasklens.scaling.protection_requests", action=action, result="ok")
        if state.failures:
            log.info("scale-in protection: %s succeeded after %d failed attempts", action, state.failures)
        state.failures, state.next_attempt, self.last_error = 0, 0.0, None
        if answer.enabled:
            assert state.granted is not None
            state.confirmed_until = sent + state.granted  # the earlier of what was asked and what was granted
        else:
            state.possibly_until = None

    def _failed(self, action: str, exc: ProtectionError) -> None:
        """Count a failed request, log it at most once a minute per reason, and back off (or stop)."""
        state, metrics = self.state, self.hub.metrics
        state.failures += 1
        metrics.inc("tasklens.scaling.protection_requests", action=action, result="error")
        metrics.inc("tasklens.scaling.protection_errors", reason=exc.reason)
        self.last_error = f"{action}: {exc.reason}: {exc}"
        if exc.reason in PERMANENT:
            state.disabled = f"{exc.reason}: {exc}"
            state.confirmed_until = state.possibly_until = None
            log.warning("scale-in protection stops: %s (only tasks of a service can be protected)", exc)
            return
        delay = min(BACKOFF_FIRST * 2 ** (state.failures - 1), BACKOFF_MAX)
        state.next_attempt = self.clock() + delay
        self._log.warning(f"protection:{exc.reason}", "scale-in protection: %s failed (%s); retrying in %.0f s",
                          action, self.last_error, delay)

    async def _own_container(self) -> str | None:
        """The sidecar's own container name, from its metadata (`${ECS_CONTAINER_METADATA_URI_V4}`)."""
        assert self.metadata_url is not None
        try:
            async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as session,
                        session.get(self.metadata_url) as response):
                doc = await response.json(content_type=None) if response.status == 200 else None
        except Exception as exc:  # any failure (a bad URL too) is a gap here; cancellation passes
            self._log.warning("protection:own", "scale-in protection: cannot read this container's metadata "
                              "(%s); counting every container's CPU until it can",
                              mask_secrets(repr(exc), url_passwords(self.metadata_url)))
            return None
        name = doc.get("Name") if isinstance(doc, Mapping) else None
        return name if isinstance(name, str) and name else None

    def _publish(self, now: float) -> None:
        current = (self.state.busy, self.state.protected(now))
        if current == self._published and now - self._published_at < PUBLISH_EVERY:
            return
        self._published, self._published_at = current, now
        self.hub.publish(Batch(self.name, [Sample(BUSY, float(current[0]), Kind.GAUGE),
                                           Sample(PROTECTED, float(current[1]), Kind.GAUGE)], snapshot=True))

    def status(self) -> dict[str, Any]:
        now = self.clock()
        state = self.state
        return {
            "rule": str(self.rule),
            "busy": state.busy,
            "holding": list(self.holding),
            "protected": state.protected(now),
            "protected_for_seconds": (math.floor((state.confirmed_until - now) * 10) / 10  # never more than left
                                      if state.confirmed_until is not None and state.protected(now) else None),
            "idle_seconds": round(now - state.idle_since, 1) if state.idle_since is not None else None,
            "unavailable": state.disabled,
            "consecutive_failures": state.failures,
            "last_error": self.last_error,
            "last_answer": self.last_answer,
            "own_container": self.own_container,
        }
