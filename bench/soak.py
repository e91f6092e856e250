"""Soak: the reliability scenarios of tests/reliability at full length, printing their numbers.

    python bench/soak.py                       # all three, defaults below (about 8 minutes)
    python bench/soak.py load --seconds 600 --rate 300000
    python bench/soak.py storm --names 1000000 --cap 100000 --ttl 30
    python bench/soak.py datadog --blackout 30

load: StatsD counters over UDP at a steady rate for minutes, alongside ECS polling (the emulator),
queue polling (its own redis-server) and a scrape every second: lines sent vs counted, counter sums
sent vs exported, kernel drops, RSS slope after the warm-up (least squares), flush durations, CPU.
storm: one-off names against the default context cap: cap held, drops counted, existing contexts
exact, RSS at baseline / peak / after the TTL. datadog: the intake faults with a full 30 s blackout:
every phase's total delivered exactly once, time to recover after the blackout.

The suite runs the same scenarios short (tests/reliability); the numbers go in the README's Guarantees section.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability.scenarios import (DD_AGENT_WORKING_SET, QUEUE_DEPTH, run_datadog_faults,  # noqa: E402
                                         run_load, run_storm)

MIB = 2**20


def soak_load(args: argparse.Namespace) -> bool:
    print(f"load: {args.seconds:.0f} s at {args.rate:,} lines/s over {args.contexts} contexts, "
          f"flush every {args.flush:g} s, ECS and queue polled every 1 s, /metrics scraped every 1 s")
    r = run_load(Path(tempfile.mkdtemp(prefix="tasklens-soak-")), args.seconds, args.rate, args.contexts, args.flush)
    warmup = min(60.0, args.seconds / 4)
    slope = r.rss_slope(warmup)
    flushes = [f for f in r.flush_durations if f]
    exact = r.exported == r.expected
    print(f"  lines sent {r.lines_sent:,} ({r.lines_sent / r.seconds:,.0f}/s), counted {r.lines_received:,}, "
          f"lost {r.lost_lines:,}; parse errors {r.parse_errors:.0f}")
    print(f"  datagrams sent {r.datagrams_sent:,} = received {r.packets_received:,.0f} + dropped by the kernel "
          f"(counted in tasklens_statsd_socket_drops_total) {r.socket_drops:,.0f}: {r.accounted}")
    print(f"  counter sums: {len(r.expected)} series, exported == sent: {exact}"
          + ("" if exact else f" (sent {sum(r.expected.values()):.0f}, exported {sum(r.exported.values()):.0f})"))
    print(f"  RSS: {r.rss[0][1] / MIB:.1f} MiB at start, {r.rss[-1][1] / MIB:.1f} MiB at end; after a {warmup:.0f} s "
          f"warm-up: slope {slope / 1024 * 60:+.1f} KiB/min, growth {r.rss_growth(warmup) / MIB:.2f} MiB")
    if flushes:
        print(f"  flush duration: median {statistics.median(flushes) * 1000:.1f} ms, max {max(flushes) * 1000:.1f} ms "
              f"(interval {r.flush_interval:g} s)")
    scrapes = r.extra["scrape_seconds"]
    print(f"  /metrics scrape under load: median {statistics.median(scrapes) * 1000:.1f} ms, "
          f"max {max(scrapes) * 1000:.1f} ms")
    print(f"  CPU: {r.extra['cpu_seconds']:.1f} s ({r.extra['cpu_seconds'] / r.lines_sent * 1e6:.2f} s per million "
          f"lines, everything included)")
    print(f"  ECS: {r.extra['ecs_polls']:.0f} polls, {r.ecs_poll_errors:.0f} errors, working set "
          f"{'exact' if r.working_set == DD_AGENT_WORKING_SET else r.working_set}; queue: {r.extra['queue_polls']:.0f} "
          f"polls, {r.queue_poll_errors:.0f} errors, depth {'exact' if r.queue_depth == QUEUE_DEPTH else r.queue_depth}")
    return exact and r.lost_lines == 0 and r.extra["exit_code"] == 0


def soak_storm(args: argparse.Namespace) -> bool:
    print(f"storm: {args.names:,} one-off names, cap {args.cap:,} contexts, TTL {args.ttl:g} s, flush every "
          f"{args.flush:g} s (Unix socket)")
    r = run_storm(Path(tempfile.mkdtemp(prefix="tasklens-soak-")), args.names, args.cap, args.ttl,
                  prometheus_ttl=max(5.0, args.ttl / 3), flush_interval=args.flush)
    accepted = args.cap - 10
    memory_back = r.rss_after_ttl - r.rss_baseline < 32 * MIB  # "near the baseline": within 32 MiB
    ok = (r.contexts_after_storm == args.cap and r.contexts_dropped == args.names - accepted
          and r.keep_exported == r.keep_expected and r.lines_received == r.lines_sent and r.storm_series_after_ttl == 0
          and memory_back)
    print(f"  sent in {r.seconds_sending:.1f} s; contexts after the storm {r.contexts_after_storm:.0f} (cap "
          f"{args.cap:,}); refused {r.contexts_dropped:,.0f} (expected {args.names - accepted:,}); existing "
          f"contexts exact: {r.keep_exported == r.keep_expected}")
    print(f"  after the TTL: {r.contexts_after_ttl:.0f} contexts, {r.storm_series_after_ttl} storm series on /metrics, "
          f"a new name accepted: {r.new_context_after_ttl == 7.0}")
    print(f"  one /metrics scrape with the cap full: {r.scrape_seconds:.1f} s")
    print(f"  RSS: baseline {r.rss_baseline / MIB:.1f} MiB, peak {r.rss_peak / MIB:.1f} MiB, after the TTL "
          f"{r.rss_after_ttl / MIB:.1f} MiB ({(r.rss_after_ttl - r.rss_baseline) / MIB:+.1f} MiB): "
          f"{'back near the baseline' if memory_back else 'NOT back near the baseline (over 32 MiB above)'}")
    return ok


def soak_datadog(args: argparse.Namespace) -> bool:
    phases = [("ok", 3.0), ("http_500", 5.0), ("ok", 3.0), ("timeout", 5.0), ("ok", 3.0), ("reset", 5.0),
              ("ok", 3.0), ("blackout", args.blackout), ("ok", 2.0)]
    print(f"datadog: intake faults, then a {args.blackout:g} s blackout (connection refused)")
    r = asyncio.run(run_datadog_faults(Path(tempfile.mkdtemp(prefix="tasklens-soak-")), phases))
    exact = r.delivered == r.sent and not r.intake_errors
    m = r.metrics
    print(f"  every phase delivered exactly once: {exact} ({sum(r.sent.values()):.0f} increments in "
          f"{len(r.sent)} phases)")
    print(f"  answered 500: {r.answered_500}, connections reset: {r.broken.get('reset', 0)}, black-holed: "
          f"{r.broken.get('blackhole', 0)}; retries counted {m.value('tasklens_exporter_retries_total'):.0f}, "
          f"dropped {m.value('tasklens_exporter_points_dropped_total'):.0f}")
    print(f"  first delivery {r.recovery_seconds:.1f} s after the blackout ended; exit code {r.exit_code}")
    return exact and r.exit_code == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="*", help="load, storm, datadog (default: all three)")
    parser.add_argument("--seconds", type=float, default=300.0, help="load: duration (default 300)")
    parser.add_argument("--rate", type=int, default=300_000, help="load: lines per second (default 300,000)")
    parser.add_argument("--contexts", type=int, default=2_000)
    parser.add_argument("--flush", type=float, default=10.0, help="flush interval (default 10 s, the sidecar's)")
    parser.add_argument("--names", type=int, default=1_000_000, help="storm: one-off names")
    parser.add_argument("--cap", type=int, default=100_000, help="storm: context cap (default: the sidecar's)")
    parser.add_argument("--ttl", type=float, default=60.0, help="storm: context TTL; must outlast the storm")
    parser.add_argument("--blackout", type=float, default=30.0, help="datadog: blackout seconds")
    args = parser.parse_args(argv)
    runs = {"load": soak_load, "storm": soak_storm, "datadog": soak_datadog}
    chosen = args.scenario or list(runs)
    for name in chosen:
        if name not in runs:
            parser.error(f"unknown scenario {name!r}: choose from {', '.join(runs)}")
    results = {name: runs[name](args) for name in chosen}
    print("result:", ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
