"""Properties of what OTLP sends, against the other paths and the OTLP data model.

- Every label `/metrics` shows for a series reaches the Collector once, with its value: on the resource
  (under the name the ECS semantic conventions give it, or its own for a `TASKLENS_TAGS` tag) or on the
  point, never both, never neither. OTLP once left `TASKLENS_TAGS` off both (the points dropped them as
  "on the resource", the resource never had them), and the identity's `service` when `OTEL_SERVICE_NAME`
  replaced it; a worker's `team:other` arrived as `exported_team` beside no `team`; a series' own
  `launch_type:fargate` was left off the point as the task's `aws.ecs.launchtype=fargate` (`FARGATE`).
- Delta: the points of one stream never overlap and each starts where the one before ended, the point
  flagged NO_RECORDED_VALUE that ends a series included (it started at the series' first start, over
  intervals reported already).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m
from prometheus_client.parser import text_string_to_metric_families

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Kind, Points, Sample
from agent.sinks.otlp import OtlpSink
from agent.sinks.prometheus import PrometheusSink
from agent.sinks.push import Payload
from tests.sinks.test_otlp import TASK, attrs

NO_VALUE = m.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
# the identity's tags as the ECS semantic conventions name them on the resource (`ecs_cluster` is in
# `aws.ecs.cluster.arn`, `launch_type` lower-cased); any other tag keeps its name. Written out, not
# imported: the sink's table is what is checked
CONVENTIONS = {"service": "service.name", "version": "service.version", "env": "deployment.environment.name",
               "region": "cloud.region", "availability_zone": "cloud.availability_zone",
               "task_arn": "aws.ecs.task.arn", "task_id": "aws.ecs.task.id", "task_family": "aws.ecs.task.family",
               "task_revision": "aws.ecs.task.revision"}


def sink_for(identity: Identity, wall: Callable[[], float] = time.time,
             **overrides: Any) -> tuple[OtlpSink, PrometheusSink, Hub]:
    """The OTLP sink and /metrics, fed by one hub."""
    config = replace(Config(), **{"otlp_endpoint": "http://127.0.0.1:9", "otlp_compression": "none", **overrides})
    hub = Hub(identity)
    sink = OtlpSink(config, hub, wall=wall)
    prometheus = PrometheusSink(hub.metrics, pull=hub.pull, identity=lambda: hub.identity.tags)
    hub.add_sink(sink)
    hub.add_sink(prometheus)
    return sink, prometheus, hub


def received(payloads: list[Payload]) -> list[tuple[dict[str, str], m.Metric]]:
    """(resource, metric) of each metric of the requests."""
    out = []
    for payload in payloads:
        req = ExportMetricsServiceRequest()
        req.ParseFromString(payload.body)
        for rm in req.resource_metrics:
            out += [(attrs(rm.resource.attributes), metric) for sm in rm.scope_metrics for metric in sm.metrics]
    return out


def carries(resource: dict[str, str], key: str, value: str) -> bool:
    """The resource has the tag `key:value`."""
    if key == "ecs_cluster" and resource.get("aws.ecs.cluster.arn", "").endswith(f":cluster/{value}"):
        return True
    if key == "launch_type":  # lower-cased there (`fargate`): it stands for ECS's `FARGATE`, no other case of it
        launch_type = resource.get("aws.ecs.launchtype")
        return launch_type is not None and launch_type == value.lower() and launch_type.upper() == value
    return resource.get(CONVENTIONS.get(key, key)) == value


def test_tasklens_tags_and_a_replaced_service_reach_the_collector() -> None:
    # the reviewer's case: TASKLENS_TAGS=team:payments,tier:gold, OTEL_SERVICE_NAME=orders-otel
    identity = replace(TASK, service="demo", extra=(("team", "payments"), ("tier", "gold")))
    sink, _, hub = sink_for(identity, otel_service_name="orders-otel")
    hub.publish(Batch("statsd", [Sample("jobs", 1.0, Kind.COUNT, (("q", "a"),), interval=10.0),
                                 Sample("jobs", 1.0, Kind.COUNT, (("q", "b"), ("team", "other")), interval=10.0)]))
    [(resource, metric)] = [(r, x) for r, x in received(sink.flush()) if x.name == "jobs"]
    assert resource["service.name"] == "orders-otel" and resource["team"] == "payments" and resource["tier"] == "gold"
    assert [attrs(p.attributes) for p in metric.sum.data_points] == [
        {"service": "demo", "q": "a"}, {"service": "demo", "q": "b", "exported_team": "other"}]


def test_the_cluster_is_on_the_resource_when_the_task_arn_gives_no_region_and_account() -> None:
    sink, _, hub = sink_for(replace(TASK, task_arn="task/prod/4f1c2d3e"))
    hub.publish(Batch("statsd", [Sample("jobs", 1.0)]))
    [(resource, metric)] = [(r, x) for r, x in received(sink.flush()) if x.name == "jobs"]
    assert "aws.ecs.cluster.arn" not in resource and resource["ecs_cluster"] == "prod"
    assert attrs(metric.gauge.data_points[0].attributes) == {}


VALUES = st.sampled_from(["", "true", "a", "b", "demo", "payments", "prod", "x y", 'q"\\', "é"])
# label names as they are (no sanitising to undo), identity keys among them
KEYS = st.sampled_from(["service", "env", "version", "ecs_cluster", "task_id", "task_arn", "region",
                        "availability_zone", "team", "tier", "queue", "exported_team", "exported_service", "q"])
# `launch_type` in both cases: ECS's (`FARGATE`, what /metrics shows for the task) and semconv's (`fargate`,
# the resource's), which a series may carry too: a label value of its own, not the task's
LAUNCH_TYPES = st.sampled_from(["", "FARGATE", "fargate", "Fargate", "EC2", "ec2"])
TAGS = st.one_of(st.tuples(KEYS, VALUES), st.tuples(st.just("launch_type"), LAUNCH_TYPES))
ARNS = st.one_of(st.sampled_from(["", "arn:aws:ecs:eu-west-1:123456789012:task/prod/4f1c",
                                  "arn:aws:ecs:eu-west-1:123456789012:task/4f1c", "task/prod/4f1c",
                                  "arn:aws:ecs:eu-west-1", "arn:aws:ecs:::task/x", "a:b:c:d:e:f:g"]),
                 st.text(alphabet=":/ab", max_size=12))
IDENTITIES = st.builds(
    Identity, service=st.sampled_from(["demo", "orders", "a"]), env=VALUES, version=VALUES, ecs_cluster=VALUES,
    task_family=VALUES, task_revision=VALUES, task_id=VALUES, task_arn=ARNS, availability_zone=VALUES,
    region=VALUES, launch_type=st.sampled_from(["", "FARGATE", "EC2"]),
    extra=st.lists(st.tuples(KEYS, VALUES), max_size=4, unique_by=lambda kv: kv[0]).map(tuple))
TAG_SETS = st.lists(st.lists(TAGS, max_size=4).map(tuple), max_size=4)


@settings(max_examples=300, deadline=None)
@given(IDENTITIES, st.sampled_from(["", "demo", "orders-otel"]),
       st.lists(st.one_of(st.tuples(st.sampled_from(["team", "service.name", "aws.ecs.cluster.arn", "cloud.region",
                                                      "q"]), VALUES),
                          st.tuples(st.just("aws.ecs.launchtype"), LAUNCH_TYPES)), max_size=2).map(tuple),
       TAG_SETS, TAG_SETS)
def test_every_label_of_metrics_is_on_the_resource_or_the_point_once(
        identity: Identity, service_name: str, resource_attributes: tuple[tuple[str, str], ...],
        worker_tags: list[tuple[tuple[str, str], ...]], own_tags: list[tuple[tuple[str, str], ...]]) -> None:
    sink, prometheus, hub = sink_for(identity, otel_service_name=service_name,
                                     otel_resource_attributes=resource_attributes)
    # a worker's series (StatsD: the task's tags cannot be replaced) and the sidecar's own (a source's
    # snapshot: its own tags win), as /metrics treats each
    hub.publish(Batch("statsd", [Sample(f"w{i}", 1.0, tags=tags) for i, tags in enumerate(worker_tags)]))
    hub.publish(Batch("queue:q", [Sample(f"s{i}", 1.0, tags=tags) for i, tags in enumerate(own_tags)], snapshot=True))

    shown = {s.name: s.labels for family in text_string_to_metric_families(prometheus.render().decode())
             for s in family.samples if s.name[0] in "ws" or s.name == "ecs_task_info"}
    sent = {metric.name.replace(".", "_"): (resource, metric.gauge.data_points)
            for resource, metric in received(sink.flush()) if metric.name[0] in "ws" or metric.name == "ecs.task.info"}
    assert set(sent) == set(shown)  # a series /metrics refuses (`label_conflict`) is refused here too
    for name, labels in shown.items():
        resource, (point,) = sent[name]
        attributes = [(kv.key, kv.value.string_value) for kv in point.attributes]
        on_point = dict(attributes)
        assert len(on_point) == len(attributes), attributes
        assert all(labels.get(k) == v for k, v in attributes), (name, labels, attributes)  # nothing of its own
        for key, value in labels.items():
            assert (on_point.get(key) == value) != carries(resource, key, value), (name, key, value, resource, attributes)


KINDS = st.sampled_from(["count", "histogram", "counter"])  # a StatsD count, histogram; a source's counter


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.frozensets(KINDS), st.booleans()), min_size=1, max_size=12),
       st.sampled_from(["delta", "lowmemory"]))
def test_delta_points_of_a_stream_start_where_the_one_before_ended(steps: list[tuple[frozenset[str], bool]],
                                                                   temporality: str) -> None:
    """Each step: the series present (each also ends and comes back: a worker's idle past the TTL, a
    source's left out of its snapshot), a flush; a clean stop at the end."""
    now = [1000.0]
    sink, _, hub = sink_for(TASK, otlp_temporality=temporality, wall=lambda: now[0])
    sink.state.clock = lambda: now[0]
    total = 0.0
    metrics = []
    for present, idle in steps:
        now[0] += sink.state.ttl + 1 if idle else 1.0
        total += 1.0
        worker = []
        if "count" in present:
            worker.append(Sample("jobs", 1.0, Kind.COUNT, interval=10.0))
        if "histogram" in present:
            worker.append(Sample("lat", Points((5.0,), (1.0,)), Kind.HISTOGRAM))
        hub.publish(Batch("statsd", worker))
        source = [Sample("cpu", total, Kind.COUNTER)] if "counter" in present else []
        hub.publish(Batch("ecs", source, snapshot=True))
        metrics += [metric for _, metric in received(sink.flush())]
    now[0] += 1.0
    metrics += [metric for _, metric in received(sink.stop_series())]

    streams: dict[str, list[Any]] = {}
    for metric in metrics:
        data = getattr(metric, metric.WhichOneof("data"))
        if metric.name in ("jobs", "lat", "cpu") and data.aggregation_temporality == m.AGGREGATION_TEMPORALITY_DELTA:
            streams.setdefault(metric.name, []).extend(data.data_points)
    for name, points in streams.items():
        for before, point in zip(points, points[1:]):
            assert point.start_time_unix_nano <= point.time_unix_nano
            if before.flags & NO_VALUE:  # the stream ended: a new one starts after it
                assert point.start_time_unix_nano >= before.time_unix_nano, name
            else:
                assert point.start_time_unix_nano == before.time_unix_nano, (name, before, point)
