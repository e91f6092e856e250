"""Local mode: no ECS metadata endpoint, so measure the container (or host) we run in.

The same metric families as on ECS (`ecs.container.*`, `ecs.task.*`), derived by the same code from
Docker-format stats that `localstats` builds from cgroup files and psutil. The identity comes from
the configuration (the runtime sets it); this source only adds the resource metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from agent.config import Config
from agent.health import HealthMonitor
from agent.hub import Hub
from agent.logs import RateLimitedLog
from agent.model import Batch
from agent.sources.ecs_stats import NetworkTotals, derive
from agent.sources.localstats import LocalStats

log = logging.getLogger("tasklens.local")


class LocalSource:
    name = "local"
    ready = True  # nothing to wait for

    def __init__(self, config: Config, hub: Hub, *, proc: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> None:
        self.config = config
        self.hub = hub
        self.stats = LocalStats(proc, cgroup_root)
        self._task = self.stats.task(hub.identity.service)
        self._measuring = self.stats.source  # reads cgroup files: once, not on every /status
        self._previous: dict[str, Any] = {}
        self._network = NetworkTotals()  # the task's network counters, poll after poll
        self.health = HealthMonitor.from_config(config, hub.metrics)
        self._log = RateLimitedLog(log)
        self._last_poll: float | None = None
        self._last_error: str | None = None
        log.info("local resources: measuring %s as container %r", self._measuring, self.stats.container_name)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.poll_once()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.config.poll_interval)
            except asyncio.TimeoutError:
                pass

    async def poll_once(self) -> bool:
        self.hub.metrics.inc("tasklens.local.polls")
        self._last_poll = time.time()
        try:
            stats = {self.stats.docker_id: await asyncio.to_thread(self.stats.sample)}
            derived = derive(self._task, stats, self._previous, self._network)
            derived.samples.extend(self.health.observe(self._task, stats, derived.samples, time.time()))
        except Exception as exc:  # a vanished file or a psutil error: count it, keep going
            self.hub.metrics.inc("tasklens.local.poll_errors", reason=type(exc).__name__)
            self._last_error = repr(exc)
            self._log.warning("poll", "local resource sampling failed: %r", exc)
            return False
        self._previous = stats
        self.hub.publish(Batch("local", derived.samples, snapshot=True))
        return True

    def status(self) -> dict[str, Any]:
        return {"mode": "local", "measuring": self._measuring, "container_name": self.stats.container_name,
                "last_poll": self._last_poll, "last_error": self._last_error, "ready": True,
                "health": self.health.settings()}
