"""The push sinks (remote_write, OTLP, EMF) send the series `/metrics` shows: the same names, labels and
types, whatever the worker sends.

Two defects this guards against, both found against a real `tasklens run`:
- a type per (name, tags) where `/metrics` keeps one per family (the name as it shows it):
  `tc.x:1|g|#a:1` and `tc.x:1|c|#a:2` made remote_write send `tc_x{a="1"}` beside `tc_x_total{a="2"}`
  and EMF write both, where `/metrics` refuses the gauge (`type_conflict`); the same with names that
  sanitise alike (`san.same:1|c` and `san_same:2|g`);
- a counter only ever decremented: its refused intervals make no series, but the zeros of the idle
  intervals that follow (`Batch.idle`) made one, exported as 0 by all three.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2 as m
from prometheus_client.parser import text_string_to_metric_families

from agent.config import Config
from agent.hub import Hub
from agent.model import Batch, Kind, Points, Sample
from agent.selfmetrics import SelfMetrics
from agent.sinks.cumulative import CumulativeState
from agent.sinks.emf import EmfSink
from agent.sinks.names import metric_name
from agent.sinks.otlp import OtlpSink
from agent.sinks.names import family_name
from agent.sinks.prometheus import PrometheusSink
from agent.sinks.remote_write import RemoteWriteSink
from tests.sinks.stores import have, start_prometheus
from tests.sinks.test_otlp import TASK
from tests.support import remote_write_series, until

# names that sanitise alike (`tc.x`, `tc_x`, `tc-x`), and names whose family overlaps theirs: `tc_x_total`
# (a counter is `tc_x`, a gauge clashes with the counter `tc_x`), `tc_x_count` (a histogram `tc_x`'s)
NAMES = ["tc.x", "tc_x", "tc-x", "tc_x_total", "tc.x.count", "tc.y"]
KINDS = ["count", "negative", "gauge", "timer", "histogram"]
TAGS = [(), (("a", "1"),), (("a", "2"),)]
Shown = set[tuple[str, str, str | None]]  # (name, type, the tag `a`)


def sample(name: str, kind: str, tags: Any) -> Sample:
    if kind in ("timer", "histogram"):
        return Sample(name, Points((250.0,), (1.0,), milliseconds=kind == "timer"), Kind.HISTOGRAM, tags, interval=10)
    if kind == "gauge":
        return Sample(name, 2.0, Kind.GAUGE, tags)
    return Sample(name, -1.0 if kind == "negative" else 1.0, Kind.COUNT, tags, interval=10)


def sinks(store: str = "http://127.0.0.1:9/api/v1/write") -> tuple[
        Hub, PrometheusSink, RemoteWriteSink, OtlpSink, EmfSink, io.StringIO]:
    config = replace(Config(), remote_write_url=store, remote_write_interval=0.3,
                     otlp_endpoint="http://127.0.0.1:9", otlp_compression="none",
                     cloudwatch="emf", cloudwatch_metrics=("tc*",), cloudwatch_dimensions=("a",))
    hub = Hub(TASK)
    prometheus = PrometheusSink(hub.metrics, pull=hub.pull, identity=lambda: hub.identity.tags)
    remote_write, otlp = RemoteWriteSink(config, hub), OtlpSink(config, hub)
    out = io.StringIO()
    emf = EmfSink(config, hub, stream=out)
    for sink in (prometheus, remote_write, otlp, emf):
        hub.add_sink(sink)
    return hub, prometheus, remote_write, otlp, emf, out


def on_metrics(prometheus: PrometheusSink) -> tuple[Shown, Shown]:
    """The worker's series on /metrics: (family, type, a) and (sample name, type, a), `le` and `_created` left out."""
    families: Shown = set()
    names: Shown = set()
    for family in text_string_to_metric_families(prometheus.render().decode()):
        if not family.name.startswith("tc"):
            continue
        for s in family.samples:
            if not s.name.endswith("_created"):
                families.add((family.name, family.type, s.labels.get("a")))
                names.add((s.name, family.type, s.labels.get("a")))
    return families, names


def by_remote_write(sink: RemoteWriteSink) -> set[tuple[str, str | None]]:
    """(wire name, a) of what one push carries (its stale markers apart)."""
    out = set()
    for labels, samples in remote_write_series(sink.flush()):
        if labels["__name__"].startswith("tc") and not any(s.value != s.value for s in samples):
            out.add((labels["__name__"], labels.get("a")))
    return out


