"""Garbage in a valid ECS answer is a gap, never a wrong number, over sequences of polls: a `_total`
series never goes down without a restart (and `restarts_total` never at all, nor past `RestartCount`),
no memory reading passes the limits, and a failing `/task/stats` leaves no task network total behind.
Each poll goes through the source's own pipeline (`EcsSource._apply`: derive, the health monitor, the
counting of bad data); the last test goes through real HTTP on loopback."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from tests.sources.ecs_helpers import MetadataServer, load
from tests.sources.test_ecs_source import Harness

from agent.model import Kind, Sample
from agent.sources.ecs_stats import MIB, parse_time_ns
from agent.sources.localstats import format_time_ns

TASK_LIMIT = 3072 * MIB  # fargate-2023's task size; its containers have no limit of their own
DD = "dd-agent"
MEMORY_GAUGES = ("usage_bytes", "working_set_bytes", "peak_working_set_bytes", "rss_bytes", "cache_bytes",
                 "anon_bytes", "file_bytes")


def harness() -> Harness:
    return Harness("http://127.0.0.1:9/v4/x")  # `_apply` only: nothing is fetched


def bad_stats(h: Harness) -> float:
    return h.metric("tasklens.ecs.container_errors", reason="bad_stats")


class Task:
    """fargate-2023 polled every 10 s: every counter grows; `dd-agent` has a restart policy."""

    def __init__(self, restart_count: int) -> None:
        self.task, self.base = load("fargate-2023.task"), load("fargate-2023.stats")
        self.ids = {c["Name"]: c["DockerId"] for c in self.task["Containers"]}
        self.t0 = parse_time_ns(self.base[self.ids[DD]]["read"]) or 0
        self.polls = 0
        self.restart_count = restart_count
        # a container restarted `restart_count` times was started last that many minutes after it was created
        self.started = parse_time_ns(self.task["Containers"][0]["CreatedAt"]) or 0
        self.counters = {docker_id: 0 for docker_id in self.ids.values()}

    def restart(self) -> None:
        self.restart_count += 1
        self.started = self.t0 + self.polls * 10**10
        self.counters[self.ids[DD]] = 0  # a new process in the same container: its cgroup counters from 0

    def answer(self, *, restart_count: float | None = None, usage: float | None = None,
               back: tuple[str, float] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The next poll: with a `RestartCount`, a memory usage of dd-agent, or one of its counters
        (`back`: which, and the share of its value) replaced by garbage for this poll only."""
        self.polls += 1
        task, stats = copy.deepcopy(self.task), copy.deepcopy(self.base)
        dd = next(c for c in task["Containers"] if c["Name"] == DD)
        dd["RestartCount"] = self.restart_count if restart_count is None else restart_count
        dd["StartedAt"] = format_time_ns(self.started)
        for docker_id, entry in stats.items():
            self.counters[docker_id] += 1000
            n = self.counters[docker_id]
            entry["read"] = format_time_ns(self.t0 + self.polls * 10**10)
            entry["preread"] = format_time_ns(self.t0 + self.polls * 10**10 - 10**10)
            values = counters_at(n)
            if back is not None and docker_id == self.ids[DD]:  # below the poll before's (n - 1000)
                values[back[0]] = int(counters_at(n - 1000)[back[0]] * back[1])
            entry["blkio_stats"] = {
                "io_service_bytes_recursive": [{"major": 8, "minor": 0, "op": "Read", "value": values["read"]},
                                               {"major": 8, "minor": 0, "op": "Write", "value": values["write"]}],
                "io_serviced_recursive": [{"major": 8, "minor": 0, "op": "Read", "value": values["read_ops"]},
                                          {"major": 8, "minor": 0, "op": "Write", "value": values["write_ops"]}]}
            entry["cpu_stats"]["throttling_data"] = {"periods": n, "throttled_periods": values["throttled"],
                                                     "throttled_time": values["throttled"] * 1000}
            for name in ("networks",):
                for counters in entry[name].values():
                    counters["rx_bytes"] = counters["tx_bytes"] = 100 * self.polls
        if usage is not None:
            stats[self.ids[DD]]["memory_stats"]["usage"] = usage
        return task, stats


