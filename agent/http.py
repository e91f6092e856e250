"""HTTP endpoints: `/metrics` (Prometheus), `/health` (alive), `/ready`, `/status` (JSON)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import exposition

from agent.hub import Hub
from agent.sinks.prometheus import PrometheusSink


def make_app(hub: Hub, prometheus: PrometheusSink, ready: Callable[[], bool],
             status: Callable[[], dict[str, Any]]) -> web.Application:
    started = time.time()

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = exposition.choose_encoder(request.headers.get("Accept", ""))
        # render off the event loop: a large exposition must not stall the StatsD receive path
        body = await asyncio.to_thread(encoder, prometheus.registry)
        hub.metrics.inc("tasklens.http.scrapes")
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready_handler(request: web.Request) -> web.Response:
        ok = ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def status_handler(request: web.Request) -> web.Response:
        body = {
            "identity": hub.identity.as_dict(),
            "ready": ready(),
            "uptime_seconds": round(time.time() - started, 3),
            "components": status(),
        }
        return web.json_response(body, dumps=_dumps)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready_handler)
    app.router.add_get("/status", status_handler)
    return app


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, default=str)