def by_otlp(sink: OtlpSink) -> Shown:
    """(family as /metrics names it, type, a) of what one export carries (its ended streams apart)."""
    types = {"sum": "counter", "gauge": "gauge", "histogram": "histogram"}
    kinds = {"sum": Kind.COUNTER, "gauge": Kind.GAUGE, "histogram": Kind.HISTOGRAM}
    out: Shown = set()
    for payload in sink.flush():
        req = ExportMetricsServiceRequest()
        req.ParseFromString(payload.body)
        for metric in (x for rm in req.resource_metrics for sm in rm.scope_metrics for x in sm.metrics):
            field = metric.WhichOneof("data")
            name = family_name(metric_name(metric.name), kinds[field])
            for p in getattr(metric, field).data_points:
                if name.startswith("tc") and not p.flags & m.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK:
                    attributes = {kv.key: kv.value.string_value for kv in p.attributes}
                    out.add((name, types[field], attributes.get("a")))
    return out


def by_emf(sink: EmfSink, out: io.StringIO) -> set[tuple[str, str | None]]:
    """(metric name, a) of one emission's records."""
    out.seek(0)
    out.truncate()
    sink.emit(time.time())
    found = set()
    for line in out.getvalue().splitlines():
        doc = json.loads(line)
        for metric in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
            found.add((metric["Name"], doc.get("a")))
    return found


step = st.tuples(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(KINDS), st.sampled_from(TAGS)),
                          max_size=4),
                 st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(TAGS)), max_size=3))


@settings(max_examples=150)
@given(st.lists(step, min_size=1, max_size=6))
def test_every_push_sink_sends_the_names_labels_and_types_metrics_shows(steps: list[Any]) -> None:
    """Random flushes of names that sanitise alike or overlap, of every type, negative counts and idle
    counters' zeros: after each, remote_write sends exactly the series `/metrics` shows (wire name and
    labels), OTLP the same families with the same types and labels, EMF the same gauges and counters."""
    hub, prometheus, remote_write, otlp, emf, out = sinks()
    counted: set[tuple[str, Any]] = set()  # the StatsD counters seen: an idle one sends a zero
    for points, idle in steps:
        samples = [sample(*p) for p in points]
        counted |= {(n, t) for n, k, t in points if k in ("count", "negative")}
        zeros = [Sample(n, 0.0, Kind.COUNT, t, interval=10) for n, t in idle if (n, t) in counted]
        hub.publish(Batch("statsd", samples + zeros, idle=len(zeros)))
        families, names = on_metrics(prometheus)
        assert by_remote_write(remote_write) == {(n, a) for n, _, a in names}
        assert by_otlp(otlp) == families
        assert by_emf(emf, out) == {(n, a) for n, t, a in names if t != "histogram"}
    # each refusal of a type or a name counted as on /metrics (a second series of one name and label set
    # is counted by the push sinks when they send, as `duplicate_series`, and may meet other refusals first)
    for sink in ("remote_write", "otlp", "emf"):
        for reason in ("type_conflict", "name_conflict"):
            assert hub.metrics.get("tasklens.sink.points_rejected", sink=sink, reason=reason) == \
                hub.metrics.get("tasklens.sink.points_rejected", sink="prometheus", reason=reason), (sink, reason)


def test_the_testers_type_conflicts_are_refused_by_every_push_sink() -> None:
    hub, prometheus, remote_write, otlp, emf, out = sinks()
    hub.publish(Batch("statsd", [Sample("tc.x", 1.0, Kind.GAUGE, (("a", "1"),))]))
    hub.publish(Batch("statsd", [Sample("tc.x", 1.0, Kind.COUNT, (("a", "2"),), interval=10)]))
    hub.publish(Batch("statsd", [Sample("tc.san.same", 1.0, Kind.COUNT, (("x", "1"),), interval=10)]))
    hub.publish(Batch("statsd", [Sample("tc_san_same", 2.0, Kind.GAUGE, (("x", "1"),))]))
    families, _ = on_metrics(prometheus)
    assert {(n, t) for n, t, _ in families} == {("tc_x", "gauge"), ("tc_san_same", "counter")}
    assert by_remote_write(remote_write) == {("tc_x", "1"), ("tc_san_same_total", None)}
    assert {(n, t) for n, t, _ in by_otlp(otlp)} == {("tc_x", "gauge"), ("tc_san_same", "counter")}
    assert by_emf(emf, out) == {("tc_x", "1"), ("tc_san_same_total", None)}
    for sink in ("prometheus", "remote_write", "otlp", "emf"):
        assert hub.metrics.get("tasklens.sink.points_rejected", sink=sink, reason="type_conflict") == 2, sink