def counters_at(n: int) -> dict[str, int]:
    return {"read": 7 * n, "write": 5 * n, "read_ops": n // 10, "write_ops": n // 20, "throttled": n // 100}


BACK = st.tuples(st.sampled_from(["read", "write", "read_ops", "write_ops", "throttled"]),
                 st.floats(0.0, 0.99))
POLL = st.one_of(
    st.just(("ok", None)), st.just(("restart", None)), st.just(("stats_fail", None)),
    st.tuples(st.just("restart_count"), st.one_of(st.integers(-10, -1), st.integers(2, 10**18))),  # a rise past 1, or a fall
    st.tuples(st.just("usage"), st.one_of(st.integers(TASK_LIMIT + 1, 10**18), st.floats(TASK_LIMIT * 1.001, 1e300))),
    st.tuples(st.just("back"), BACK))


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 20), st.lists(POLL, min_size=1, max_size=12).filter(
    lambda polls: not any(a[0] == b[0] == "restart_count" for a, b in zip(polls, polls[1:]))))
def test_no_total_goes_down_without_a_restart_and_no_value_passes_the_limits(first_count, polls) -> None:
    """Whatever garbage a poll holds (a `RestartCount` that fell or rose past what one poll allows, a
    usage above the task's size, a cumulative counter below its last value), and with real restarts and
    failed stats requests between: every exported `_total` is at least what it was last exported for the
    same instance (`restarts_total`, the task's network totals: at all), `restarts_total` never passes
    the real `RestartCount`, no memory series passes the task's size, and each poll with garbage counts
    one `bad_stats` at least. A wrong `RestartCount` is one poll long here: the same one at two polls in a
    row is what the container says (docs/health.md)."""
    h = harness()
    model = Task(first_count)
    last: dict[tuple[str, Any], tuple[float, int | None]] = {}  # series -> (value, dd's StartedAt then)
    counting = False  # dd-agent's restarts_total was exported at the poll before: a RestartCount is believed
    read = False  # the poll before read all the stats: a counter is below the value exported then
    try:
        for kind, arg in polls:
            if kind == "restart":
                model.restart()
            answer = model.answer(restart_count=model.restart_count + arg if kind == "restart_count" else None,
                                  usage=arg if kind == "usage" else None, back=arg if kind == "back" else None)
            errors = bad_stats(h)
            samples = h.source._apply(answer[0], asyncio.TimeoutError() if kind == "stats_fail" else answer[1])[0]
            check(samples, last, model)
            # a negative RestartCount is no number (absent); one that is there and cannot be is counted
            if kind == "usage" or (kind == "back" and read) or (
                    kind == "restart_count" and counting and model.restart_count + arg >= 0):
                assert bad_stats(h) > errors, kind
            counting = series(samples, "ecs.container.restarts_total") is not None
            read = kind not in ("stats_fail", "back")
            if kind == "stats_fail":
                assert not [s for s in samples if s.name.startswith("ecs.task.network.")]
    finally:
        asyncio.run(h.source.aclose())


def check(samples: list[Sample], last: dict[tuple[str, Any], tuple[float, int | None]], model: Task) -> None:
    for s in samples:
        name, value, container = s.name, float(s.value), dict(s.tags).get("container_name")
        if any(name == f"ecs.container.memory.{g}" for g in MEMORY_GAUGES) or name == "ecs.task.memory.working_set_bytes":
            assert value <= TASK_LIMIT, (name, value)
        if name == "ecs.container.restarts_total":
            assert value <= (model.restart_count if container == DD else 0), value
        if s.kind is not Kind.COUNTER:
            continue
        started = model.started if container == DD else None
        before = last.get((name, s.tags))
        if before is not None and (before[1] == started or not name.startswith("ecs.container.")
                                   or name.endswith(("restarts_total", "oom_kills_total", "saturated_seconds_total"))):
            assert value >= before[0], (name, container, before[0], value)
        last[name, s.tags] = (value, started)


def series(samples: list[Sample], name: str, container: str = DD) -> float | None:
    found = [float(s.value) for s in samples if s.name == name and dict(s.tags).get("container_name") == container]
    return found[0] if found else None


def run(answers: list[tuple[dict[str, Any], dict[str, Any]]]) -> tuple[list[list[Sample]], list[float]]:
    h = harness()
    out, errors = [], []
    for task, stats in answers:
        out.append(h.source._apply(task, stats)[0])
        errors.append(bad_stats(h))
    asyncio.run(h.source.aclose())
    return out, errors


