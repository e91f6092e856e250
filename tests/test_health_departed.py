"""A container gone from `/task` is remembered for a bounded number of polls, and a bounded number of
them at once: one back after a gap continues its counters and peak, and a task whose containers keep
changing names holds no more than MAX_DEPARTED of them (derived fargate-2023 polls, see
tests/health_support.py)."""

from __future__ import annotations

from typing import Any

from agent.health import MAX_DEPARTED, HealthMonitor
from agent.sources.ecs_stats import DEPARTED_POLLS
from tests.health_support import MIB, container_values, monitor, poll, with_memory


def dd_agent(t: float, *, working_set: float, name: str = "dd-agent",
             present: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """fargate-2023 at `t`: dd-agent (named `name`) at that working set, or left out of `/task`."""
    task, stats = poll("fargate-2023", "fargate-2023", t=t)
    with_memory(stats, task, "dd-agent", working_set=working_set)
    if present:
        next(c for c in task["Containers"] if c["Name"] == "dd-agent")["Name"] = name
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