def test_a_counter_only_ever_decremented_is_sent_by_no_sink() -> None:
    """`DogStatsd.decrement("dec.only")` three times: three refused intervals, then the idle zeros."""
    hub, prometheus, remote_write, otlp, emf, out = sinks()
    tags = (("k", "v"),)
    for _ in range(3):
        hub.publish(Batch("statsd", [Sample("tc.dec.only", -1.0, Kind.COUNT, tags, interval=10)]))
    for _ in range(3):
        hub.publish(Batch("statsd", [Sample("tc.dec.only", 0.0, Kind.COUNT, tags, interval=10)], idle=1))
    assert on_metrics(prometheus) == (set(), set())
    assert by_remote_write(remote_write) == set() and by_otlp(otlp) == set() and by_emf(emf, out) == set()
    for sink in ("prometheus", "remote_write", "otlp", "emf"):
        assert hub.metrics.get("tasklens.sink.points_rejected", sink=sink, reason="negative_counter") == 3, sink


def test_an_idle_zero_keeps_a_counter_alive_and_a_name_is_free_again_once_its_series_ended() -> None:
    clock = [0.0]
    metrics = SelfMetrics()
    state = CumulativeState("otlp", metrics, (), ttl=10.0, clock=lambda: clock[0])
    state.accept(Batch("statsd", [Sample("c", 2.0, Kind.COUNT, interval=10), Sample("g.x", 1.0)]))
    state.accept(Batch("statsd", [Sample("g_x", 1.0, Kind.COUNT, interval=10)]))  # the gauge's name
    assert metrics.get("tasklens.sink.points_rejected", sink="otlp", reason="type_conflict") == 1
    clock[0] = 8.0
    state.accept(Batch("statsd", [Sample("c", 0.0, Kind.COUNT, interval=10)], idle=1))
    clock[0] = 15.0
    state.expire()  # the gauge ended, the counter lives on by its zero
    assert [key[0] for key, _ in state.items()] == ["c"] and state.items().__next__()[1].value == 2.0
    state.accept(Batch("statsd", [Sample("g_x", 1.0, Kind.COUNT, interval=10)]))  # the name is free again
    assert {key[0]: s.kind for key, s in state.items()} == {"c": Kind.COUNTER, "g_x": Kind.COUNTER}
    assert metrics.get("tasklens.sink.points_rejected", sink="otlp", reason="type_conflict") == 1


async def test_a_real_prometheus_holds_what_metrics_shows(tmp_path: Path) -> None:
    """The tester's lines through remote_write into a real Prometheus: the store holds what `/metrics`
    shows, no gauge `tc_x` beside `tc_x_total`, no `dec_only_total`."""
    if not have("prometheus"):
        pytest.skip("prometheus is not installed (scripts/system-deps.sh installs it)")
    prom = start_prometheus(tmp_path)
    try:
        hub, prometheus, remote_write, _, _, _ = sinks(prom.write_url)
        stop = asyncio.Event()
        runner = asyncio.create_task(remote_write.run(stop))
        hub.publish(Batch("statsd", [Sample("tc.x", 1.0, Kind.GAUGE, (("a", "1"),)),
                                     Sample("tc.dec.only", -1.0, Kind.COUNT, (("k", "v"),), interval=10)]))
        hub.publish(Batch("statsd", [Sample("tc.x", 1.0, Kind.COUNT, (("a", "2"),), interval=10),
                                     Sample("tc.san.same", 1.0, Kind.COUNT, (("x", "1"),), interval=10),
                                     Sample("tc_san_same", 2.0, Kind.GAUGE, (("x", "1"),)),
                                     Sample("tc.dec.only", 0.0, Kind.COUNT, (("k", "v"),), interval=10)], idle=1))
        expected = {("tc_x", "1"), ("tc_san_same_total", None)}
        assert {(n, a) for n, _, a in on_metrics(prometheus)[1]} == expected

        async def stored() -> set[tuple[str, str | None]]:
            found = await prom.aquery('{__name__=~"tc_.*"}')
            return {(r["metric"]["__name__"], r["metric"].get("a")) for r in found}

        await until(lambda: _equal(stored, expected), 30, "the series in Prometheus")
        await asyncio.sleep(1.0)  # later pushes add nothing
        assert await stored() == expected
        stop.set()
        await asyncio.wait_for(runner, 15)
    finally:
        prom.stop()


async def _equal(found: Any, expected: set[tuple[str, str | None]]) -> bool:
    return bool(await found() == expected)
