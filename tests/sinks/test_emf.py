"""CloudWatch EMF records, checked against the EMF specification's structure (a JSON schema written from
the specification, plus the rules a schema cannot say: targets at the root, limits, timestamp)."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import json
import re
import time
from dataclasses import replace
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Config, ConfigError, load
from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Kind, Points, Sample
from agent.sinks import emf
from agent.sinks.emf import EmfSink
from agent.sinks.names import metric_name, reserved
from tests.sinks.stores import until
from tests.support import wait_until

TASK = Identity(service="orders-worker", env="test", ecs_cluster="prod", task_family="orders", task_revision="7",
                task_id="4f1c2d3e")
UNITS = ["Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
         "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
         "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
         "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None"]
# The EMF specification's structure as a JSON schema (root `_aws`, MetricDirectives, MetricDefinitions).
EMF_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["_aws"],
    "properties": {"_aws": {
        "type": "object", "additionalProperties": False, "required": ["Timestamp", "CloudWatchMetrics"],
        "properties": {
            "Timestamp": {"type": "integer", "minimum": 0},
            "CloudWatchMetrics": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["Namespace", "Dimensions", "Metrics"],
                "properties": {
                    "Namespace": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^:]"},
                    "Dimensions": {"type": "array", "items": {
                        "type": "array", "maxItems": 9, "uniqueItems": True,
                        "items": {"type": "string", "minLength": 1, "maxLength": 255}}},
                    "Metrics": {"type": "array", "minItems": 1, "maxItems": 100, "items": {
                        "type": "object", "additionalProperties": False, "required": ["Name"],
                        "properties": {"Name": {"type": "string", "minLength": 1, "maxLength": 255},
                                       "Unit": {"enum": UNITS}, "StorageResolution": {"enum": [1, 60]}}}},
                }}},
        }}},
}


def cloudwatch_text(text: str) -> bool:
    """A dimension value CloudWatch takes (API reference, Dimension): ASCII, no control character, not
    only whitespace, 1 to 1,024 characters. Written out here, not imported from the code under test."""
    return 1 <= len(text) <= 1024 and all(" " <= c <= "~" for c in text) and text.strip() != ""


def check_emf(line: str) -> dict[str, Any]:
    """Strict: one JSON object per line, the schema, and the target rules of the specification."""
    assert len(line.encode()) <= 256 * 1024
    doc = json.loads(line)
    jsonschema.validate(doc, EMF_SCHEMA)
    for directive in doc["_aws"]["CloudWatchMetrics"]:
        keys = [key for dimension_set in directive["Dimensions"] for key in dimension_set]
        for key in keys:
            assert isinstance(doc.get(key), str) and cloudwatch_text(doc[key]), key  # a string at the root
        names = [m["Name"] for m in directive["Metrics"]]
        assert len(names) == len(set(names))
        assert not set(names) & {"_aws", *keys}, names  # one root member is one target
        for name in names:
            value = doc.get(name)
            values = value if isinstance(value, list) else [value]
            assert 1 <= len(values) <= 100, name
            assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values), (name, value)
    return doc  # type: ignore[no-any-return]


def make(**overrides: Any) -> tuple[EmfSink, Hub, io.StringIO]:
    config = replace(Config(), **{"cloudwatch": "emf", **overrides})
    hub = Hub(TASK)
    out = io.StringIO()
    sink = EmfSink(config, hub, stream=out)
    hub.add_sink(sink)
    return sink, hub, out


def records(out: io.StringIO) -> list[dict[str, Any]]:
    return [check_emf(line) for line in out.getvalue().splitlines()]


def test_the_default_selection_sends_queue_scaling_and_task_percentages_per_service_and_queue() -> None:
    sink, hub, out = make()
    hub.publish(Batch("ecs", [
        Sample("ecs.task.cpu.utilization_percent", 37.5),
        Sample("ecs.task.memory.utilization_percent", 61.0),
        Sample("ecs.task.memory.usage_bytes", 1e9),  # not selected by default
    ], snapshot=True))
    hub.publish(Batch("queue:orders", [
        Sample("queue.depth", 120.0, tags=(("queue", "orders"),)),
        Sample("queue.in_flight", 4.0, tags=(("queue", "orders"),)),
        Sample("queue.oldest_age_seconds", 33.0, tags=(("queue", "orders"),)),
        Sample("queue.backlog_per_task", 30.0, tags=(("queue", "orders"),)),
    ], snapshot=True))
    hub.publish(Batch("scaling", [Sample("tasklens.scaling.desired_tasks", 5.0)], snapshot=True))  # as the sidecar publishes
    boundary = 1_800_000_020.0
    assert sink.emit(boundary) == 2
    docs = records(out)
    by_dims = {tuple(d["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]): d for d in docs}
    task = by_dims[("ecs_cluster", "service")]
    assert task["ecs_cluster"] == "prod" and task["service"] == "orders-worker"
    assert task["ecs_task_cpu_utilization_percent"] == 37.5 and task["ecs_task_memory_utilization_percent"] == 61.0
    assert task["tasklens_scaling_desired_tasks"] == 5.0
    assert "ecs_task_memory_usage_bytes" not in task
    units = {m["Name"]: m["Unit"] for m in task["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units["ecs_task_cpu_utilization_percent"] == "Percent"
    queue = by_dims[("ecs_cluster", "service", "queue")]
    assert queue["queue"] == "orders"
    assert {k: queue[k] for k in ("queue_depth", "queue_in_flight", "queue_oldest_age_seconds",
                                   "queue_backlog_per_task")} == {"queue_depth": 120.0, "queue_in_flight": 4.0,
                                                                  "queue_oldest_age_seconds": 33.0,
                                                                  "queue_backlog_per_task": 30.0}
    assert queue["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "tasklens"
    # the timestamp is explicit and inside the minute the values describe, not on the next boundary
    for d in docs:
        ts = d["_aws"]["Timestamp"]
        assert ts == int((boundary - 30) * 1000)
        assert (boundary - 60) * 1000 <= ts < boundary * 1000


def test_counters_send_their_increase_per_interval_and_names_are_prometheus_style() -> None:
    sink, hub, out = make(cloudwatch_metrics=("orders_*", "queue_received_total"), cloudwatch_dimensions=("service",))
    hub.publish(Batch("statsd", [Sample("orders.processed", 5.0, Kind.COUNT, interval=10.0)]))
    hub.publish(Batch("queue:orders", [Sample("queue.received_total", 100.0, Kind.COUNTER)], snapshot=True))
    hub.publish(Batch("statsd", [Sample("orders.latency", Points((1.0,), (1.0,)), Kind.HISTOGRAM)]))
    sink.emit(1_800_000_060.0)
    hub.publish(Batch("statsd", [Sample("orders.processed", 2.0, Kind.COUNT, interval=10.0)]))
    hub.publish(Batch("queue:orders", [Sample("queue.received_total", 130.0, Kind.COUNTER)], snapshot=True))
    sink.emit(1_800_000_120.0)
    first, second = records(out)
    assert first["orders_processed_total"] == 5.0  # a StatsD count is all increase
    assert "queue_received_total" not in first  # a source's cumulative counter first seen has no increase yet
    assert second["orders_processed_total"] == 2.0 and second["queue_received_total"] == 30.0
    assert "orders_latency" not in second  # histograms are not sent as EMF
    assert second["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]


@pytest.mark.parametrize("selector, sent", [("jobs", True), ("jobs_total", True), ("jobs*", True), ("job", False),
                                             ("depth", False), ("depth_total", False)])
def test_a_series_is_selected_by_any_name_it_shows_on_metrics(selector: str, sent: bool) -> None:
    """A counter `jobs` shows the family `jobs` and the sample `jobs_total` on /metrics: either selects it
    (only `jobs_total` did, and `jobs` selected nothing, silently), as TASKLENS_REMOTE_WRITE_METRICS selects."""
    sink, hub, out = make(cloudwatch_metrics=(selector, "depth"), cloudwatch_dimensions=("service",))
    hub.publish(Batch("statsd", [Sample("jobs", 5.0, Kind.COUNT, interval=10.0), Sample("depth", 3.0)]))
    sink.emit(1_800_000_060.0)
    (record,) = records(out)
    assert ("jobs_total" in record) is sent and record["depth"] == 3.0


def test_limits_split_documents_and_repeat_values_become_arrays() -> None:
    sink, hub, out = make(cloudwatch_metrics=("m_*", "same"), cloudwatch_dimensions=("service",))
    hub.publish(Batch("statsd", [Sample(f"m.{i}", float(i)) for i in range(250)]
                + [Sample("same", float(i), tags=(("container_name", f"c{i}"),)) for i in range(150)]))
    sink.emit(1_800_000_060.0)
    docs = records(out)
    names = [m["Name"] for d in docs for m in d["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    assert sorted(n for n in names if n.startswith("m_")) == sorted(f"m_{i}" for i in range(250))
    same = [d["same"] for d in docs if "same" in d]
    assert sorted(v for vs in same for v in vs) == [float(i) for i in range(150)]
    assert max(len(d["_aws"]["CloudWatchMetrics"][0]["Metrics"]) for d in docs) == 100


DIMENSIONS = ("ecs_cluster", "service", "queue")  # the default
hostile_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(
    [1e200, -1e200, 1.174271e+108, 1.1742710000000001e+108, 8.515920e-109, 8.5e-109, 5e-324, -0.0, 0.0]))
hostile_text = st.one_of(st.text(max_size=30), st.sampled_from(
    ["", " ", "   ", "\t", "a\x01b", "a\x7fb", "ünï", "ok", ":ok", "x" * 1024, "x" * 1025]))
hostile_names = st.one_of(st.sampled_from(["_aws", *DIMENSIONS, "queue_depth", "n" * 255, "n" * 256, ""]),
                          st.text(max_size=20)).filter(
    lambda n: not metric_name(n).startswith(("tasklens_", "ecs_task_info")))  # not one of the hub's own series
hostile_tags = st.lists(st.tuples(st.one_of(st.sampled_from(["_aws", *DIMENSIONS, "other"]), st.text(max_size=8)),
                                  hostile_text), max_size=4)


def written_values(docs: list[dict[str, Any]]) -> dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]:
    """(metric name, its dimensions) -> the values written, over every record."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}
    for doc in docs:
        directive = doc["_aws"]["CloudWatchMetrics"][0]
        dims = tuple((k, doc[k]) for k in directive["Dimensions"][0])
        for metric in directive["Metrics"]:
            value = doc[metric["Name"]]
            out.setdefault((metric["Name"], dims), []).extend(value if isinstance(value, list) else [value])
    return out


