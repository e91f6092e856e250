"""Helpers for the ECS source tests: the shared ECS captures, and a metadata endpoint on loopback
whose answers (body, status, delay) a test can change between polls."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from aiohttp import web
from tests.support import FIXTURES


def load(name: str) -> Any:
    """A fixture file by its stem, e.g. `fargate-2023.stats` (a fresh copy each call)."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


def managed_instances_task() -> dict[str, Any]:
    """The managed-instances stats come without their `/task`; this one is the two containers they
    name, in awsvpc mode, task limits as on task-with-tags (1 vCPU, 2048 MiB)."""
    stats = load("managed-instances-2025-cgroupv2.stats")
    base = load("task-with-tags.task")
    template = base["Containers"][1]
    containers = []
    for docker_id, entry in stats.items():
        c = copy.deepcopy(template)
        c.update(DockerId=docker_id, Name=entry["name"], DockerName=entry["name"],
                 Image=f"example.com/{entry['name']}:2025.10")
        containers.append(c)
    base["Containers"] = containers
    return base


class MetadataServer:
    """`/v4/x/task` and `/v4/x/task/stats` answering what the test sets."""

    def __init__(self) -> None:
        self.task: bytes = b"{}"
        self.stats: bytes = b"{}"
        self.status = 200
        self.stats_status: int | None = None  # overrides `status` for /task/stats only
        self.error_body = json.dumps("agent error").encode()  # the body of an answer that is not 200
        self.delay = 0.0
        self.stats_delay = 0.0  # added to `delay` for /task/stats only
        self.requests = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    def serve(self, task: Any, stats: Any) -> None:
        self.task = task if isinstance(task, bytes) else json.dumps(task).encode()
        self.stats = stats if isinstance(stats, bytes) else json.dumps(stats).encode()
        self.status, self.stats_status, self.delay, self.stats_delay = 200, None, 0.0, 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v4/x"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        is_stats = request.path.endswith("/task/stats")
        if self.delay or (is_stats and self.stats_delay):
            await asyncio.sleep(self.delay + (self.stats_delay if is_stats else 0.0))
        status = self.stats_status if is_stats and self.stats_status is not None else self.status
        if status != 200:
            return web.Response(status=status, body=self.error_body, content_type="application/json")
        return web.Response(body=self.stats if is_stats else self.task, content_type="application/json")

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/v4/x/task", self._handle)
        app.router.add_get("/v4/x/task/stats", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

