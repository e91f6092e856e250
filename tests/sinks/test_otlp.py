"""OTLP/HTTP against a strict loopback receiver that decodes every request with the official
opentelemetry-proto classes. A fake, because no OTLP-receiving engine installs here: the Collector is a Go
binary from GitHub releases (not on PyPI or Debian), and building it from Go modules is out of reach of
a test run. The receiver checks what a Collector's otlpreceiver and its processors rely on: content type,
gzip, the ECS semantic-convention resource, temporality, monotonicity, start times and bucket layouts."""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Config, load
from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Kind, Points, Sample
from tests.support import serve_app
from tests.sinks.stores import until

pytest.importorskip("opentelemetry.proto")
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m

from agent.sinks.otlp import OtlpSink, metrics_url

TASK = Identity(service="orders-worker", env="production", version="1.4.2", ecs_cluster="prod", task_family="orders",
                task_revision="7", task_id="4f1c2d3e", task_arn="arn:aws:ecs:eu-west-1:123456789012:task/prod/4f1c2d3e",
                availability_zone="eu-west-1b", region="eu-west-1", launch_type="FARGATE")


class Collector:
    def __init__(self) -> None:
        self.requests: list[ExportMetricsServiceRequest] = []
        self.script: list[tuple[int, dict[str, str], bytes]] = []
        self.errors: list[str] = []
        self.attempts = 0
        self.encodings: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if request.headers.get("Content-Type") != "application/x-protobuf":
            self.errors.append(f"content type {request.headers.get('Content-Type')}")
        self.encodings.append(request.headers.get("Content-Encoding", ""))
        body = await request.read()  # aiohttp inflates a gzip body (and fails on one that is not gzip)
        if self.script:
            status, headers, reply = self.script.pop(0)
            return web.Response(status=status, headers=headers, body=reply)
        req = ExportMetricsServiceRequest()
        req.ParseFromString(body)
        self.requests.append(req)
        return web.Response(body=ExportMetricsServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")


def partial_reply(rejected: int, message: str) -> bytes:
    """A receiver's answer to an accepted request that says it refused some points."""
    response = ExportMetricsServiceResponse()
    response.partial_success.rejected_data_points = rejected
    response.partial_success.error_message = message
    return response.SerializeToString()


def one_line(text: str) -> bool:
    return text.isprintable()  # no line break, escape or other control character


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    c = Collector()
    app = web.Application()
    app.router.add_post("/v1/metrics", c.handle)
    runner, url = await serve_app(app)
    yield c, url
    await runner.cleanup()
    assert c.errors == []


def make(url: str, **overrides: Any) -> tuple[OtlpSink, Hub]:
    config = replace(Config(), **{"otlp_endpoint": url, "otlp_interval_ms": 200.0, **overrides})
    hub = Hub(TASK)
    sink = OtlpSink(config, hub, drain_timeout=5.0)
    sink.pusher.backoff_base, sink.pusher.backoff_max = 0.05, 0.2
    hub.add_sink(sink)
    return sink, hub


def by_name(req: ExportMetricsServiceRequest) -> dict[str, Any]:
    (rm,) = req.resource_metrics
    (sm,) = rm.scope_metrics
    return {metric.name: metric for metric in sm.metrics}


def attrs(kvs: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in kvs}


def publish(hub: Hub, count: float, cpu_total: float) -> None:
    hub.publish(Batch("ecs", [Sample("ecs.task.cpu.utilization_percent", 40.0),
                              Sample("ecs.container.cpu.usage_seconds_total", cpu_total, Kind.COUNTER,
                                     (("container_name", "app"),))], snapshot=True))
    hub.publish(Batch("statsd", [
        Sample("orders.processed", count, Kind.COUNT, (("queue", "orders"),), interval=10.0),
        Sample("orders.latency", Points((5.0, 50.0, 500.0), (1.0, 1.0, 2.0), milliseconds=True), Kind.HISTOGRAM),
    ]))


async def test_cumulative_export_with_the_ecs_resource_and_valid_points(collector: tuple[Collector, str]) -> None:
    c, url = collector
    sink, hub = make(url, otel_resource_attributes=(("team", "payments"),))
    stop = asyncio.Event()
    runner = asyncio.create_task(sink.run(stop))
    publish(hub, 3.0, 10.0)
    await until(lambda: c.requests, 10, "a first request")
    publish(hub, 4.0, 12.0)
    n = len(c.requests)
    await until(lambda: len(c.requests) > n, 10, "a second request")
    stop.set()
    await asyncio.wait_for(runner, 10)

    assert set(c.encodings) == {"gzip"}  # the default compression
    resource = attrs(c.requests[0].resource_metrics[0].resource.attributes)
    assert resource == {
        "service.name": "orders-worker", "service.version": "1.4.2", "deployment.environment.name": "production",
        "cloud.provider": "aws", "cloud.platform": "aws_ecs", "cloud.region": "eu-west-1",
        "cloud.availability_zone": "eu-west-1b", "cloud.account.id": "123456789012",
        "aws.ecs.cluster.arn": "arn:aws:ecs:eu-west-1:123456789012:cluster/prod",
        "aws.ecs.task.arn": TASK.task_arn, "aws.ecs.task.id": "4f1c2d3e", "aws.ecs.task.family": "orders",
        "aws.ecs.task.revision": "7", "aws.ecs.launchtype": "fargate", "team": "payments",
        "telemetry.sdk.name": "tasklens", "telemetry.sdk.version": resource["telemetry.sdk.version"]}

    # a clean stop ends every series: the last request flags each one NO_RECORDED_VALUE (OTLP's stale marker)
    final = by_name(c.requests[-1])
    flagged = [p for metric in final.values() for p in getattr(metric, metric.WhichOneof("data")).data_points]
    assert flagged and all(p.flags == m.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK for p in flagged)
    assert {"orders.processed", "orders.latency", "ecs.task.cpu.utilization_percent"} <= set(final)
    assert final["orders.processed"].sum.is_monotonic
    assert not final["orders.latency"].histogram.data_points[0].bucket_counts
    c.requests.pop()
    starts: dict[Any, int] = {}
    last: dict[Any, float] = {}
    for req in c.requests:
        metrics = by_name(req)
        gauge = metrics["ecs.task.cpu.utilization_percent"]
        assert gauge.WhichOneof("data") == "gauge" and gauge.gauge.data_points[0].as_double == 40.0
        assert attrs(gauge.gauge.data_points[0].attributes) == {}  # the identity is the resource, not repeated
        for name in ("orders.processed", "ecs.container.cpu.usage_seconds_total"):
            s = metrics[name].sum
            assert s.is_monotonic and s.aggregation_temporality == m.AGGREGATION_TEMPORALITY_CUMULATIVE
            (p,) = s.data_points
            assert 0 < p.start_time_unix_nano <= p.time_unix_nano
            assert starts.setdefault(name, p.start_time_unix_nano) == p.start_time_unix_nano  # one unbroken stream
            assert p.as_double >= last.get(name, 0.0)
            last[name] = p.as_double
        h = metrics["orders.latency"].histogram
        assert h.aggregation_temporality == m.AGGREGATION_TEMPORALITY_CUMULATIVE
        (hp,) = h.data_points
        assert len(hp.bucket_counts) == len(hp.explicit_bounds) + 1 and sum(hp.bucket_counts) == hp.count
        assert list(hp.explicit_bounds) == sorted(hp.explicit_bounds)
    assert last == {"orders.processed": 7.0, "ecs.container.cpu.usage_seconds_total": 12.0}
    hp = by_name(c.requests[-1])["orders.latency"].histogram.data_points[0]
    assert hp.count == 8 and list(hp.bucket_counts)[:8] == [2, 0, 0, 2, 0, 0, 4, 0]
    assert attrs(by_name(c.requests[-1])["orders.processed"].sum.data_points[0].attributes) == {"queue": "orders"}


async def test_delta_temporality_sends_increases(collector: tuple[Collector, str]) -> None:
    c, url = collector
    sink, hub = make(url, otlp_temporality="delta", otlp_compression="none")
    publish(hub, 3.0, 10.0)
    sink.pusher.put(sink.flush())
    publish(hub, 4.0, 12.0)
    sink.pusher.put(sink.flush())
    stop = asyncio.Event()
    stop.set()
    await sink.run(stop)
    assert set(c.encodings) == {""}
    sums = [by_name(r)["orders.processed"].sum for r in c.requests]
    assert all(s.aggregation_temporality == m.AGGREGATION_TEMPORALITY_DELTA for s in sums)
    assert [s.data_points[0].as_double for s in sums[:2]] == [3.0, 4.0]
    first, second = (s.data_points[0] for s in sums[:2])
    assert second.start_time_unix_nano == first.time_unix_nano  # delta: each starts where the last ended
    cpu = [by_name(r)["ecs.container.cpu.usage_seconds_total"].sum.data_points[0].as_double for r in c.requests[:2]]
    assert cpu == [0.0, 2.0]


async def test_retry_rules_of_the_otlp_specification(collector: tuple[Collector, str]) -> None:
    c, url = collector
    sink, hub = make(url)
    # 503 and 429 are retried; 500 is not retryable in OTLP/HTTP; a partial success is counted
    c.script = [(503, {}, b""), (429, {"Retry-After": "0"}, b""), (200, {}, partial_reply(2, "bad point")),
                (500, {}, b"boom")]
    publish(hub, 1.0, 1.0)
    sink.pusher.put(sink.flush())
    sink.pusher.put(sink.flush())
    stop = asyncio.Event()
    runner = asyncio.create_task(sink.run(stop))
    await until(lambda: c.attempts >= 4, 10, "four attempts")
    stop.set()
    await asyncio.wait_for(runner, 10)
    get = hub.metrics.get
    assert get("tasklens.exporter.retries", exporter="otlp") == 2
    assert get("tasklens.exporter.points_failed", exporter="otlp", reason="partial_success") == 2
    assert get("tasklens.exporter.points_failed", exporter="otlp", reason="http_500") > 0


@pytest.mark.parametrize("rejected", [-1_000_000, 2**62])
async def test_an_impossible_rejected_count_from_a_real_reply_counts_the_request_as_failed(
        collector: tuple[Collector, str], caplog: pytest.LogCaptureFixture, rejected: int) -> None:
    c, url = collector
    sink, hub = make(url)
    c.script = [(200, {}, partial_reply(rejected, "bad points\n2026-01-01 ERROR forged line\x1b[31m"))]
    publish(hub, 1.0, 1.0)
    payloads = sink.flush()
    sink.pusher.put(payloads)
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, "tasklens"):
        runner = asyncio.create_task(sink.run(stop))
        await until(lambda: c.attempts >= 1 and hub.metrics.get("tasklens.exporter.points_sent", exporter="otlp"),
                    10, "the first request answered")
        stop.set()
        await asyncio.wait_for(runner, 10)
    failed = hub.metrics.get("tasklens.exporter.points_failed", exporter="otlp", reason="partial_success")
    assert failed == payloads[0].points > 0
    (line,) = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert one_line(line) and "forged line" in line, line


