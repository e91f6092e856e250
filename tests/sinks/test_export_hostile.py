"""Hostile and careless inputs to the export sinks, each against the promise it checks (docs/export.md,
docs/guarantees.md): a worker's tag cannot take a task's identity label (remote_write) or make two
streams one (OTLP), one point with an enormous count costs only itself, a store's answer costs at most
its first 64 KiB and cannot turn a refusal into a retry, and EMF never writes a value CloudWatch refuses."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
from dataclasses import replace
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from agent.config import Config
from agent.hub import Hub
from agent.model import Batch, Kind, Points, Sample
from tests.support import serve_app

pytest.importorskip("cramjam")
pytest.importorskip("opentelemetry.proto")


# -- remote_write: a worker's tag must not replace the task's identity label -----------------------

def test_remote_write_keeps_the_tasks_identity_labels_when_a_worker_tags_the_same_key() -> None:
    """docs/export.md: "Every series carries the task's identity labels (`task_id`, `service`,
    `ecs_cluster`, ...), which makes it unique per task: tasks never write into each other's series",
    under "the same names and labels" as /metrics (where such a tag becomes `exported_<key>`).

    A worker that tags its jobs `task_id:send_email` (a Celery task name, say): every ECS task of the
    service then pushes `jobs_done_total{task_id="send_email",...}`, one series for the whole fleet."""
    import cramjam

    from tests.sinks.test_remote_write import make, pb

    sink, hub = make("http://127.0.0.1:9/api/v1/write")
    hub.publish(Batch("statsd", [Sample("jobs.done", 1.0, Kind.COUNT, (("task_id", "send_email"),))]))
    labels = []
    for payload in sink.flush():
        req = pb()["WriteRequest"]()
        req.ParseFromString(bytes(cramjam.snappy.decompress_raw(payload.body)))
        labels += [{lb.name: lb.value for lb in ts.labels} for ts in req.timeseries]
    [jobs] = [ls for ls in labels if ls["__name__"] == "jobs_done_total"]
    assert jobs["task_id"] == "4f1c2d3e", jobs  # the task's id, as on /metrics
    assert jobs.get("exported_task_id") == "send_email", jobs


# -- OTLP: a histogram with an enormous count ---------------------------------------------------------

def test_otlp_a_histogram_with_an_enormous_count_costs_only_itself() -> None:
    """`big:1|h|@1e-20` is a valid StatsD line (weight 1e20, finite; /metrics and remote_write carry it
    as a float). OTLP's bucket counts are uint64: protobuf raises, the whole flush fails, and since the
    cumulative histogram keeps its count, every later flush fails too: the OTLP sink sends nothing more
    (one `flush_error` per interval is all that is counted). A bad point must be dropped alone and
    counted in tasklens_sink_points_rejected_total{sink="otlp"}."""
    from tests.sinks.test_otlp import by_name, make

    sink, hub = make("http://127.0.0.1:9")
    hub.publish(Batch("statsd", [Sample("jobs.done", 1.0, Kind.COUNT, (("queue", "a"),)),
                                 Sample("big", Points((1.0,), (1e20,)), Kind.HISTOGRAM)]))
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    for _ in range(2):  # not just one interval: every one
        payloads = sink.flush()
        names = set()
        for p in payloads:
            req = ExportMetricsServiceRequest()
            req.ParseFromString(gzip.decompress(p.body))
            names |= set(by_name(req))
        assert "jobs.done" in names
    assert hub.metrics.total("tasklens.sink.points_rejected") >= 1


# -- OTLP: points of one metric with identical attributes ---------------------------------------------

def test_otlp_never_sends_two_points_with_the_same_attributes_in_one_metric() -> None:
    """docs/export.md: "A point's attributes are its own tags only (`container_name`, `queue`, StatsD
    tags)". A StatsD tag whose key is an identity key (`service:a`, `service:b`) is removed from the
    attributes, so two distinct series become two points of `jobs.done` with identical (empty)
    attributes and different values: one stream with two values at one timestamp, which a Collector
    cannot tell apart (its Prometheus exporters keep one). Names that sanitise alike (`jobs done`,
    `jobs_done`) do the same, silently: nothing is counted."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    from tests.sinks.test_otlp import attrs, by_name, make

    sink, hub = make("http://127.0.0.1:9")
    hub.publish(Batch("statsd", [
        Sample("jobs.done", 1.0, Kind.COUNT, (("service", "a"),)),
        Sample("jobs.done", 2.0, Kind.COUNT, (("service", "b"),)),
        Sample("jobs done", 5.0, Kind.COUNT), Sample("jobs_done", 7.0, Kind.COUNT),
    ]))
    streams = []
    for p in sink.flush():
        req = ExportMetricsServiceRequest()
        req.ParseFromString(gzip.decompress(p.body))
        for name, metric in by_name(req).items():
            if name.startswith("jobs"):
                streams += [(name, tuple(sorted(attrs(dp.attributes).items()))) for dp in metric.sum.data_points]
    rejected = hub.metrics.total("tasklens.sink.points_rejected")
    assert len(streams) == len(set(streams)), streams
    assert len(streams) + rejected == 4


