"""The busy rule: its grammar (examples, errors that name the variable, properties) and evaluation."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import ConfigError, load
from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Kind, Points, Sample
from agent.scaling.busy import (
    CPU_METRIC,
    Cpu,
    Gauge,
    InProgress,
    Observations,
    Rule,
    evaluate,
    parse_rule,
)


@pytest.mark.parametrize("text, expected", [
    ("cpu>20%", Rule((Cpu(20.0),))),
    ("cpu >= 12.5 %", Rule((Cpu(12.5, inclusive=True),))),
    ("cpu[worker,thumbs]>5%", Rule((Cpu(5.0, containers=("worker", "thumbs")),))),
    ("jobs.in_progress>0", Rule((Gauge("jobs.in_progress", 0.0),))),
    ("app.active_jobs >= 1", Rule((Gauge("app.active_jobs", 1.0, inclusive=True),))),
    ("jobs.started - jobs.finished > 0", Rule((InProgress("jobs.started", "jobs.finished", 0.0),))),
    ("jobs.started-jobs.finished>=2", Rule((InProgress("jobs.started", "jobs.finished", 2.0, True),))),
    ("cpu>20% or jobs.in_progress>0", Rule((Cpu(20.0), Gauge("jobs.in_progress", 0.0)))),
    ("cpu>20%, queue.depth>0.5", Rule((Cpu(20.0), Gauge("queue.depth", 0.5)))),
])
def test_examples(text: str, expected: Rule) -> None:
    rule = parse_rule(text)
    assert rule == expected
    assert parse_rule(str(rule)) == rule  # the canonical form parses back to the same rule


@pytest.mark.parametrize("text, says", [
    ("", "empty term"),
    ("cpu>20", "ends with %"),
    ("cpu>-5%", "must be >= 0"),
    ("cpu[]>5%", "names no container"),
    ("cpu[a b]>5%", "not a container name"),
    ("jobs.in_progress", "none of these"),
    ("jobs.in_progress<3", "none of these"),
    ("jobs.started-jobs.finished>0 or", "empty term"),
    ("jobs.x > 1e3", "none of these"),
    ("jobs.x > nan", "none of these"),
    ("x>1" + " or x>1" * 300, "longer than 1000"),
    ("or", "empty term"),
    ("my-app.jobs-x.y-z>1", "none of these"),
])
def test_bad_rules_say_what_is_expected(text: str, says: str) -> None:
    with pytest.raises(ValueError, match="a busy rule: cpu>N%") as info:
        parse_rule(text)
    assert says in str(info.value)


def test_a_bad_rule_is_a_start_up_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load({"TASKLENS_SCALE_IN_PROTECTION": "cpu>twenty%"})
    assert str(info.value).startswith("TASKLENS_SCALE_IN_PROTECTION='cpu>twenty%' is invalid: expected a busy rule")
    for variable, value in (("TASKLENS_SCALE_IN_IDLE", "-1"), ("TASKLENS_SCALE_IN_EXPIRES_MINUTES", "2881"),
                            ("TASKLENS_SCALE_IN_EXPIRES_MINUTES", "0"), ("TASKLENS_SCALING_SMOOTHING_WINDOW", "x"),
                            ("TASKLENS_SCALING_CONSUMERS_PER_TASK", "0")):
        with pytest.raises(ConfigError, match=f"^{variable}="):
            load({variable: value})
    config = load({"TASKLENS_SCALE_IN_PROTECTION": "cpu > 20 %  or jobs.in_progress>0"})
    assert config.scale_in_protection == "cpu>20% or jobs.in_progress>0"  # stored in canonical form
    assert load({}).scale_in_protection == ""


@pytest.mark.parametrize("text", ["jobs.in_progress>=0", "jobs.in_progress>-1", "jobs.started-jobs.finished>=-0.5",
                                  "cpu>=0%", "cpu[worker]>=0%", "a - b > -0.001", "x>0 or y>=0"])
def test_a_rule_that_holds_on_nothing_seen_is_refused(text: str) -> None:
    """A metric never seen reads 0: a term that holds at 0 would keep the task protected for good."""
    with pytest.raises(ValueError, match="holds when the metric is 0 or never seen: the task would be protected"):
        parse_rule(text)
    with pytest.raises(ConfigError, match="^TASKLENS_SCALE_IN_PROTECTION=.*never seen"):
        load({"TASKLENS_SCALE_IN_PROTECTION": text})


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["cpu{}%", "cpu[worker]{}%", "jobs.in_progress{}", "jobs.started-jobs.finished{}"]),
       st.sampled_from([">", ">="]),
       st.integers(-3, 3) | st.floats(-2, 2, allow_nan=False).map(lambda f: round(f, 3)) | st.just(-0.0))
def test_a_rule_is_accepted_exactly_when_it_does_not_hold_on_nothing_seen(form: str, op: str, threshold: float) -> None:
    text = form.format(f"{op}{threshold:f}")
    holds_at_zero = 0 >= threshold if op == ">=" else 0 > threshold
    try:
        rule = parse_rule(text)
    except ValueError as exc:
        assert holds_at_zero, exc  # (a negative CPU share is refused on its own, as before)
    else:
        assert not holds_at_zero
        assert evaluate(rule, Observations(rule)) == (False, [])


@pytest.mark.parametrize("text, canonical", [
    ("cpu>100000000000000000000%", "cpu>100000000000000000000%"),
    ("x>0.0000001", "x>0.0000001"),
    ("x >= 0.000000000000000000001", "x>=0.000000000000000000001"),
    ("a - b > 12345678901234567890", "a - b > 12345678901234567000"),  # a float keeps 17 digits
    ("x>0.10", "x>0.1"),
    ("x>-0", "x>0"),
    ("x>" + "9" * 308, "x>1" + "0" * 308),  # the largest finite values: written out, still under 1000
    ("x>0." + "0" * 323 + "5", "x>0." + "0" * 323 + "5"),
])
def test_numbers_are_written_in_plain_decimal(text: str, canonical: str) -> None:
    rule = parse_rule(text)
    assert str(rule) == canonical
    assert parse_rule(str(rule)) == rule


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,20}", fullmatch=True).filter(lambda n: n not in ("cpu", "or"))
# huge and tiny as well as everyday: repr writes them with an exponent, which the grammar has not
# (four terms of these stay under the rule's 1000 characters)
thresholds = (st.integers(0, 10**6) | st.floats(0, 1e6, allow_nan=False).map(lambda f: round(f, 3))
              | st.floats(1e15, 1e100) | st.floats(1e-100, 1e-4))
containers = st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,10}", fullmatch=True), max_size=3, unique=True)
terms = st.one_of(
    st.builds(lambda t, i, c: Cpu(float(t), i, tuple(c)), thresholds, st.booleans(), containers),
    st.builds(lambda n, t, i: Gauge(n, float(t), i), names, thresholds | st.integers(-100, 0), st.booleans()),
    st.builds(lambda a, b, t, i: InProgress(a, b, float(t), i), names, names, thresholds, st.booleans()),
).filter(lambda t: not (t.threshold < 0 or (t.inclusive and t.threshold == 0)))  # those hold at 0: refused


@settings(max_examples=300, deadline=None)
@given(st.lists(terms, min_size=1, max_size=4))
def test_every_rule_round_trips_through_its_text(items: list) -> None:
    rule = Rule(tuple(items))
    assert parse_rule(str(rule)) == rule
    spaced = re.sub(r">=?", lambda m: f"  {m.group(0)} ", str(rule)).replace(" or ", " ,  ")
    assert parse_rule(spaced) == rule


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60) | st.text(alphabet="cpu[],<>=%-. or0123456789_abx", max_size=40))
def test_any_text_parses_or_says_what_is_expected(text: str) -> None:
    try:
        rule = parse_rule(text)
    except ValueError as exc:
        assert str(exc).startswith("a busy rule: ")
    else:
        assert rule.terms and parse_rule(str(rule)) == rule


# --- evaluation ---------------------------------------------------------------------------------


def cpu_batch(**percent: float) -> Batch:
    return Batch("ecs", [Sample(CPU_METRIC, v, Kind.GAUGE, (("container_name", c), ("task_id", "t")))
                         for c, v in percent.items()], snapshot=True)


def test_cpu_rule_reads_the_workers_and_not_the_sidecar() -> None:
    rule = parse_rule("cpu>20%")
    seen = Observations(rule)
    seen.observe(cpu_batch(worker=10.0, tasklens=90.0))
    assert evaluate(rule, seen, own_container="tasklens") == (False, [])
    assert evaluate(rule, seen, own_container=None) == (True, ["cpu>20%"])  # unknown: every container counts
    seen.observe(cpu_batch(worker=35.0, tasklens=1.0))
    assert evaluate(rule, seen, own_container="tasklens") == (True, ["cpu>20%"])
    seen.observe(Batch("ecs", [], snapshot=True))  # a failed poll keeps the last known CPU
    assert evaluate(rule, seen, "tasklens")[0]
    seen.observe(cpu_batch(tasklens=1.0))  # the worker container went away
    assert not evaluate(rule, seen, "tasklens")[0]
    named = parse_rule("cpu[thumbs]>20%")
    seen = Observations(named)
    seen.observe(cpu_batch(worker=80.0, thumbs=15.0))
    assert not evaluate(named, seen)[0]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("poll_interval, limit", [(10.0, 30.0), (5.0, 30.0), (20.0, 60.0)])
def test_a_cpu_reading_stops_counting_after_the_ecs_sources_stale_limit(poll_interval: float, limit: float) -> None:
    """Failed polls (an outage) keep the last CPU for max(3 polls, 30 s), the age at which the ECS
    source itself stops giving a rate from a sample that stopped changing; then the task is idle."""
    clock = Clock()
    rule = parse_rule("cpu>20%")
    seen = Observations(rule, poll_interval, clock)
    seen.observe(cpu_batch(worker=80.0))
    while clock.t < 1000.0 + limit:
        clock.t += 1.0
        seen.observe(Batch("ecs", [], snapshot=True))  # a failed poll
        seen.observe(Batch("statsd", [Sample("other", 1.0, Kind.GAUGE)]))  # other sources' batches
        assert evaluate(rule, seen) == (True, ["cpu>20%"])
    clock.t += 0.5
    assert evaluate(rule, seen) == (False, [])
    seen.observe(cpu_batch(worker=81.0))  # a fresh reading counts again
    assert evaluate(rule, seen)[0]


def test_a_poll_that_read_the_stats_without_cpu_drops_the_cpu_at_once() -> None:
    """The ECS source gives no CPU rate for a sample that stopped changing, but the container's other
    series (memory) still come: its last CPU is not the CPU now."""
    clock = Clock()
    rule = parse_rule("cpu[worker]>20%")
    seen = Observations(rule, clock=clock)
    seen.observe(cpu_batch(worker=80.0))
    assert evaluate(rule, seen)[0]
    tags = (("container_name", "worker"), ("task_id", "t"))
    seen.observe(Batch("ecs", [Sample("ecs.container.memory.usage_bytes", 1e8, Kind.GAUGE, tags)], snapshot=True))
    assert evaluate(rule, seen) == (False, [])


def test_gauge_rule_sums_tag_sets_and_keeps_the_last_value() -> None:
    rule = parse_rule("jobs.in_progress>0")
    seen = Observations(rule)
    assert not evaluate(rule, seen)[0]  # never seen: not busy
    seen.observe(Batch("statsd", [Sample("jobs.in_progress", 1.0, Kind.GAUGE, (("thread", "1"),)),
                                  Sample("jobs.in_progress", 0.0, Kind.GAUGE, (("thread", "2"),)),
                                  Sample("other", 5.0, Kind.GAUGE)]))
    assert evaluate(rule, seen) == (True, ["jobs.in_progress>0"])
    assert set(seen.gauges) == {"jobs.in_progress"}  # only what the rule reads is kept
    seen.observe(Batch("statsd", [Sample("other", 1.0, Kind.GAUGE)]))  # gauges hold their last value
    assert evaluate(rule, seen)[0]
    seen.observe(Batch("statsd", [Sample("jobs.in_progress", 0.0, Kind.GAUGE, (("thread", "1"),))]))
    assert not evaluate(rule, seen)[0]
    seen.observe(Batch("statsd", [Sample("jobs.in_progress", float("nan"), Kind.GAUGE, (("thread", "1"),))]))
    assert not evaluate(rule, seen)[0]  # a NaN is ignored, not busy


def test_gauge_tag_sets_of_finished_jobs_are_not_kept() -> None:
    """A worker that tags its in-progress gauge per job: 150,000 jobs, each 1 for a flush then 0. What
    the rule keeps is bounded (a tag set at 0 adds nothing to the sum), and the task is not busy."""
    rule = parse_rule("jobs.in_progress>0")
    seen = Observations(rule)
    for job in range(150_000):
        tags = (("job", str(job)),)
        seen.observe(Batch("statsd", [Sample("jobs.in_progress", 1.0, Kind.GAUGE, tags)]))
        seen.observe(Batch("statsd", [Sample("jobs.in_progress", 0.0, Kind.GAUGE, tags)]))
    assert evaluate(rule, seen) == (False, [])
    assert len(seen.gauges["jobs.in_progress"]) == 0


@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from([0.0, -0.0, 1.0, 2.0, -1.0, 0.5])), max_size=60),
       st.sampled_from([">0", ">=0.5", ">1", ">=2"]))
def test_a_gauge_rule_is_the_sum_of_each_tag_sets_last_value(updates, condition) -> None:
    """Whatever is forgotten, the rule holds exactly when the sum of the last value of every tag set
    ever sent does."""
    rule = parse_rule("jobs.in_progress" + condition)
    seen = Observations(rule)
    last: dict[int, float] = {}
    for tag, value in updates:
        seen.observe(Batch("statsd", [Sample("jobs.in_progress", value, Kind.GAUGE, (("job", str(tag)),))]))
        last[tag] = value
        total = sum(last.values())
        threshold = float(condition.lstrip(">="))
        assert evaluate(rule, seen)[0] == (total >= threshold if ">=" in condition else total > threshold)


def test_started_minus_finished_counts_since_start() -> None:
    rule = parse_rule("jobs.started - jobs.finished > 0")
    seen = Observations(rule)

    def counts(started: float, finished: float) -> Batch:
        return Batch("statsd", [Sample("jobs.started", started, Kind.COUNT, (), None, 10.0),
                                Sample("jobs.finished", finished, Kind.COUNT, (), None, 10.0)])

    seen.observe(counts(3, 1))
    assert evaluate(rule, seen)[0]
    seen.observe(counts(0, 1))
    assert evaluate(rule, seen)[0]  # 3 started, 2 finished
    seen.observe(counts(0, 1))
    assert not evaluate(rule, seen)[0]
    seen.observe(Batch("statsd", [Sample("jobs.started", Points([0.1, 0.2], [1.0, 1.0]), Kind.HISTOGRAM)]))
    assert evaluate(rule, seen)[0]  # a timer counts its values


def test_what_the_setting_takes_run_takes_too() -> None:
    """The setting is kept in canonical form, which `run` parses again: a rule of 999 characters as
    written but 1746 in that form is refused at load, naming the variable (before: `check` took it and
    `run` failed on it); one whose canonical form fits is taken by both."""
    from agent.scaling.protection import ScaleInProtection

    text = "x>1" + ",x>1" * 249
    assert len(text) == 999 and len(str(parse_rule(text))) > 1000
    with pytest.raises(ConfigError, match="^TASKLENS_SCALE_IN_PROTECTION="):
        load({"TASKLENS_SCALE_IN_PROTECTION": text})
    text = "x>1" + ",x>1" * 120
    config = load({"TASKLENS_SCALE_IN_PROTECTION": text})
    assert ScaleInProtection(config.scale_in_protection, Hub(Identity(service="s")), None).rule == parse_rule(text)


# (the task's tags, its worker container's: what origin detection adds to a line whose `c:` names it)
CONTAINER = (("container_name", "worker"), ("image", "acme/worker"), ("image_tag", "1.2"))
IDENTITIES = [((("service", "vm"),), ()),  # local mode: the host name, before the first metadata poll
              ((("service", "orders"), ("task_id", "t1")), CONTAINER),
              ((("ecs_cluster", "c"), ("service", "orders"), ("task_id", "t1")), CONTAINER),
              ((), ())]


@given(st.lists(st.tuples(st.integers(0, len(IDENTITIES) - 1), st.integers(0, 2), st.sampled_from([0.0, 1.0, 3.0]),
                          st.booleans()), max_size=40))
def test_a_slot_is_one_tag_set_whatever_identity_its_samples_carried(updates) -> None:
    """The identity changes under the worker (the first metadata poll, a field missing from one poll),
    and with it the container tags origin detection adds: the last value of each slot counts once, and a
    0 over a slot clears what it sent before."""
    rule = parse_rule("jobs.in_progress>0")
    seen = Observations(rule)
    last: dict[int, float] = {}
    for which, slot, value, origin in updates:
        task, container = IDENTITIES[which]
        added = task + (container if origin else ())
        tags = tuple(sorted(added + (("slot", str(slot)),)))  # as the hub merges them
        seen.observe(Batch("statsd", [Sample("jobs.in_progress", value, Kind.GAUGE, tags)]), task + container)
        last[slot] = value
        assert seen.total("jobs.in_progress") == sum(last.values())
        assert evaluate(rule, seen)[0] == (sum(last.values()) > 0)


def test_a_worker_tag_of_an_identity_key_with_its_own_value_stays_its_own() -> None:
    # `service:mine` is the worker's, not the task's `service:orders`: two tag sets, summed
    rule = parse_rule("jobs.in_progress>1")
    seen = Observations(rule)
    identity = (("service", "orders"),)
    for service in ("orders", "mine"):
        seen.observe(Batch("statsd", [Sample("jobs.in_progress", 1.0, Kind.GAUGE, (("service", service),))]), identity)
    assert seen.total("jobs.in_progress") == 2.0 and evaluate(rule, seen)[0]


def test_a_slot_sent_before_the_first_poll_is_cleared_after_it_with_origin_detection() -> None:
    """The Datadog client adds `c:<container id>` to every line: before the first metadata poll it names
    no container, after it the hub adds the container's tags. The 0 sent for the slot after the poll
    clears the 1 sent before (it was left busy for good: the container's tags made another tag set)."""
    from agent.scaling.protection import ScaleInProtection

    hub = Hub(Identity(service="vm"))
    protection = ScaleInProtection(parse_rule("jobs.in_progress>0"), hub, None)

    def send(value: float) -> None:
        tags = tuple(sorted(hub.identity.added_tags + (("slot", "a"),)))  # as the hub merges them
        protection.accept(Batch("statsd", [Sample("jobs.in_progress", value, Kind.GAUGE, tags)]))

    send(1.0)
    assert evaluate(protection.rule, protection.seen)[0]
    hub.set_identity(Identity(service="orders", task_id="t1", containers={"1e3b": CONTAINER}))
    send(0.0)
    assert not evaluate(protection.rule, protection.seen)[0]