def test_the_reviewers_restart_count_dip_and_spike() -> None:
    """RestartCount 5, 5, 0, 5, 5 (one poll shows 0, same DockerId and StartedAt) exported 5 -> 5 -> 10;
    2, 2, 10^15, 2 made it 1e15 for good. Each refused reading is counted; the counter stays."""
    for counts, expected in (([5, 5, 0, 5, 5], 5.0), ([2, 2, 10**15, 2, 2], 2.0)):
        model = Task(counts[0])
        polls, errors = run([model.answer(restart_count=c) for c in counts])
        got = [series(p, "ecs.container.restarts_total") for p in polls]
        assert got == [expected] * len(counts) or got == [None] + [expected] * (len(counts) - 1), got
        assert errors[2] == errors[1] + 1 and errors[-1] == errors[2]


def test_a_restart_count_seen_first_is_held_until_the_next_poll_agrees() -> None:
    """A count above 1 at first sight may be garbage: a gap until the next poll says the same (or a rise
    that can be); 10^15 then 2, 2 starts the counter at 2, never at 10^15."""
    model = Task(2)
    polls, errors = run([model.answer(restart_count=c) for c in (10**15, 2, 2, 3)])
    assert [series(p, "ecs.container.restarts_total") for p in polls] == [None, None, 2.0, 3.0]
    assert errors == [0, 1, 1, 1]


def test_the_reviewers_usage_spike() -> None:
    """memory_stats.usage = 10^17 on a task whose size is 3 GiB: a gap for that poll (usage, working set,
    the task's working set), counted, and never the peak."""
    model = Task(0)
    polls, errors = run([model.answer(), model.answer(), model.answer(usage=10**17), model.answer()])
    assert series(polls[2], "ecs.container.memory.working_set_bytes") is None
    assert series(polls[2], "ecs.container.memory.usage_bytes") is None
    assert not [s for s in polls[2] if s.name == "ecs.task.memory.working_set_bytes"]
    assert series(polls[1], "ecs.container.memory.peak_working_set_bytes") == series(
        polls[3], "ecs.container.memory.peak_working_set_bytes") < TASK_LIMIT
    assert errors == [0, 0, 1, 1]


def test_the_reviewers_throttled_periods_going_back() -> None:
    """throttled_periods 101 -> 102 -> 50 -> 104 with the same DockerId and StartedAt: 50 is a gap, counted;
    the same for the block I/O counters; a real restart (a new StartedAt) starts them again."""
    model = Task(0)
    answers = [model.answer(), model.answer(), model.answer(back=("throttled", 0.5)), model.answer(),
               model.answer(back=("read", 0.1))]
    model.restart()
    answers.append(model.answer())
    polls, errors = run(answers)
    throttled = [series(p, "ecs.container.cpu.throttled_periods_total") for p in polls]
    assert throttled[:4] == [10.0, 20.0, None, 40.0] and throttled[5] == 10.0, throttled
    read = [series(p, "ecs.container.io.read_bytes_total") for p in polls]
    assert read[4] is None and read[5] == 7000.0 and read[3] == 28000.0
    assert errors == [0, 0, 1, 1, 2, 2]


async def test_task_network_totals_are_a_gap_while_task_stats_times_out(metadata: MetadataServer) -> None:
    """Through real HTTP on loopback: `/task` answers, `/task/stats` does not within the timeout. The task's
    network totals disappear from /metrics like the containers' CPU and memory (they stayed at their last
    values), the timeout is counted, and they come back, not lower, once the stats answer again."""
    model = Task(0)
    h = Harness(metadata.url, timeout=0.3)
    names = ("ecs_task_network_receive_bytes_total", "ecs_task_network_transmit_bytes_total")
    try:
        metadata.serve(*model.answer())
        assert await h.source.poll_once()
        metadata.serve(*model.answer())
        assert await h.source.poll_once()
        before = h.scrape()
        assert all((n, None) in before for n in names)
        metadata.stats_delay = 2.0  # /task/stats only
        assert not await h.source.poll_once()
        during = h.scrape()
        assert h.metric("tasklens.ecs.poll_errors", reason="timeout") == 1
        assert ("ecs_container_memory_working_set_bytes", DD) not in during
        assert not [n for n in names if (n, None) in during], during
        assert ("ecs_container_restart_count", DD) in during  # `/task` still answers
        metadata.serve(*model.answer())
        assert await h.source.poll_once()
        after = h.scrape()
        assert all(after[n, None] >= before[n, None] for n in names)
    finally:
        await h.source.aclose()
