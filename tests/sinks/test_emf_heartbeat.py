"""The task heartbeat in EMF: exactly one datapoint per task per wall-clock minute, whatever
`TASKLENS_CLOUDWATCH_INTERVAL`, since CloudWatch's one-minute SampleCount of it is the running-task count
the scaling policy divides by (docs/scaling.md). It was written in every record: at 10 s one task
counted as 6 (the policy saw a sixth of the backlog per task and scaled in under load), and over 60 s
minutes had none."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Config, ConfigError
from agent.model import Batch, Sample
from agent.scaling.heartbeat import Heartbeat
from agent.sinks.push import next_tick
from tests.sinks.test_emf import check_emf, make

HEARTBEAT = "tasklens_scaling_task_heartbeat"


def heartbeats(docs: list[dict[str, object]]) -> Counter[int]:
    """Heartbeat datapoints per minute (of `_aws.Timestamp`), as CloudWatch's SampleCount counts them."""
    out: Counter[int] = Counter()
    for doc in docs:
        if HEARTBEAT in doc:
            value = doc[HEARTBEAT]
            out[doc["_aws"]["Timestamp"] // 60_000] += len(value) if isinstance(value, list) else 1  # type: ignore[index,operator]
    return out


@settings(max_examples=60, deadline=None)
@given(interval=st.one_of(st.integers(1, 60).map(float), st.floats(1, 60)), start=st.floats(0, 3600),
       minutes=st.integers(2, 4), stop=st.floats(0, 1))
def test_one_heartbeat_per_minute_whatever_the_interval_and_the_start(interval: float, start: float, minutes: int,
                                                                     stop: float) -> None:
    sink, hub, out = make(cloudwatch_interval=interval, cloudwatch_metrics=("tasklens_scaling_*", "jobs_*"))
    Heartbeat(hub).beat()
    hub.publish(Batch("statsd", [Sample("jobs.waiting", 3.0)]))  # another metric of the same record
    now = 1_800_000_000.0 + start
    offset = min(1.0, interval / 10)
    # the regular records at the boundaries the loop of `run` flushes (each tick of `next_tick` less its
    # offset), then the final one (SIGTERM)
    tick = math.floor((now - offset) / interval) + 1
    assert abs(next_tick(now, interval) - offset - tick * interval) < 1e-6
    boundaries = [(tick + i) * interval for i in range(int(minutes * 60 / interval) + 1)]
    docs = [json.loads(line) for b in boundaries for line in sink.render(b)[0].splitlines()]
    first, last = boundaries[0], boundaries[-1]
    end = last + stop * interval
    docs += [json.loads(line) for line in sink.render(end, since=last)[0].splitlines()]
    count = heartbeats(docs)
    assert max(count.values()) == 1, count  # never twice in a minute
    # every whole minute the records cover has its one
    covered = range(int((first - interval) // 60) + 1, int(last // 60))
    assert all(count[m] == 1 for m in covered), (count, list(covered))


def test_the_other_metrics_of_the_record_are_still_in_every_record() -> None:
    sink, hub, out = make(cloudwatch_interval=10.0, cloudwatch_metrics=("tasklens_scaling_*", "jobs_*"))
    Heartbeat(hub, target=200.0).beat()
    hub.publish(Batch("statsd", [Sample("jobs.waiting", 3.0)]))
    docs = [check_emf(line) for b in range(6) for line in sink.render(1_800_000_010.0 + 10 * b)[0].splitlines()]
    assert len(docs) == 6 and all(d["jobs_waiting"] == 3.0 for d in docs)
    assert all(d["tasklens_scaling_target_backlog_per_task"] == 200.0 for d in docs)  # a gauge: Average is right
    assert [HEARTBEAT in d for d in docs] == [True] + [False] * 5


def test_an_interval_over_a_minute_leaves_the_heartbeat_out_or_is_refused_when_it_is_asked_for() -> None:
    """Records further apart than a minute leave minutes without a heartbeat (0 tasks: the scale-from-zero
    alarm fires), and a heartbeat stamped back in each minute covered would reach CloudWatch up to an
    interval late, after the alarms evaluated that minute. With the default selection (which names it
    through `tasklens_scaling_*`) it is left out, with a warning: a longer interval to cut CloudWatch's
    cost was valid before the heartbeat was; a selection that names it makes the interval refused."""
    with pytest.raises(ConfigError, match=r"TASKLENS_CLOUDWATCH_INTERVAL=61 .*tasklens_scaling_task_heartbeat"):
        make(cloudwatch_interval=61.0, cloudwatch_metrics=("tasklens_scaling_*",))
    sink, hub, out = make(cloudwatch_interval=300.0)  # the default selection
    Heartbeat(hub, target=200.0).beat()
    docs = [check_emf(line) for b in range(3) for line in sink.render(1_800_000_000.0 + 300 * b)[0].splitlines()]
    assert docs and all(HEARTBEAT not in d and d["tasklens_scaling_target_backlog_per_task"] == 200.0 for d in docs)
    sink, hub, out = make(cloudwatch_interval=60.0)
    assert sink.interval == 60.0


@pytest.mark.parametrize("interval, metrics, outcome", [
    ("61", "tasklens_scaling_*", "refused"), ("120", "queue_*,tasklens_scaling_task_heartbeat", "refused"),
    ("300", "queue_*", "taken"), ("60", None, "taken"), ("300", None, "warned"),
    # a selection written out equal to the default is the user's: it names the heartbeat
    ("300", ",".join(Config.__dataclass_fields__["cloudwatch_metrics"].default), "refused")])
def test_check_says_what_the_sink_does(interval: str, metrics: str | None, outcome: str) -> None:
    """`check` and `run` validate alike: refused by `check` too, not only when `run` builds the sink."""
    from agent.cli import validate

    environ = {"TASKLENS_CLOUDWATCH": "emf", "TASKLENS_CLOUDWATCH_INTERVAL": interval,
               "TASKLENS_HTTP_ADDR": "127.0.0.1:0", "TASKLENS_STATSD_ADDR": "off"}
    if metrics:
        environ["TASKLENS_CLOUDWATCH_METRICS"] = metrics
    if outcome == "refused":
        with pytest.raises(ConfigError, match=rf"TASKLENS_CLOUDWATCH_INTERVAL={interval} is invalid"):
            validate(environ)
    else:
        _, warnings = validate(environ)
        assert any("left out of the EMF records" in w for w in warnings) == (outcome == "warned"), warnings
