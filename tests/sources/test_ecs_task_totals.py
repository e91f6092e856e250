"""The task-level series over changing containers: the network counters never go down (a container
that stops, an older copy of a shared interface), and the task's CPU and memory are the sum over
every running container or a gap, never a partial sum."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.sources.ecs_helpers import MetadataServer, load
from tests.sources.test_ecs_source import Harness

from agent.sources.ecs_stats import NetworkTotals, derive, parse_time_ns
from agent.sources.localstats import format_time_ns

RX = "ecs.task.network.receive_bytes_total"


def task_values(samples: list[Any]) -> dict[str, float]:
    return {s.name: float(s.value) for s in samples if s.name.startswith("ecs.task.")}


def with_counters(stats: dict[str, Any], counters: dict[str, float | None],
                  reads: dict[str, int] | None = None) -> dict[str, Any]:
    """The capture's stats, each container's interfaces replaced by one `eth0` at its counter (None:
    no stats this poll), read at `reads[DockerId]` (Unix ns) when given."""
    out = {}
    for docker_id, entry in stats.items():
        value = counters.get(docker_id)
        if value is None or not entry:
            continue
        entry = copy.deepcopy(entry)
        entry["networks"] = {"eth0": {"rx_bytes": value, "tx_bytes": value}}
        if reads is not None:
            entry["read"] = format_time_ns(reads[docker_id])
        out[docker_id] = entry
    return out


# a poll: per container of the bridge capture, None (no stats this poll), ("run", growth): a new sample,
# ("restart", value): a new sample after its counters started again, or ("old", n): the sample served
# n samples ago (0: the same sample again); and which containers the task still lists (one at least)
CHANGE = st.one_of(st.none(), st.tuples(st.just("run"), st.integers(0, 10**6)),
                   st.tuples(st.just("restart"), st.integers(0, 10**6)), st.tuples(st.just("old"), st.integers(0, 3)))
POLL = st.tuples(st.lists(CHANGE, min_size=3, max_size=3), st.lists(st.booleans(), min_size=3, max_size=3).filter(any))


@settings(max_examples=300, deadline=None)
@given(st.lists(POLL, min_size=1, max_size=12))
def test_bridge_network_counters_never_go_down_and_never_grow_past_the_real_growth(polls) -> None:
    """Bridge mode: each container has its own interfaces. Whatever the polls see (a sample served
    again or an older one, a container without stats or gone from the task and back with the same
    DockerId, a restart with its counters from 0 again), the task's counter never goes down and never
    grows by more than the containers' counters really grew: it is at least the sum of the newest
    counters seen, at most all they grew since they started (and exactly that without restarts)."""
    task, stats = load("ec2-bridge-2020.task"), load("ec2-bridge-2020.stats")
    ids = [c["DockerId"] for c in task["Containers"]]
    # each container's samples so far: (read, counter, real growth up to it since its first sample)
    samples: dict[str, list[tuple[int, float, float]]] = {i: [] for i in ids}
    newest: dict[str, tuple[int, float, float]] = {}  # the newest sample the task was given, per container
    network, last, clock = NetworkTotals(), None, 1_600_000_000 * 10**9
    for changes, listed in polls:
        now: dict[str, float | None] = {}
        reads: dict[str, int] = {}
        for docker_id, change in zip(ids, changes):
            history = samples[docker_id]
            clock += 10**9
            if change is None or (change[0] == "old" and not history):
                now[docker_id] = None
                continue
            kind, amount = change
            if kind == "old":
                sample = history[max(0, len(history) - 1 - amount)]
            else:
                counter, grown = (history[-1][1], history[-1][2]) if history else (0.0, 0.0)
                if kind == "run":
                    counter, grown = counter + amount, grown + amount
                else:
                    counter, grown = float(amount), grown + amount
                sample = (clock, counter, grown)
                history.append(sample)
            reads[docker_id], now[docker_id] = sample[0], sample[1]
        current = dict(task, Containers=[c for c, keep in zip(task["Containers"], listed) if keep])
        read = with_counters(stats, now, reads)  # (the stopped container of the capture has no stats at all)
        for docker_id in read.keys() & {c["DockerId"] for c in current["Containers"]}:
            sample = next(s for s in samples[docker_id] if s[0] == reads[docker_id])
            if docker_id not in newest or sample[0] > newest[docker_id][0]:
                newest[docker_id] = sample
        rx = task_values(derive(current, read, network=network).samples).get(RX)
        if rx is not None:
            assert last is None or rx >= last
            # at least the counters now, at most all they grew (from 0, across restarts)
            assert sum(s[1] for s in newest.values()) <= rx <= sum(s[2] for s in newest.values())
            last = rx


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.lists(st.integers(0, 3), min_size=2, max_size=2)),
                min_size=1, max_size=12))
def test_shared_interface_copies_read_at_other_times_never_take_the_counter_down(polls) -> None:
    """awsvpc: every container's stats repeat the task's interface, read at slightly different times.
    The counter is the newest copy ever seen: an older copy (the container read last stopped) never
    takes it back."""
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    ids = list(stats)
    network, history, newest = NetworkTotals(), [0.0], 0.0
    for growth, lags in polls:
        history.append(history[-1] + growth)
        copies = {docker_id: history[max(0, len(history) - 1 - lag)] for docker_id, lag in zip(ids, lags)}
        rx = task_values(derive(task, with_counters(stats, copies), network=network).samples)[RX]
        newest = max(newest, *copies.values())
        assert rx == newest  # never less: an older copy does not take it back


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["ok", "none", "empty", "no_precpu", "no_memory"]), min_size=2, max_size=2))
def test_task_cpu_and_memory_are_the_whole_sum_or_a_gap(readings) -> None:
    """A running container without a reading this poll (no stats yet, a first sample, a field
    missing): the task's CPU or memory is a gap, never the sum of the others."""
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    whole = task_values(derive(task, stats).samples)
    broken = copy.deepcopy(stats)
    for docker_id, how in zip(list(broken), readings):
        if how == "none":
            del broken[docker_id]
        elif how == "empty":
            broken[docker_id] = {}
        elif how == "no_precpu":
            broken[docker_id]["precpu_stats"] = {}
        elif how == "no_memory":
            broken[docker_id]["memory_stats"] = {"usage": None}
    got = task_values(derive(task, broken).samples)
    for name in ("ecs.task.cpu.usage_vcpus", "ecs.task.cpu.utilization_percent", "ecs.task.memory.working_set_bytes",
                 "ecs.task.memory.utilization_percent"):
        assert got.get(name) in (None, whole[name]), (name, readings)
    if set(readings) == {"ok"}:
        assert got == whole


