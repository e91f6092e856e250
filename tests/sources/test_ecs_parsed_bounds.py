"""What a metadata answer may cost once parsed: the value and nesting bounds checked before parsing, and
what the source keeps of each stats entry for the next poll (`rate_basis`), served over real HTTP on
loopback from a real capture padded with junk of several shapes."""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.sources.ecs_helpers import MetadataServer, load, managed_instances_task
from tests.sources.test_ecs_source import Harness, raw

from agent.sources.ecs import MAX_BODY, MAX_DEPTH, MAX_VALUES, json_structure, json_values
from agent.sources.ecs_stats import derive, parse_time_ns, rate_basis
from agent.sources.localstats import format_time_ns
from tests.support import FIXTURES

MIB = 1024 * 1024
DD_AGENT = "67cd8a22b533459696d4ccab5278e009-2860414825"  # fargate-2023's first container


@pytest.fixture
async def harness(metadata: MetadataServer) -> AsyncIterator[Harness]:
    h = Harness(metadata.url)
    yield h
    await h.source.aclose()


def _nested(depth: int) -> Any:
    out: Any = 1
    for _ in range(depth):
        out = [out]
    return out


# junk put beside the real fields of one container's stats entry; each shape stays under MAX_BODY
REFUSED = {
    # the tester's answer: 3-byte `{}`, about 80 bytes each once parsed
    "many empty objects": ([{}] * 1_300_000, "too_large"),
    "many numbers": ([1.5] * 900_000, "too_large"),
    "many keys": ({f"k{i}": 0 for i in range(300_000)}, "too_large"),
    "many empty arrays": ([[]] * 1_300_000, "too_large"),
    "deep nesting": (_nested(MAX_DEPTH + 5), "bad_shape"),
}
KEPT = {  # within the bounds: parsed, and none of it kept
    "huge string": "x" * (MAX_BODY - 100_000),
    "huge string of wide characters": "\U0001F600" * ((MAX_BODY - 100_000) // 4),  # 4 bytes a character
    "empty objects within the bound": [{}] * (MAX_VALUES - 1_000),
    "numbers within the bound": list(range(MAX_VALUES - 1_000)),
}


def padded(junk: Any, seconds: int = 0) -> bytes:
    """fargate-2023's stats with `junk` in dd-agent's entry, its `read` `seconds` later."""
    stats = load("fargate-2023.stats")
    for entry in stats.values():
        entry["read"] = format_time_ns(parse_time_ns(entry["read"]) + seconds * 10**9)
    stats[DD_AGENT]["junk"] = junk
    body = json.dumps(stats, ensure_ascii=False, separators=(",", ":")).encode()
    assert len(body) < MAX_BODY  # the body cap alone would let every one of them through
    return body


async def held_over_polls(h: Harness, metadata: MetadataServer, bodies: list[bytes]) -> tuple[int, int]:
    """(bytes still held after polling `bodies` one after the other, the peak above the start while doing
    it), as tracemalloc sees the client side: not the server's answers, which this process serves too."""
    task = raw("fargate-2023.task")
    gc.collect()
    tracemalloc.start()
    server_side = [tracemalloc.Filter(False, __file__), tracemalloc.Filter(False, "*/aiohttp/web_*")]
    try:
        start = tracemalloc.get_traced_memory()[0]
        before = tracemalloc.take_snapshot().filter_traces(server_side)
        tracemalloc.reset_peak()
        for body in bodies:
            metadata.serve(task, body)
            await h.source.poll_once()
        peak = tracemalloc.get_traced_memory()[1] - start
        await asyncio.sleep(0)  # one turn of the loop: the handle that woke this task holds the last answer
        gc.collect()
        after = tracemalloc.take_snapshot().filter_traces(server_side)
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename")), peak


async def _warm(h: Harness, metadata: MetadataServer) -> None:
    """Two polls of the plain capture: what every poll reuses (metrics, series, the session) exists."""
    for seconds in (-20, -10):
        metadata.serve(raw("fargate-2023.task"), padded(None, seconds))
        assert await h.source.poll_once()


@pytest.mark.parametrize("shape", REFUSED)
async def test_an_answer_past_the_bounds_is_refused_before_parsing_and_counted(
        shape: str, metadata: MetadataServer, harness: Harness) -> None:
    """Before, the 3.9 MiB answer of `{}` held about 100 MiB a copy, three copies at a time (the one
    parsed, and two kept for the rates), and nothing was counted."""
    junk, reason = REFUSED[shape]
    bodies = [padded(junk, seconds) for seconds in range(4)]
    await _warm(harness, metadata)
    identity = harness.hub.identity
    held, peak = await held_over_polls(harness, metadata, bodies)
    assert harness.metric("tasklens.ecs.poll_errors", reason=reason) == 4
    assert harness.hub.metrics.total("tasklens.ecs.poll_errors") == 4  # one reason a poll
    assert harness.source.status()["last_error_reason"] == reason
    assert harness.hub.identity == identity  # /task answered: the identity is kept
    assert ("ecs_container_memory_working_set_bytes", "dd-agent") not in harness.scrape()  # a gap
    # the body (4 MiB, read in pieces and joined) and its structure (as long at most) at a time
    assert peak < 4 * MAX_BODY, peak
    assert held < 256 * 1024, held
    metadata.serve(raw("fargate-2023.task"), raw("fargate-2023.stats"))
    assert await harness.source.poll_once()  # and the next good answer is read as usual


@pytest.mark.parametrize("shape", KEPT)
async def test_junk_within_the_bounds_is_parsed_and_none_of_it_kept(
        shape: str, metadata: MetadataServer, harness: Harness) -> None:
    """Before, each entry was kept whole for the next poll's rates, the latest two of them: twice the
    junk (2 x 4 MiB of string, 2 x 7 MiB of `{}`) held for good."""
    bodies = [padded(KEPT[shape], seconds) for seconds in range(4)]
    await _warm(harness, metadata)
    held, peak = await held_over_polls(harness, metadata, bodies)
    assert harness.hub.metrics.total("tasklens.ecs.poll_errors") == 0
    assert held < 256 * 1024, held
    # one answer parsed at a time: the body, its structure and what it parses to (about 10 MiB at most)
    assert peak < 4 * MAX_BODY + 12 * MIB, peak


async def test_junk_changes_no_number(metadata: MetadataServer) -> None:
    """Two polls 10 s apart (rates over our own polls) of the capture, with and without junk beside the
    real fields: every series the same."""
    scrapes = []
    for junk in (None, KEPT["huge string"], KEPT["empty objects within the bound"]):
        h = Harness(metadata.url)
        for seconds in (0, 10):
            stats = json.loads(padded(junk, seconds))
            stats[DD_AGENT]["cpu_stats"]["cpu_usage"]["total_usage"] += seconds * 10**8
            metadata.serve(raw("fargate-2023.task"), json.dumps(stats).encode())
            assert await h.source.poll_once()
        scrapes.append(h.scrape())
        await h.source.aclose()
    assert scrapes[0]["ecs_container_cpu_usage_vcpus", "dd-agent"] == pytest.approx(0.1)  # over our polls
    assert scrapes[1] == scrapes[0]
    assert scrapes[2] == scrapes[0]


# --- the pieces, on every capture ----------------------------------------------------------------


def _values(doc: Any) -> int:
    if isinstance(doc, dict):
        return 1 + sum(_values(v) for v in doc.values())
    if isinstance(doc, list):
        return 1 + sum(_values(v) for v in doc)
    return 1


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.name)
def test_values_are_counted_exactly_without_parsing(path: Any) -> None:
    body = path.read_bytes()
    assert json_values(json_structure(body)) == _values(json.loads(body))