def refused(sample: Sample) -> bool:
    """What CloudWatch would refuse, or what would take another member's place at the record's root. A
    worker's point: its tag of an identity key does not give that dimension (the task's value does)."""
    pname = metric_name(sample.name)
    have = {**dict(sample.tags), **dict(TASK.tags)}
    values = [have[k] or "true" for k in DIMENSIONS if k in have]
    number = float(sample.value)  # type: ignore[arg-type]
    in_range = not number or emf.SMALLEST <= abs(number) <= emf.LARGEST  # what CloudWatch takes (non-finite: not)
    return (not pname or pname in ("_aws", *DIMENSIONS) or len(pname) > 255 or not in_range
            or not all(cloudwatch_text(v) for v in values) or reserved(pname))  # a worker's under the sidecar's names


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(hostile_names, hostile_tags, hostile_values), max_size=20))
def test_hostile_names_tags_and_values_drop_only_their_own_point_and_count_it(
        points: list[tuple[str, list[tuple[str, str]], float]]) -> None:
    sink, hub, out = make(cloudwatch_metrics=("*",))
    # each its own series (its `point` tag), beside well-formed points and the autoscaling heartbeat
    hostile = [Sample(name, value, tags=(*tags, ("point", str(i)))) for i, (name, tags, value) in enumerate(points)]
    good = [Sample(f"good.{i}", float(i), tags=(("queue", f"q{i % 2}"),)) for i in range(4)]
    batch = Batch("statsd", hostile + good)
    expected_refused = sum(refused(s) for s in hub.enrich(batch).samples)
    hub.publish(batch)
    hub.publish(Batch("heartbeat", [Sample("tasklens.scaling.task_heartbeat", 1.0)], snapshot=True))
    sink.emit(1_800_000_060.0)  # never raises
    written = written_values(records(out))  # every record valid EMF
    task = (("ecs_cluster", "prod"), ("service", "orders-worker"))
    for i in range(4):
        assert float(i) in written[(f"good_{i}", (*task, ("queue", f"q{i % 2}")))]
    assert written[("tasklens_scaling_task_heartbeat", task)] == [1.0]
    # every point is written or counted, never both, and only the refused ones are counted
    rejected = hub.metrics.total("tasklens.sink.points_rejected")
    own = {metric_name(s.name) for s in hub.pull()} - {"tasklens_scaling_task_heartbeat"}  # the hub's series
    sent = sum(len(vs) for (name, _), vs in written.items() if name not in own)
    assert sent + rejected == len(hostile) + len(good) + 1
    assert rejected == expected_refused


