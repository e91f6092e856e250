"""The ECS source against real captures mutated at random and served over HTTP on loopback: whatever
a broken or hostile metadata endpoint answers, the source never raises, every number it publishes is
finite and physically possible, and a poll it cannot use is a gap plus one counted error."""

from __future__ import annotations

import asyncio
import copy
import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.sources.ecs_helpers import MetadataServer, load, managed_instances_task
from tests.sources.test_ecs_source import Harness

from agent.model import Sample
from agent.sources.ecs_stats import CPU_SLACK

PAIRS = [("fargate-2023.task", "fargate-2023.stats"), ("ec2-bridge-2020.task", "ec2-bridge-2020.stats"),
         ("fargate-2021.task", "fargate-2021.stats"),
         ("ec2-awsvpc-2023-cgroupv2.task", "ec2-awsvpc-2023-cgroupv2.stats"),
         ("fargate-v2-2017.task", "fargate-v2-2017-wrong-system-delta.stats"),
         ("fargate-v2-2017.task", "fargate-windows.stats"),
         (None, "managed-instances-2025-cgroupv2.stats")]

# what a broken agent, a corrupt document or a hostile endpoint can put in place of any value
HOSTILE = [None, {}, [], "", "None", "garbage", True, False, 0, -1, -(2**63), 0.5, 2**64, 10**400, 1e308,
           1e-320, float("nan"), float("inf"), float("-inf"), "2999-01-01T00:00:00Z", "0001-01-01T00:00:00Z",
           [[[[[]]]]], {"x": {"y": None}}]
SIGNED = {"ecs.container.exit_code"}  # Windows exit codes can be below 0; nothing else can


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside `doc` (dict keys and list indices)."""
    out = [prefix] if prefix else []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        out += paths(value, prefix + (key,))
    return out


def is_number(doc: Any, path: tuple[Any, ...]) -> bool:
    for key in path:
        doc = doc[key]
    return isinstance(doc, (int, float)) and not isinstance(doc, bool)


def mutate(doc: Any, path: tuple[Any, ...], action: Any) -> None:
    """Delete the value at `path`, scale it (a counter that jumps or goes back), or replace it."""
    *parents, last = path
    for key in parents:
        doc = doc[key]
    if action == "delete":
        del doc[last]
    elif isinstance(action, tuple):  # ("scale", factor)
        value = doc[last]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e300:
            doc[last] = value * action[1]
    else:
        doc[last] = copy.deepcopy(action)  # the next mutation may change it: never the shared one


async def two_polls(task: Any, stats: Any, mutated_task: bytes, mutated_stats: bytes) -> tuple[Harness, bool, bool]:
    server = MetadataServer()
    await server.start()
    harness = Harness(server.url)
    try:
        server.serve(task, stats)
        first = await harness.source.poll_once()
        server.serve(mutated_task, mutated_stats)
        second = await harness.source.poll_once()
    finally:
        await harness.source.aclose()
        await server.stop()
    return harness, first, second


def online_cpus(stats: Any) -> dict[str, float]:
    """container name -> the online CPUs its (served) stats claim, where that is a number > 0."""
    out = {}
    for entry in stats.values() if isinstance(stats, dict) else ():
        if not isinstance(entry, dict) or not isinstance(entry.get("cpu_stats"), dict):
            continue
        online, name = entry["cpu_stats"].get("online_cpus"), entry.get("name")
        if isinstance(name, str) and isinstance(online, (int, float)) and not isinstance(online, bool) and online > 0:
            try:  # (a JSON integer past the float range is no CPU count)
                out[name.lstrip("/")] = float(online)
            except OverflowError:
                continue
    return out


def check_sample(s: Sample, online: dict[str, float]) -> None:
    assert isinstance(s.value, float) and math.isfinite(s.value), s
    if s.name not in SIGNED:
        assert s.value >= 0, s
    container = dict(s.tags).get("container_name")
    if s.name == "ecs.container.cpu.usage_vcpus" and container in online:
        # no container uses more CPUs than its host has (a counter that jumped is no rate)
        assert s.value <= online[container] * CPU_SLACK, (s, online[container])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), pair=st.sampled_from(PAIRS))
def test_mutated_captures_over_http_never_break_a_promise(data: st.DataObject, pair: tuple[str | None, str]) -> None:
    task = load(pair[0]) if pair[0] else managed_instances_task()
    stats = load(pair[1])
    mutated = {"task": json.loads(json.dumps(task)), "stats": json.loads(json.dumps(stats))}
    for _ in range(data.draw(st.integers(1, 6), label="mutations")):
        which = data.draw(st.sampled_from(["task", "stats"]), label="document")
        candidates = paths(mutated[which])
        if data.draw(st.booleans(), label="a number"):  # where most of the arithmetic is
            candidates = [p for p in candidates if is_number(mutated[which], p)]
        if not candidates:
            continue
        path = data.draw(st.sampled_from(candidates), label="path")
        action = data.draw(st.one_of(st.just("delete"), st.tuples(st.just("scale"), st.sampled_from(
            [-1, 0, 2**40, 1e-9, 1.5])), st.sampled_from(HOSTILE)), label="action")
        mutate(mutated[which], path, action)
    bodies = [json.dumps(mutated[k]).encode() for k in ("task", "stats")]

    harness, first, second = asyncio.run(two_polls(task, stats, *bodies))

    assert first
    errors = harness.hub.metrics.total("tasklens.ecs.poll_errors")
    assert errors == (0 if second else 1)  # a poll that failed is counted once; one that worked is not
    batch = harness.recorder.last("ecs")
    if not isinstance(mutated["task"].get("TaskARN"), str):
        assert not second and batch.samples == []  # not a task: a gap, never the last poll's values
    online = online_cpus(mutated["stats"])
    for s in batch.samples:
        check_sample(s, online)
