"""HTTP endpoints: `/metrics` (Prometheus), `/health` (alive), `/ready`, `/status` (JSON)."""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
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
        accept = request.headers.get("Accept", "")
        render: Callable[[], bytes]
        if "application/openmetrics-text" in accept and "text/plain" not in accept:
            encoder, content_type = exposition.choose_encoder(accept)  # OpenMetrics only when it is all they take
            render = functools.partial(encoder, prometheus.registry)
        else:
            # text format 0.0.4 (Prometheus accepts it) from the sink's cached renderer: the generic
            # encoders take seconds for 100,000 series (bench/metrics_exposition.py)
            render, content_type = prometheus.render, "text/plain; version=0.0.4; charset=utf-8"
        headers = {"Content-Type": content_type}
        if "gzip" in request.headers.get("Accept-Encoding", ""):  # Prometheus asks: 53 MB -> 1.2 MB at 100k series
            headers["Content-Encoding"] = "gzip"
            render = functools.partial(_gzipped, render)
        # render off the event loop: a large exposition must not stall the StatsD receive path
        body = await asyncio.to_thread(render)
        hub.metrics.inc("tasklens.http.scrapes")
        return web.Response(body=body, headers=headers)

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


def _gzipped(render: Callable[[], bytes]) -> bytes:
    return gzip.compress(render(), 1)  # level 1: ~0.15 s for 53 MB, and zlib lets go of the GIL


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
