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

from agent.sources.ecs_stats import DEPARTED_POLLS, MAX_DEPARTED, Choice, Instances, choose_once, parse_time_ns
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
             repeat: bool = False, old_mib: float | None = None, rotate: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
        """The next poll's `/task` and `/task/stats`: dd-agent's working set that much (when running);
        `present`: dd-agent's current instance listed (when not, its replaced instances still are with
        `list_old`); `list_old`: its replaced instances listed beside the current one (`old_first`:
        before it); `repeat`: the current one listed twice (its DockerId again); `old_mib`: the working
        set of a replaced instance still running (else the same); `rotate`: dd-agent's entries listed
        rotated by that many places."""
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
        if listed:
            listed = listed[rotate % len(listed):] + listed[:rotate % len(listed)]
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


def run(polls: list[tuple[dict[str, Any], dict[str, Any]]], memory_window: float | None = None,
        stood: list[str | None] | None = None) -> list[Scrape]:
    """Each (task, stats) served and polled in turn over HTTP; what /metrics said after each (with the
    leak forecast's window `memory_window` seconds, else the default); `stood`: gets the DockerId that
    stood for dd-agent after each poll (the source's `Instances`)."""

    async def go() -> list[Scrape]:
        server = MetadataServer()
        await server.start()
        h = Harness(server.url)
        if memory_window is not None:
            h.source.health.memory_window = memory_window
        out = []
        try:
            for task, stats in polls:
                server.serve(task, stats)
                assert await h.source.poll_once()
                published_once(h)
                out.append(scrape(h))
                if stood is not None:
                    last = h.source._instances.names.get("dd-agent")
                    stood.append(last.docker_id if last is not None and last.poll == h.source._instances.polls
                                 else None)
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


def beside(p: Polls, docker_id: str | None = None, started: float | None = None) -> Instance:
    """A newer instance listed RUNNING under dd-agent's name beside the current one, which keeps running
    (listed among the old ones): the new one is `p.current` from now on; the one it joined is returned."""
    older = p.current
    p.old.append(older)
    p.current = Instance(docker_id or p._new_id(), p.t + STEP / 2 if started is None else started, restart_count=0)
    return older


def test_two_running_instances_under_one_name_count_toward_the_task_once_each() -> None:
    # a newer instance running beside the one standing: the task's totals hold both (distinct DockerIds),
    # the container's series are the standing one's only (it still runs: it keeps standing; before
    # today's rule they were the newer one's)
    p = Polls()
    first = p.poll(100)
    beside(p)
    both = p.poll(40, old_mib=100)
    single = run([first])[0]
    got = run([first, both])[1]
    assert dd(got)["ecs_container_memory_working_set_bytes"] == 100 * MIB
    ping = single["ecs_container_memory_working_set_bytes", "apmtest-ping"]
    assert got["ecs_task_memory_working_set_bytes", None] == 100 * MIB + 40 * MIB + ping


@pytest.mark.parametrize("old_first", [True, False], ids=["old-listed-first", "new-listed-first"])
@pytest.mark.parametrize("end, kills", [(0, 0), (137, 1), (None, 1)], ids=["exit-0", "exit-137", "leaves"])
def test_a_newer_instance_beside_the_running_one_is_no_restart_until_that_one_stops(
        old_first: bool, end: int | None, kills: int) -> None:
    # the reviewer's r3: A at 240 of 256 MiB, a newer B listed RUNNING beside it. Nothing exited: A still
    # stands (its series; no restart, no OOM kill: it was a restart and an OOM kill at once). Once A is
    # listed stopped B stands: one restart, A's exit judged once with its own exit code; when A leaves
    # `/task` unlisted its exit is unknown, and memory was at the limit: an OOM kill (docs/health.md)
    p = Polls()
    polls = [p.poll(240) for _ in range(3)]
    a = beside(p)
    polls += [p.poll(30, old_mib=240, old_first=old_first) for _ in range(3)]
    if end is None:
        p.old.remove(a)
    else:
        a.running, a.exit_code = False, end
    polls += [p.poll(30, old_first=old_first) for _ in range(3)]
    for i, d in enumerate(dd(g) for g in run(polls)):
        assert d["ecs_container_running"] == 1
        assert "ecs_container_exit_code" not in d
        assert d["ecs_container_memory_working_set_bytes"] == (240 if i < 6 else 30) * MIB, i
        assert d["ecs_container_restarts_total"] == (0 if i < 6 else 1), i
        assert d["ecs_container_oom_kills_total"] == (0 if i < 6 else kills), i
        assert d["ecs_container_memory_peak_working_set_bytes"] == 240 * MIB


