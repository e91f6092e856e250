"""A container's instances over successive polls, through the real ECS source, health monitor and
Prometheus sink against a metadata endpoint on loopback: a container left out of one `/task` answer
keeps its health counters and peak; two instances listed under one name (the one replaced, stopped,
beside the new one: ECS lists both after an essential=false container restarts) are one container,
the running one, whose replaced instance's exit is judged once; the sidecar never has two series of
its own with one label set.

The polls are fargate-2023 (tests/fixtures/ecs) with only dd-agent's entries changed (DockerId,
StartedAt, KnownStatus, ExitCode, RestartCount, a memory limit of 256 MiB, the working set) and every
`read` moved 10 s a poll.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from tests.sources.ecs_helpers import MetadataServer, load
from tests.sources.test_ecs_source import Harness

from agent.sources.ecs_stats import instances_by_name, parse_time_ns
from agent.sources.localstats import format_time_ns

MIB = 1024 * 1024
LIMIT_MIB = 256
STEP = 10.0  # seconds between two polls' `read`s
HEALTH_COUNTERS = ("ecs_container_restarts_total", "ecs_container_oom_kills_total",
                   "ecs_container_cpu_saturated_seconds_total")
NEVER_DOWN = HEALTH_COUNTERS + ("ecs_container_memory_peak_working_set_bytes",)


@dataclass
class Instance:
    docker_id: str
    started: float  # seconds after the capture's `read`
    running: bool = True
    exit_code: int | None = None
    restart_count: int | None = None


class Polls:
    """fargate-2023 poll after poll, dd-agent's instances as the test moves them."""

    def __init__(self, restart_policy: bool = True) -> None:
        task = load("fargate-2023.task")
        self.template = next(c for c in task["Containers"] if c["Name"] == "dd-agent")
        self.policy = restart_policy
        self.t = 0.0
        self.made = 0
        self.current = Instance(self.template["DockerId"], -370.0, restart_count=0 if restart_policy else None)
        self.old: list[Instance] = []
        # what happened, as a container's health counts it
        self.exits = 0  # a running instance that stopped (in place or replaced)
        self.restarts = 0

    def _new_id(self) -> str:
        self.made += 1
        return f"{self.template['DockerId'][:-4]}{self.made:04d}"

    def stop(self, exit_code: int) -> None:
        if self.current.running:
            self.exits += 1
            self.current.running, self.current.exit_code = False, exit_code

    def restart_in_place(self) -> None:
        """Started again under the same DockerId (a restart policy): StartedAt moves, RestartCount + 1."""
        self.stop(137)  # its exit code is not shown once it runs again
        c = self.current
        c.running, c.exit_code, c.started = True, None, self.t + STEP / 2
        if c.restart_count is not None:
            c.restart_count += 1
        self.restarts += 1

    def replace(self, exit_code: int) -> None:
        """A new instance under a new DockerId, the one before stopped (with `exit_code` if it was running)."""
        self.stop(exit_code)
        self.old.append(self.current)
        self.current = Instance(self._new_id(), self.t + STEP / 2, restart_count=0 if self.policy else None)
        self.restarts += 1

    def poll(self, working_set_mib: float, *, present: bool = True, list_old: bool = True, old_first: bool = True,
             repeat: bool = False, old_mib: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The next poll's `/task` and `/task/stats`: dd-agent's working set that much (when running);
        `present`: dd-agent's current instance listed (when not, its replaced instances still are with
        `list_old`); `list_old`: its replaced instances listed beside the current one (`old_first`:
        before it); `repeat`: the current one listed twice (its DockerId again); `old_mib`: the working
        set of a replaced instance still running (else the same)."""
        self.t += STEP
        task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
        shift = int(self.t * 1e9)
        base_read = parse_time_ns(stats[self.template["DockerId"]]["read"])
        assert base_read is not None
        for entry in stats.values():
            entry["read"] = format_time_ns(parse_time_ns(entry["read"]) + shift)  # type: ignore[operator]
        template_stats = stats.pop(self.template["DockerId"])
        others = [c for c in task["Containers"] if c["Name"] != "dd-agent"]
        listed = [*self.old] if list_old else []
        if present:
            listed = [*listed, self.current] if old_first else [self.current, *listed]
            if repeat:
                listed.append(self.current)
        entries = []
        for inst in listed:
            c = copy.deepcopy(self.template)
            c.update(DockerId=inst.docker_id, StartedAt=format_time_ns(base_read + int(inst.started * 1e9)),
                     KnownStatus="RUNNING" if inst.running else "STOPPED",
                     DesiredStatus="RUNNING" if inst.running else "STOPPED")
            c["Limits"] = dict(c["Limits"], Memory=LIMIT_MIB)
            if inst.exit_code is not None:
                c["ExitCode"] = inst.exit_code
            if inst.restart_count is not None:
                c["RestartCount"] = inst.restart_count
            entries.append(c)
            if inst.running:
                e = copy.deepcopy(template_stats)
                e["id"] = inst.docker_id
                mib = old_mib if old_mib is not None and inst is not self.current else working_set_mib
                e["memory_stats"]["usage"] = int(mib * MIB) + e["memory_stats"]["stats"]["total_inactive_file"]
                stats[inst.docker_id] = e
            else:
                stats[inst.docker_id] = {}  # as the captures show a stopped container
        task["Containers"] = entries + others
        return task, stats


Scrape = dict[tuple[str, str | None], float]


def scrape(h: Harness) -> Scrape:
    """/metrics as the sink renders it: Prometheus name and container_name -> value. Fails on a series
    rendered twice, and on any of the sidecar's own series left out for sharing a label set."""
    out: Scrape = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for family in text_string_to_metric_families(h.prometheus.render().decode()):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in seen, f"a series rendered twice: {key}"
            seen.add(key)
            if s.name.startswith("ecs_") and s.name != "ecs_task_info":
                out[s.name, s.labels.get("container_name")] = s.value
    assert h.metric("tasklens.prometheus.render_conflicts") == 0
    return out


