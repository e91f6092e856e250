"""What a flush costs against what receiving the same lines cost, on realistic traffic.

At a high rate the flush is work that arrives all at once: the interval's counters, gauges and sets
become samples, its histogram values are merged where they repeat and sorted, and the Prometheus sink
adds them to its series. While the flush runs, the receive thread shares the interpreter with it, so
the receive buffer (`TASKLENS_STATSD_BUFFER_BYTES`) has to hold what arrives meanwhile. This bench
fills one interval with `--lines` lines of the traffic of bench/statsd_parse.py (2,000 contexts, a
third of the lines histogram, timer or distribution values), flushes it once to create the series,
fills and flushes it again, and reports, as CPU seconds per million lines of the interval:

- *ingest*: `Aggregator.ingest_many` of the interval's lines (the receive side);
- *batch*: `Flusher.batch` (the export side: samples, merges, sorts), with the collector paused as
  the server pauses it for a flush (a collection that fell inside it weighed up to 30 ms);
- *prometheus*: `PrometheusSink.accept` of that batch.

Each figure is the median over `--rounds` processes, the versions alternating.

    .venv/bin/python bench/flush_cost.py                           # this tree
    .venv/bin/python bench/flush_cost.py --baseline 17187f1        # and agent/ of that commit, same run
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(lines_wanted: int) -> dict[str, float]:
    sys.path.insert(1, str(HERE))  # bench/statsd_parse.py's traffic; `agent` from PYTHONPATH
    from statsd_parse import make_contexts, make_datagrams

    from agent.selfmetrics import SelfMetrics
    from agent.sinks.prometheus import PrometheusSink
    from agent.statsd.flush import Flusher
    from agent.statsd.receive import Aggregator
    from agent.statsd.server import paused_gc

    rng = random.Random(42)
    datagrams, per_pass = make_datagrams(make_contexts(2000, rng), 20_000, rng)
    calls = [datagrams[i:i + 16] for i in range(0, len(datagrams), 16)]
    passes = max(1, round(lines_wanted / per_pass))
    agg = Aggregator(max_contexts=100_000)
    flusher, sink = Flusher(10.0), PrometheusSink(SelfMetrics())

    def fill() -> float:
        start = time.process_time()
        for _ in range(passes):
            for call in calls:
                agg.ingest_many(call)
        return time.process_time() - start

    fill()
    sink.accept(flusher.batch(agg.swap()))  # the series exist from now on, as in a running sidecar
    ingest = fill()
    iv = agg.swap()
    with paused_gc():  # as the server flushes: a collection that falls in a flush is not its cost there
        start = time.process_time()
        batch = flusher.batch(iv)
        batched = time.process_time()
        sink.accept(batch)
        done = time.process_time()
    million = passes * per_pass / 1e6
    return {"lines": passes * per_pass, "ingest": ingest / million, "batch": (batched - start) / million,
            "prometheus": (done - batched) / million}


def run(root: Path, lines: int) -> dict[str, float]:
    from bench.baseline import worker

    return worker(root, [__file__, "--worker", "--lines", str(lines)])


def report(label: str, results: list[dict[str, float]]) -> dict[str, float]:
    m = {k: statistics.median(r[k] for r in results) for k in results[0]}
    flush = m["batch"] + m["prometheus"]
    print(f"{label}: {m['lines']:,.0f} lines an interval; CPU-s per million lines: ingest {m['ingest']:.3f}, "
          f"flush {flush:.3f} (batch {m['batch']:.3f}, prometheus {m['prometheus']:.3f}): the flush is "
          f"{100 * flush / m['ingest']:.0f}% of the receive side's work")
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="also measure agent/ of this git revision")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lines", type=int, default=5_000_000,
                        help="lines an interval (5M: 2 s at 2.5M lines/s)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.lines)))
        return
    sys.path.insert(0, str(HERE.parent))  # here, not at the top: the workers run other trees
    from bench.baseline import side_by_side

    results = side_by_side(args.baseline, args.rounds, lambda root: run(root, args.lines))
    medians = {label: report(label, rs) for label, rs in results.items()}
    if len(medians) == 2:
        now, before = medians.values()
        print("this tree / baseline: " + ", ".join(f"{k} {now[k] / before[k]:.2f}"
                                                   for k in ("ingest", "batch", "prometheus")))


if __name__ == "__main__":
    main()
