"""CloudWatch EMF records, checked against the EMF specification's structure (a JSON schema written from
the specification, plus the rules a schema cannot say: targets at the root, limits, timestamp)."""

from __future__ import annotations

import asyncio
import io
import json
import math
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
from agent.sinks.emf import EmfSink
from tests.sinks.stores import until

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
                        "properties": {"Name": {"type": "string", "minLength": 1, "maxLength": 1024},
                                       "Unit": {"enum": UNITS}, "StorageResolution": {"enum": [1, 60]}}}},
                }}},
        }}},
}


def check_emf(line: str) -> dict[str, Any]:
    """Strict: one JSON object per line, the schema, and the target rules of the specification."""
    assert len(line.encode()) <= 256 * 1024
    doc = json.loads(line)
    jsonschema.validate(doc, EMF_SCHEMA)
    for directive in doc["_aws"]["CloudWatchMetrics"]:
        for dimension_set in directive["Dimensions"]:
            for key in dimension_set:
                assert isinstance(doc.get(key), str) and 1 <= len(doc[key]) <= 1024, key  # a string at the root
        names = [m["Name"] for m in directive["Metrics"]]
        assert len(names) == len(set(names))
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
    hub.publish(Batch("scaling", [Sample("tasklens.scaling.desired_tasks", 5.0)]))
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


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["queue.depth", "queue.in_flight", "ecs.task.cpu.utilization_percent"]),
                          st.text(max_size=1100), st.floats(allow_nan=True, allow_infinity=True)), max_size=30))
def test_any_tags_and_values_give_valid_records_or_counted_rejects(items: list[tuple[str, str, float]]) -> None:
    sink, hub, out = make()
    hub.publish(Batch("queue:q", [Sample(n, v, tags=(("queue", q),)) for n, q, v in items]))
    sink.emit(1_800_000_060.0)
    records(out)  # every line valid
    rejected = hub.metrics.total("tasklens.sink.points_rejected")
    bad = {(n, q) for n, q, v in items if len(q) > 1024 or not math.isfinite(v)}
    assert (rejected > 0) == bool(bad) or not items


def test_bad_settings_are_start_up_errors_naming_the_variable() -> None:
    config = load({"TASKLENS_CLOUDWATCH": "emf", "TASKLENS_CLOUDWATCH_DIMENSIONS": ",".join(f"d{i}" for i in range(10))})
    with pytest.raises(ConfigError, match="TASKLENS_CLOUDWATCH_DIMENSIONS"):
        EmfSink(config, Hub(TASK))
    with pytest.raises(ConfigError, match="TASKLENS_CLOUDWATCH_METRICS"):
        EmfSink(load({"TASKLENS_CLOUDWATCH_METRICS": "queue depth"}), Hub(TASK))
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
