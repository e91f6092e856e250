"""remote_write's bound on labels per series (`TASKLENS_REMOTE_WRITE_MAX_LABELS`, default 30).

VictoriaMetrics keeps 30 labels per series by default and silently drops the rest of the sorted set:
with many DogStatsD tags, `task_family`, `task_id`, `task_revision` went, and tasks' series merged. A
series over the bound is refused and counted instead; checked here against the real VictoriaMetrics.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Config, ConfigError, load
from agent.model import Batch, Kind, Points, Sample
from agent.sinks.cumulative import Histogram, Series
from agent.sinks.remote_write import label_sets
from tests.sinks.stores import have, start_victoria_metrics, until
from tests.sinks.test_remote_write import TASK, make, sent

pytest.importorskip("cramjam")

IDENTITY = dict(TASK.tags)


def wide(n: int) -> tuple[tuple[str, str], ...]:
    """`n` DogStatsD tags whose names sort before the identity labels (`attr00` < `task_id`)."""
    return tuple((f"attr{i:02d}", "v") for i in range(n))


def rejected(hub: object, reason: str = "too_many_labels") -> float:
    return hub.metrics.get("tasklens.sink.points_rejected", sink="remote_write", reason=reason)  # type: ignore[attr-defined]


async def test_victoria_metrics_keeps_the_identity_of_every_series_that_arrives(tmp_path: Path) -> None:
    if not have("victoria-metrics"):
        pytest.skip("victoria-metrics is not installed")
    vm = start_victoria_metrics(tmp_path)  # its default -maxLabelsPerTimeseries: 30
    stop = asyncio.Event()
    sink, hub = make(vm.write_url)
    runner = asyncio.create_task(sink.run(stop))
    try:
        counts = range(0, 40, 3)
        hub.publish(Batch("statsd", [Sample(f"wide.n{n}", 1.0, Kind.GAUGE, wide(n)) for n in counts]))
        await until(lambda: sent(sink) > 0 and sink.pusher.pending == 0, 20, "the first push delivered")
        over = [n for n in counts if n + len(IDENTITY) + 1 > 30]
        assert over and rejected(hub) == len(over)
        expected = sorted(f"wide_n{n}" for n in counts if n not in over)
        stored: list[dict[str, Any]] = []

        async def arrived() -> bool:
            vm.flush()
            stored[:] = await vm.aquery('{__name__=~"wide_n.*"}')
            return sorted(r["metric"]["__name__"] for r in stored) == expected

        await until(arrived, 20, "every series under the bound in VictoriaMetrics")
        # every series under the bound arrived whole, the identity labels with it
        for r in stored:
            labels = r["metric"]
            assert {k: labels.get(k) for k in IDENTITY} == IDENTITY, labels
            assert len(labels) == int(labels["__name__"][6:]) + len(IDENTITY) + 1, labels
    finally:
        stop.set()
        await asyncio.wait_for(runner, 15)
        vm.stop()


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 80), st.integers(10, 100), st.booleans(), st.integers(0, 5))
def test_a_series_over_the_bound_is_refused_never_cut(tags: int, bound: int, histogram: bool, external: int) -> None:
    series = Series(Kind.HISTOGRAM if histogram else Kind.GAUGE, Histogram((1.0, 2.0)) if histogram else 1.0,
                    0.0, 0.0, worker=True)
    ext = tuple((f"ext{i}", "x") for i in range(external))
    widest = tags + len(IDENTITY) + external + 1 + (1 if histogram else 0)  # __name__, and le on a bucket
    try:
        sets = label_sets("m", wide(tags) + tuple(IDENTITY.items()), series, ext, IDENTITY, bound)
    except ValueError as exc:
        assert exc.args == ("too_many_labels",) and widest > bound
        return
    assert widest <= bound
    assert max(map(len, sets)) == widest
    assert all(dict(s).items() >= IDENTITY.items() for s in sets)


def test_refusals_are_counted_per_point_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    # room for the sidecar's own series (identity, `exporter`, `reason`), not for these two
    sink, hub = make("http://127.0.0.1:9/api/v1/write", remote_write_max_labels=len(IDENTITY) + 5)
    hub.publish(Batch("statsd", [Sample("h", Points((1.0,), (1.0,)), Kind.HISTOGRAM, wide(5)),
                                 Sample("g", 1.0, Kind.GAUGE, wide(9))]))
    with caplog.at_level(logging.WARNING, "tasklens"):
        for _ in range(3):
            sink.flush()
    assert rejected(hub) == 6
    lines = [r.getMessage() for r in caplog.records if "too_many_labels" in r.getMessage()]
    assert len(lines) == 1 and "TASKLENS_REMOTE_WRITE_MAX_LABELS" in lines[0]


def test_the_bound_is_a_setting_with_a_range() -> None:
    assert Config().remote_write_max_labels == 30
    assert load({"TASKLENS_REMOTE_WRITE_MAX_LABELS": "70"}).remote_write_max_labels == 70
    for bad in ("9", "1001", "x"):
        with pytest.raises(ConfigError, match="TASKLENS_REMOTE_WRITE_MAX_LABELS"):
            load({"TASKLENS_REMOTE_WRITE_MAX_LABELS": bad})
    assert replace(Config(), remote_write_max_labels=12).remote_write_max_labels == 12