@pytest.mark.parametrize("started_at", [True, False], ids=["same-started-at", "no-started-at"])
def test_two_running_instances_listed_in_either_order_do_not_flip(started_at: bool) -> None:
    # the reviewer's r1 and r1b: two RUNNING instances, StartedAt equal or missing, ECS listing them in
    # another order each poll. The tie went to the one listed first: the container flipped instance every
    # poll (a restart and an OOM kill each time, the other at 240 of 256 MiB; the leak trend reset). Now
    # the larger DockerId stands, every poll: no restart, no OOM kill, and its leak (2 MiB a poll) is
    # forecast as with a fixed order
    p = Polls()
    big = p.template["DockerId"][:-4] + "ffff"
    assert big > p.template["DockerId"]
    beside(p, big, started=p.current.started)
    polls = [p.poll(100 + 2 * i, old_mib=240, old_first=i % 2 == 0) for i in range(40)]
    if not started_at:
        for task, _ in polls:
            for c in task["Containers"]:
                c.pop("StartedAt", None)
    got = [dd(g) for g in run(polls, memory_window=300)]
    for i, d in enumerate(got):
        assert d["ecs_container_memory_working_set_bytes"] == (100 + 2 * i) * MIB
        assert (d["ecs_container_restarts_total"], d["ecs_container_oom_kills_total"]) == (0, 0)
    assert got[-1]["ecs_container_memory_leak_suspected"] == 1


def test_the_older_instance_left_alone_in_the_answer_stands_at_once() -> None:
    # the reviewer's r2: A stands; B, newer, is listed RUNNING beside it; B leaves `/task` without being
    # listed STOPPED while A runs on. A was "older" and B unlisted: A, the only instance listed, had no
    # series for DEPARTED_POLLS polls, then came back as a new container (restarts_total 1 -> 0). Now A
    # stands all along (it runs); and when B did stand (an answer left A out), A stands again once B is
    # gone: another instance standing is one restart, counters never go down
    p = Polls()
    polls = [p.poll(50)]
    a = beside(p)
    polls.append(p.poll(60, old_mib=50))
    polls.append(p.poll(60, old_mib=50, list_old=False))  # A left out: B stands
    polls.append(p.poll(60, old_mib=50))
    p.current, p.old = a, []  # B gone, never listed STOPPED
    polls += [p.poll(50) for _ in range(3)]
    got = [dd(g) for g in run(polls)]
    assert [d["ecs_container_memory_working_set_bytes"] / MIB for d in got] == [50, 50, 60, 60, 50, 50, 50]
    assert [d["ecs_container_restarts_total"] for d in got] == [0, 0, 1, 1, 2, 2, 2]
    assert all(d["ecs_container_running"] == 1 and d["ecs_container_oom_kills_total"] == 0 for d in got)


def test_which_instance_stands_for_the_container() -> None:
    # the rule of docs/health.md, in order: (a) the one that stood last while listed RUNNING; (b) else the
    # RUNNING one started last, on a tie the larger DockerId (never the order listed); (c) else the one
    # that stood last, listed stopped; (d) else the one started last of those started after it; (e) else
    # none: absent. (Before today's rule: the running one, else the one started last, ties to the one
    # listed first, and only instances_by_name's order said so.)
    def entry(docker_id: str, status: str = "RUNNING", started: str | None = None) -> dict[str, Any]:
        c = {"Name": "app", "DockerId": docker_id, "KnownStatus": status, "Image": "app:1"}
        if started is not None:
            c["StartedAt"] = started
        return c

    def stands(choices: dict[str, Choice]) -> str | None:
        c = choices["app"].container
        return c["DockerId"] if c is not None else None

    t1, t2, t3 = "2023-06-20T01:13:35Z", "2023-06-20T01:20:00Z", "2023-06-20T01:30:00Z"
    for listed, expected in [([entry("a", "STOPPED", t2), entry("b", "RUNNING", t1)], "b"),
                             ([entry("a", "RUNNING", t1), entry("b", "RUNNING", t2)], "b"),
                             ([entry("a", "STOPPED", t1), entry("b", "STOPPED", t2), entry("c", "PENDING")], "b"),
                             ([entry("a", started=t1), entry("b", started=t1)], "b"),
                             ([entry("b", started=t1), entry("a", started=t1)], "b"),
                             ([entry("b"), entry("a")], "b")]:
        assert stands(choose_once(listed)) == expected, listed
    inst = Instances()
    for listed, expected in [([entry("a", started=t1)], "a"),
                             ([entry("b", started=t2), entry("a", started=t1)], "a"),  # (a)
                             ([entry("a", "STOPPED", t1), entry("b", started=t2)], "b"),  # (b)
                             ([entry("b", "STOPPED", t2), entry("c", "PENDING")], "b"),  # (c)
                             ([entry("a", "STOPPED", t1)], None),  # (e): only the one b replaced
                             ([entry("c", "STOPPED", t3), entry("a", "STOPPED", t1)], "c"),  # (d)
                             ([entry("b", "STOPPED")], None),  # (e): no StartedAt, not after c
                             ([entry("a", started=t1), entry("c", "STOPPED", t3)], "a")]:  # (b)
        assert stands(inst.choose(listed)) == expected, listed
    assert list(inst.names) == ["app"] and inst.names["app"].docker_id == "a"