# -- push sinks: what a store's answer may cost ------------------------------------------------------

@contextlib.asynccontextmanager
async def pushing(handle: Any, **settings: Any) -> AsyncIterator[Hub]:
    """A remote_write sink with one point to push, running against a store that answers with `handle`."""
    from tests.sinks.test_remote_write import make

    app = web.Application()
    app.router.add_post("/api/v1/write", handle)
    runner, url = await serve_app(app)
    sink, hub = make(url + "/api/v1/write", **settings)
    sink.pusher.backoff_base = sink.pusher.backoff_max = 30.0  # one attempt is enough
    hub.publish(Batch("statsd", [Sample("jobs.done", 1.0, Kind.COUNT)]))
    task = asyncio.create_task(sink.run(asyncio.Event()))
    try:
        yield hub
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()


async def test_a_refusal_whose_body_stalls_is_still_a_refusal_not_a_retried_timeout() -> None:
    """docs/export.md: "any other 4xx (400 bad labels, 401/403 credentials, 413 too large) cannot
    succeed by retrying". A store (or a proxy) that sends `400` and then never finishes the body made
    push.post time out reading it: the payload was retried as `timeout` for ever, at the head of the
    queue, and everything behind it waited."""

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=400)
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b"bad labels: ")
        await asyncio.sleep(5)  # the rest does not come within the sink's timeout
        return resp

    async with pushing(handle, remote_write_timeout=0.5) as hub:
        await asyncio.sleep(3.0)
        failed = hub.metrics.get("tasklens.exporter.points_failed", exporter="remote_write", reason="http_400")
        timeouts = hub.metrics.get("tasklens.exporter.submissions", exporter="remote_write", status="timeout")
    assert timeouts == 0 and failed > 0, (failed, timeouts)


async def test_a_huge_error_body_from_the_store_is_not_read_whole() -> None:
    """A 503 with a 128 MiB body (a misconfigured URL, a hostile proxy) was read whole on every attempt
    (+530 MiB RSS with a 256 MiB body). The server counts what the client took before closing."""
    taken: list[int] = []
    chunk = b"x" * (1 << 20)

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=503)
        resp.content_length = 128 * len(chunk)
        await resp.prepare(request)
        sent = 0
        try:
            for _ in range(128):
                await resp.write(chunk)
                sent += len(chunk)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            taken.append(sent)
        return resp

    async with pushing(handle, remote_write_timeout=5.0):
        for _ in range(100):
            await asyncio.sleep(0.1)
            if taken:
                break
    assert taken and taken[0] <= 16 * len(chunk), f"the client read {taken[0] / 2**20:.0f} MiB of an error body"


# -- EMF: values CloudWatch refuses ----------------------------------------------------------------

def test_emf_drops_and_counts_values_cloudwatch_refuses() -> None:
    """docs/export.md: "A point CloudWatch would refuse ... is dropped alone and counted". CloudWatch's
    MetricDatum.Value: "CloudWatch rejects values that are either too small or too large. Values must be
    in the range of -2^360 to 2^360" (API reference; older text: 8.515920e-109 to 1.174271e+108).
    StatsD keeps `1e200` and `1e308` as the numbers they are (docs/guarantees.md); EMF writes them as is."""
    from agent.sinks.emf import EmfSink

    config = replace(Config(), cloudwatch="emf", cloudwatch_metrics=("jobs_*",))
    from tests.sinks.test_emf import TASK

    hub = Hub(TASK)
    out = io.StringIO()
    sink = EmfSink(config, hub, stream=out)
    hub.add_sink(sink)
    hub.publish(Batch("statsd", [Sample("jobs.big", 1e200), Sample("jobs.ok", 3.0)]))
    sink.emit(1_800_000_060.0)
    written: dict[str, Any] = {}
    for line in out.getvalue().splitlines():
        written.update(json.loads(line))
    assert written.get("jobs_ok") == 3.0
    assert "jobs_big" not in written, written.get("jobs_big")
    assert hub.metrics.get("tasklens.sink.points_rejected", sink="emf", reason="out_of_range") == 1
