"""In-process micro-benchmark of the StatsD parse + aggregate path (no sockets).

Realistic traffic as in docs/statsd.md: datagrams of about 1.4 KB holding 20-40 lines, 1,000-10,000
contexts with 2-6 tags each, a mix of counters, gauges, timers, histograms, sets and distributions.
Prints lines/s and CPU seconds per million lines for `Aggregator.ingest`, then the cost of one flush
(`swap` on the receive side, `Flusher.batch` on the export side).

    .venv/bin/python bench/statsd_parse.py [--contexts 2000] [--seconds 5] [--plain] [--batch 16] [--skew 1.1]
    .venv/bin/python bench/statsd_parse.py --baseline 6d65ff6 --rounds 3   # the C loop against that commit's

`--baseline REV` measures only the C loop, in a process per version (`agent/` of REV exported as
`bench/baseline.py` does), the versions alternating for `--rounds` rounds; it prints each version's
median and their ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from agent.model import Points
from agent.selfmetrics import SelfMetrics
from agent.sinks.prometheus import PrometheusSink
from agent.statsd.flush import Flusher
from agent.statsd.receive import Aggregator, Table

# counters 55%, timers 15%, histograms 10%, gauges 12%, distributions 5%, sets 3%
TYPE_MIX = ["c"] * 55 + ["ms"] * 15 + ["h"] * 10 + ["g"] * 12 + ["d"] * 5 + ["s"] * 3


def make_contexts(n: int, rng: random.Random, tagged: bool = True) -> list[tuple[bytes, str]]:
    """(line without value, type) for n contexts: `name:{}|type|@rate|#tags`."""
    out = []
    for i in range(n):
        kind = rng.choice(TYPE_MIX)
        name = f"app.{rng.choice(['orders', 'billing', 'jobs', 'http', 'db'])}.{rng.choice(['requests', 'latency', 'size', 'errors', 'queue'])}.{i}"
        tail = f"|{kind}"
        if kind in ("c", "ms", "h") and rng.random() < 0.1:
            tail += "|@0.5"
        if tagged:
            tags = [f"tag{j}:{rng.choice(['a', 'bb', 'ccc', 'value-' + str(rng.randrange(50))])}" for j in range(rng.randint(2, 6))]
            tail += "|#" + ",".join(tags)
        out.append((name.encode() + b":%s" + tail.encode(), kind))
    return out


def value_for(kind: str, rng: random.Random) -> bytes:
    if kind == "c":
        return b"1" if rng.random() < 0.7 else str(rng.randint(1, 20)).encode()
    if kind == "g":
        return str(rng.randint(0, 1000)).encode()
    if kind == "s":
        return b"user%d" % rng.randrange(200)
    if kind == "ms":  # whole milliseconds (statsd `timing`) or floats (datadog `timed`), half each
        return str(rng.randint(1, 500)).encode() if rng.random() < 0.5 else f"{rng.random() * 500:.6f}".encode()
    return f"{rng.random() * 100:.6f}".encode()  # sizes, durations: practically never equal


def make_datagrams(contexts: list[tuple[bytes, str]], count: int, rng: random.Random,
                   size: int = 1432, skew: float = 0.0) -> tuple[list[bytes], int]:
    """`count` datagrams of at most `size` bytes and 20-40 lines; returns them and the line count.

    `skew` > 0 picks contexts with Zipf weights 1 / rank**skew (a few hot counters, a long tail), as
    real workers send; 0 picks them uniformly (every context equally often: the least repetition)."""
    weights = [1 / (rank + 1) ** skew for rank in range(len(contexts))] if skew else None
    out, lines = [], 0
    for _ in range(count):
        parts: list[bytes] = []
        length, want = 0, rng.randint(20, 40)
        picks = iter(rng.choices(contexts, weights, k=want))
        while len(parts) < want:
            fmt, kind = next(picks)
            line = fmt % value_for(kind, rng)
            if length + len(line) + 1 > size:
                break
            parts.append(line)
            length += len(line) + 1
        out.append(b"\n".join(parts))
        lines += len(parts)
    return out, lines


def measure(agg: Aggregator, datagrams: list[bytes], batches: list[list[bytes]], lines_per_pass: int,
            seconds: float, label: str) -> float:
    """CPU seconds per million lines of `ingest_many`, after warming the head cache as a running server has."""
    for d in datagrams[:2000]:
        agg.ingest(d)
    agg.swap()
    lines, best = 0, float("inf")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    ingest = agg.ingest_many
    while time.perf_counter() - wall0 < seconds:
        pass_cpu = time.process_time()
        for b in batches:
            ingest(b)
        best = min(best, (time.process_time() - pass_cpu) / lines_per_pass * 1e6)
        lines += lines_per_pass
        agg.swap()  # as the server does every interval: nothing piles up
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    per_million = cpu / lines * 1e6
    print(f"ingest, {label} ({len(batches[0])} datagrams per call): {lines / wall:,.0f} lines/s, {per_million:.3f} "
          f"CPU-s per million lines (best pass {best:.3f}; {lines:,} lines in {wall:.2f} s); "
          f"errors: {sum(agg.stats.errors.values())}, contexts: {agg.context_count}")
    return per_million


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, default=2000)
    ap.add_argument("--datagrams", type=int, default=20_000, help="distinct datagrams generated (one pass)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--plain", action="store_true", help="no tags")
    ap.add_argument("--skew", type=float, default=0.0, help="Zipf exponent of context popularity (0: uniform)")
    ap.add_argument("--batch", type=int, default=16,
                    help="datagrams parsed together, as the server does with what one wake-up drains")
    ap.add_argument("--baseline", help="the C loop of this tree against that of this git revision")
    ap.add_argument("--rounds", type=int, default=3, help="with --baseline: processes per version")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline:
        compare(args)
        return
    rng = random.Random(42)
    contexts = make_contexts(args.contexts, rng, tagged=not args.plain)
    datagrams, lines_per_pass = make_datagrams(contexts, args.datagrams, rng, skew=args.skew)
    size = sum(map(len, datagrams)) / len(datagrams)
    print(f"traffic: {args.contexts} contexts ({'uniform' if not args.skew else f'Zipf {args.skew}'}), "
          f"{'plain' if args.plain else 'tagged'}, "
          f"{lines_per_pass / len(datagrams):.1f} lines and {size:.0f} bytes per datagram")

    batches = [datagrams[i:i + args.batch] for i in range(0, len(datagrams), args.batch)]
    if args.worker:
        agg = Aggregator(max_contexts=100_000)
        print(json.dumps({"c": measure(agg, datagrams, batches, lines_per_pass, args.seconds, "c loop")}))
        return
    costs = {}
    for loop in ("c", "python"):  # side by side, in one run
        if loop == "c" and Table is None:
            print("ingest, C loop: not built (agent/statsd/_fast.c; `pip install -e .` builds it)")
            continue
        agg = Aggregator(max_contexts=100_000, accelerated=loop == "c")
        costs[loop] = measure(agg, datagrams, batches, lines_per_pass, args.seconds, f"{loop} loop")
    if len(costs) == 2:
        print(f"C loop / Python loop CPU per line: {costs['c'] / costs['python']:.3f}")

    # a flush of one pass (each datagram once: values repeat no more than in the traffic itself)
    agg = Aggregator(max_contexts=100_000)
    ingest = agg.ingest_many
    for b in batches:
        ingest(b)
    t0 = time.perf_counter()
    iv = agg.swap()
    t1 = time.perf_counter()
    batch = Flusher(10.0).batch(iv)
    t2 = time.perf_counter()
    sink = PrometheusSink(SelfMetrics())
    sink.accept(batch)
    t3 = time.perf_counter()
    held = sum(len(v) for v in iv.values.values())
    kept = sum(len(s.value.values) for s in batch.samples if isinstance(s.value, Points))
    print(f"flush of {lines_per_pass:,} lines: swap {1e3 * (t1 - t0):.3f} ms (receive side); batch of {len(batch.samples)} samples "
          f"{1e3 * (t2 - t1):.1f} ms, {held:,} histogram values merged into {kept:,}; Prometheus sink "
          f"{1e3 * (t3 - t2):.1f} ms (export side)")


def compare(args: argparse.Namespace) -> None:
    """--baseline: the C loop's CPU per line in this tree and in the baseline's, alternating."""
    here = Path(__file__).resolve()
    sys.path.insert(0, str(here.parent.parent))  # the workers run other trees: imported here only
    from bench.baseline import side_by_side, worker

    argv = [str(here), "--worker", "--contexts", str(args.contexts), "--datagrams",
            str(args.datagrams), "--seconds", str(args.seconds), "--skew", str(args.skew), "--batch", str(args.batch)]
    if args.plain:
        argv.append("--plain")

    medians = {label: statistics.median(r["c"] for r in rs)
               for label, rs in side_by_side(args.baseline, args.rounds, lambda root: worker(root, argv)).items()}
    for label, cost in medians.items():
        print(f"{label}: C loop {cost:.3f} CPU-s per million lines (median of {args.rounds})")
    now, before = medians.values()
    print(f"this tree / baseline: {now / before:.2f}")


if __name__ == "__main__":
    main()
