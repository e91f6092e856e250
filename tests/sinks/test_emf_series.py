"""Which series an EMF record carries: each series keeps its own counter increase, a second series that
`/metrics` would show as the same one is refused as there, and a worker's tag never replaces the task's
identity in a dimension."""

from __future__ import annotations

from agent.model import Batch, Kind, Sample
from tests.sinks.test_emf import make, records


def test_counters_whose_names_sanitise_to_one_keep_their_own_increase_and_the_second_is_refused() -> None:
    """`jobs.done:1|c` and `jobs_done:5|c` with the same tags: one series on /metrics (the first keeps it,
    the second is `duplicate_series`). They shared one increase tracker here, so each record carried
    the running total ([1, 4], [3, 12], ...), again and again after the traffic stopped."""
    sink, hub, out = make(cloudwatch_metrics=("jobs_*", "x_total"), cloudwatch_dimensions=("queue",))
    boundary = 1_800_000_000.0
    for _ in range(5):
        hub.publish(Batch("statsd", [
            Sample("jobs.done", 1.0, Kind.COUNT, tags=(("queue", "orders"),), interval=10.0),
            Sample("jobs_done", 5.0, Kind.COUNT, tags=(("queue", "orders"),), interval=10.0),
            Sample("x", 2.0, Kind.COUNT, interval=10.0), Sample("x_total", 7.0, Kind.COUNT, interval=10.0),
        ]))
        boundary += 60
        sink.emit(boundary)
    for _ in range(3):  # no more traffic: nothing was counted
        boundary += 60
        sink.emit(boundary)
    docs = records(out)
    assert [d["jobs_done_total"] for d in docs if "jobs_done_total" in d] == [1.0] * 5 + [0.0] * 3
    assert [d["x_total"] for d in docs if "x_total" in d] == [2.0] * 5 + [0.0] * 3
    assert hub.metrics.get("tasklens.sink.points_rejected", sink="emf", reason="duplicate_series") == 16


def test_two_containers_series_of_one_name_are_still_both_sent() -> None:
    """Not duplicates: their tags differ (`container_name`), though not their dimensions."""
    sink, hub, out = make(cloudwatch_metrics=("jobs_*",), cloudwatch_dimensions=("service",))
    hub.publish(Batch("statsd", [Sample("jobs.waiting", 3.0, tags=(("container_name", "a"),)),
                                 Sample("jobs.waiting", 4.0, tags=(("container_name", "b"),))]))
    sink.emit(1_800_000_060.0)
    [doc] = records(out)
    assert sorted(doc["jobs_waiting"]) == [3.0, 4.0]
    assert hub.metrics.get("tasklens.sink.points_rejected", sink="emf", reason="duplicate_series") == 0


def test_a_workers_tag_of_an_identity_key_never_replaces_the_tasks_dimension() -> None:
    """`jobs.backlog:7|g|#service:billing` from a worker of service `orders-worker`: /metrics, remote_write
    and OTLP keep `service="orders-worker"` and show the worker's value as `exported_service`; the EMF
    record had the dimension service=billing, counting this task's numbers in another service."""
    sink, hub, out = make(cloudwatch_metrics=("jobs_*", "queue_*"), cloudwatch_dimensions=("service", "exported_service"))
    hub.publish(Batch("statsd", [Sample("jobs.backlog", 7.0, tags=(("service", "billing"),)),
                                 Sample("jobs.waiting", 2.0)]))
    # the sidecar's own series keep their tags, as on /metrics
    hub.publish(Batch("queue:q", [Sample("queue.depth", 3.0, tags=(("service", "shared"),))], snapshot=True))
    sink.emit(1_800_000_060.0)
    dims = {name: {k: d[k] for k in d["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]}
            for d in records(out) for name in d if not name.startswith("_") and isinstance(d[name], float)}
    assert dims["jobs_backlog"] == {"service": "orders-worker", "exported_service": "billing"}
    assert dims["jobs_waiting"] == {"service": "orders-worker"}
    assert dims["queue_depth"] == {"service": "shared"}
