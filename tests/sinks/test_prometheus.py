from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
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
    sink = PrometheusSink(hub.metrics, pull=hub.pull, ttl=60, buckets=(0.01, 0.1, 1), clock=clock,
                          identity=lambda: hub.identity.tags)
    hub.add_sink(sink)
    return hub, sink, clock


def test_names() -> None:
    assert metric_name("ecs.container.cpu.usage_vcpus") == "ecs_container_cpu_usage_vcpus"
    assert metric_name("my-app.requests/s") == "my_app_requests_s"
    assert metric_name("5xx.count") == "_5xx_count"


def test_identity_labels_counts_and_histograms() -> None:
    hub, sink, _ = make()
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
    # a worker's identity tag is kept beside the sidecar's, never instead of it
    assert got[("temp", (("canary", "true"), ("exported_service", "client-wins"), ("service", "orders"),
                         ("task_id", "abc")))] == 21.5
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


def rejected(hub: Hub, reason: str) -> float:
    return hub.metrics.get("tasklens.sink.points_rejected", sink="prometheus", reason=reason)


def test_type_conflict_is_counted_not_exported_twice() -> None:
    hub, sink, _ = make()
    hub.publish(Batch("statsd", [Sample("x", 1.0, Kind.GAUGE), Sample("x", 2.0, Kind.COUNT, (("a", "b"),))]))
    text = generate_latest(sink.registry).decode()
    assert text.count("# TYPE x ") == 1 and "x_total" not in text
    assert rejected(hub, "type_conflict") == 1


def test_the_first_type_keeps_the_name_across_intervals_until_it_expires() -> None:
    """The README's example: `q:1|c` then `q:5|g`, interval after interval."""
    hub, sink, clock = make()
    for _ in range(3):
        hub.publish(Batch("statsd", [Sample("q", 1.0, Kind.COUNT, interval=10), Sample("q", 5.0, Kind.GAUGE)]))
        clock.now += 10
    got = scrape(sink)
    ident = (("service", "orders"), ("task_id", "abc"))
    assert got[("q_total", ident)] == 3.0 and ("q", ident) not in got
    assert rejected(hub, "type_conflict") == 3
    clock.now += 61  # the counter goes idle and expires: the name is free for the gauge
    sink.expire()
    hub.publish(Batch("statsd", [Sample("q", 5.0, Kind.GAUGE)]))
    got = scrape(sink)
    assert got[("q", ident)] == 5.0 and ("q_total", ident) not in got


def test_collisions_after_sanitising_keep_the_first_and_count_the_rest() -> None:
    hub, sink, _ = make()
    hub.publish(Batch("statsd", [
        Sample("a.b", 1.0), Sample("a-b", 2.0), Sample("a_b", 3.0, tags=(("k", "v"),)),  # merge by label set
        Sample("x", 1.0, Kind.COUNT, interval=10), Sample("x_total", 3.0),  # x_total is x's sample
        Sample("y", Points((1.0,), (1.0,)), Kind.HISTOGRAM), Sample("y_count", 1.0), Sample("y_bucket", 1.0),
        Sample("t", 1.0, tags=(("a-b", "1"), ("a_b", "2"))),  # one label twice
        Sample("tasklens.http.scrapes", 99.0), Sample("ecs.task.info", 7.0), Sample("queue.depth", 1.0),
        Sample("1st", 1.0), Sample("", 1.0), Sample("..", 2.0),
    ]))
    got = scrape(sink)
    ident = (("service", "orders"), ("task_id", "abc"))
    assert got[("a_b", ident)] == 1.0 and got[("a_b", tuple(sorted(ident + (("k", "v"),))))] == 3.0
    assert got[("x_total", ident)] == 1.0 and got[("y_count", ident)] == 1.0
    assert got[("_1st", ident)] == 1.0 and ("__", ident) not in got  # `..`: a name beginning `__` is Prometheus's
    assert got[("ecs_task_info", ident)] == 1.0 and ("tasklens_http_scrapes_total", ident) not in got
    assert not any(k[0] == "t" for k in got)
    assert (rejected(hub, "duplicate_series"), rejected(hub, "name_conflict"), rejected(hub, "label_conflict"),
            rejected(hub, "reserved_name"), rejected(hub, "bad_name")) == (1, 3, 1, 4, 1)


