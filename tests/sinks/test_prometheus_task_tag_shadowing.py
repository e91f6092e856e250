"""A `TASKLENS_TAGS` key that is also a label of the sidecar's own series.

README: queue metrics come "with labels `queue` and `queue_type`"; docs/queues.md: "Each series
carries `queue` (the queue's name), `queue_type` ... and the task's tags". With
`TASKLENS_TAGS=team:payments,queue:orders` (a task tagged with the queue it works), the Prometheus
sink applied the rule meant for a *worker's* StatsD tags (the identity label keeps the task's value,
the other becomes `exported_<key>`) to the sidecar's own queue series: every queue of the task was
exported as `queue="orders"`, the real name moved to `exported_queue`, so `max by (service, queue)
(queue_backing_up)` (docs/queues.md) merged the dead-letter queue into `orders`, while Datadog and
remote_write, which let the series' own tag win, had `orders-dlq`. The sidecar's own series (snapshots
and self-metrics) keep their own labels; a worker's tags still cannot replace the task's.
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Kind, Sample
from agent.selfmetrics import SelfMetrics
from agent.sinks.prometheus import PrometheusSink


def scraped(sink: PrometheusSink, name: str) -> list[dict[str, str]]:
    return [s.labels for family in text_string_to_metric_families(sink.render().decode())
            for s in family.samples if s.name == name]


@pytest.mark.parametrize("key", ["queue", "queue_type", "container_name", "sink", "reason"])
def test_a_task_tag_never_renames_a_label_of_the_sidecars_own_series(key: str) -> None:
    hub = Hub(Identity(service="orders-worker", task_id="abc", extra=(("team", "payments"), (key, "task-value"))),
              SelfMetrics())
    sink = PrometheusSink(hub.metrics, pull=hub.pull, identity=lambda: hub.identity.tags)
    hub.add_sink(sink)
    for name, depth in (("orders", 5.0), ("orders-dlq", 7.0)):  # snapshots of two sources
        hub.publish(Batch(f"queue:{name}", [Sample("queue.depth", depth, Kind.GAUGE,
                                                     ((key, name), ("queue_type" if key != "queue_type" else "queue",
                                                                    "redis")))], snapshot=True))
    hub.metrics.inc("tasklens.sink.errors", **{key: "own-value"})  # a self-metric with that label
    # a worker's StatsD series with the same key: the task's value stays, the worker's is exported_<key>
    hub.deliver(hub.enrich(Batch("statsd", [Sample("jobs", 1.0, Kind.GAUGE, ((key, "worker-value"),))])))

    depths = scraped(sink, "queue_depth")
    assert sorted(labels[key] for labels in depths) == ["orders", "orders-dlq"]
    assert all(f"exported_{key}" not in labels and labels["team"] == "payments" for labels in depths)
    (errors,) = scraped(sink, "tasklens_sink_errors_total")
    assert errors[key] == "own-value" and f"exported_{key}" not in errors
    (jobs,) = scraped(sink, "jobs")
    assert jobs[key] == "task-value" and jobs[f"exported_{key}"] == "worker-value"
