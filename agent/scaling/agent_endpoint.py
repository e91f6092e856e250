"""The ECS agent's task-protection endpoint, emulated (for `tasklens emulate-ecs` and the tests).

It is as strict as the EC2 agent (aws/amazon-ecs-agent, `ecs-agent/tmds/handlers/taskprotection/v1`):
the PUT body is a JSON object with exactly `ProtectionEnabled` (a bool, required) and optionally
`ExpiresInMinutes` (a whole number, 1-2880, default 120); an unknown field or a bad value is a 400
`InvalidParameterException`. Protection expires by itself. The answers have the agent's shapes;
`fail()` queues canned answers (throttling, a `failure`, a 5xx, a delay) for fault tests, and the
rate limit answers 429 past 40 requests/s steady, 60 burst, like the agent's default.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

ROUTE = "/api/{endpoint}/task-protection/v1/state"
DEFAULT_EXPIRES = 120
MAX_EXPIRES = 2880
RATE, BURST = 40.0, 60.0


@dataclass
class Canned:
    status: int
    body: Any  # JSON-serialisable, or bytes sent as is
    delay: float = 0.0


@dataclass
class TaskProtectionAgent:
    task_arn: str = "arn:aws:ecs:eu-west-1:123456789012:task/emulated/0123456789abcdef0123456789abcdef"
    enabled: bool = False
    expires_at: float | None = None  # wall time
    requests: list[dict[str, Any]] = field(default_factory=list)  # every accepted PUT body, in order
    rejected: list[str] = field(default_factory=list)  # why each refused request was refused
    canned: deque[Canned] = field(default_factory=deque)
    late: deque[float] = field(default_factory=deque)  # seconds before the answer to each next PUT applied
    clock: Any = time.time
    # where the ARN comes from when it is another's (the emulator: the task its `/task` serves, re-read
    # at each request as that file is): None, or an empty answer, keeps `task_arn`
    arn_of: Callable[[], Awaitable[str | None]] | None = None
    _tokens: float = BURST
    _refilled: float = field(default_factory=time.monotonic)

    def fail(self, status: int, body: Any, times: int = 1, delay: float = 0.0) -> None:
        """The next `times` requests get this answer (after `delay` seconds) instead of the real one."""
        self.canned.extend(Canned(status, body, delay) for _ in range(times))

    def answer_late(self, delay: float, times: int = 1) -> None:
        """The next `times` requests are applied, and answered `delay` seconds later (an answer lost on
        the way, or the agent's own timeout after the ECS call went through)."""
        self.late.extend(delay for _ in range(times))

    def protected(self) -> bool:
        if self.enabled and self.expires_at is not None and self.clock() >= self.expires_at:
            self.enabled, self.expires_at = False, None
        return self.enabled

    def _protection(self) -> dict[str, Any]:
        expiration = None
        if self.protected() and self.expires_at is not None:
            expiration = datetime.fromtimestamp(self.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"protection": {"ExpirationDate": expiration, "ProtectionEnabled": self.enabled,
                               "TaskArn": self.task_arn}}

    async def _current_arn(self) -> None:
        if self.arn_of is not None:
            self.task_arn = await self.arn_of() or self.task_arn

    def _rate_limited(self) -> bool:
        now = time.monotonic()
        self._tokens = min(BURST, self._tokens + (now - self._refilled) * RATE)
        self._refilled = now
        if self._tokens < 1:
            return True
        self._tokens -= 1
        return False

    def _invalid(self, message: str) -> web.Response:
        self.rejected.append(message)
        return web.json_response({"error": {"Code": "InvalidParameterException", "Message": message}}, status=400)

    async def _canned(self) -> web.Response | None:
        if not self.canned:
            return None
        answer = self.canned.popleft()
        if answer.delay:
            await asyncio.sleep(answer.delay)
        if isinstance(answer.body, bytes):
            return web.Response(status=answer.status, body=answer.body)
        return web.json_response(answer.body, status=answer.status)

    async def put(self, request: web.Request) -> web.Response:
        if self._rate_limited():
            return web.Response(status=429, text="You have reached maximum request limit.")
        canned = await self._canned()
        if canned is not None:
            return canned
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            return self._invalid(f"Failed to decode request body: {exc}")
        if not isinstance(body, dict):
            return self._invalid("Failed to decode request body: not an object")
        unknown = set(body) - {"ProtectionEnabled", "ExpiresInMinutes"}
        if unknown:  # DisallowUnknownFields; also catches a wrong casing, which Fargate may not accept
            return self._invalid(f"Failed to decode request body: unknown field {min(unknown)!r}")
        enabled = body.get("ProtectionEnabled")
        if not isinstance(enabled, bool):
            return self._invalid("Invalid request: does not contain 'ProtectionEnabled' field")
        minutes = body.get("ExpiresInMinutes", DEFAULT_EXPIRES)
        if "ExpiresInMinutes" in body and (not isinstance(minutes, int) or isinstance(minutes, bool)):
            return self._invalid("Failed to decode request body: ExpiresInMinutes is not an integer")
        if enabled and not 1 <= minutes <= MAX_EXPIRES:
            return self._invalid(f"expiresInMinutes must be between 1 and {MAX_EXPIRES}")
        self.requests.append(body)
        self.enabled = enabled
        self.expires_at = self.clock() + minutes * 60 if enabled else None
        await self._current_arn()
        answer = self._protection()
        if self.late:
            await asyncio.sleep(self.late.popleft())
        return web.json_response(answer)

    async def get(self, request: web.Request) -> web.Response:
        if self._rate_limited():
            return web.Response(status=429, text="You have reached maximum request limit.")
        canned = await self._canned()
        if canned is not None:
            return canned
        await self._current_arn()
        return web.json_response(self._protection())

    def add_routes(self, app: web.Application) -> None:
        app.router.add_put(ROUTE, self.put)
        app.router.add_get(ROUTE, self.get)