@pytest.mark.parametrize("doc", ['[""]', '{"a": [1, [], {}, "x,[{\\""]}', '"\\\\"', '[ [ ] , { } ]', "1",
                                 '{"k": {"k": {"k": null}}, "l": [true, false]}'])
def test_values_are_counted_exactly_where_strings_hold_brackets(doc: str) -> None:
    assert json_values(json_structure(doc.encode())) == _values(json.loads(doc))


def _later(stats: dict[str, Any], seconds: int) -> dict[str, Any]:
    out = copy.deepcopy(stats)
    for entry in out.values():
        if not entry:
            continue
        entry["read"] = format_time_ns(parse_time_ns(entry["read"]) + seconds * 10**9)
        usage = entry.get("cpu_stats", {}).get("cpu_usage", {})
        usage["total_usage"] = usage.get("total_usage", 0) + seconds * 10**8
        for counters in (entry.get("networks") or entry.get("network") or {}).values():
            counters["rx_bytes"] = counters.get("rx_bytes", 0) + 1000 * seconds
    return out


PAIRS = [("fargate-2023.task", "fargate-2023.stats"), ("fargate-2021.task", "fargate-2021.stats"),
         ("ec2-bridge-2020.task", "ec2-bridge-2020.stats"),
         ("fargate-v2-2017.task", "fargate-v2-2017-wrong-system-delta.stats"),
         ("ec2-awsvpc-2023-cgroupv2.task", "ec2-awsvpc-2023-cgroupv2.stats"),
         (None, "managed-instances-2025-cgroupv2.stats"), (None, "managed-instances-2025-no-networks.stats")]


@pytest.mark.parametrize(("task_name", "stats_name"), PAIRS)
def test_rates_from_the_basis_are_the_rates_from_the_whole_entry(task_name: str | None, stats_name: str) -> None:
    task = load(task_name) if task_name else managed_instances_task()
    before = load(stats_name)
    now = _later(before, 10)
    basis = {k: b for k, v in before.items() if (b := rate_basis(v)) is not None}
    whole = derive(task, now, before)
    kept = derive(task, now, basis)
    assert sorted(map(repr, kept.samples)) == sorted(map(repr, whole.samples))
    assert kept.errors == whole.errors
    assert any(s.name.endswith("cpu.usage_vcpus") for s in whole.samples)  # a rate over the two polls
    assert all(len(json.dumps(b)) < 2048 for b in basis.values())


def test_what_is_kept_of_an_entry_stays_small_whatever_its_interfaces() -> None:
    entry = load("fargate-2023.stats")[DD_AGENT]
    counters = entry["networks"]["eth1"]
    entry["networks"] = {f"eth{i}": dict(counters) for i in range(10_000)}  # 90,000 values: within the bounds
    assert "networks" not in (rate_basis(entry) or {})  # junk: none read, now or from the poll before
    entry["networks"] = {"x" * 1_000_000: counters}
    assert len(json.dumps(rate_basis(entry))) < 2048
    entry["read"] = "2023-06-20T01:19:45." + "0" * 1_000_000 + "Z"
    assert rate_basis(entry) is None  # no `read` to tell samples apart: not kept
