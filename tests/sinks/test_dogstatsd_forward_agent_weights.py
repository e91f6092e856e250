"""Forwarded histograms as the Datadog agent counts them.

The agent weighs a sampled histogram/timer/distribution value by `int64(1 / rate)` and adds the same
to the count (datadog-agent `pkg/metrics/histogram.go` `addSample`; the README's disagreement table
says so too: "3.33 for @0.3 where the agent truncates to 3"). docs/datadog.md promises that forwarded
histograms go "as their raw values packed ... so that the agent computes the aggregates", and
`dogstatsd_forward.py` that past MAX_VALUES the spread goes "with the rate that makes their count
right". Both fail when the rate the sidecar writes does not survive the agent's truncation.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.model import Kind, Points, Sample
from agent.sinks.deltas import CounterDeltas
from agent.sinks.dogstatsd_forward import sample_lines
from agent.statsd.flush import Flusher
from agent.statsd.parser import parse
from agent.statsd.receive import Aggregator


def agent_count(lines: list[str]) -> int:
    """The `.count` the Datadog agent computes from forwarded lines: each value weighs int64(1 / rate)."""
    return sum(int(1 / m.head.rate) * len(m.values) for m in parse("\n".join(lines).encode()).metrics)


def test_a_timer_past_max_values_is_counted_whole_by_the_agent() -> None:
    # 19,999 timer values in one interval (2,000 requests/s at the default 10 s flush), all distinct
    agg = Aggregator()
    lines = [f"req.latency:{i * 0.001:.3f}|ms".encode() for i in range(19_999)]
    for start in range(0, len(lines), 1000):
        agg.ingest(b"\n".join(lines[start:start + 1000]))
    batch = Flusher(10.0).batch(agg.swap(1000.0), {}, now=1000.0)
    (sample,) = [s for s in batch.samples if s.name == "req.latency"]
    forwarded = sample_lines(sample, CounterDeltas(), now=1000.0)
    # 10,000 values at @0.5000250012500626 were counted 10,000 times, not 19,999
    assert agent_count(forwarded) == 19_999


def test_merged_repeated_values_are_counted_whole_by_the_agent() -> None:
    # a timer in whole milliseconds whose values repeat: the flush merges equal values and their
    # weights (93 occurrences of 0 ms ...); 1 / (1 / 93) is 92.99999999999999 in floating point
    counts = [93, 99, 105, 117, 123, 186, 198, 210, 211, 221]
    sample = Sample("job.ms", Points([float(v) for v in range(len(counts))], [float(c) for c in counts],
                                     milliseconds=True), Kind.HISTOGRAM, interval=10.0)
    forwarded = sample_lines(sample, CounterDeltas(), now=1000.0)
    assert agent_count(forwarded) == sum(counts)  # 1553 of 1563 before


@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.sampled_from([1.0, 2.0, 4.0, 10.0, 1 / 0.3, 1 / 0.7, 93.0, 1 / 0.01])),
                min_size=1, max_size=300),
       st.booleans())
@settings(max_examples=200, deadline=None)
def test_the_agent_counts_what_the_interval_held(pairs: list[tuple[float, float]], merged: bool) -> None:
    """Any values with any sample rates, merged (weights summed) or not: the count the agent computes
    from the forwarded lines is the interval's, rounded once per weight that is not whole."""
    values = [v for v, _ in pairs]
    weights = [w for _, w in pairs]
    if merged:
        sums: dict[float, float] = {}
        for v, w in pairs:
            sums[v] = sums.get(v, 0.0) + w
        values, weights = list(sums), list(sums.values())
    points = Points(values, weights)
    forwarded = sample_lines(Sample("x", points, Kind.HISTOGRAM, interval=10.0), CounterDeltas(), now=1.0)
    fractional = {w for w in weights if not w.is_integer()}
    assert abs(agent_count(forwarded) - points.count) <= 0.5 * len(fractional) + 1e-6 * points.count
    if not fractional:
        assert agent_count(forwarded) == points.count
