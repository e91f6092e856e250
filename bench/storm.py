"""What a cardinality storm costs the StatsD receive side, per line, against ordinary traffic.

A worker that tags with a request id sends a new context in every line. Measured in one process, on
lines of the same shape (`storm.requests:1|c|#env:prod,service:api,request_id:<id>`, ~30 per datagram,
16 datagrams per `ingest_many` call as the server drains them):

- *known*: lines of 1,000 contexts that already exist;
- *new*: lines that each create a context (100,000 of them, under the cap);
- *known, spread*: one line of each of the 101,000 live contexts, in random order (what a known line
  costs when the contexts do not fit in the CPU's caches);
- *refused*: lines that each name a new context once the cap is reached (200,000);
- *refused again*: lines of 1,000 of those refused contexts, each sent again (what a bounded
  high-cardinality tag, a user id say, costs once its values have been refused);

then the export side: the storm's first flush (`Flusher.batch` of the interval that made its 100,000
contexts, and the Prometheus sink's `accept` of that batch, which makes their series; with the ten tags
the sidecar adds to every series of a Fargate task, and garbage collection paused as the server pauses
it); `Flusher.batch` of an interval that touched only the 1,000 known contexts while
the 100,000 storm counters sit idle (each is exported as a zero until its TTL), and the Prometheus
sink's `accept` of that batch (its series made at the flush before); and RSS before the storm,
after it, and after the storm's contexts expired (`Aggregator.expire`, as the server does after the TTL).
CPU per line is the median over chunks of 10,000 lines; each figure is the median over `--rounds`
processes, the versions alternating.

    .venv/bin/python bench/storm.py                       # this tree
    .venv/bin/python bench/storm.py --baseline 4f27b28    # and agent/ of that commit, same run
    .venv/bin/python bench/storm.py --profile new         # cProfile of one phase (known, new, known_spread, refused, refused_again)

`--baseline REV` exports `agent/` of that commit (`git archive`) into a temporary directory and builds its
C loop there with gcc.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KNOWN, NEW, REFUSED = 1_000, 100_000, 200_000
AGAIN = 1_000  # refused contexts whose lines come again
CHUNK = 10_000  # lines per measurement
LINES_PER_DATAGRAM, DATAGRAMS_PER_CALL = 30, 16
MIB = 2**20
# the tags the sidecar adds to every series of a Fargate task (`Identity.tags`)
IDENTITY = (("service", "api"), ("env", "prod"), ("version", "1.4.2"), ("ecs_cluster", "prod"),
            ("task_family", "api-worker"), ("task_revision", "42"), ("task_id", "9781c248-0edd-4cdb-9a93-f63cb662a5d3"),
            ("availability_zone", "us-east-1a"), ("region", "us-east-1"), ("launch_type", "FARGATE"))


def lines(prefix: str, ids: range) -> list[bytes]:
    return [b"storm.requests:1|c|#env:prod,service:api,request_id:%s%d" % (prefix.encode(), i) for i in ids]


def calls(batch: list[bytes]) -> list[list[bytes]]:
    """Lines -> datagrams of LINES_PER_DATAGRAM -> groups of DATAGRAMS_PER_CALL (one `ingest_many` each)."""
    grams = [b"\n".join(batch[k:k + LINES_PER_DATAGRAM]) for k in range(0, len(batch), LINES_PER_DATAGRAM)]
    return [grams[k:k + DATAGRAMS_PER_CALL] for k in range(0, len(grams), DATAGRAMS_PER_CALL)]


def per_line(agg: Any, batch: list[bytes]) -> list[float]:
    """CPU microseconds per line of each CHUNK of `batch`, ingested in order."""
    out = []
    for k in range(0, len(batch), CHUNK):
        chunk = calls(batch[k:k + CHUNK])
        cpu = time.process_time()
        for group in chunk:
            agg.ingest_many(group)
        out.append((time.process_time() - cpu) / CHUNK * 1e6)
    return out


def flush_cpu_ms(call: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """call(*args, **kwargs)'s result and CPU milliseconds, the collector paused as the server pauses it for a flush
    (`paused_gc`)."""
    gc.disable()
    try:
        cpu = time.process_time()
        out = call(*args, **kwargs)
        return out, (time.process_time() - cpu) * 1e3
    finally:
        gc.enable()


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(profile: str | None) -> dict[str, Any]:
    from agent import memory
    from agent.selfmetrics import SelfMetrics
    from agent.sinks.prometheus import PrometheusSink
    try:
        from agent.statsd.flush import Flusher
        from agent.statsd.receive import Aggregator
    except ImportError:  # a tree from before the split (--baseline)
        from agent.statsd.aggregator import Aggregator, Flusher  # type: ignore[no-redef]
    memory.configure()  # as `tasklens run`: glibc thresholds, the collector's threshold
    agg, flusher = Aggregator(max_contexts=KNOWN + NEW), Flusher(10.0, ttl=300.0)
    known = lines("k", range(KNOWN))
    for group in calls(known):
        agg.ingest_many(group)
    flusher.batch(agg.swap(0.0), now=0.0)
    memory.trim()
    result: dict[str, Any] = {"rss_before": rss()}
    spread = lines("n", range(NEW))
    random.Random(7).shuffle(spread)
    phases = {"known": known * (3 * CHUNK // KNOWN), "new": lines("n", range(NEW)), "known_spread": spread,
              "refused": lines("r", range(REFUSED)),
              "refused_again": lines("r", range(REFUSED - AGAIN, REFUSED)) * (3 * CHUNK // AGAIN)}
    if profile:
        import cProfile
        import pstats
        for name, batch in phases.items():
            if name == profile:
                prof = cProfile.Profile()
                prof.enable()
                for group in calls(batch):
                    agg.ingest_many(group)
                prof.disable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(25)
                return {}
            per_line(agg, batch)
    for name, batch in phases.items():
        result[name] = statistics.median(per_line(agg, batch))
    del phases, batch, spread  # the storm's lines themselves are not what the sidecar holds
    assert agg.stats.contexts_dropped == REFUSED
    assert agg.stats.errors["cardinality_limit"] == REFUSED + 3 * CHUNK
    # the swap that ends the storm's interval: it makes the Python objects of the contexts the C loop
    # made and kept (trees before that made them as the lines came: their swap has none to make)
    cpu = time.process_time()
    iv = agg.swap(10.0)
    result["storm_swap_ms"] = (time.process_time() - cpu) * 1e3
    assert len(agg.contexts) == KNOWN + NEW
    # the storm's counters: exported once, idle from now on
    storm, result["storm_batch_ms"] = flush_cpu_ms(flusher.batch, iv, now=10.0, base=IDENTITY)
    result["rss_storm"] = rss()
    sink = PrometheusSink(SelfMetrics(), identity=lambda: IDENTITY)  # made after the RSS above, dropped before the one below
    _, result["storm_prometheus_ms"] = flush_cpu_ms(sink.accept, storm)
    del storm, iv
    flushes, accepts = [], []
    for i in range(2, 7):
        for group in calls(known):
            agg.ingest_many(group)
        iv = agg.swap(10.0 * i)
        t = time.perf_counter()
        batch = flusher.batch(iv, now=10.0 * i, base=IDENTITY)
        flushes.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        sink.accept(batch)
        accepts.append((time.perf_counter() - t) * 1e3)
        samples = len(batch.samples)
    result["flush_ms"], result["flush_samples"] = statistics.median(flushes), samples
    result["prometheus_ms"] = statistics.median(accepts)
    del batch, iv, sink  # the last batch holds a sample per idle counter: the sidecar drops it after the flush
    gc.collect()  # the sink and its registry refer to each other
    agg.expire(flusher.expired(now=10.0 * 7 + 300.0))  # past the TTL: all but the known contexts
    for group in calls(known):
        agg.ingest_many(group)
    agg.swap(400.0)
    assert len(agg.contexts) == KNOWN, len(agg.contexts)
    memory.trim()
    result["rss_after"] = rss()
    return result


def run(root: Path) -> dict[str, Any]:
    from bench.baseline import worker

    return worker(root, [__file__, "--worker"])


def report(label: str, results: list[dict[str, Any]]) -> dict[str, float]:
    m = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(f"{label}: CPU per line: known {m['known']:.3f} us, new context {m['new']:.3f} us "
          f"({m['new'] / m['known']:.1f}x), refused at the cap {m['refused']:.3f} us "
          f"({m['refused'] / m['known']:.1f}x); a known line of one of {KNOWN + NEW:,} live contexts in "
          f"turn {m['known_spread']:.3f} us (refused: {m['refused'] / m['known_spread']:.1f}x that); a line of a "
          f"context refused before {m['refused_again']:.3f} us ({m['refused_again'] / m['known']:.1f}x a known line)")
    whole = m['new'] + m['storm_swap_ms'] * 1e3 / NEW
    print(f"{label}: the swap after the storm: {m['storm_swap_ms']:.0f} ms; a new context all told (its line, and "
          f"its share of the swap) {whole:.3f} us ({whole / m['known']:.1f}x a known line)")
    print(f"{label}: the storm's first flush ({NEW:,} new counters, with the task's {len(IDENTITY)} tags): "
          f"batch {m['storm_batch_ms']:.0f} ms, the Prometheus sink's part {m['storm_prometheus_ms']:.0f} ms "
          f"({(m['storm_batch_ms'] + m['storm_prometheus_ms']) * 1e3 / NEW:.1f} us a context)")
    print(f"{label}: flush with {NEW:,} idle counters: {m['flush_ms']:.1f} ms ({m['flush_samples']:.0f} samples), "
          f"the Prometheus sink's part {m['prometheus_ms']:.1f} ms; "
          f"RSS {m['rss_before'] / MIB:.0f} MiB before, {m['rss_storm'] / MIB:.0f} after the storm, "
          f"{m['rss_after'] / MIB:.0f} after its contexts expired")
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="also measure agent/ of this git revision")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", choices=["known", "new", "known_spread", "refused", "refused_again"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker or args.profile:
        result = worker(args.profile)
        if args.worker:
            print(json.dumps(result))
        return
    sys.path.insert(0, str(HERE.parent))  # here, not at the top: the workers run other trees
    from bench.baseline import side_by_side

    results = side_by_side(args.baseline, args.rounds, run)
    medians = {label: report(label, rs) for label, rs in results.items()}
    if len(medians) == 2:
        now, before = medians.values()
        print("this tree / baseline: " + ", ".join(f"{k} {now[k] / before[k]:.2f}" for k in
                                                     ("known", "new", "known_spread", "refused", "refused_again", "storm_swap_ms",
                                                      "storm_batch_ms",
                                                      "storm_prometheus_ms", "flush_ms", "prometheus_ms",
                                                      "rss_after")))


if __name__ == "__main__":
    main()
