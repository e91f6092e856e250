"""Health signals (agent/health.py) on synthetic series and on the ECS captures.

Series "derived" from a capture are the capture's JSON with a few fields changed by the helpers in
tests/health_support.py (each says which fields); every expected value is worked out in a comment.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.health import (
    EXIT_LOOKBACK,
    NEAR_LIMIT,
    HealthMonitor,
    Observation,
    Reading,
    Saturation,
    memory_forecast,
    oom_killed,
    reached_limit,
    restarts_between,
    saturation_step,
)
from tests.health_support import (
    CAPTURES,
    MIB,
    container_values,
    leaking_polls,
    monitor,
    poll,
    series,
    stopped,
    with_memory,
    with_restart,
)
from agent.sources.ecs_stats import memory_limit_bytes, parse_time_ns
from tests.sources.ecs_helpers import load

WINDOW = 1800.0
GIB = 1024 * MIB


# --- the memory forecast ------------------------------------------------------------------------


def test_a_clean_leak_gives_the_exact_time_to_limit():
    # 500 MiB growing 1 MiB/min, polled every 10 s for 30 min: at the end 530 MiB of 1 GiB
    points = series(lambda t: 500 * MIB + MIB / 60 * t, seconds=WINDOW, step=10)
    got = memory_forecast(points, limit=GIB, window=WINDOW)
    assert got is not None and got.leak_suspected
    assert got.growth_bytes_per_hour == pytest.approx(60 * MIB)
    assert got.time_to_limit_seconds == pytest.approx((1024 - 530) * 60.0)  # 494 MiB at 1 MiB/min


def test_a_flat_worker_never_shows_a_countdown():
    got = memory_forecast(series(lambda t: 300 * MIB, seconds=WINDOW, step=10), limit=GIB, window=WINDOW)
    assert got is not None
    assert (got.leak_suspected, got.growth_bytes_per_hour, got.time_to_limit_seconds) == (False, None, None)


def test_not_enough_history_gives_no_forecast():
    # 10 minutes of a 30-minute window: less than half covered
    assert memory_forecast(series(lambda t: t, seconds=600, step=10), limit=GIB, window=WINDOW) is None


def test_above_the_limit_already_is_zero_seconds():
    points = series(lambda t: GIB + 10_000 * t, seconds=WINDOW, step=10)  # 18 MB over the window
    got = memory_forecast(points, limit=GIB, window=WINDOW)
    assert got is not None and got.time_to_limit_seconds == 0.0


def test_growth_too_small_to_matter_is_not_a_leak():
    # perfectly steady growth (significant) but 0.5 % of the limit over the window: below MIN_GROWTH
    points = series(lambda t: 300 * MIB + 0.005 * GIB * t / WINDOW, seconds=WINDOW, step=10)
    got = memory_forecast(points, limit=GIB, window=WINDOW)
    assert got is not None and not got.leak_suspected


def test_without_a_limit_a_leak_has_a_rate_but_no_countdown():
    points = series(lambda t: 500 * MIB + MIB / 60 * t, seconds=WINDOW, step=10)
    got = memory_forecast(points, limit=None, window=WINDOW)
    assert got is not None and got.leak_suspected and got.time_to_limit_seconds is None
    assert got.growth_bytes_per_hour == pytest.approx(60 * MIB)


@settings(max_examples=150, deadline=None)
@given(level=st.floats(10 * MIB, 900 * MIB), noise=st.floats(0, 0.05), seed=st.integers(0, 2**32 - 1),
       step=st.sampled_from([1.0, 10.0, 20.0]))
def test_flat_noisy_series_are_never_leaks(level, noise, seed, step):
    # Gaussian noise up to 5 % of the level (a busy allocator): no slope anybody should be paged for
    rng = random.Random(seed)
    points = series(lambda t: max(0.0, level * (1 + rng.gauss(0, noise))), seconds=WINDOW, step=step)
    got = memory_forecast(points, limit=GIB, window=WINDOW)
    assert got is not None and not got.leak_suspected and got.time_to_limit_seconds is None


@settings(max_examples=150, deadline=None)
@given(level=st.floats(50 * MIB, 700 * MIB), amplitude=st.floats(0.01, 0.2), period=st.floats(20, 300),
       phase=st.floats(0, 1), step=st.sampled_from([5.0, 10.0]))
def test_a_garbage_collectors_sawtooth_is_not_a_leak(level, amplitude, period, phase, step):
    # allocate up to +amplitude, collect back to the level, every `period` seconds (at most 1/6 of
    # the window: the window is chosen to span several cycles of a collector)
    def saw(t: float) -> float:
        return level * (1 + amplitude * (((t / period) + phase) % 1.0))

    got = memory_forecast(series(saw, seconds=WINDOW, step=step), limit=GIB, window=WINDOW)
    assert got is not None and not got.leak_suspected


@settings(max_examples=150, deadline=None)
@given(level=st.floats(10 * MIB, 400 * MIB), mib_per_hour=st.floats(100, 2000), noise=st.floats(0, 0.02),
       seed=st.integers(0, 2**32 - 1))
def test_a_leak_through_noise_is_found_and_its_countdown_is_close(level, mib_per_hour, noise, seed):
    # from 100 MiB/h: at least MIN_GROWTH (1 %) of the 4 GiB limit over the 30-minute window is 82 MiB/h
    rng = random.Random(seed)
    rate = mib_per_hour * MIB / 3600

    def leak(t: float) -> float:
        return level + rate * t + level * rng.gauss(0, noise)

    got = memory_forecast(series(leak, seconds=WINDOW, step=10), limit=4 * GIB, window=WINDOW)
    assert got is not None and got.leak_suspected
    truth = (4 * GIB - (level + rate * WINDOW)) / rate
    # 2 % noise on the level over 181 points moves the fitted rate by a few percent at most
    assert got.time_to_limit_seconds == pytest.approx(truth, rel=0.15, abs=120)
    assert got.growth_bytes_per_hour == pytest.approx(mib_per_hour * MIB, rel=0.15)


# --- restarts and OOM kills: the pure rules ---------------------------------------------------------


def obs(**kw) -> Observation:
    kw.setdefault("t", 0.0)
    kw.setdefault("running", True)
    return Observation(**kw)


def test_restarts_from_restart_count_else_from_started_at():
    assert restarts_between(obs(restart_count=1), obs(restart_count=3)) == 2
    assert restarts_between(obs(restart_count=3), obs(restart_count=3, started_ns=5)) == 0
    assert restarts_between(obs(started_ns=10), obs(started_ns=20)) == 1
    assert restarts_between(obs(started_ns=20), obs(started_ns=20)) == 0
    assert restarts_between(obs(), obs(started_ns=20)) == 0  # nothing to compare: no restart seen


def test_oom_needs_exit_137_or_unknown_and_memory_at_the_limit():
    high = [Reading(obs(working_set=NEAR_LIMIT * GIB, limit=GIB))]
    low = [Reading(obs(working_set=0.5 * GIB, limit=GIB))]
    assert oom_killed(137, high, at=10.0)
    assert oom_killed(None, high, at=10.0)  # a restart whose exit code ECS does not show
    assert not oom_killed(137, low, at=10.0)  # a SIGKILL after the stop timeout, say
    assert oom_killed(137, [Reading(low[0].obs, failcnt_rose=True)], at=10.0)  # failcnt rose just before
    assert not oom_killed(1, [Reading(high[0].obs, failcnt_rose=True)], at=10.0)  # it exited by itself
    assert not oom_killed(137, [Reading(obs(working_set=GIB))], at=10.0)  # no limit known: cannot tell
    assert not oom_killed(137, [], at=10.0)  # never seen running with memory: nothing to judge on


def test_a_reading_after_the_kill_does_not_hide_the_limit_before_it():
    # the kernel frees a killed process's memory at once; ECS shows the stop a moment later, so the
    # last reading can be a running container at 0.05 % of its limit
    at_limit, freed = obs(t=1.0, working_set=0.95 * GIB, limit=GIB), obs(t=2.0, working_set=0.5 * MIB, limit=GIB)
    assert oom_killed(137, [Reading(at_limit), Reading(freed)], at=3.0)
    growing = Reading(obs(t=1.0, working_set=0.7 * GIB, limit=GIB), growth_per_second=200 * MIB)
    assert oom_killed(137, [growing, Reading(freed)], at=3.0)  # 0.7 GiB + 400 MiB by the exit
    # only the last EXIT_LOOKBACK readings count: memory at the limit long before is not this exit's cause
    assert not oom_killed(137, [Reading(at_limit)] + [Reading(freed)] * EXIT_LOOKBACK, at=3.0)


# --- every capture, one poll -------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CAPTURES))
def test_every_capture_on_first_sight(case):
    task, stats, expected = CAPTURES[case]
    got = container_values(monitor().observe(task, stats, [], 1e9))
    assert got == expected


# --- series derived from the captures --------------------------------------------------------------


def test_fargate_2023_leaking_dd_agent_counts_down_to_the_task_limit():
    # dd-agent's working set in the capture is 156,966,912 B; it grows 2 MiB per 10 s poll for 30 min.
    # Its limit is the task's 3072 MiB (the stats' `limit` is a truncated 922337, below the usage).
    m = monitor()
    for task, stats in leaking_polls(polls=181, step=10, grow=2 * MIB):
        got = container_values(m.observe(task, stats, [], 0))
    dd = got["dd-agent"]
    last = 156_966_912 + 180 * 2 * MIB
    assert dd["ecs.container.memory.leak_suspected"] == 1
    assert dd["ecs.container.memory.growth_bytes_per_hour"] == pytest.approx(2 * MIB * 360)
    assert dd["ecs.container.memory.time_to_limit_seconds"] == pytest.approx((3072 * MIB - last) / (2 * MIB / 10))
    assert dd["ecs.container.memory.peak_working_set_bytes"] == last
    # apmtest-ping stays flat: a trend, no leak, no countdown
    ping = got["apmtest-ping"]
    assert ping["ecs.container.memory.leak_suspected"] == 0
    assert "ecs.container.memory.time_to_limit_seconds" not in ping
    assert "ecs.container.memory.growth_bytes_per_hour" not in ping


def v2017(t: float) -> tuple[dict[str, Any], dict[str, Any]]:
    return poll("fargate-v2-2017", "fargate-v2-2017-wrong-system-delta", t=t)


def oom_kills_after_exit_137(m: HealthMonitor, name: str, *, t: float) -> float:
    """The poll at `t` shows `name` STOPPED with exit code 137: its OOM kill count after it."""
    task, stats = v2017(t)
    stopped(task, stats, name, exit_code=137)
    return container_values(m.observe(task, stats, [], t))[name]["ecs.container.oom_kills_total"]


def test_oom_kill_from_exit_137_after_memory_at_the_limit():
    # fargate-v2-2017 redis (limit 256 MiB) at 95 % of its limit, then STOPPED with exit code 137
    m = monitor()
    task, stats = v2017(0)
    with_memory(stats, task, "redis", working_set=0.95 * 256 * MIB)
    m.observe(task, stats, [], 0)
    task2, stats2 = v2017(10)
    stopped(task2, stats2, "redis", exit_code=137)
    got = container_values(m.observe(task2, stats2, [], 10))
    assert got["redis"]["ecs.container.oom_kills_total"] == 1
    assert got["redis"]["ecs.container.restarts_total"] == 0
    assert got["redis"]["ecs.container.memory.peak_working_set_bytes"] == pytest.approx(0.95 * 256 * MIB)
    # the next poll shows the same stopped container: the exit is not counted twice
    got = container_values(m.observe(task2, stats2, [], 20))
    assert got["redis"]["ecs.container.oom_kills_total"] == 1


def as_cgroup_v2(memory: dict[str, Any]) -> None:
    """cgroup v1 memory stats in cgroup v2's shape, the same working set: no `max_usage`, v2's keys."""
    v1 = memory.pop("stats")
    memory.pop("max_usage", None)
    memory["stats"] = {"anon": v1.get("rss", 0), "file": v1.get("cache", 0),
                       "inactive_file": v1.get("total_inactive_file", 0)}


@pytest.mark.parametrize("cgroup, kills", [("v1", 0), ("v2", 1)])
def test_failcnt_risen_before_exit_137_is_an_oom_kill_on_cgroup_v2_only(cgroup, kills):
    # fargate-v2-2017 dd-agent: working set 231,104,512 B = 86 % of 256 MiB (below NEAR_LIMIT), failcnt
    # 8977, then 9001, then exit 137. On cgroup v1 (the capture) failcnt counts every time the usage
    # touched the limit, page cache reclaimed there included: no sign of a kill. On v2 it is
    # memory.events `oom`: an allocation failed at the limit.
    m = monitor()
    for t, failcnt in ((0, None), (10, 9001)):
        task, stats = v2017(t)
        memory = stats[next(k for k in stats if k.startswith("e8d4"))]["memory_stats"]
        if failcnt:
            memory["failcnt"] = failcnt
        if cgroup == "v2":
            as_cgroup_v2(memory)
        m.observe(task, stats, [], t)
    assert oom_kills_after_exit_137(m, "dd-agent", t=20) == kills


@settings(max_examples=60, deadline=None)
@given(st.floats(0.0, 0.89), st.lists(st.integers(0, 10_000), min_size=1, max_size=5),
       st.sampled_from(["total_inactive_file", "cache"]))
def test_failcnt_on_cgroup_v1_never_makes_an_oom_kill(share, rises, reclaimable):
    """A worker whose page cache fills its cgroup v1 limit (failcnt rising at the polls), its working set
    steady below NEAR_LIMIT, stopped by a SIGKILL after its stop timeout: exit 137, no OOM kill."""
    m, failcnt = monitor(), 0
    for i, rise in enumerate(rises):
        task, stats = v2017(10 * i)
        memory = stats[next(k for k in stats if k.startswith("e8d4"))]["memory_stats"]
        limit = memory_limit_bytes(memory, None, None)
        inactive = limit - int(share * limit)  # the usage at the limit: page cache fills the rest
        memory["stats"].pop("total_inactive_file", None)
        memory["stats"][reclaimable] = inactive
        memory["usage"] = limit
        failcnt += rise
        memory["failcnt"] = failcnt
        m.observe(task, stats, [], 10 * i)
    assert oom_kills_after_exit_137(m, "dd-agent", t=10 * len(rises)) == 0


def test_oom_kill_seen_after_a_reading_of_the_freed_memory():
    # redis at 95 % of its 256 MiB; the next poll still shows it RUNNING, its memory freed (the kernel
    # killed it between the two); the one after shows exit 137: one OOM kill, the last reading low
    m = monitor()
    for t, working_set in ((0, 0.95 * 256 * MIB), (10, 0.5 * MIB)):
        task, stats = v2017(t)
        with_memory(stats, task, "redis", working_set=working_set)
        m.observe(task, stats, [], t)
    assert oom_kills_after_exit_137(m, "redis", t=20) == 1


def test_an_exit_is_judged_on_its_own_process_not_the_one_before():
    # redis at 95 %, OOM-killed and restarted (StartedAt moved); the new process runs at 10 % and is then
    # SIGKILLed (exit 137): the first process's memory does not make the second exit an OOM kill
    m = monitor()
    task, stats = v2017(0)
    with_memory(stats, task, "redis", working_set=0.95 * 256 * MIB)
    m.observe(task, stats, [], 0)
    for t in (10, 20):
        task, stats = v2017(t)
        next(c for c in task["Containers"] if c["Name"] == "redis")["StartedAt"] = "2030-01-01T00:00:00Z"
        with_memory(stats, task, "redis", working_set=0.1 * 256 * MIB)
        got = container_values(m.observe(task, stats, [], t))["redis"]
    assert (got["ecs.container.restarts_total"], got["ecs.container.oom_kills_total"]) == (1, 1)
    assert oom_kills_after_exit_137(m, "redis", t=30) == 1


def test_exit_137_without_memory_pressure_is_not_an_oom_kill():
    # the same capture, failcnt unchanged: a SIGKILL after the stop timeout looks exactly like this
    m = monitor()
    for t in (0, 10):
        m.observe(*v2017(t), [], t)
    assert oom_kills_after_exit_137(m, "dd-agent", t=20) == 0


def test_restart_policy_restarts_and_an_oom_restart_between_polls():
    # fargate-2021 `essential` with a restart policy: RestartCount 0 -> 2 (two restarts between polls
    # 130 s apart: a restart policy restarts at most once a minute; memory at the limit before them: one
    # OOM kill judged, as the exits themselves were not seen)
    m = monitor()
    task, stats = poll("fargate-2021", "fargate-2021", t=0)
    with_restart(task, "essential", restart_count=0)
    with_memory(stats, task, "essential", working_set=510 * MIB)  # of the task's 512 MiB
    assert container_values(m.observe(task, stats, [], 0))["essential"]["ecs.container.restarts_total"] == 0
    task, stats = poll("fargate-2021", "fargate-2021", t=130)
    with_restart(task, "essential", restart_count=2)
    got = container_values(m.observe(task, stats, [], 130))["essential"]
    assert got["ecs.container.restarts_total"] == 2
    assert got["ecs.container.oom_kills_total"] == 1


def test_a_restart_without_restart_count_is_seen_from_started_at_and_resets_the_trend():
    m = monitor(memory_window=100)
    for task, stats in leaking_polls(polls=11, step=10, grow=50 * MIB):
        got = container_values(m.observe(task, stats, [], 0))
    assert got["dd-agent"]["ecs.container.memory.leak_suspected"] == 1
    task, stats = poll("fargate-2023", "fargate-2023", t=120)
    task["Containers"][0]["StartedAt"] = "2023-06-20T01:21:00Z"  # it started again
    got = container_values(m.observe(task, stats, [], 0))["dd-agent"]
    assert got["ecs.container.restarts_total"] == 1
    assert "ecs.container.memory.leak_suspected" not in got  # a new process: no history yet
    assert got["ecs.container.memory.peak_working_set_bytes"] == 156_966_912 + 10 * 50 * MIB  # kept
    # SIGKILLed 680 s later, low in memory: the leak (5 MiB/s would reach 90 % of the 3 GiB limit by
    # then) was the process before's; nothing is projected from it
    task, stats = poll("fargate-2023", "fargate-2023", t=800)
    read = next(e["read"] for e in stats.values() if e.get("read"))
    stopped(task, stats, "dd-agent", exit_code=137)
    got = container_values(m.observe(task, stats, [], parse_time_ns(read) / 1e9))["dd-agent"]
    assert got["ecs.container.oom_kills_total"] == 0


def test_a_stale_read_is_not_a_second_point():
    # Fargate refreshes stats every 10 s; polling faster returns the same `read`: one point, not two
    m = monitor(memory_window=100)
    for t in range(0, 110, 10):
        task, stats = poll("fargate-2023", "fargate-2023", t=t)
        for _ in range(3):
            m.observe(task, stats, [], t)
    assert len(m._containers["dd-agent"].memory.points) == 11


# --- CPU saturation -----------------------------------------------------------------------------------


def run_saturation(readings, threshold=90.0, window=60.0):
    state = Saturation()
    out = []
    for t, u in readings:
        state = saturation_step(state, t, u, threshold=threshold, window=window)
        out.append((state.saturated, state.seconds))
    return out


def test_saturated_only_after_the_window_and_seconds_integrate_it():
    # 10 s polls, 95 % from t=10 on: the run starts at t=0 (the reading at 10 covers 0..10), so it
    # lasts 60 s at t=60, and every later poll adds 10 s
    readings = [(0, 50.0)] + [(t, 95.0) for t in range(10, 110, 10)]
    got = run_saturation(readings)
    assert [s for s, _ in got] == [False] * 6 + [True] * 5
    assert [sec for _, sec in got][-1] == 40.0  # saturated from t=60 to t=100
    # dropping below ends it; the counter keeps its value
    state = Saturation()
    for t, u in readings + [(110, 20.0)]:
        state = saturation_step(state, t, u, threshold=90, window=60)
    assert (state.saturated, state.seconds) == (False, 40.0)


def test_a_missing_reading_is_not_saturation():
    readings = [(t, 99.0) for t in range(0, 50, 10)] + [(50, None)] + [(t, 99.0) for t in range(60, 100, 10)]
    assert not any(s for s, _ in run_saturation(readings))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.5, 30), st.one_of(st.none(), st.floats(0, 150))), max_size=60),
       st.floats(1, 100), st.floats(1, 600))
def test_saturated_seconds_never_exceed_the_time_and_only_grow(steps, threshold, window):
    t, previous, state = 0.0, 0.0, Saturation()
    for dt, u in steps:
        t += dt
        state = saturation_step(state, t, u, threshold=threshold, window=window)
        assert previous <= state.seconds <= max(0.0, t - window) + 1e-9
        assert not state.saturated or (u is not None and u >= threshold)
        previous = state.seconds


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.floats(0.5, 30), st.floats(-86400, 86400)), st.one_of(st.none(), st.floats(0, 150))),
                max_size=60), st.floats(1, 100), st.floats(1, 600))
def test_a_clock_that_jumps_either_way_never_adds_what_did_not_pass(steps, threshold, window):
    """Readings whose times go back or leap ahead (a stepped clock, a reading stamped a day off): the
    saturated seconds only grow, and by no more than the steps a run may span (0 to MAX_STEP)."""
    from agent.health import MAX_STEP

    t, previous, spanned, state = 0.0, 0.0, 0.0, Saturation()
    for dt, u in steps:
        if 0.0 < dt <= MAX_STEP:
            spanned += dt
        t += dt
        before, state = state, saturation_step(state, t, u, threshold=threshold, window=window)
        assert previous <= state.seconds <= spanned + 1e-9
        if before.last_t == t:  # the same time again: the same sample, nothing changes
            assert state == before
        else:
            assert not state.saturated or (u is not None and u >= threshold)
        previous = state.seconds


def test_task_and_container_saturation_from_the_derived_utilization():
    from agent.identity import container_tags
    from agent.model import Sample

    m = monitor(saturation_window=20)
    task, _ = poll("fargate-2023", "fargate-2023", t=0)
    tags = container_tags(task["Containers"][0])
    for t in (0, 10, 20, 30):
        derived = [Sample("ecs.task.cpu.utilization_percent", 97.0),
                   Sample("ecs.container.cpu.utilization_percent", 99.0, tags=tags)]
        out = m.observe(*poll("fargate-2023", "fargate-2023", t=t), derived, 1000.0 + t)
    values = {(s.name, s.tags): s.value for s in out}
    assert values[("ecs.task.cpu.saturated", ())] == 1
    assert values[("ecs.task.cpu.saturated_seconds_total", ())] == 10.0  # saturated from 1020 to 1030
    assert values[("ecs.container.cpu.saturated", tags)] == 1
    assert values[("ecs.container.cpu.saturated_seconds_total", tags)] == 10.0


# --- throttling: never a constant 0 ----------------------------------------------------------------


def test_throttling_counters_appear_only_when_real():
    m = monitor()
    task, stats = poll("fargate-2023", "fargate-2023", t=0)  # the capture: all three fields 0
    names = {s.name for s in m.observe(task, stats, [], 0)}
    assert not any("throttled" in n for n in names)
    task, stats = poll("fargate-2023", "fargate-2023", t=10)
    first = next(iter(stats.values()))
    first["cpu_stats"]["throttling_data"] = {"periods": 100, "throttled_periods": 7, "throttled_time": 2_500_000_000}
    got = container_values(m.observe(task, stats, [], 10))
    assert got["dd-agent"]["ecs.container.cpu.throttled_periods_total"] == 7
    assert got["dd-agent"]["ecs.container.cpu.throttled_seconds_total"] == 2.5
    assert got["apmtest-ping"]["ecs.container.cpu.throttled_periods_total"] == 0  # real now: its 0 is true


# --- bad input ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(task=json_values, stats=json_values)
def test_any_json_never_raises_and_emits_only_finite_numbers(task, stats):
    for s in monitor().observe(task, stats, [], 0):
        assert math.isfinite(s.value)


@settings(max_examples=100, deadline=None)
@given(field=st.sampled_from(["ExitCode", "RestartCount", "StartedAt", "KnownStatus", "Name", "Limits"]),
       value=json_values)
def test_a_broken_field_in_one_container_loses_nothing_of_the_other(field, value):
    m = monitor()
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    task["Containers"][0][field] = value
    got = container_values(m.observe(task, stats, [], 0))
    assert got["apmtest-ping"]["ecs.container.memory.peak_working_set_bytes"] == 34_865_152


def test_monitor_from_config_reads_the_settings():
    from agent.config import Config

    m = HealthMonitor.from_config(Config(memory_trend_window=600, cpu_saturation_threshold=80,
                                         cpu_saturation_window=30))
    assert (m.memory_window, m.saturation_threshold, m.saturation_window) == (600, 80, 30)


# --- settings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variable,value", [
    ("TASKLENS_MEMORY_TREND_WINDOW", "0"), ("TASKLENS_MEMORY_TREND_WINDOW", "59"),
    ("TASKLENS_MEMORY_TREND_WINDOW", "1e9"), ("TASKLENS_MEMORY_TREND_WINDOW", "nan"),
    ("TASKLENS_MEMORY_TREND_WINDOW", "half an hour"), ("TASKLENS_CPU_SATURATION_THRESHOLD", "150"),
    ("TASKLENS_CPU_SATURATION_THRESHOLD", "0"), ("TASKLENS_CPU_SATURATION_WINDOW", "inf"),
    ("TASKLENS_TOP_PROCESSES", "-1"), ("TASKLENS_TOP_PROCESSES", "2.5"), ("TASKLENS_TOP_PROCESSES", "51"),
    ("TASKLENS_STATUS_HISTORY", "10"), ("TASKLENS_STATUS_PAGE", "maybe"),
])
def test_out_of_range_settings_stop_the_start_naming_the_variable(variable, value):
    from agent.config import ConfigError, load

    with pytest.raises(ConfigError) as error:
        load({variable: value})
    assert variable in str(error.value) and repr(value) in str(error.value)


@settings(max_examples=100, deadline=None)
@given(window=st.floats(60, 86400), threshold=st.floats(1, 100), top=st.integers(0, 50))
def test_any_value_in_range_is_taken_as_given(window, threshold, top):
    from agent.config import load

    config = load({"TASKLENS_MEMORY_TREND_WINDOW": repr(window), "TASKLENS_CPU_SATURATION_THRESHOLD": repr(threshold),
                   "TASKLENS_TOP_PROCESSES": str(top), "TASKLENS_STATUS_PAGE": "off"})
    assert (config.memory_trend_window, config.cpu_saturation_threshold, config.top_processes) == (window, threshold, top)
    assert config.status_page is False


def test_a_bug_costs_one_polls_health_series_not_the_poll(monkeypatch):
    import agent.health

    m = monitor()

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(agent.health, "saturation_step", broken)
    assert m.observe(load("fargate-2023.task"), load("fargate-2023.stats"), [], 0) == []
    assert m.metrics.get("tasklens.health.errors") == 1


def test_a_fast_leak_last_seen_below_the_limit_is_projected_to_it():
    # polls 10 s apart: last seen at 70 % of 1 GiB, growing 40 MiB/s under a suspected leak
    last = obs(t=100.0, working_set=0.7 * 1024 * MIB, limit=1024 * MIB)
    assert reached_limit(last, 40 * MIB, at=110.0)  # 700 + 400 MiB: past the limit by the exit poll
    assert not reached_limit(last, 40 * MIB, at=101.0)  # 740 MiB: not yet near it
    assert not reached_limit(last, 0.0, at=110.0)  # no suspected leak: nothing is projected
    assert not reached_limit(obs(t=100.0, working_set=700.0), 40 * MIB, at=110.0)  # no limit known