def test_instances_forget_departed_names_within_the_bounds() -> None:
    inst = Instances()
    for i in range(MAX_DEPARTED + 10):
        inst.choose([{"Name": f"c{i}", "DockerId": f"d{i}", "KnownStatus": "RUNNING", "Image": "x"}])
    assert len(inst.names) == 1 + MAX_DEPARTED
    for _ in range(DEPARTED_POLLS + 1):
        inst.choose([])
    assert inst.names == {}



# --- any sequence of polls ----------------------------------------------------------------------

STEPS = st.tuples(
    st.sampled_from(["run", "run", "absent", "restart", "stop", "replace", "beside", "stop_old", "drop_old"]),
    st.sampled_from([30, 120, 200, 240, 250]),  # working set of the newest instance, MiB of 256
    st.sampled_from([30, 240]),  # working set of an older instance still running
    st.sampled_from([0, 1, 137]),  # exit code of a stop
    # older instances listed (also when the newest is absent), the listing rotated, a DockerId repeated,
    # a newer instance beside with the same StartedAt
    st.booleans(), st.integers(0, 3), st.booleans(), st.booleans())


@dataclass
class Expected:
    """The rule of docs/health.md applied to what the polls showed: which instance stands for dd-agent
    (none: absent), and exactly the OOM kills and restarts counted, since within 14 polls 10 s apart no
    leak forecast exists (it needs half the 1800 s window) and the stats are cgroup v1 (no `failcnt`).
    Another instance standing is one restart, and the exit of the one that stood before is judged then
    if it was running (its exit code when listed stopped, else unknown); in place: the rise of
    RestartCount (restart policy), else StartedAt moved, the exit judged when a stop is seen or at the
    restart. An exit judged is an OOM kill when its exit code is 137 or unknown, and one of the last three
    working sets of that process was at least 90 % of the limit."""

    restarts: float = 0.0
    kills: float = 0.0
    stood: Instance | None = None  # the instance standing, as the last poll it stood showed it
    readings: list[int] = field(default_factory=list)  # working sets of the process standing

    def poll(self, listed: list[Instance], ws: dict[str, int]) -> Instance | None:
        """A poll listing `listed` (each instance once) with each running one's working set: the one standing."""
        f = self.stood
        current = next((i for i in listed if f is not None and i.docker_id == f.docker_id), None)
        running = [i for i in listed if i.running]
        if current is not None and (current.running or not running):
            pick: Instance | None = current
        elif running:
            pick = max(running, key=lambda i: (i.started, i.docker_id))
        else:
            pick = max((i for i in listed if f is None or i.started > f.started),
                       key=lambda i: (i.started, i.docker_id), default=None)
        if pick is None:
            return None
        if f is None:
            self.restarts = pick.restart_count or 0
        else:
            switched = pick.docker_id != f.docker_id
            if switched:  # never while `f` is listed RUNNING (it would still stand)
                assert current is None or not current.running
                restarts, exited, code = 1, f.running, (current.exit_code if current is not None else None)
            else:
                if f.restart_count is not None and pick.restart_count is not None:
                    restarts = pick.restart_count - f.restart_count
                else:
                    restarts = 1 if pick.started > f.started else 0
                exited, code = f.running and not pick.running, pick.exit_code
            if (exited or (restarts and f.running and not switched)) and code in (137, None) \
                    and any(w >= 0.9 * LIMIT_MIB for w in self.readings[-3:]):
                self.kills += 1
            if restarts or exited or switched:
                self.readings = []
            self.restarts += restarts
        if pick.running:
            self.readings.append(ws[pick.docker_id])
        self.stood = dataclasses.replace(pick)
        return pick


