"""A container gone from `/task` is remembered for a bounded number of polls, and a bounded number of
them at once: one back after a gap continues its counters and peak, and a task whose containers keep
changing names holds no more than MAX_DEPARTED of them (derived fargate-2023 polls, see
tests/health_support.py)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.health import MAX_DEPARTED, HealthMonitor
from agent.sources.ecs_stats import DEPARTED_POLLS, parse_time_ns
from agent.sources.localstats import format_time_ns
from tests.health_support import MIB, container_values, monitor, poll, with_memory


def dd_agent(t: float, *, working_set: float, name: str = "dd-agent", present: bool = True,
             limit_mib: int | None = None, started: float = 0.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """fargate-2023 at `t`: dd-agent (named `name`) at that working set, or left out of `/task`; with a
    memory limit of `limit_mib`, its StartedAt moved `started` seconds (a restart, without RestartCount)."""
    task, stats = poll("fargate-2023", "fargate-2023", t=t)
    with_memory(stats, task, "dd-agent", working_set=working_set)
    container = next(c for c in task["Containers"] if c["Name"] == "dd-agent")
    if limit_mib is not None:
        container["Limits"] = dict(container.get("Limits") or {}, Memory=limit_mib)
    if started:
        container["StartedAt"] = format_time_ns(parse_time_ns(container["StartedAt"]) + int(started * 1e9))
    if present:
        container["Name"] = name
    else:
        task["Containers"] = [c for c in task["Containers"] if c["Name"] != "dd-agent"]
    return task, stats


def peak_after(m: HealthMonitor, t: float, name: str = "dd-agent") -> float:
    task, stats = dd_agent(t, working_set=50 * MIB, name=name)
    return container_values(m.observe(task, stats, [], t))[name]["ecs.container.memory.peak_working_set_bytes"]


def test_a_container_back_within_the_bound_keeps_its_peak_and_after_it_starts_afresh() -> None:
    m = monitor()
    t = 0
    for gone, peak in [(1, 200), (DEPARTED_POLLS, 200), (DEPARTED_POLLS + 1, 50)]:
        m.observe(*dd_agent(t, working_set=200 * MIB if gone == 1 else 10 * MIB), [], t)
        for _ in range(gone):
            t += 10
            m.observe(*dd_agent(t, working_set=0, present=False), [], t)
        t += 10
        assert peak_after(m, t) == peak * MIB, gone
        t += 10


def test_containers_that_keep_changing_names_are_bounded_and_the_newest_departed_kept() -> None:
    m = monitor()
    churn = 200
    for i in range(churn):  # a new name every poll, each at its own working set
        m.observe(*dd_agent(i * 10, working_set=(i + 1) * MIB, name=f"c{i}"), [], i * 10)
    assert len(m._containers) == 2 + MAX_DEPARTED  # apmtest-ping, the last one, and the departed kept
    newest_forgotten = churn - 2 - MAX_DEPARTED  # c0 .. c(churn - 2) departed: the oldest go first
    assert peak_after(m, churn * 10, name=f"c{newest_forgotten + 1}") == (newest_forgotten + 2) * MIB
    assert peak_after(m, churn * 10 + 10, name=f"c{newest_forgotten}") == 50 * MIB


@pytest.mark.parametrize("gap", [1, 100, 300, DEPARTED_POLLS])
def test_a_slow_leak_back_restarted_after_a_gap_is_no_oom_kill(gap: int) -> None:
    # a leak at 56 % of a 256 MiB limit (2.4 MiB a minute), gone from `/task` for `gap` polls, back
    # restarted: its forecast is projected a few polls past the last reading, not across the whole gap
    # (300 polls of it would reach the limit: it was counted an OOM kill)
    m, t, ws = monitor(), 0.0, 60.0
    for _ in range(210):
        m.observe(*dd_agent(t, working_set=ws * MIB, limit_mib=256), [], t)
        t, ws = t + 10, ws + 0.4
    for _ in range(gap):
        m.observe(*dd_agent(t, working_set=0, present=False), [], t)
        t += 10
    back = container_values(m.observe(*dd_agent(t, working_set=30 * MIB, limit_mib=256, started=t), [], t))
    assert back["dd-agent"]["ecs.container.restarts_total"] == 1
    assert back["dd-agent"]["ecs.container.oom_kills_total"] == 0


@pytest.mark.parametrize("start, gap, kills", [(48, 0, 0), (48, 1, 1), (30, 4, 0)])
def test_a_fast_leak_is_projected_to_an_exit_at_most_3_polls_past_the_last_reading(
        start: int, gap: int, kills: int) -> None:
    # 6 MiB a poll (10 s) through a little noise, last seen below 90 % of 256 MiB (230.4), back restarted
    # after `gap` missing answers: from 222 MiB the projection reaches the limit 2 polls later (one
    # missing answer: an OOM kill; none: not yet), from 204 MiB only 5 polls later, beyond the 3 polls
    # (EXIT_PROJECTION_POLLS) a leak is projected past the last reading: no OOM kill
    m, t = monitor(memory_window=300), 0.0
    for i in range(30):
        m.observe(*dd_agent(t, working_set=(start + 6 * i + (0.1 if i % 2 else -0.1)) * MIB, limit_mib=256), [], t)
        t += 10
    for _ in range(gap):
        m.observe(*dd_agent(t, working_set=0, present=False), [], t)
        t += 10
    back = container_values(m.observe(*dd_agent(t, working_set=30 * MIB, limit_mib=256, started=t), [], t))
    assert back["dd-agent"]["ecs.container.restarts_total"] == 1
    assert back["dd-agent"]["ecs.container.oom_kills_total"] == kills
