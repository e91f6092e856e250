"""One stats snapshot whose `read` lies in the future (a host clock stepped back afterwards, or a
garbage timestamp from the agent) does not switch the health signals off for good: before, no later
memory point was added (`obs.t > last_running.t` never held again) and every later CPU reading was
ignored as "the same sample", so the leak series vanished and `cpu_saturated` stayed 1.

README: a metadata endpoint answering garbage "never stops the sidecar: it ... recovers by itself";
docs/health.md: the saturated-seconds counter "never exceeds the elapsed time minus the window".
"""

from __future__ import annotations

from agent.health import Saturation, saturation_step
from agent.sources.ecs_stats import parse_time_ns
from agent.sources.localstats import format_time_ns
from tests.health_support import MIB, container_values, leaking_polls, monitor

DAY = 86400


def test_a_leak_is_still_forecast_after_one_future_dated_read():
    # dd-agent of the fargate-2023 capture leaks 2 MiB per 10 s poll for 400 polls (as
    # test_fargate_2023_leaking_dd_agent_counts_down_to_the_task_limit); poll 200 alone carries a
    # `read` one day ahead, every later poll is back on the real clock
    m = monitor()
    got: dict = {}
    for i, (task, stats) in enumerate(leaking_polls(polls=400, step=10, grow=2 * MIB)):
        if i == 200:
            for entry in stats.values():
                if isinstance(entry, dict) and entry.get("read"):
                    entry["read"] = format_time_ns(parse_time_ns(entry["read"]) + DAY * 10**9)
        got = container_values(m.observe(task, stats, [], 0))
    dd = got["dd-agent"]
    last = 156_966_912 + 399 * 2 * MIB
    assert dd.get("ecs.container.memory.leak_suspected") == 1, dd
    assert dd["ecs.container.memory.peak_working_set_bytes"] == last


def test_saturation_ends_after_one_future_dated_reading():
    # 95 % for 110 s (saturated), one reading stamped a day ahead, then 5 % for 18 minutes
    readings = ([(t, 95.0) for t in range(0, 110, 10)] + [(DAY + 110, 95.0)]
                + [(t, 5.0) for t in range(120, 1200, 10)])
    state = Saturation()
    for t, u in readings:
        state = saturation_step(state, t, u, threshold=90, window=60)
    assert not state.saturated
    assert state.seconds <= 1200 - 60
