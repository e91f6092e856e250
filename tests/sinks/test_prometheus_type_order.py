"""Which of two types under one name keeps it on `/metrics` (README, "Choices worth knowing"; docs/statsd.md,
`type_conflict`): the type of the earlier interval; within one interval the order of the flush's batch
(counters, gauges and sets, histograms/timers/distributions by their first line, `|T` lines), not the
order the lines were sent in."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from agent.selfmetrics import SelfMetrics
from agent.sinks.prometheus import PrometheusSink
from agent.statsd.flush import Flusher
from agent.statsd.receive import Aggregator


def types_after(*intervals: list[bytes]) -> dict[str, str]:
    sink, flusher, agg = PrometheusSink(SelfMetrics(), buckets=(1.0,)), Flusher(10.0), Aggregator()
    for n, lines in enumerate(intervals):
        for line in lines:
            agg.ingest(line)
        sink.accept(flusher.batch(agg.swap(1000.0 + 10 * n), now=1000.0 + 10 * n))
    families = text_string_to_metric_families(sink.render().decode())
    # a histogram's unit by its sum: a timer's in seconds
    return {f.name: f.type + "".join(f" sum {s.value}" for s in f.samples if s.name.endswith("_sum"))
            for f in families if not f.name.startswith(("tasklens_", "ecs_"))}


def test_within_one_interval_the_batch_order_decides_not_the_send_order() -> None:
    assert types_after([b"q1:5|g", b"q1:1|c", b"q2:5|s", b"q2:1|h", b"q3:7|g|T1700000000", b"q3:3|ms",
                        b"q4:5|ms", b"q4:1|h", b"q5:1|h", b"q5:5|ms"]) == {
        "q1": "counter", "q2": "gauge", "q3": "histogram sum 0.003", "q4": "histogram sum 0.005",
        "q5": "histogram sum 1.0"}


def test_the_earlier_interval_keeps_the_name() -> None:
    assert types_after([b"q1:5|g"], [b"q1:1|c"]) == {"q1": "gauge"}
    assert types_after([b"q1:1|c"], [b"q1:5|g"]) == {"q1": "counter"}