def test_endpoints_follow_the_standard_variables() -> None:
    assert metrics_url(load({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})) == "http://collector:4318/v1/metrics"
    assert metrics_url(load({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/",
                             "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://m:4318/custom"})) == "http://m:4318/custom"
    config = load({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s3cr3t%3D",
                   "OTEL_SERVICE_NAME": "svc", "OTEL_EXPORTER_OTLP_TIMEOUT": "2500"})
    sink = OtlpSink(config, Hub(TASK))
    assert sink.headers["api-key"] == "s3cr3t=" and sink.pusher.timeout == 2.5
    assert "s3cr3t" not in repr(config) + repr(sink)


async def test_lowmemory_deltas_only_the_synchronous_instruments(collector: tuple[Collector, str]) -> None:
    c, url = collector
    sink, hub = make(url, otlp_temporality="lowmemory")
    publish(hub, 3.0, 10.0)
    sink.pusher.put(sink.flush())
    stop = asyncio.Event()
    stop.set()
    await sink.run(stop)
    metrics = by_name(c.requests[0])
    assert metrics["orders.processed"].sum.aggregation_temporality == m.AGGREGATION_TEMPORALITY_DELTA
    assert metrics["orders.latency"].histogram.aggregation_temporality == m.AGGREGATION_TEMPORALITY_DELTA
    cpu = metrics["ecs.container.cpu.usage_seconds_total"].sum
    assert cpu.aggregation_temporality == m.AGGREGATION_TEMPORALITY_CUMULATIVE and cpu.data_points[0].as_double == 10.0


