"""A gauge shows its newest reading on `/metrics` and in what remote_write, OTLP and EMF send
(`CumulativeState`), whatever order the readings came in: `/metrics` has no timestamps and the push sinks
stamp the current value with their flush time, so a backfilled `|T` reading (`gauge_with_timestamp`, an
hour old) shown or sent as current would be wrong. A point without a timestamp is read at its flush;
one stamped later than that counts as read then."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from agent.model import Batch, Kind, Sample
from agent.selfmetrics import SelfMetrics
from agent.sinks.cumulative import CumulativeState
from agent.sinks.prometheus import PrometheusSink
from agent.statsd.flush import Flusher
from agent.statsd.receive import Aggregator

START = 1_700_000_000.0  # the wall clock at the first flush


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def shown(sink: PrometheusSink) -> dict[str, float]:
    """The worker's gauges on /metrics, by name."""
    return {s.name: s.value for f in text_string_to_metric_families(sink.render().decode())
            for s in f.samples if f.type == "gauge" and not s.name.startswith(("tasklens_", "ecs_"))}


def sent(state: CumulativeState) -> dict[str, float]:
    return {name.replace(".", "_"): float(series.value) for (name, _), series in state.items()}  # type: ignore[arg-type]


def sinks(wall: Clock, monotonic: Clock | None = None) -> tuple[PrometheusSink, CumulativeState]:
    metrics = SelfMetrics()
    monotonic = monotonic or Clock(0.0)
    return (PrometheusSink(metrics, wall=wall, clock=monotonic, ttl=60.0),
            CumulativeState("remote_write", metrics, buckets=(), wall=wall, clock=monotonic, ttl=60.0))


def test_the_reviewers_cases_through_the_flush_in_either_order() -> None:
    for lines in ([b"temp.celsius:90|g|T%d" % (START - 3600), b"temp.celsius:20|g", b"jobs.queued:500|g|T1",
                   b"jobs.queued:3|g"],
                  [b"temp.celsius:20|g", b"temp.celsius:90|g|T%d" % (START - 3600), b"jobs.queued:3|g",
                   b"jobs.queued:500|g|T1"]):
        wall = Clock(START)
        prometheus, state = sinks(wall)
        agg = Aggregator()
        for line in lines:
            agg.ingest(line)
        batch = Flusher(10.0).batch(agg.swap(START), now=START)
        prometheus.accept(batch)
        state.accept(batch)
        assert shown(prometheus) == sent(state) == {"temp_celsius": 20.0, "jobs_queued": 3.0}
        # the backfill arriving alone in a later interval changes nothing either
        wall.now += 10.0
        late = Batch("statsd", [Sample("temp.celsius", 90.0, Kind.GAUGE, timestamp=START - 3600)])
        prometheus.accept(late)
        state.accept(late)
        assert shown(prometheus)["temp_celsius"] == sent(state)["temp_celsius"] == 20.0


def test_an_older_reading_does_not_keep_the_series_alive() -> None:
    wall, monotonic = Clock(START), Clock(0.0)
    prometheus, state = sinks(wall, monotonic)
    for sink in (prometheus, state):
        sink.accept(Batch("statsd", [Sample("g", 1.0)]))
    monotonic.now, wall.now = 50.0, START + 50
    for sink in (prometheus, state):
        sink.accept(Batch("statsd", [Sample("g", 2.0, timestamp=START - 10)]))
    monotonic.now, wall.now = 61.0, START + 61
    assert prometheus.expire() == 1 and state.expire() == 1


# a batch: readings (value, None for no timestamp or its offset from the batch's wall clock)
readings = st.lists(st.tuples(st.integers(0, 99), st.one_of(st.none(), st.integers(-4000, 100))), max_size=6)


@given(st.lists(readings, min_size=1, max_size=6))
def test_metrics_and_the_push_sinks_show_the_newest_reading(batches: list[list[tuple[int, int | None]]]) -> None:
    wall = Clock(START)
    prometheus, state = sinks(wall)
    seen: list[tuple[float, float]] = []  # (when read, value), in the order they came
    for points in batches:
        wall.now += 10.0
        batch = Batch("statsd", [Sample("g", float(v), Kind.GAUGE, timestamp=None if at is None else wall.now + at)
                                 for v, at in points])
        prometheus.accept(batch)
        state.accept(batch)
        seen += [(wall.now if at is None or at >= 0 else wall.now + at, float(v)) for v, at in points]
        if seen:
            newest = max(read for read, _ in seen)
            expected = [v for read, v in seen if read == newest][-1]  # of equal times, the last that came
            assert shown(prometheus) == {"g": expected}
            assert sent(state) == {"g": expected}