def test_counters_never_decrease_nor_reach_infinity() -> None:
    hub, sink, _ = make()
    hub.publish(Batch("statsd", [Sample("c", 1e308, Kind.COUNT, interval=10),
                                 Sample("h", Points((1e308,), (1.0,)), Kind.HISTOGRAM)]))
    hub.publish(Batch("statsd", [Sample("c", 1e308, Kind.COUNT, interval=10),
                                 Sample("h", Points((1e308,), (1.0,)), Kind.HISTOGRAM)]))
    hub.publish(Batch("statsd", [Sample("c", -1.0, Kind.COUNT, interval=10)]))
    got = scrape(sink)
    ident = (("service", "orders"), ("task_id", "abc"))
    assert got[("c_total", ident)] == 1e308 and got[("h_sum", ident)] == 1e308 and got[("h_count", ident)] == 1
    assert rejected(hub, "non_finite") == 2 and rejected(hub, "negative_counter") == 1


def test_label_bytes_are_bounded() -> None:
    hub, sink, clock = make()
    sink.max_label_bytes = 10_000
    hub.publish(Batch("statsd", [Sample("g", 1.0, tags=(("i", str(i)),)) for i in range(1000)]))
    assert 9_000 < sink.label_bytes <= 10_000
    kept = sum(1 for k in scrape(sink) if k[0] == "g")
    assert kept + rejected(hub, "label_bytes_limit") == 1000 and kept > 100
    hub.publish(Batch("statsd", [Sample("g", 2.0, tags=(("i", "0"),))]))  # a live series keeps working
    assert scrape(sink)[("g", (("i", "0"), ("service", "orders"), ("task_id", "abc")))] == 2.0
    clock.now += 61
    sink.expire()
    assert sink.label_bytes == 0


def test_a_broken_sink_does_not_stop_the_others() -> None:
    hub, sink, _ = make()

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

    assert label_name("__name__") == "exported_name__"
    assert label_name("___x") == "exported_x"
    assert label_name("_x") == "_x"
    assert label_name("a.b-c") == "a_b_c"
    assert label_name("le") == "exported_le" and label_name("quantile") == "exported_quantile"
    assert label_name("1a") == "_1a" and label_name("") == ""


def test_identity_labels_keep_the_tasks_values_and_reserved_labels_are_exported() -> None:
    hub = Hub(Identity(service="orders", task_id="abc", extra=(("team-name", "core"),)), SelfMetrics())
    sink = PrometheusSink(hub.metrics, pull=hub.pull, identity=lambda: hub.identity.tags)
    hub.add_sink(sink)
    hub.publish(Batch("statsd", [
        Sample("g", 1.0, tags=(("team-name", "other"), ("task_id", "forged"), ("le", "5"), ("__name__", "x"))),
        Sample("h", 2.0, tags=(("team-name", "core"),)),  # the same value: nothing to export
    ]))
    got = scrape(sink)
    assert got[("g", (("exported_le", "5"), ("exported_name__", "x"), ("exported_task_id", "forged"),
                      ("exported_team_name", "other"), ("service", "orders"), ("task_id", "abc"),
                      ("team_name", "core")))] == 1.0
    assert got[("h", (("service", "orders"), ("task_id", "abc"), ("team_name", "core")))] == 2.0


