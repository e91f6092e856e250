"""A local ECS task metadata endpoint (v4 paths), for development and tests.

`tasklens emulate-ecs --task T --stats S` serves a pair of fixture files, re-read on every request
and sent byte for byte (so a truncated or odd file reaches the client exactly as written); without
files it serves this machine live as a one-container task, with Docker-format stats refreshed at
most once a second like the ECS agent's. Point the sidecar at it with the printed
`ECS_CONTAINER_METADATA_URI_V4`. It also serves the agent's task-protection endpoint
(`ECS_AGENT_URI`, agent/scaling/agent_endpoint.py), so that scale-in protection runs locally too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.logs import shown
from agent.scaling.agent_endpoint import TaskProtectionAgent
from agent.sources.localstats import LocalStats

log = logging.getLogger("tasklens.emulator")

STATS_REFRESH = 1.0  # seconds; the agent streams Docker stats about once a second on EC2


class _Fixtures:
    def __init__(self, task_path: str, stats_path: str) -> None:
        self.task_path, self.stats_path = Path(task_path), Path(stats_path)

    def task_bytes(self) -> bytes:
        return self.task_path.read_bytes()

    def stats_bytes(self) -> bytes:
        return self.stats_path.read_bytes()


class _Live:
    def __init__(self) -> None:
        self.local = LocalStats()
        self._stats: dict[str, Any] | None = None
        self._at = -float("inf")
        self._lock = asyncio.Lock()

    def task_bytes(self) -> bytes:
        return json.dumps(self.local.task()).encode()

    async def stats(self) -> dict[str, Any]:
        async with self._lock:  # concurrent clients share one sample, as with the real agent
            if self._stats is None or time.monotonic() - self._at >= STATS_REFRESH:
                self._stats = {self.local.docker_id: await asyncio.to_thread(self.local.sample)}
                self._at = time.monotonic()
            return self._stats


def _error(status: int, message: str) -> web.Response:
    # the agent answers errors with a JSON string body
    return web.Response(status=status, text=json.dumps(message), content_type="application/json")


def _this_container(task: Any, wanted: str) -> Mapping[str, Any] | None:
    """The container the id in the URL names (a DockerId or its prefix), else the first one."""
    listed = task.get("Containers") if isinstance(task, Mapping) else None  # the file may change after start
    containers = [c for c in listed if isinstance(c, Mapping)] if isinstance(listed, list) else []
    for c in containers:
        docker_id = str(c.get("DockerId") or "")
        if docker_id and (docker_id == wanted or docker_id.startswith(wanted)):
            return c
    normal = [c for c in containers if c.get("Type", "NORMAL") == "NORMAL"]
    return (normal or containers)[0] if containers else None


def make_app(task_path: str | None, stats_path: str | None,
             protection: TaskProtectionAgent | None = None) -> web.Application:
    if (task_path is None) != (stats_path is None):
        raise ValueError("give both a task file and a stats file, or neither (live mode)")
    fixtures = _Fixtures(task_path, stats_path) if task_path and stats_path else None
    live = None if fixtures else _Live()

    # file reads and live sampling (cgroup files, psutil) in a thread: clients poll concurrently
    async def task_bytes() -> bytes:
        return await asyncio.to_thread(fixtures.task_bytes if fixtures else live.task_bytes)  # type: ignore[union-attr]

    async def stats_bytes() -> bytes:
        if fixtures:
            return await asyncio.to_thread(fixtures.stats_bytes)
        return json.dumps(await live.stats()).encode()  # type: ignore[union-attr]

    def raw(body: bytes) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def task(request: web.Request) -> web.Response:
        try:
            return raw(await task_bytes())
        except OSError as exc:  # the agent's answer when it cannot fetch: 500 with a JSON string
            return _error(500, f"cannot read the task file: {exc}")

    async def task_stats(request: web.Request) -> web.Response:
        try:
            return raw(await stats_bytes())
        except OSError as exc:
            return _error(500, f"cannot read the stats file: {exc}")

    async def container(request: web.Request) -> web.Response:
        try:
            found = _this_container(json.loads(await task_bytes()), request.match_info["id"])
        except (OSError, ValueError, RecursionError):
            return _error(500, "task metadata is not readable JSON")
        return web.json_response(found) if found else _error(404, "no such container")

    async def container_stats(request: web.Request) -> web.Response:
        try:
            found = _this_container(json.loads(await task_bytes()), request.match_info["id"])
            all_stats = json.loads(await stats_bytes())
        except (OSError, ValueError, RecursionError):
            return _error(500, "metadata is not valid JSON")
        if not found or not isinstance(all_stats, Mapping):
            return _error(404, "no such container")
        return web.json_response(all_stats.get(str(found.get("DockerId"))))

    async def not_found(request: web.Request) -> web.Response:
        return _error(404, f"unknown path {request.path}")

    async def served_arn() -> str | None:
        """The TaskARN of the task `/task` serves now (the task protection reports it, as the agent does)."""
        try:
            doc = json.loads(await task_bytes())
        except (OSError, ValueError, RecursionError):
            return None
        arn = doc.get("TaskARN") if isinstance(doc, Mapping) else None
        return arn if isinstance(arn, str) else None

    app = web.Application()
    # ECS_AGENT_URI=http://host:port/api/<any id>
    (protection or TaskProtectionAgent(arn_of=served_arn)).add_routes(app)
    for version in ("v3", "v4"):
        base = f"/{version}/{{id}}"
        app.router.add_get(base, container)
        app.router.add_get(base + "/stats", container_stats)
        app.router.add_get(base + "/task", task)
        app.router.add_get(base + "/taskWithTags", task)
        app.router.add_get(base + "/task/stats", task_stats)
    app.router.add_get("/{tail:.*}", not_found)
    return app


def container_id(task_path: str | None) -> str:
    """The id to put in the URL: the first workload container of the fixture, or the local one."""
    if task_path:
        try:
            found = _this_container(json.loads(Path(task_path).read_bytes()), "")
        except (OSError, ValueError, RecursionError):
            found = None
        if found and found.get("DockerId"):
            return str(found["DockerId"])
        return "emulated"
    return LocalStats().docker_id


def check_fixtures(task_path: str, stats_path: str) -> None:
    """Refuse at start what would only fail at the first request, or what no ECS agent answers: a file
    that is missing, not a regular file, or not JSON; a task that is not an object whose `Containers`
    is a list of objects (each `DockerId` a string: it goes in the URL and keys the stats); stats that
    are not an object. Raises ValueError with one line naming the option and the file."""
    task = _read_json("--task", task_path)
    stats = _read_json("--stats", stats_path)  # both read first: a file that is not JSON says so first
    problem = task_problem(task)
    if problem:
        raise ValueError(f"--task {shown(task_path)}: {problem}")
    if not isinstance(stats, dict):
        raise ValueError(f"--stats {shown(stats_path)}: expected a JSON object of stats by DockerId, "
                         f"not {_json_kind(stats)}")


def task_problem(task: Any) -> str | None:
    """What makes `task` no `/task` answer the emulator can serve, else None."""
    if not isinstance(task, dict):
        return f"expected a JSON object with Containers, not {_json_kind(task)}"
    containers = task.get("Containers")
    if not isinstance(containers, list) or not containers:
        shown_kind = "missing" if "Containers" not in task else _json_kind(containers)
        return f"Containers: expected a list of one or more container objects, not {shown_kind}"
    for i, container in enumerate(containers):
        if not isinstance(container, dict):
            return f"Containers[{i}]: expected a container object, not {_json_kind(container)}"
        if "DockerId" in container and not isinstance(container["DockerId"], str):
            return f"Containers[{i}].DockerId: expected a string, not {_json_kind(container['DockerId'])}"
    return None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"  # NaN and Infinity too: Python's json takes them
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _read_json(what: str, path: str) -> Any:
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise ValueError(f"{what} {shown(path)}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{what} {shown(path)}: cannot read it ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):  # a directory, a FIFO (would block), /dev/zero (would never end)
        raise ValueError(f"{what} {shown(path)}: not a regular file")
    try:
        return json.loads(Path(path).read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        detail = "nested too deep" if isinstance(exc, RecursionError) else str(exc)
        raise ValueError(f"{what} {shown(path)}: not readable JSON ({shown(detail)})") from None


async def serve(host: str, port: int, task_path: str | None, stats_path: str | None) -> None:
    """Serve until SIGTERM or SIGINT; logs the variable to export."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(make_app(task_path, stats_path), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        what = f"{task_path} + {stats_path}" if task_path else "this machine, live"
        log.info("ECS metadata emulator serving %s; export ECS_CONTAINER_METADATA_URI_V4=http://%s:%d/v4/%s "
                 "ECS_AGENT_URI=http://%s:%d/api/%s", what, shown, bound, container_id(task_path), shown, bound,
                 container_id(task_path))
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
