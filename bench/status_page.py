"""Cost of the health signals and the status page, in process (no network):

1. microseconds per ECS poll for `HealthMonitor.observe` (the leak forecast, OOM/restart rules,
   saturation) and for the page's `PageHistory.accept`, with 2 and with 20 containers;
2. a StatsD flush through `PageHistory.accept`: nobody watching (the default) against somebody
   watching (the busiest metrics are ranked), at 2,000 and 100,000 contexts;
3. the history's memory at its caps (20 containers, 20 queues, 360 points per series), and that it
   stays there when 1,000 containers and 1,000 queues are offered;
4. the page's size and the time and size of one data snapshot at the caps.

    .venv/bin/python bench/status_page.py
"""

from __future__ import annotations

import gzip
import json
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.health import HealthMonitor
from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Kind, Points, Sample
from agent.sources.ecs_stats import derive
from agent.statuspage import MAX_POINTS, PageHistory, page_html
from tests.health_support import leaking_polls


def per_call_us(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat * 1e6


def widened(task, stats, n: int):  # type: ignore[no-untyped-def]
    """fargate-2023 with its dd-agent container copied to `n` containers."""
    import copy

    base_c = task["Containers"][0]
    base_s = stats[base_c["DockerId"]]
    task = dict(task, Containers=[])
    out = {}
    for i in range(n):
        c = copy.deepcopy(base_c)
        c["Name"], c["DockerId"] = f"c{i}", f"id{i}"
        task["Containers"].append(c)
        out[c["DockerId"]] = base_s
    return task, out


def bench_polls() -> None:
    print("1. per ECS poll (fargate-2023 leaking, after a 30-minute window of 181 polls)")
    for n in (2, 20):
        monitor = HealthMonitor(memory_window=1800, saturation_threshold=90, saturation_window=60)
        page = PageHistory(Hub(Identity(service="b")))
        polls = [widened(t, s, n) if n != 2 else (t, s) for t, s in leaking_polls(polls=181, step=10, grow=2 << 20)]
        derived = [derive(t, s).samples for t, s in polls]
        for (t, s), d in zip(polls, derived):
            monitor.observe(t, s, d, 0)
        t, s = polls[-1]
        d = derived[-1]
        observe = per_call_us(lambda m=monitor, t=t, s=s, d=d: m.observe(t, s, d, 0), 200)
        batch = Batch("ecs", d + monitor.observe(t, s, d, 0))
        accept = per_call_us(lambda p=page, b=batch: p.accept(b), 2000)
        print(f"   {n:>2} containers: health {observe:8.0f} us, status page history {accept:6.1f} us")


def bench_statsd() -> None:
    print("2. one StatsD flush into the page's history")
    for contexts in (2_000, 100_000):
        samples = []
        for i in range(contexts):
            if i % 3 == 0:
                samples.append(Sample(f"m{i}", 5.0, Kind.COUNT, interval=10.0))
            elif i % 3 == 1:
                samples.append(Sample(f"m{i}", Points([0.1] * 4, [1.0] * 4), Kind.HISTOGRAM, interval=10.0))
            else:
                samples.append(Sample(f"m{i}", 1.0, Kind.GAUGE))
        batch = Batch("statsd", samples)
        page = PageHistory(Hub(Identity(service="b")))
        idle = per_call_us(lambda p=page, b=batch: p.accept(b), 200)
        page.snapshot({})  # somebody opens the page: the next flushes are ranked
        watched = per_call_us(lambda p=page, b=batch: p.accept(b), 5)
        print(f"   {contexts:>7} contexts: nobody watching {idle:6.2f} us, watched {watched / 1000:7.1f} ms "
              f"({watched / 1e6 / 10 * 100:.3f} % of a core at a 10 s flush)")


def bench_memory() -> None:
    print(f"3. history memory ({MAX_POINTS} points per series)")
    for offered in (20, 1000):
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        ticks = iter(float(i * 10) for i in range(10**9))
        page = PageHistory(Hub(Identity(service="b")), clock=lambda ticks=ticks: next(ticks))
        for _ in range(MAX_POINTS + 5):
            page.accept(Batch("ecs", [
                s for i in range(offered) for s in (
                    Sample("ecs.container.cpu.utilization_percent", 50.0, tags=(("container_name", f"c{i}"),)),
                    Sample("ecs.container.memory.working_set_bytes", 1e8, tags=(("container_name", f"c{i}"),)),
                    Sample("ecs.container.memory.limit_bytes", 1e9, tags=(("container_name", f"c{i}"),)))]))
            for q in range(offered):
                page.accept(Batch(f"queue:q{q}", [Sample("queue.depth", 5.0, tags=(("queue", f"q{q}"),))]))
        size = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
        tracemalloc.stop()
        print(f"   {offered:>4} containers and {offered:>4} queues offered: {len(page.containers)} + "
              f"{len(page.queues)} kept, {size / 1024:7.0f} KiB")
        if offered == 20:
            t0 = time.perf_counter()
            body = json.dumps(page.snapshot({})).encode()
            took = (time.perf_counter() - t0) * 1000
    print(f"4. page {len(page_html()):,} bytes ({len(gzip.compress(page_html(), 9)):,} gzipped); "
          f"one data snapshot at the caps {len(body) / 1024:.0f} KiB JSON "
          f"({len(gzip.compress(body)) / 1024:.0f} KiB gzipped) in {took:.1f} ms")


if __name__ == "__main__":
    bench_polls()
    bench_statsd()
    bench_memory()
