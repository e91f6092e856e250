"""What the Datadog exporter costs per flush, and what its outage buffer costs in memory.

A StatsD-like interval of `--contexts` contexts (60% counters, 25% histograms of 20 values, 15% gauges,
each with the task's 10 identity tags plus 2 of its own) goes through the real hub and `DatadogSink`:
`accept` (conversion, histogram aggregates) and `flush` (JSON, deflate, chunking). No intake runs, so
every flush stays in the buffer, as during an outage; the buffer's memory per point is then what the
default bound (`TASKLENS_DATADOG_BUFFER_POINTS`) costs at most.

    .venv/bin/python bench/datadog_export.py [--contexts 2000] [--flushes 60]
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from dataclasses import replace

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Kind, Points, Sample
from agent.sinks.datadog import DatadogSink

IDENTITY = Identity(service="orders-worker", env="prod", version="1.42.0", ecs_cluster="prod-eu",
                    task_family="orders-worker", task_revision="117", task_id="67cd8a22b533459696d4ccab5278e009",
                    availability_zone="eu-west-1a", region="eu-west-1", launch_type="FARGATE")


def interval(contexts: int, seed: int) -> Batch:
    samples = []
    for i in range(contexts):
        tags = (("endpoint", f"/api/v1/resource{i % 50}"), ("status", str(200 + i % 5)))
        if i % 20 < 12:
            samples.append(Sample(f"app.requests{i % 40}", float(seed % 7 + i % 3), Kind.COUNT, tags, interval=10.0))
        elif i % 20 < 17:
            values = tuple(0.5 + ((i * 31 + k * 17 + seed) % 997) for k in range(20))
            samples.append(Sample(f"app.latency{i % 40}", Points(values, (1.0,) * 20, milliseconds=True),
                                  Kind.HISTOGRAM, tags, interval=10.0))
        else:
            samples.append(Sample(f"app.level{i % 40}", float(i + seed), Kind.GAUGE, tags))
    return Batch("statsd", samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contexts", type=int, default=2000)
    parser.add_argument("--flushes", type=int, default=60, help="10 s flushes held (60 = 10 minutes of outage)")
    args = parser.parse_args()

    config = replace(Config(), dd_api_key="x" * 32, dd_url="http://127.0.0.1:9", datadog_buffer_points=10**9)
    batches = [interval(args.contexts, seed) for seed in range(args.flushes)]

    def run() -> tuple[DatadogSink, list[float], list[float], list[int]]:
        hub = Hub(IDENTITY)
        sink = DatadogSink(config, hub)
        hub.add_sink(sink)
        accept_ms, flush_ms, points = [], [], []
        for batch in batches:
            started = time.perf_counter()
            hub.publish(batch)
            accept_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            points.append(sink.flush())
            flush_ms.append((time.perf_counter() - started) * 1000)
        return sink, accept_ms, flush_ms, points

    _, accept_ms, flush_ms, points = run()  # timings, without tracemalloc's overhead
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    sink, _, _, _ = run()  # memory: what the sink holds once the intervals are gone
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    default = Config().datadog_buffer_points

    buffered = sink.status()["buffered_points"]
    body_bytes = sum(len(p.body) for p in sink._buffer)
    per_point = held / buffered
    print(f"contexts per interval        {args.contexts:,} -> {statistics.median(points):,.0f} points per flush "
          f"(histograms expand to 5 series)")
    print(f"hub.publish + accept         median {statistics.median(accept_ms):.1f} ms per interval")
    print(f"flush (JSON + deflate)       median {statistics.median(flush_ms):.1f} ms per interval")
    print(f"buffer after {args.flushes} flushes      {buffered:,} points in {len(sink._buffer)} payloads, "
          f"{body_bytes / 1e6:.2f} MB compressed bodies")
    print(f"memory held per point        {per_point:.1f} bytes (tracemalloc, all Python objects)")
    print(f"default bound                {default:,} points = {default * per_point / 2**20:.0f} MiB at most; "
          f"{default / max(1, statistics.median(points)) * 10 / 60:.0f} minutes of this traffic at 10 s flushes")


if __name__ == "__main__":
    main()
