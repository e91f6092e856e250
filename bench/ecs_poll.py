"""Cost of one ECS metadata poll: the pure derivation, a whole poll over loopback HTTP, and a
local-mode sample.

For every fixture pair and a synthetic 50-container task: microseconds per `derive()`; then
milliseconds per `EcsSource.poll_once()` against the emulator serving fargate-2023 (two HTTP
requests, JSON parsing, derivation, publishing to the Prometheus sink); then milliseconds per
`LocalStats.sample()` on this machine. At the default 10 s poll interval, divide by 10 s for the
share of one core.

    .venv/bin/python bench/ecs_poll.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.config import Config
from agent.emulator import make_app
from agent.hub import Hub
from agent.identity import Identity
from agent.sinks.prometheus import PrometheusSink
from agent.sources.ecs import EcsSource
from agent.sources.ecs_stats import derive
from agent.sources.localstats import LocalStats

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "ecs"
PAIRS = [
    ("fargate-2023.task", "fargate-2023.stats"),
    ("ec2-bridge-2020.task", "ec2-bridge-2020.stats"),
    ("fargate-2021.task", "fargate-2021.stats"),
    ("ec2-awsvpc-2023-cgroupv2.task", "ec2-awsvpc-2023-cgroupv2.stats"),
    ("fargate-v2-2017.task", "fargate-v2-2017-wrong-system-delta.stats"),
    ("fargate-v2-2017.task", "fargate-windows.stats"),
]


def load(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def timed(fn: Any, seconds: float) -> tuple[float, int]:
    """Mean seconds per call over about `seconds` of calls."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return (time.perf_counter() - start) / n, n


def synthetic(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    template_c, (template_s, *_) = task["Containers"][0], stats.values()
    task["Containers"], out = [], {}
    for i in range(n):
        c = copy.deepcopy(template_c)
        c.update(DockerId=f"id-{i}", Name=f"worker-{i}")
        task["Containers"].append(c)
        out[f"id-{i}"] = copy.deepcopy(template_s)
    return task, out


async def poll_cost(seconds: float) -> tuple[float, int]:
    app = make_app(str(FIXTURES / "fargate-2023.task.json"), str(FIXTURES / "fargate-2023.stats.json"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hub = Hub(Identity(service="bench"))
    hub.add_sink(PrometheusSink(hub.metrics, pull=hub.pull))
    source = EcsSource(Config(), hub, f"http://127.0.0.1:{port}/v4/x")
    await source.poll_once()  # connect once, as the long-running poller does
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        assert await source.poll_once()
        n += 1
    elapsed = time.perf_counter() - start
    await source.aclose()
    await runner.cleanup()
    return elapsed / n, n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent per measurement")
    args = parser.parse_args()
    print("derive() per poll")
    for task_name, stats_name in PAIRS:
        task, stats = load(task_name), load(stats_name)
        mean, n = timed(lambda: derive(task, stats, stats), args.seconds)
        samples = len(derive(task, stats).samples)
        print(f"  {stats_name:45s} {mean * 1e6:8.1f} us  ({samples} samples, {n} runs)")
    task, stats = synthetic(50)
    mean, n = timed(lambda: derive(task, stats, stats), args.seconds)
    print(f"  {'synthetic 50 containers':45s} {mean * 1e6:8.1f} us  ({len(derive(task, stats).samples)} samples)")
    mean, n = asyncio.run(poll_cost(args.seconds))
    print(f"EcsSource.poll_once() over loopback (fargate-2023): {mean * 1e3:.2f} ms ({n} polls); "
          f"at a 10 s interval {mean / 10 * 100:.3f}% of one core")
    local = LocalStats()
    mean, n = timed(local.sample, args.seconds)
    print(f"LocalStats.sample() ({local.source}): {mean * 1e3:.2f} ms ({n} samples)")


if __name__ == "__main__":
    main()
