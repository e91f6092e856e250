from __future__ import annotations

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Kind, Points, Sample
from agent.selfmetrics import SelfMetrics
from agent.sinks.prometheus import PrometheusSink, metric_name


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scrape(sink: PrometheusSink) -> dict[tuple[str, tuple], float]:
    text = generate_latest(sink.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def make() -> tuple[Hub, PrometheusSink, Clock]:
    clock = Clock()
    hub = Hub(Identity(service="orders", task_id="abc"), SelfMetrics())
    sink = PrometheusSink(hub.metrics, pull=hub.pull, ttl=60, buckets=(0.01, 0.1, 1), clock=clock)
    hub.add_sink(sink)
    return hub, sink, clock


def test_names() -> None:
    assert metric_name("ecs.container.cpu.usage_vcpus") == "ecs_container_cpu_usage_vcpus"
    assert metric_name("my-app.requests/s") == "my_app_requests_s"
    assert metric_name("5xx.count") == "_5xx_count"


def test_identity_labels_counts_and_histograms() -> None:
    hub, sink, clock = make()
    hub.publish(Batch("statsd", [
        Sample("jobs.processed", 3, Kind.COUNT, (("queue", "a"),), interval=10),
        Sample("jobs.latency", Points((5.0, 50.0, 500.0, 5000.0), (1, 1, 1, 2), milliseconds=True), Kind.HISTOGRAM),
        Sample("temp", 21.5, Kind.GAUGE, (("service", "client-wins"), ("canary", ""))),
    ]))
    hub.publish(Batch("statsd", [Sample("jobs.processed", 4, Kind.COUNT, (("queue", "a"),), interval=10)]))
    got = scrape(sink)
    ident = (("service", "orders"), ("task_id", "abc"))
    assert got[("jobs_processed_total", tuple(sorted(ident + (("queue", "a"),))))] == 7
    # timers in seconds: 0.005, 0.05, 0.5, 5 (x2)
    lat = tuple(sorted(ident))
    assert got[("jobs_latency_bucket", tuple(sorted(lat + (("le", "0.01"),))))] == 1
    assert got[("jobs_latency_bucket", tuple(sorted(lat + (("le", "0.1"),))))] == 2
    assert got[("jobs_latency_bucket", tuple(sorted(lat + (("le", "1.0"),))))] == 3
    assert got[("jobs_latency_bucket", tuple(sorted(lat + (("le", "+Inf"),))))] == 5
    assert got[("jobs_latency_count", lat)] == 5
    assert abs(got[("jobs_latency_sum", lat)] - (0.005 + 0.05 + 0.5 + 10.0)) < 1e-9
    assert got[("temp", (("canary", "true"), ("service", "client-wins"), ("task_id", "abc")))] == 21.5
    info = got[("ecs_task_info", lat)]
    assert info == 1


def test_snapshot_replaces_and_ttl_expires() -> None:
    hub, sink, clock = make()
    hub.publish(Batch("ecs", [Sample("ecs.container.pids", 3, tags=(("container_name", "a"),)),
                              Sample("ecs.container.pids", 4, tags=(("container_name", "b"),))], snapshot=True))
    hub.publish(Batch("ecs", [Sample("ecs.container.pids", 5, tags=(("container_name", "b"),))], snapshot=True))
    got = {k: v for k, v in scrape(sink).items() if k[0] == "ecs_container_pids"}
    assert list(got.values()) == [5]
    hub.publish(Batch("statsd", [Sample("g", 1.0)]))
    clock.now += 61
    assert sink.expire() == 1
    assert not any(k[0] == "g" for k in scrape(sink))


def test_type_conflict_is_counted_not_exported_twice() -> None:
    hub, sink, clock = make()
    hub.publish(Batch("statsd", [Sample("x", 1.0, Kind.GAUGE), Sample("x", 2.0, Kind.COUNT, (("a", "b"),))]))
    text = generate_latest(sink.registry).decode()
    assert text.count("# TYPE x ") == 1
    assert hub.metrics.total("tasklens.prometheus.type_conflicts") == 1


def test_a_broken_sink_does_not_stop_the_others() -> None:
    hub, sink, clock = make()

    class Broken:
        name = "broken"

        def accept(self, batch: Batch) -> None:
            raise RuntimeError("boom")

        async def run(self, stop) -> None:  # pragma: no cover
            pass

    hub.sinks.insert(0, Broken())
    hub.publish(Batch("statsd", [Sample("g", 2.0)]))
    assert scrape(sink)[("g", (("service", "orders"), ("task_id", "abc")))] == 2.0
    assert hub.metrics.get("tasklens.sink.errors", sink="broken") == 1


def test_reserved_label_prefix() -> None:
    from agent.sinks.prometheus import label_name

    assert label_name("__name__") == "_name__"
    assert label_name("___x") == "_x"
    assert label_name("_x") == "_x"
    assert label_name("a.b-c") == "a_b_c"