def _next_sample(stats: dict[str, Any], rx: int) -> dict[str, Any]:
    """Every container's next sample, 10 s later, each interface having received `rx` more bytes."""
    out = copy.deepcopy(stats)
    for entry in out.values():
        entry["read"] = format_time_ns(parse_time_ns(entry["read"]) + 10 * 10**9)
        for counters in entry["networks"].values():
            counters["rx_bytes"] += rx
    return out


async def test_bridge_counters_over_http_an_older_sample_or_a_container_back_adds_nothing_again(
        metadata: MetadataServer) -> None:
    """The bridge capture served on loopback: an older sample served again, then a container missing
    from `/task` for one poll and back, add only what the counters grew."""
    task = load("ec2-bridge-2020.task")
    first = {k: v for k, v in load("ec2-bridge-2020.stats").items() if v}  # 3 interfaces, 4322 bytes
    harness = Harness(metadata.url, timeout=5.0)
    got = []
    second = _next_sample(first, 1_000_000)
    for stats in (first, second, first, second):
        metadata.serve(task, stats)
        assert await harness.source.poll_once()
        got.append(harness.scrape()["ecs_task_network_receive_bytes_total", None])
    assert got == [4322, 3_004_322, 3_004_322, 3_004_322]

    gone = task["Containers"][0]["DockerId"]  # nginx100: one interface; nginx300 has two
    third = _next_sample(second, 1000)
    metadata.serve(dict(task, Containers=task["Containers"][1:]), {k: v for k, v in third.items() if k != gone})
    assert await harness.source.poll_once()
    assert harness.scrape()["ecs_task_network_receive_bytes_total", None] == 3_006_322
    metadata.serve(task, _next_sample(third, 1000))
    assert await harness.source.poll_once()  # nginx100 grew 2000 since it was seen, the others 1000 each
    assert harness.scrape()["ecs_task_network_receive_bytes_total", None] == 3_006_322 + 2000 + 2000
    await harness.source.aclose()