def test_a_timer_and_a_histogram_are_two_types_of_instrument() -> None:
    # `lat:500|ms` (0.5 s) with one tag set, `lat:500|h` (500) with another: one instrument cannot hold
    # both units; the first series keeps it, the other is counted
    import gzip as gz

    sink, hub = make("http://127.0.0.1:9")
    hub.publish(Batch("statsd", [
        Sample("lat", Points((500.0,), (1.0,), milliseconds=True), Kind.HISTOGRAM, (("queue", "a"),)),
        Sample("lat", Points((500.0,), (1.0,)), Kind.HISTOGRAM, (("queue", "b"),))]))
    [payload] = sink.flush()
    req = ExportMetricsServiceRequest()
    req.ParseFromString(gz.decompress(payload.body))
    [point] = by_name(req)["lat"].histogram.data_points
    assert attrs(point.attributes)["queue"] == "a" and point.sum == 0.5
    assert hub.metrics.get("tasklens.sink.points_rejected", sink="otlp", reason="type_conflict") == 1


def test_a_renamed_identity_key_never_meets_a_tag_of_its_new_name() -> None:
    # `service:other,exported_service:mine`: `service` would become a second `exported_service`; a
    # point's attribute keys are unique, so it is refused and counted, as on /metrics
    import gzip as gz

    sink, hub = make("http://127.0.0.1:9")
    hub.publish(Batch("statsd", [Sample("col", 1.0, tags=(("exported_service", "mine"), ("service", "other"))),
                                 Sample("ok", 1.0, tags=(("service", "other"),))]))
    [payload] = sink.flush()
    req = ExportMetricsServiceRequest()
    req.ParseFromString(gz.decompress(payload.body))
    metrics = by_name(req)
    assert "col" not in metrics and attrs(metrics["ok"].gauge.data_points[0].attributes) == {"exported_service": "other"}
    assert hub.metrics.get("tasklens.sink.points_rejected", sink="otlp", reason="label_conflict") == 1