@settings(max_examples=60, deadline=None)
@given(policy=st.booleans(), steps=st.lists(STEPS, min_size=1, max_size=14))
def test_any_sequence_of_polls_keeps_counters_up_and_one_series_per_label_set(
        policy: bool, steps: list[tuple[str, int, int, int, bool, int, bool, bool]]) -> None:
    """Containers present, absent, restarted in place, stopped, replaced under a new DockerId with the
    replaced instances listed or not, a newer instance started beside a running one (at the same
    StartedAt or later) and the older one stopped or gone later, listed in any order, also while the
    newest is left out, a DockerId listed twice: no two of the sidecar's own series share a label set
    (checked on the batch and on /metrics, in `run`); a health counter or the peak never goes down,
    across gaps too; the instance standing is the rule's (`Expected`) for the series of derive and of
    health alike, never changes while it is listed RUNNING (whatever the order), and no OOM kill is
    counted then; the OOM kills and restarts are exactly what the rule makes of what the polls showed,
    and never more than happened while no instance ran beside another."""
    p = Polls(restart_policy=policy)
    polls, shown, bounds = [], [], []
    rule = Expected()
    beside_seen = False
    for action, ws, old_mib, exit_code, list_old, rotate, repeat, tie in steps:
        if action == "restart":
            p.restart_in_place()
        elif action == "stop":
            p.stop(exit_code)
        elif action == "replace":
            p.replace(exit_code)
        elif action == "beside":  # a newer instance starts, the one before runs on
            beside(p, started=p.current.started if tie else None)
            p.restarts += 1
            beside_seen = True
        elif action in ("stop_old", "drop_old"):
            older = next((i for i in p.old if i.running), None)
            if older is not None:
                p.exits += 1
                if action == "stop_old":
                    older.running, older.exit_code = False, exit_code
                else:
                    p.old.remove(older)
        present = action != "absent"
        polls.append(p.poll(ws, present=present, list_old=list_old, repeat=repeat, old_mib=old_mib, rotate=rotate))
        listed = ([*p.old] if list_old else []) + ([p.current] if present else [])
        was = rule.stood
        ws_of = {i.docker_id: (ws if i is p.current else old_mib) for i in listed}
        pick = rule.poll(listed, ws_of)
        running_ids = {i.docker_id for i in listed if i.running}
        shown.append((pick and dataclasses.replace(pick), was, running_ids,
                      ws_of[pick.docker_id] if pick is not None else 0, rule.kills, rule.restarts))
        bounds.append((p.exits, p.restarts))
    stood: list[str | None] = []
    last: dict[tuple[str, str | None], float] = {}
    kills_before = 0.0
    for got, (pick, was, running_ids, ws, kills, n), (n_exits, n_restarts), docker_id in zip(
            run(polls, stood=stood), shown, bounds, stood):
        d = dd(got)
        if pick is None:
            assert d == {} and docker_id is None
            continue
        assert docker_id == pick.docker_id
        if was is not None and was.docker_id in running_ids:  # the one standing, listed RUNNING: it stands on
            assert docker_id == was.docker_id
            if (pick.started, pick.restart_count) == (was.started, was.restart_count):  # not restarted in place
                assert kills == kills_before  # nothing exited
        kills_before = kills
        assert d["ecs_container_running"] == (1 if pick.running else 0)
        assert d.get("ecs_container_exit_code") == (None if pick.running else pick.exit_code)
        if pick.running:
            assert d["ecs_container_memory_working_set_bytes"] == ws * MIB
        assert d["ecs_container_oom_kills_total"] == kills
        assert d["ecs_container_restarts_total"] == n
        if not beside_seen:
            assert kills <= n_exits and n <= n_restarts
        for key, value in got.items():
            if key[0] in NEVER_DOWN or (key[0].startswith("ecs_task_") and key[0].endswith("_total")):
                assert value >= last.get(key, 0.0), (key, last.get(key), value)
                last[key] = value
