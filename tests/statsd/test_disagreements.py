"""One test per row of the table in docs/statsd.md: where DogStatsD, Etsy StatsD and statsd_exporter
disagree, this pins the answer the project chose."""

from __future__ import annotations

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Kind, Points
from agent.selfmetrics import SelfMetrics
from agent.sinks.prometheus import PrometheusSink
from agent.statsd.flush import Flusher
from agent.statsd.receive import Aggregator
from agent.sinks.datadog_series import histogram_aggregates

pytestmark = pytest.mark.usefixtures("both_loops")  # the C loop and the Python loop alike

DOCKER_ID = "c0ffee"


def interval(*lines: bytes, agg: Aggregator | None = None, flusher: Flusher | None = None, now: float = 1000.0) -> Batch:
    agg = agg or Aggregator()
    for line in lines:
        agg.ingest(line)
    return (flusher or Flusher(10.0)).batch(agg.swap(now), {DOCKER_ID: (("container_name", "worker"),)}, now=now)


def values(batch: Batch) -> dict[str, object]:
    return {s.name: s.value for s in batch.samples}


def prometheus(*batches: Batch) -> dict[tuple[str, tuple], float]:
    hub = Hub(Identity(service="svc"), SelfMetrics())
    sink = PrometheusSink(hub.metrics, pull=list, buckets=(0.1, 1.0))
    hub.add_sink(sink)
    for b in batches:
        hub.publish(b)
    out = {}
    for family in text_string_to_metric_families(generate_latest(sink.registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_row_signed_gauge_sets_the_value_unless_deltas_are_on() -> None:
    assert values(interval(b"g:10|g", b"g:+5|g")) == {"g": 5.0}  # DogStatsD
    assert values(interval(b"g:10|g", b"g:+5|g", agg=Aggregator(gauge_deltas=True))) == {"g": 15.0}  # Etsy, exporter


def test_row_packed_counter_values_add_up() -> None:
    agg = Aggregator()
    assert values(interval(b"x:1:2|c", agg=agg)) == {"x": 3.0}
    assert agg.stats.samples == 2 and not agg.stats.errors


def test_row_container_id_field_adds_that_containers_tags() -> None:
    batch = interval(b"x:1|c|c:c0ffee|#k:v", b"y:1|c|c:someone-else")
    assert {s.name: s.tags for s in batch.samples} == {"x": (("container_name", "worker"), ("k", "v")), "y": ()}


def test_row_unknown_field_is_ignored() -> None:
    agg = Aggregator()
    assert values(interval(b"x:1|c|x:whatever|#k:v", agg=agg)) == {"x": 1.0}
    assert not agg.stats.errors


def test_row_idle_counter_reports_zero_until_its_ttl_and_stays_cumulative_in_prometheus() -> None:
    agg, flusher = Aggregator(), Flusher(10.0, ttl=300.0)
    first = interval(b"x:4|c", agg=agg, flusher=flusher, now=1000.0)
    idle = interval(agg=agg, flusher=flusher, now=1010.0)
    assert values(idle) == {"x": 0.0}  # Datadog: a 0 rate, as the agent does for dogstatsd_expiry_seconds
    assert prometheus(first, idle)[("x_total", (("service", "svc"),))] == 4.0
    assert values(interval(agg=agg, flusher=flusher, now=1311.0)) == {}  # idle for more than the TTL


def test_row_timers_stay_in_ms_for_datadog_and_become_seconds_in_prometheus() -> None:
    batch = interval(b"t:250|ms", b"t:750|ms")
    points = batch.samples[0].value
    assert isinstance(points, Points) and points.milliseconds
    assert [(s, v) for s, v, _ in histogram_aggregates(points, 10.0, ("max", "avg"), ())] == [(".max", 750.0), (".avg", 500.0)]
    got = prometheus(batch)
    labels = (("service", "svc"),)
    assert got[("t_sum", labels)] == 1.0  # 0.25 s + 0.75 s
    assert got[("t_bucket", (("le", "1.0"), ("service", "svc")))] == 2.0
    assert got[("t_bucket", (("le", "0.1"), ("service", "svc")))] == 0.0


def test_row_sampled_timer_counts_with_weight() -> None:
    batch = interval(b"t:100|ms|@0.25")
    points = batch.samples[0].value
    assert isinstance(points, Points) and list(points.weights) == [4.0]
    assert prometheus(batch)[("t_count", (("service", "svc"),))] == 4.0


def test_row_set_member_keeps_its_colons() -> None:
    assert values(interval(b"u:a:b|s", b"u:a|s", b"u:b|s")) == {"u": 3.0}


def test_row_bare_tag_is_kept_and_is_true_in_prometheus() -> None:
    batch = interval(b"x:1|c|#canary,k:v")
    assert batch.samples[0].tags == (("canary", ""), ("k", "v"))
    assert prometheus(batch)[("x_total", (("canary", "true"), ("k", "v"), ("service", "svc")))] == 1.0


def test_row_negative_counter_is_accepted() -> None:
    batch = interval(b"inflight:1|c", b"inflight:-1|c", b"inflight:-1|c")
    assert values(batch) == {"inflight": -1.0}
    assert batch.samples[0].kind is Kind.COUNT


def test_row_names_are_kept_and_sanitised_only_for_prometheus() -> None:
    batch = interval(b"my-app.req/s 2:1|c")
    assert batch.samples[0].name == "my-app.req/s 2"
    assert ("my_app_req_s_2_total", (("service", "svc"),)) in prometheus(batch)


def test_row_timestamped_gauge_is_exported_as_sent() -> None:
    batch = interval(b"g:3|g|T1700000000", b"g:4|g")
    assert sorted((s.timestamp or 0, s.value) for s in batch.samples) == [(0, 4.0), (1700000000.0, 3.0)]


@pytest.mark.parametrize("use_ms", [False, True])
def test_datadog_timed_sends_seconds_in_a_ms_line_unless_use_ms(use_ms: bool) -> None:
    """docs/statsd.md: `datadog.DogStatsd.timed()` writes its elapsed time in seconds on a `|ms` line by
    default; read as milliseconds, the Prometheus histogram is 1000 times too small. `use_ms=True` sends ms."""
    import socket
    import time

    from datadog.dogstatsd import DogStatsd

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        client = DogStatsd(host="127.0.0.1", port=server.getsockname()[1], disable_buffering=True,
                           disable_telemetry=True, use_ms=use_ms)
        started = time.perf_counter()
        with client.timed("t"):
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        client.close_socket()
        line = server.recv(4096).rstrip(b"\n")
    assert line.startswith(b"t:") and line.endswith(b"|ms")
    seconds = prometheus(interval(line))[("t_sum", (("service", "svc"),))]
    true_seconds = seconds if use_ms else seconds * 1000
    assert 0.05 <= true_seconds <= elapsed + 0.001