# lone surrogates included (undecodable input: a `\ud800` escape in ECS metadata, an environment variable)
HOSTILE_TEXT = st.one_of(st.text(max_size=6), st.text(st.characters(blacklist_categories=()), max_size=6),
                         st.sampled_from(["\ud800", "x\udfff", "é", "", "\x00"]))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.text(max_size=12), HOSTILE_TEXT),
                          st.lists(st.tuples(HOSTILE_TEXT, HOSTILE_TEXT), max_size=3),
                          st.sampled_from([Kind.GAUGE, Kind.COUNT, Kind.COUNTER, Kind.HISTOGRAM]),
                          st.floats(width=32)), max_size=20))
def test_any_input_gives_a_valid_request_and_rejects_are_counted(items: list[Any]) -> None:
    import gzip as gz

    sink, hub = make("http://127.0.0.1:9")
    samples = [Sample(n, Points((v,), (1.0,)) if k is Kind.HISTOGRAM else v, k, tuple(t)) for n, t, k, v in items]
    hub.publish(Batch("statsd", samples))
    for payload in sink.flush():
        req = ExportMetricsServiceRequest()
        req.ParseFromString(gz.decompress(payload.body))
        names = [metric.name for metric in by_name(req).values()]
        assert len(names) == len(set(names))
        for metric in by_name(req).values():
            assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_.\-/]{0,254}", metric.name), metric.name
            kind = metric.WhichOneof("data")
            for p in getattr(metric, kind).data_points:
                assert p.time_unix_nano > 0
                if kind == "histogram":
                    assert len(p.bucket_counts) == len(p.explicit_bounds) + 1 and sum(p.bucket_counts) == p.count
                if kind != "gauge":
                    assert 0 < p.start_time_unix_nano <= p.time_unix_nano
    bad = sum(1 for _, _, _, v in items if not math.isfinite(v))
    assert hub.metrics.total("tasklens.sink.points_rejected") >= bad


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 1000), st.none()), min_size=1, max_size=12),
       st.sampled_from(["delta", "lowmemory"]))
def test_delta_counts_add_up_to_what_was_counted_across_series_that_end(steps: list[int | None],
                                                                         temporality: str) -> None:
    """A StatsD count sent in bursts, its series ending (idle past the TTL) between some of them: the
    deltas sent add up to what was counted. A series that comes back is a new stream from 0 (it sent 2
    for a new 5 after an ended 3), and an ended series' last value is not kept (it was, forever)."""
    sink, hub = make("http://127.0.0.1:9", otlp_temporality=temporality, otlp_compression="none")
    now = [0.0]
    sink.state.clock = lambda: now[0]
    counted = sent = 0.0
    for step in steps + [None]:
        if step is None:
            now[0] += sink.state.ttl + 1  # idle past the TTL: the series ends at this flush
        else:
            hub.publish(Batch("statsd", [Sample("jobs.done", float(step), Kind.COUNT, interval=10.0)]))
            counted += step
        for payload in sink.flush():
            req = ExportMetricsServiceRequest()
            req.ParseFromString(payload.body)
            metric = by_name(req).get("jobs.done")
            if metric is not None:
                sent += sum(p.as_double for p in metric.sum.data_points
                            if not p.flags & m.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK)
        now[0] += 1
    assert sent == counted
    assert not [key for key in sink._last if key[0] == "jobs.done"]  # it ended: nothing of it is kept
