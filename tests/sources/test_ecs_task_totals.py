"""The task-level series over changing containers: the network counters never go down (a container
that stops, an older copy of a shared interface), and the task's CPU and memory are the sum over
every running container or a gap, never a partial sum."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.sources.ecs_helpers import load

from agent.sources.ecs_stats import NetworkTotals, derive

RX = "ecs.task.network.receive_bytes_total"


def task_values(samples: list[Any]) -> dict[str, float]:
    return {s.name: float(s.value) for s in samples if s.name.startswith("ecs.task.")}


def with_counters(stats: dict[str, Any], counters: dict[str, float | None]) -> dict[str, Any]:
    """The capture's stats, each container's interfaces replaced by one `eth0` at its counter (None:
    no stats this poll)."""
    out = {}
    for docker_id, entry in stats.items():
        value = counters.get(docker_id)
        if value is None or not entry:
            continue
        entry = copy.deepcopy(entry)
        entry["networks"] = {"eth0": {"rx_bytes": value, "tx_bytes": value}}
        out[docker_id] = entry
    return out


# a poll: per container of the bridge capture, None (no stats this poll), ("run", growth) or
# ("restart", value: its counters start again); and which containers the task still lists (one at least)
POLL = st.tuples(st.lists(st.one_of(st.none(), st.tuples(st.just("run"), st.integers(0, 10**6)),
                                    st.tuples(st.just("restart"), st.integers(0, 10**6))), min_size=3, max_size=3),
                 st.lists(st.booleans(), min_size=3, max_size=3).filter(any))


@settings(max_examples=300, deadline=None)
@given(st.lists(POLL, min_size=1, max_size=12))
def test_bridge_network_counters_never_go_down_and_count_every_containers_growth(polls) -> None:
    """Bridge mode: each container has its own interfaces. A container that leaves the task, or has no
    stats in a poll, or restarts (its counters from 0 again), never takes the task's counter down;
    the counter grows by what every container's grew (all of a restarted one's new count)."""
    task, stats = load("ec2-bridge-2020.task"), load("ec2-bridge-2020.stats")
    ids = [c["DockerId"] for c in task["Containers"]]
    network, counters, last, expected = NetworkTotals(), {i: 0.0 for i in ids}, None, 0.0
    seen: dict[str, float] = {}
    for changes, listed in polls:
        now: dict[str, float | None] = {}
        for docker_id, change in zip(ids, changes):
            if change is None:
                now[docker_id] = None
                continue
            kind, amount = change
            counters[docker_id] = counters[docker_id] + amount if kind == "run" else float(amount)
            now[docker_id] = counters[docker_id]
        current = dict(task, Containers=[c for c, keep in zip(task["Containers"], listed) if keep])
        present = {c["DockerId"] for c in current["Containers"]}
        read = with_counters(stats, now)  # (the stopped container of the capture has no stats at all)
        for docker_id in read.keys() & present:  # the model: each container's growth since seen last
            value, before = now[docker_id], seen.get(docker_id)
            assert value is not None
            expected += value if before is None or value < before else value - before
            seen[docker_id] = value
        seen = {k: v for k, v in seen.items() if k in present}
        rx = task_values(derive(current, read, network=network).samples).get(RX)
        if rx is not None:
            assert last is None or rx >= last
            assert rx == expected
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