def published_once(h: Harness) -> None:
    """The ECS batch just published holds no two samples of one name and label set."""
    keys = [(s.name, s.tags) for s in h.recorder.last("ecs").samples]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)


def run(polls: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[Scrape]:
    """Each (task, stats) served and polled in turn over HTTP; what /metrics said after each."""

    async def go() -> list[Scrape]:
        server = MetadataServer()
        await server.start()
        h = Harness(server.url)
        out = []
        try:
            for task, stats in polls:
                server.serve(task, stats)
                assert await h.source.poll_once()
                published_once(h)
                out.append(scrape(h))
        finally:
            await h.source.aclose()
            await server.stop()
        return out

    return asyncio.run(go())


def dd(got: Scrape) -> dict[str, float]:
    return {name: v for (name, c), v in got.items() if c == "dd-agent"}


# --- a container left out of one answer ----------------------------------------------------------


@pytest.mark.parametrize("policy", [True, False], ids=["restart-policy", "no-restart-policy"])
def test_a_container_missing_from_one_answer_keeps_its_counters_and_peak(policy: bool) -> None:
    # dd-agent climbs to 250 of 256 MiB, restarts (an OOM kill), is left out of one answer, comes back
    p = Polls(restart_policy=policy)
    polls = [p.poll(ws) for ws in (100, 200, 240, 250)]
    p.restart_in_place()
    polls += [p.poll(30), p.poll(30), p.poll(30, present=False), p.poll(30), p.poll(30)]
    got = run(polls)
    after_restart, gone, back = dd(got[5]), dd(got[6]), [dd(g) for g in got[7:]]
    assert after_restart["ecs_container_oom_kills_total"] == 1
    assert after_restart["ecs_container_restarts_total"] == 1
    assert after_restart["ecs_container_memory_peak_working_set_bytes"] == 250 * MIB
    assert gone == {}  # absent: no series of it, no invented values
    for b in back:
        assert b["ecs_container_running"] == 1
        assert b["ecs_container_oom_kills_total"] == 1
        assert b["ecs_container_restarts_total"] == 1
        assert b["ecs_container_memory_peak_working_set_bytes"] == 250 * MIB


def test_an_oom_restart_hidden_in_the_gap_is_still_seen() -> None:
    # the restart falls in the poll dd-agent is missing from: it is judged when it comes back, against
    # the readings before the gap (memory at the limit)
    p = Polls(restart_policy=False)
    polls = [p.poll(ws) for ws in (100, 200, 250)]
    polls.append(p.poll(250, present=False))
    p.restart_in_place()
    polls.append(p.poll(30))
    last = dd(run(polls)[-1])
    assert (last["ecs_container_restarts_total"], last["ecs_container_oom_kills_total"]) == (1, 1)


# --- two instances under one name ---------------------------------------------------------------


@pytest.mark.parametrize("old_first", [True, False], ids=["old-listed-first", "new-listed-first"])
@pytest.mark.parametrize("exit_code, kills", [(137, 1), (0, 0)])
def test_the_running_instance_is_the_container_and_the_replaced_ones_exit_is_judged_once(
        old_first: bool, exit_code: int, kills: int) -> None:
    p = Polls()
    polls = [p.poll(ws) for ws in (100, 200, 250)]
    p.replace(exit_code)
    polls += [p.poll(30, old_first=old_first) for _ in range(3)]
    got = run(polls)
    for g in got[3:]:
        d = dd(g)
        assert d["ecs_container_running"] == 1
        assert "ecs_container_exit_code" not in d  # the exit of the one replaced is not the container's
        assert d["ecs_container_memory_working_set_bytes"] == 30 * MIB  # the running one's numbers
        # its exit: memory at the limit before it; an OOM kill only with exit code 137, and once
        assert d["ecs_container_oom_kills_total"] == kills
        assert d["ecs_container_restarts_total"] == 1
        assert d["ecs_container_memory_peak_working_set_bytes"] == 250 * MIB


def test_both_instances_listed_at_the_first_poll() -> None:
    # the tester's case: the sidecar starts when ECS lists the stopped instance (137) and the new one
    task, stats = load("fargate-2023.task"), load("fargate-2023.stats")
    old = copy.deepcopy(task["Containers"][0])
    old.update(DockerId=old["DockerId"][:-4] + "0000", KnownStatus="STOPPED", ExitCode=137)
    task["Containers"].insert(0, old)
    d = dd(run([(task, stats)])[0])
    assert d["ecs_container_running"] == 1
    assert "ecs_container_exit_code" not in d
    assert d["ecs_container_memory_working_set_bytes"] == 156_966_912
    # an exit the sidecar never saw happen is not counted (docs/health.md, known false negatives)
    assert (d["ecs_container_oom_kills_total"], d["ecs_container_restarts_total"]) == (0, 0)


def test_two_running_instances_under_one_name_count_toward_the_task_once_each() -> None:
    # the one replaced still running beside the new one: the task's totals hold both (distinct DockerIds),
    # the container's series are the newer's only
    p = Polls()
    first = p.poll(100)
    p.old.append(Instance(p.current.docker_id, p.current.started))
    p.current = Instance(p._new_id(), p.t + STEP / 2, restart_count=0)
    both = p.poll(40, old_mib=100)
    single = run([first])[0]
    got = run([first, both])[1]
    assert dd(got)["ecs_container_memory_working_set_bytes"] == 40 * MIB
    ping = single["ecs_container_memory_working_set_bytes", "apmtest-ping"]
    assert got["ecs_task_memory_working_set_bytes", None] == 100 * MIB + 40 * MIB + ping


@pytest.mark.parametrize("started_at", [True, False], ids=["started-at", "no-started-at"])
@pytest.mark.parametrize("exit_code", [0, 137])
def test_an_answer_listing_only_the_replaced_instance_leaves_the_container_absent(
        exit_code: int, started_at: bool) -> None:
    # after a replacement, one answer leaves out the new instance but still lists the stopped one it
    # replaced: that one must not stand for the container (running 0, its old exit code, for one poll,
    # then running 1 again); the container is absent that poll, and its counters continue after it.
    # Without StartedAt the old one is still known: it stood for the container before
    p = Polls()
    polls = [p.poll(ws) for ws in (100, 200, 250)]
    p.replace(exit_code)
    polls += [p.poll(30), p.poll(30), p.poll(30, present=False), p.poll(30), p.poll(30)]
    if not started_at:
        for task, _ in polls:
            for c in task["Containers"]:
                c.pop("StartedAt", None)
    got = [dd(g) for g in run(polls)]
    assert got[5] == {}
    kills = 1 if exit_code == 137 else 0
    for d in got[3:5] + got[6:]:
        assert d["ecs_container_running"] == 1
        assert "ecs_container_exit_code" not in d
        assert d["ecs_container_memory_working_set_bytes"] == 30 * MIB
        assert d["ecs_container_restarts_total"] == 1
        assert d["ecs_container_oom_kills_total"] == kills


def test_an_answer_leaving_out_the_newer_of_two_running_instances_leaves_the_container_absent() -> None:
    # the replaced instance still running: an answer without the newer one does not show the older one's
    # numbers as the container's for one poll (nor count the switch back as a restart)
    p = Polls()
    polls = [p.poll(100)]
    p.old.append(Instance(p.current.docker_id, p.current.started, restart_count=0))
    p.current = Instance(p._new_id(), p.t + STEP / 2, restart_count=0)
    polls += [p.poll(40, old_mib=100), p.poll(40, old_mib=100, present=False), p.poll(40, old_mib=100)]
    got = [dd(g) for g in run(polls)]
    assert got[2] == {}
    for d in (got[1], got[3]):
        assert d["ecs_container_memory_working_set_bytes"] == 40 * MIB
        assert d["ecs_container_restarts_total"] == 1


def test_the_newer_of_two_running_instances_stops_its_exit_is_judged_and_the_older_followed() -> None:
    # both RUNNING under one name, the newer is killed at 240 of 256 MiB while the older keeps running:
    # the container is the running one (the older), its exit (137, memory at the limit) is an OOM kill,
    # judged once, and the container's series go on (CPU saturation included)
    p = Polls()
    polls = [p.poll(100)]
    p.old.append(Instance(p.current.docker_id, p.current.started, restart_count=0))  # still running
    p.current = Instance(p._new_id(), p.t + STEP / 2, restart_count=0)
    polls += [p.poll(240, old_mib=100) for _ in range(3)]
    p.stop(137)
    polls += [p.poll(240, old_mib=100) for _ in range(5)]
    got = [dd(g) for g in run(polls)]
    for i, d in enumerate(got):
        assert d["ecs_container_running"] == 1
        assert "ecs_container_cpu_saturated" in d, i
        assert d["ecs_container_restarts_total"] == (0 if i == 0 else 1)
        assert d["ecs_container_oom_kills_total"] == (1 if i >= 4 else 0)
        assert d["ecs_container_memory_working_set_bytes"] == (240 if 1 <= i <= 3 else 100) * MIB


def test_which_instance_is_the_container() -> None:
    # running first; then the one started last; on a tie, the one listed first
    def entry(docker_id: str, status: str, started: str) -> dict[str, Any]:
        return {"Name": "app", "DockerId": docker_id, "KnownStatus": status, "StartedAt": started, "Image": "app:1"}

    early, late = "2023-06-20T01:13:35Z", "2023-06-20T01:20:00Z"
    cases = [([entry("a", "STOPPED", late), entry("b", "RUNNING", early)], ["b", "a"]),
             ([entry("a", "RUNNING", early), entry("b", "RUNNING", late)], ["b", "a"]),
             ([entry("a", "STOPPED", early), entry("b", "STOPPED", late), entry("c", "PENDING", "")], ["b", "a", "c"]),
             ([entry("a", "RUNNING", early), entry("b", "RUNNING", early)], ["a", "b"])]
    for containers, order in cases:
        groups = instances_by_name(containers)
        assert list(groups) == ["app"]
        assert [c["DockerId"] for c in groups["app"]] == order


# --- any sequence of polls ----------------------------------------------------------------------

STEPS = st.tuples(
    st.sampled_from(["run", "run", "absent", "restart", "stop", "replace"]),
    st.sampled_from([30, 120, 200, 240, 250]),  # working set, MiB of 256
    st.sampled_from([0, 1, 137]),  # exit code of a stop
    # replaced instances listed (also when the current one is absent), listed first, a DockerId repeated
    st.booleans(), st.booleans(), st.booleans())


@dataclass
class Expected:
    """What the rule of docs/health.md must have counted by each poll that lists dd-agent, from what the
    polls showed: exact, since within 14 polls 10 s apart no leak forecast exists (it needs half the
    1800 s window) and the stats are cgroup v1 (no `failcnt`): an exit judged (a stop seen, or a restart
    or a replacement after the instance was seen running) is an OOM kill when its exit code shown is 137
    or none is shown, and one of the last three working sets of that process was at least 90 % of the
    limit. A restart: the rise of RestartCount (restart policy), else StartedAt moved; a new DockerId is
    one. Several in one gap may count as one: the polls could not tell them apart."""

    restarts: float = 0.0
    kills: float = 0.0
    followed: Instance | None = None  # as the last poll that listed the container showed it
    live: Instance | None = None  # that instance as it is now (its exit code once replaced)
    readings: list[int] = field(default_factory=list)  # working sets of the running process followed

    def poll(self, current: Instance, ws: int, *, old_listed: bool) -> None:
        """A poll that lists `current` (with its replaced instances when `old_listed`)."""
        f = self.followed
        if f is None:
            self.restarts = current.restart_count or 0
        else:
            if current.docker_id != f.docker_id:  # replaced: its exit code when still listed, else unknown
                assert self.live is not None
                restarts, exited, code = 1, f.running, (self.live.exit_code if old_listed else None)
            else:
                if f.restart_count is not None and current.restart_count is not None:
                    restarts = current.restart_count - f.restart_count
                else:
                    restarts = 1 if current.started > f.started else 0
                exited, code = f.running and not current.running, current.exit_code
            if (exited or (restarts and f.running)) and code in (137, None) \
                    and any(w >= 0.9 * LIMIT_MIB for w in self.readings[-3:]):
                self.kills += 1
            if restarts or exited:
                self.readings = []
            self.restarts += restarts
        if current.running:
            self.readings.append(ws)
        self.followed, self.live = dataclasses.replace(current), current


@settings(max_examples=60, deadline=None)
@given(policy=st.booleans(), steps=st.lists(STEPS, min_size=1, max_size=14))
def test_any_sequence_of_polls_keeps_counters_up_and_one_series_per_label_set(
        policy: bool, steps: list[tuple[str, int, int, bool, bool, bool]]) -> None:
    """Containers present, absent, restarted in place, stopped, replaced under a new DockerId with the
    replaced instances listed or not, in either order, also while the current one is left out, a DockerId
    listed twice: no two of the sidecar's own series share a label set (checked on the batch and on
    /metrics, in `run`); a health counter or the peak never goes down, across gaps too; the container
    is its current instance, and absent while only replaced ones are listed; the OOM kills and restarts
    are exactly what the rule makes of what the polls showed (`Expected`), never more than happened."""
    p = Polls(restart_policy=policy)
    polls, present, exits, restarts, expected = [], [], [], [], []
    rule = Expected()
    for action, ws, exit_code, list_old, old_first, repeat in steps:
        if action == "restart":
            p.restart_in_place()
        elif action == "stop":
            p.stop(exit_code)
        elif action == "replace":
            p.replace(exit_code)
        polls.append(p.poll(ws, present=action != "absent", list_old=list_old, old_first=old_first, repeat=repeat))
        present.append((action != "absent", p.current.running, p.current.exit_code))
        exits.append(p.exits)
        restarts.append(p.restarts)
        if action != "absent":
            rule.poll(p.current, ws, old_listed=list_old)
        expected.append((rule.kills, rule.restarts))
    last: dict[tuple[str, str | None], float] = {}
    for got, (listed, running, exit_code), n_exits, n_restarts, (kills, n) in zip(
            run(polls), present, exits, restarts, expected):
        d = dd(got)
        if not listed:
            assert d == {}
            continue
        assert d["ecs_container_running"] == (1 if running else 0)
        assert d.get("ecs_container_exit_code") == (None if running else exit_code)
        assert d["ecs_container_oom_kills_total"] == kills <= n_exits
        assert d["ecs_container_restarts_total"] == n <= n_restarts
        for key, value in got.items():
            if key[0] in NEVER_DOWN or (key[0].startswith("ecs_task_") and key[0].endswith("_total")):
                assert value >= last.get(key, 0.0), (key, last.get(key), value)
                last[key] = value
