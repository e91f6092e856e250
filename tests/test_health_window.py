"""The leak forecast's window holds at least 3 ECS polls, whatever TASKLENS_MEMORY_TREND_WINDOW says:
a window shorter than that never held enough points, and a steady leak was never reported."""

from __future__ import annotations

import copy
import json
import subprocess

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Config
from agent.health import HealthMonitor
from agent.sources.ecs_stats import parse_time_ns
from agent.sources.localstats import format_time_ns
from tests.health_support import MIB, container_values, poll
from tests.support import TASKLENS, clean_env

CAPTURE = poll("fargate-2023", "fargate-2023", t=0)
DD_AGENT = next(c["DockerId"] for c in CAPTURE[0]["Containers"] if c["Name"] == "dd-agent")


@settings(max_examples=150, deadline=None)
@given(interval=st.floats(0.5, 3600), ratio=st.floats(0.02, 12),
       jitter=st.lists(st.floats(0.9, 1.1), min_size=40, max_size=40))
def test_a_steady_leak_is_reported_whatever_the_window_and_the_poll_interval(
        interval: float, ratio: float, jitter: list[float]) -> None:
    window = min(max(interval * ratio, 60.0), 86400.0)  # the setting's range
    m = HealthMonitor.from_config(Config(poll_interval=interval, memory_trend_window=window))
    assert m.memory_window >= 3 * interval
    polls = int(m.memory_window / (0.9 * interval)) + 3  # enough to fill the window used
    grow = 0.2 * 3072 * MIB / m.memory_window  # bytes a second: 20 % of the limit over the window
    t, got = 0.0, {}
    for i in range(polls):
        task, stats = copy.deepcopy(CAPTURE)
        entry = stats[DD_AGENT]
        entry["read"] = format_time_ns(parse_time_ns(entry["read"]) + int(t * 1e9))  # type: ignore[operator]
        entry["memory_stats"]["usage"] += int(grow * t)
        got = container_values(m.observe(task, stats, [], t))
        t += interval * jitter[i % len(jitter)]  # polls are late or early by up to 10 %
    assert got["dd-agent"].get("ecs.container.memory.leak_suspected") == 1, (interval, window, m.memory_window)


def test_check_shows_the_memory_window_used() -> None:
    run = subprocess.run([TASKLENS, "check"], capture_output=True, text=True, timeout=30,
                         env=clean_env(TASKLENS_POLL_INTERVAL="1200", TASKLENS_MEMORY_TREND_WINDOW="1800",
                                       TASKLENS_CPU_SATURATION_WINDOW="30"))
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["health"] == {"memory_trend_window_seconds": 3600.0, "cpu_saturation_window_seconds": 30.0}
    assert doc["configuration"]["TASKLENS_MEMORY_TREND_WINDOW"] == 1800.0  # the setting as given