def test_a_point_that_would_corrupt_its_record_is_dropped_alone_and_counted() -> None:
    """As a worker sends them: `_aws:1|g`, `ecs_cluster:7|g`, `service:8|g|#queue:q1`, a queue tag with a
    control character, non-ASCII or only spaces, beside points that are fine."""
    sink, hub, out = make(cloudwatch_metrics=("*",))
    hub.publish(Batch("statsd", [
        Sample("_aws", 1.0), Sample("ecs_cluster", 7.0), Sample("service", 8.0, tags=(("queue", "q1"),)),
        Sample("jobs_waiting", 5.0, tags=(("queue", "a\x01b"),)), Sample("jobs_waiting", 5.0, tags=(("queue", "ünï"),)),
        Sample("jobs_waiting", 5.0, tags=(("queue", "   "),)),
        Sample("jobs_waiting", 9.0, tags=(("queue", "q1"),)), Sample("jobs_done", 3.0, tags=(("queue", "q1"),)),
    ]))
    hub.publish(Batch("heartbeat", [Sample("tasklens.scaling.task_heartbeat", 1.0)], snapshot=True))
    assert sink.emit(1_800_000_060.0) == 2
    by_dims = {tuple(d["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]): d for d in records(out)}
    task, queue = by_dims[("ecs_cluster", "service")], by_dims[("ecs_cluster", "service", "queue")]
    assert task["ecs_cluster"] == "prod" and task["service"] == "orders-worker"
    assert task["tasklens_scaling_task_heartbeat"] == 1.0
    assert queue["queue"] == "q1" and queue["jobs_waiting"] == 9.0 and queue["jobs_done"] == 3.0
    assert "_aws" not in [m["Name"] for d in by_dims.values() for m in d["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    rejected = {reason: hub.metrics.get("tasklens.sink.points_rejected", sink="emf", reason=reason)
                for reason in ("reserved_name", "invalid_dimension")}
    assert rejected == {"reserved_name": 3, "invalid_dimension": 3}


def test_a_metric_name_over_255_characters_is_dropped_and_counted() -> None:
    sink, hub, out = make(cloudwatch_metrics=("*",))
    hub.publish(Batch("statsd", [Sample("n" * 256, 1.0), Sample("n" * 255, 2.0)]))
    sink.emit(1_800_000_060.0)
    assert [d.get("n" * 255) for d in records(out)] == [2.0]
    assert hub.metrics.get("tasklens.sink.points_rejected", sink="emf", reason="invalid_name") == 1


def test_a_counter_whose_increase_would_overflow_is_dropped_and_counted() -> None:
    """-1.7e308 then 1.7e308: finite values whose difference is not (JSON has no inf: the render raised).
    A cumulative counter is never negative (agent/sinks/cumulative.py): the first is refused there."""
    sink, hub, out = make(cloudwatch_metrics=("big_total", "ok"))
    for value, boundary in ((-1.7e308, 1_800_000_060.0), (1.7e308, 1_800_000_120.0)):
        hub.publish(Batch("q", [Sample("big_total", value, Kind.COUNTER), Sample("ok", 1.0)], snapshot=True))
        sink.emit(boundary)
    assert [d["ok"] for d in records(out)] == [1.0, 1.0] and not any("big_total" in d for d in records(out))
    assert hub.metrics.get("tasklens.sink.points_rejected", sink="emf", reason="negative_counter") == 1


def test_settings_within_cloudwatch_rules_are_taken() -> None:
    """(The bad ones: tests/test_config.py and, through `check` and `run`, tests/reliability/test_hostile_config.py.)"""
    config = load({"TASKLENS_CLOUDWATCH_NAMESPACE": "MyApp/Workers #1", "TASKLENS_CLOUDWATCH_METRICS": "queue_*,x",
                   "TASKLENS_CLOUDWATCH_DIMENSIONS": ",".join(f"d{i}" for i in range(9))})
    assert config.cloudwatch_namespace == "MyApp/Workers #1" and config.cloudwatch_metrics == ("queue_*", "x")
    assert len(config.cloudwatch_dimensions) == 9
    with pytest.raises(ConfigError, match="TASKLENS_CLOUDWATCH"):
        load({"TASKLENS_CLOUDWATCH": "api"})


async def test_the_sink_writes_on_its_interval_and_once_more_on_stop() -> None:
    sink, hub, out = make(cloudwatch_interval=0.2)
    hub.publish(Batch("queue:orders", [Sample("queue.depth", 3.0, tags=(("queue", "orders"),))], snapshot=True))
    stop = asyncio.Event()
    runner = asyncio.create_task(sink.run(stop))
    await until(lambda: len(out.getvalue().splitlines()) >= 2, 5, "two records")
    n = len(out.getvalue().splitlines())
    stop.set()
    await asyncio.wait_for(runner, 5)
    assert len(out.getvalue().splitlines()) > n  # the final record
    assert all(d["queue_depth"] == 3.0 for d in records(out) if "queue_depth" in d)


async def test_a_blocked_stdout_never_stalls_the_event_loop() -> None:
    """awslogs in its default blocking mode blocks writes while CloudWatch Logs is slow."""
    import threading

    class BlockedStream(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()
            self.entered = threading.Event()

        def write(self, text: str) -> int:
            self.entered.set()
            self.release.wait(10)
            return super().write(text)

    sink, hub, _ = make(cloudwatch_interval=0.1)
    stream = sink.stream = BlockedStream()
    hub.publish(Batch("queue:q", [Sample("queue.depth", 1.0, tags=(("queue", "q"),))], snapshot=True))
    stop = asyncio.Event()
    runner = asyncio.create_task(sink.run(stop))
    await until(stream.entered.is_set, 5, "a write in progress")
    started = time.monotonic()
    await asyncio.sleep(0.01)
    assert time.monotonic() - started < 0.5  # the loop still runs while the write is blocked
    stream.release.set()
    stop.set()
    await asyncio.wait_for(runner, 5)
    assert "queue_depth" in stream.getvalue()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 1000), st.none()), min_size=1, max_size=12))
def test_counter_increases_add_up_to_what_was_counted_across_series_that_end(steps: list[int | None]) -> None:
    """A StatsD count sent in bursts, its series ending (idle past the TTL) between some of them: the
    increases written add up to what was counted (a series that came back within 3 intervals of its end
    was counted from the old one's sum: 2 written for a new 5 after an ended 3)."""
    sink, hub, out = make(cloudwatch_metrics=("*",))
    now, boundary = [0.0], 1_800_000_000.0
    sink.state.clock = lambda: now[0]
    counted = 0.0
    for step in steps + [None]:
        if step is None:
            now[0] += sink.state.ttl + 1  # idle past the TTL: the series ends at this record
        else:
            hub.publish(Batch("statsd", [Sample("jobs.done", float(step), Kind.COUNT, interval=10.0)]))
            counted += step
        boundary += sink.interval
        sink.emit(boundary)
        now[0] += 1
    written = sum(sum(values) for (name, _), values in written_values(records(out)).items() if name == "jobs_done_total")
    assert written == counted
    assert not [key for key in sink._deltas._last if key[0] == "jobs.done"]  # it ended: nothing kept


class _BrokenStream:
    """A stdout that is there but fails in a way that is not an OSError."""

    def write(self, text: str) -> int:
        raise AttributeError("'NoneType' object has no attribute 'write'")

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("broken", ["none", "attribute_error", "closed"])
def test_a_missing_or_broken_stdout_is_counted_as_write_error_and_logged_once_never_raised(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, broken: str) -> None:
    """sys.stdout is None when fd 1 was closed as the interpreter started: each record is lost, counted as
    `write_error` with its metrics, and one log line says so (rate-limited), not a traceback a record."""
    sink, hub, _ = make()
    sink.stream = None
    stream: Any = {"none": None, "attribute_error": _BrokenStream(), "closed": io.StringIO()}[broken]
    if broken == "closed":
        stream.close()
    monkeypatch.setattr(sys, "stdout", stream)
    hub.publish(Batch("queue:q", [Sample("queue.depth", 1.0, tags=(("queue", "q"),))], snapshot=True))
    with caplog.at_level(logging.ERROR, logger="tasklens"):
        written = [sink.emit(time.time()) for _ in range(5)]
    assert written == [0] * 5
    dropped = sink.metrics.get("tasklens.exporter.points_dropped", exporter=emf.NAME, reason="write_error")
    assert dropped == 5  # one metric a record
    assert sink.metrics.get("tasklens.exporter.submissions", exporter=emf.NAME, status="ok") == 0
    lines = [r.getMessage() for r in caplog.records if "cannot write to stdout" in r.getMessage()]
    assert len(lines) == 1, lines


def test_the_sidecar_started_with_stdout_closed_counts_emf_records_as_write_error(sidecar_factory) -> None:
    """The real process, stdout closed at start; PYTHONMALLOC set, so no exec with the system allocator
    gives it a fresh sys.stdout over the /dev/null the entry point opened: sys.stdout stays None."""
    sidecar = sidecar_factory(closed=(1,), TASKLENS_CLOUDWATCH="emf", TASKLENS_CLOUDWATCH_INTERVAL="1",
                              PYTHONMALLOC="malloc")
    dropped = re.compile(r'points_dropped_total\{exporter="emf",reason="write_error"[^}]*\} [2-9]')
    wait_until(lambda: dropped.search(sidecar.get("/metrics")[1]), 30, what="two write errors")
    assert sidecar.stop() == 0
    assert "Traceback" not in sidecar.log and "Exception in thread" not in sidecar.log, sidecar.log[-2000:]
    assert sidecar.log.count("emf: cannot write to stdout") == 1, sidecar.log[-2000:]