def test_an_idle_counter_keeps_its_total_as_long_as_its_zeros_would_keep_it() -> None:
    """The flusher sends the zeros of idle counters until its TTL (a sink of intervals needs them); the
    Prometheus sink skips them (`Batch.idle`: they change no total), and keeps the series as long as
    the zeros would have: the sink's TTL after the last one (`counter_ttl`). A counter idle for longer
    than the sink's TTL but within the flusher's comes back to its total, not to a reset. Through the
    real flusher, over the hub, with a sink of intervals beside it that receives every zero."""
    from agent.statsd.flush import Flusher
    from agent.statsd.receive import Aggregator

    class Intervals:
        name = "intervals"

        def __init__(self) -> None:
            self.got: list[list[tuple[str, float]]] = []

        def accept(self, batch: Batch) -> None:
            self.got.append([(s.name, s.value) for s in batch.samples])

    hub, sink, clock = make()  # the sink's TTL: 60 s
    sink.counter_ttl = 30.0
    intervals = Intervals()
    hub.add_sink(intervals)  # type: ignore[arg-type]
    agg, flusher = Aggregator(), Flusher(10.0, ttl=30.0)  # zeros for 30 s after a count
    labels = (("service", "orders"), ("task_id", "abc"))
    start = clock.now
    agg.ingest(b"jobs:3|c")
    for step in range(10):  # one flush every 10 s; `busy` counts in each, `jobs` at 0 s only
        agg.ingest(b"busy:1|c")
        hub.deliver(flusher.batch(agg.swap(), now=clock.now, base=hub.identity.tags))
        jobs = [v for n, v in intervals.got[-1] if n == "jobs"]
        assert jobs == ([3.0] if step == 0 else [0.0] if step <= 3 else []), (step, intervals.got[-1])
        got = scrape(sink)
        assert got[("jobs_total", labels)] == 3.0 and got[("busy_total", labels)] == step + 1.0
        assert sink.expire() == 0  # up to 90 s: the last zero (30 s) and the sink's TTL (60 s)
        clock.now += 10
    clock.now = start + 91
    assert sink.expire() == 1
    assert ("jobs_total", labels) not in scrape(sink) and ("busy_total", labels) in scrape(sink)


def test_a_counter_back_within_its_zeros_continues_its_total() -> None:
    from agent.statsd.flush import Flusher
    from agent.statsd.receive import Aggregator

    hub, sink, clock = make()  # the sink's TTL: 60 s
    sink.counter_ttl = 300.0
    agg, flusher = Aggregator(), Flusher(10.0, ttl=300.0)
    labels = (("service", "orders"), ("task_id", "abc"))
    agg.ingest(b"jobs:3|c")
    hub.deliver(flusher.batch(agg.swap(), now=clock.now, base=hub.identity.tags))
    for _ in range(12):  # two minutes idle: past the sink's TTL, within the flusher's zeros
        clock.now += 10
        hub.deliver(flusher.batch(agg.swap(), now=clock.now, base=hub.identity.tags))
        assert sink.expire() == 0
    agg.ingest(b"jobs:1|c")
    hub.deliver(flusher.batch(agg.swap(), now=clock.now, base=hub.identity.tags))
    assert scrape(sink)[("jobs_total", labels)] == 4.0  # not a reset to 1


@settings(max_examples=200, deadline=None)  # no per-example time bound: a loaded machine could pass 200 ms
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([(), (("queue", "a"),)]),
                          st.floats(min_value=0.0, max_value=1e6)), min_size=1, max_size=12))
def test_a_timer_and_a_histogram_of_one_name_are_two_types(points: list[tuple[bool, tuple, float]]) -> None:
    """`lat:500|ms` is 0.5 s on /metrics and `lat:500|h` is 500: the first unit seen keeps the name, as
    the first type does, and the other's points are counted as `type_conflict`, whatever the tags."""
    hub, sink, _ = make()
    first = points[0][0]
    sums: dict[tuple, float] = {}
    for ms, tags, value in points:
        kind = Kind.HISTOGRAM if ms else Kind.DISTRIBUTION  # `d` is raw as `h` is
        hub.publish(Batch("statsd", [Sample("lat", Points((value,), (1.0,), milliseconds=ms), kind, tags, interval=10)]))
        if ms == first:
            key = tuple(sorted(tags + (("service", "orders"), ("task_id", "abc"))))
            sums[key] = sums.get(key, 0.0) + (value / 1000 if ms else value)
    got = {labels: value for (name, labels), value in scrape(sink).items() if name == "lat_sum"}
    assert got.keys() == sums.keys()
    for labels, total in sums.items():
        assert math.isclose(got[labels], total, rel_tol=1e-9)
    assert rejected(hub, "type_conflict") == sum(ms != first for ms, _, _ in points)
