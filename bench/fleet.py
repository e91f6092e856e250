"""A simulated fleet of sidecars pushing remote_write into one real store, and what the sinks cost.

    .venv/bin/python bench/fleet.py fleet [--tasks 100] [--rounds 20] [--interval 1] [--outage 60]
                                          [--restart 0.33] [--store prometheus|victoria-metrics]
    .venv/bin/python bench/fleet.py cost [--statsd 2000] [--series 100000]

`fleet`: every task is a real `RemoteWriteSink` with its own hub and identity (distinct task ids, every
other one Fargate, the rest EC2), its own StatsD-like traffic (counters, a timer histogram, gauges), a
queue and ECS metrics, all pushing to one store started here (Debian's Prometheus or VictoriaMetrics).
Mid-run a third of the tasks stop (SIGTERM's path: final flush, drain, stale markers) and are replaced by
new tasks (new task ids, as ECS replaces a task), and the store is stopped for `--outage` seconds. The
store must end with exactly the expected series per task, exact counter values (the highest value
of each series equals what that task counted), no rejected request and nothing dropped.

`cost`: per flush of one task with `--statsd` StatsD series (60% counters, 25% histograms, 15% gauges)
plus ECS and queue series: bytes on the wire and CPU per flush for each sink; then encoding and
compressing `--series` series at once; and the remote_write encoder against building the whole
protobuf message every flush.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Kind, Points, Sample
from agent.sinks.remote_write import RemoteWriteSink

COUNTERS = 5  # StatsD counters per simulated task (each with its own tag)


def identity(n: int, generation: int = 0) -> Identity:
    task_id = f"{n:04d}{generation:02d}" + "ab" * 13
    launch = "FARGATE" if n % 2 == 0 else "EC2"
    return Identity(service="orders-worker", env="bench", version="1.0.0", ecs_cluster="fleet",
                    task_family="orders-worker", task_revision="3", task_id=task_id,
                    task_arn=f"arn:aws:ecs:eu-west-1:123456789012:task/fleet/{task_id}",
                    availability_zone="eu-west-1" + "abc"[n % 3], region="eu-west-1", launch_type=launch)


@dataclass
class SimTask:
    n: int
    ident: Identity
    sink: RemoteWriteSink
    hub: Hub
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None
    counted: dict[str, float] = field(default_factory=dict)  # counter series -> what this task counted

    def traffic(self, rnd: int) -> None:
        samples = []
        for i in range(COUNTERS):
            v = float((self.n + rnd + i) % 7 + 1)
            self.counted[f"k{i}"] = self.counted.get(f"k{i}", 0.0) + v
            samples.append(Sample("app.jobs", v, Kind.COUNT, (("kind", f"k{i}"),), interval=1.0))
        samples.append(Sample("app.job_time", Points((12.0, 80.0, 300.0), (1.0, 1.0, 1.0), True), Kind.HISTOGRAM))
        samples.append(Sample("app.workers", float(self.n % 4 + 1), Kind.GAUGE))
        self.hub.publish(Batch("statsd", samples))
        self.hub.publish(Batch("queue:jobs", [Sample("queue.depth", float(rnd), Kind.GAUGE, (("queue", "jobs"),))],
                               snapshot=True))
        self.hub.publish(Batch("ecs", [Sample("ecs.task.cpu.utilization_percent", 10.0 + self.n % 50),
                                       Sample("ecs.task.memory.usage_bytes", 2.0e8)], snapshot=True))


def start_task(n: int, generation: int, url: str, interval: float, external: tuple[tuple[str, str], ...]) -> SimTask:
    ident = identity(n, generation)
    config = replace(Config(), remote_write_url=url, remote_write_interval=interval,
                     remote_write_labels=external, shutdown_timeout=60.0)
    hub = Hub(ident)
    sink = RemoteWriteSink(config, hub, drain_timeout=45.0)
    hub.add_sink(sink)
    task = SimTask(n, ident, sink, hub)
    task.runner = asyncio.create_task(sink.run(task.stop))
    return task


def check_store(store: Any, finished: list[SimTask], elapsed: float) -> tuple[dict[str, int], list[str]]:
    """(series per task id, problems): one set of series per task, each counter's highest value exact."""
    store.flush()
    got_counts: dict[str, int] = {}
    for labels in store.series('{fleet="sim",__name__!~"tasklens_.*"}', time.time() - elapsed - 600):
        got_counts[labels["task_id"]] = got_counts.get(labels["task_id"], 0) + 1
    # the highest value of a counter is its last; *_over_time skips the stale markers
    highest = store.values(f'max_over_time(app_jobs_total{{fleet="sim"}}[{int(elapsed + 600)}s])')
    found = {(dict(k)["task_id"], dict(k)["kind"]): v for k, v in highest.items()}
    problems = []
    for t in finished:
        for kind, total in t.counted.items():
            if found.get((t.ident.task_id, kind)) != total:
                problems.append(f"{t.ident.task_id} {kind}: store {found.get((t.ident.task_id, kind))} != {total}")
    if len(got_counts) != len(finished):
        problems.append(f"{len(got_counts)} task ids in the store, {len(finished)} tasks ran")
    if len(set(got_counts.values())) != 1:
        problems.append(f"series per task differ: {sorted(set(got_counts.values()))}")
    return got_counts, problems


def every_reason(task: SimTask, what: str) -> float:
    return sum(float(s.value) for s in task.hub.metrics.samples()  # type: ignore[arg-type]
               if s.name == f"tasklens.exporter.{what}" and ("exporter", "remote_write") in s.tags)


def metric(task: SimTask, what: str, **labels: str) -> float:
    return task.hub.metrics.get(f"tasklens.exporter.{what}", exporter="remote_write", **labels)


async def run_fleet(store: Any, tmp: Path, tasks: int, rounds: int, interval: float, outage: float,
                    restart: float, start_store: Any, log: Any = print) -> dict[str, Any]:
    """Run the fleet against `store` (tests/sinks/stores.py's Store); returns the report, raises on a defect."""
    external = (("fleet", "sim"),)
    fleet = [start_task(n, 0, store.write_url, interval, external) for n in range(tasks)]
    finished: list[SimTask] = []
    started = time.monotonic()
    port = int(store.base.rsplit(":", 1)[1])
    for rnd in range(rounds):
        for t in fleet:
            t.traffic(rnd)
        if rnd == rounds // 3:  # replace a third of the tasks: clean stop, then a new task id
            victims = fleet[: int(tasks * restart)]
            for t in victims:
                t.stop.set()
            await asyncio.gather(*(t.runner for t in victims if t.runner))
            finished += victims
            fleet = [start_task(t.n, 1, store.write_url, interval, external) for t in victims] + fleet[len(victims):]
            log(f"round {rnd}: replaced {len(victims)} tasks")
        if rnd == rounds // 2 and outage > 0:
            store.stop()
            log(f"round {rnd}: store stopped for {outage:.0f} s")
            await asyncio.sleep(outage)  # the outage itself is the experiment's duration, not a wait
            store = await asyncio.to_thread(start_store, tmp, port)
            log("store back")
        await asyncio.sleep(interval)  # one round of traffic per flush interval
    for t in fleet:
        t.stop.set()
    await asyncio.gather(*(t.runner for t in fleet if t.runner))
    finished += fleet
    elapsed = time.monotonic() - started

    # what the store holds (VictoriaMetrics makes the newest rows searchable within a few seconds: poll)
    deadline = time.monotonic() + 60
    while True:
        got_counts, problems = check_store(store, finished, elapsed)
        if not problems or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    series_counts = set(got_counts.values())
    failed = sum(every_reason(t, "points_failed") for t in finished)
    dropped = sum(every_reason(t, "points_dropped") for t in finished)
    if failed or dropped:
        problems.append(f"{failed} samples refused, {dropped} dropped")
    for bad in ("out of order", "duplicate sample", "out of bounds"):
        if bad in store.log:
            problems.append(f"store log says {bad!r}")
    samples = sum(metric(t, "points_sent") for t in finished)
    wire = sum(metric(t, "bytes_sent") for t in finished)
    requests = sum(float(s.value) for t in finished for s in t.hub.metrics.samples()  # type: ignore[arg-type]
                   if s.name == "tasklens.exporter.submissions" and any(k == "status" and v.startswith("2")
                                                                         for k, v in s.tags))
    report = {
        "tasks_run": len(finished), "series_per_task": min(series_counts) if series_counts else 0,
        "series_in_store": int(sum(got_counts.values())),
        "samples_sent": int(samples), "bytes_sent": int(wire),
        "bytes_per_sample": round(wire / samples, 2) if samples else 0.0,
        "requests": int(requests), "requests_per_second": round(requests / elapsed, 1), "seconds": round(elapsed, 1),
        "retries": int(sum(metric(t, "retries") for t in finished)), "problems": problems,
    }
    store.stop()
    return report


# -- cost per flush ---------------------------------------------------------------------------------

def statsd_batch(contexts: int) -> Batch:
    samples = []
    for i in range(contexts):
        tags = (("endpoint", f"/api/v{i % 7}"), ("worker", f"w{i % 11}"))
        if i % 20 < 12:
            samples.append(Sample(f"app.requests.c{i}", float(i % 5 + 1), Kind.COUNT, tags, interval=10.0))
        elif i % 20 < 17:
            samples.append(Sample(f"app.latency.h{i}", Points(tuple(float(v) for v in range(1, 21)), (1.0,) * 20, True),
                                  Kind.HISTOGRAM, tags, interval=10.0))
        else:
            samples.append(Sample(f"app.pool.g{i}", float(i), Kind.GAUGE, tags))
    return Batch("statsd", samples)


def side_batches() -> list[Batch]:
    ecs = [Sample(f"ecs.container.metric{i}", float(i), Kind.GAUGE, (("container_name", c),))
           for i in range(20) for c in ("app", "tasklens")]
    queue = [Sample(f"queue.m{i}", float(i), Kind.GAUGE, (("queue", "jobs"),)) for i in range(8)]
    return [Batch("ecs", ecs, snapshot=True), Batch("queue:jobs", queue, snapshot=True)]


def measure(make_sink: Any, contexts: int, flushes: int = 5) -> dict[str, float]:
    hub = Hub(identity(1))
    sink = make_sink(hub)
    hub.add_sink(sink)
    # the hub's tagging is shared by every sink: enrich once, time only the sink's accept and flush
    batches = [hub.enrich(b) for b in [statsd_batch(contexts), *side_batches()]]
    cpu, wire, points = [], 0, 0
    for _ in range(flushes):
        t0 = time.process_time()
        for b in batches:
            sink.accept(b)
        out = sink.flush() if hasattr(sink, "flush") else None
        if out is None:  # EMF writes lines
            buf = io.StringIO()
            sink.stream = buf
            sink.emit(time.time())
            body_bytes, n = len(buf.getvalue().encode()), buf.getvalue().count("\n")
        else:
            body_bytes, n = sum(len(p.body) for p in out), sum(p.points for p in out)
        cpu.append(time.process_time() - t0)
        wire, points = body_bytes, n
    cpu_s = sorted(cpu)[len(cpu) // 2]
    # points: samples (remote_write), data points (OTLP) or records (EMF)
    return {"cpu_ms_per_flush": round(cpu_s * 1000, 1), "bytes_per_flush": wire, "points_per_flush": points,
            "core_percent_at_10s": round(cpu_s / 10 * 100, 3)}


def cost(contexts: int, series: int) -> None:
    from agent.sinks.emf import EmfSink
    from agent.sinks.otlp import OtlpSink
    from agent.sinks.remote_write import pb

    base = replace(Config(), remote_write_url="http://127.0.0.1:9/api/v1/write", otlp_endpoint="http://127.0.0.1:9",
                   cloudwatch="emf", cloudwatch_metrics=("*",), cloudwatch_dimensions=("service", "queue"))
    makers = {"remote_write": lambda hub: RemoteWriteSink(base, hub), "otlp": lambda hub: OtlpSink(base, hub),
              "emf (all metrics selected)": lambda hub: _emf(EmfSink, base, hub)}
    print(f"per task flush: {contexts} StatsD contexts + 48 ECS/queue series, every 10 s (median of 5)")
    for name, maker in makers.items():
        print(f"  {name:28s} {measure(maker, contexts)}")
    print(f"encode + compress {series} series at once (gauges, 12 labels each):")
    for name, maker in list(makers.items())[:2]:
        hub = Hub(identity(1))
        sink = maker(hub)
        hub.add_sink(sink)
        hub.publish(Batch("statsd", [Sample(f"app.m{i % 500}", float(i), Kind.GAUGE, (("series", str(i)),))
                                     for i in range(series)]))
        t0 = time.perf_counter()
        out = sink.flush()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = sink.flush()
        again = time.perf_counter() - t0
        print(f"  {name:12s} first flush {first:.2f} s, next flush {again:.2f} s, "
              f"{sum(len(p.body) for p in out) / 1e6:.2f} MB in {len(out)} requests")
    # remote_write: the cached-label encoder against the whole protobuf message built each flush
    hub = Hub(identity(1))
    rw = RemoteWriteSink(base, hub)
    hub.add_sink(rw)
    hub.publish(Batch("statsd", [Sample(f"app.m{i % 500}", float(i), Kind.GAUGE, (("series", str(i)),))
                                 for i in range(series)]))
    rw.flush()
    t0 = time.perf_counter()
    cached = rw.flush()
    t_cached = time.perf_counter() - t0
    WriteRequest, TimeSeries, Label, PbSample = (pb()[n] for n in ("WriteRequest", "TimeSeries", "Label", "Sample"))
    from agent.sinks.remote_write import label_sets, snappy_block, values_of

    items = list(rw.state.items())
    t0 = time.perf_counter()
    now_ms = int(time.time() * 1000)
    for i in range(0, len(items), rw.batch_samples):
        req = WriteRequest()
        for (name, tags), s in items[i:i + rw.batch_samples]:
            for labels, value in zip(label_sets(name, tags, s, rw.external), values_of(s)):
                req.timeseries.append(TimeSeries(labels=[Label(name=k, value=v) for k, v in labels],
                                                 samples=[PbSample(value=value, timestamp=now_ms)]))
        snappy_block(req.SerializeToString())
    t_whole = time.perf_counter() - t0
    print(f"remote_write encoder, {series} series: cached labels {t_cached:.2f} s, whole message each flush "
          f"{t_whole:.2f} s ({t_whole / t_cached:.1f}x); {len(cached)} requests")


def _emf(cls: Any, config: Config, hub: Hub) -> Any:
    sink = cls(config, hub, stream=io.StringIO())
    return sink


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fleet")
    f.add_argument("--tasks", type=int, default=100)
    f.add_argument("--rounds", type=int, default=20)
    f.add_argument("--interval", type=float, default=1.0)
    f.add_argument("--outage", type=float, default=60.0)
    f.add_argument("--restart", type=float, default=1 / 3)
    f.add_argument("--store", choices=["prometheus", "victoria-metrics"], default="prometheus")
    c = sub.add_parser("cost")
    c.add_argument("--statsd", type=int, default=2000)
    c.add_argument("--series", type=int, default=100_000)
    args = parser.parse_args()
    if args.cmd == "cost":
        cost(args.statsd, args.series)
        return
    from tests.sinks.stores import start_prometheus, start_victoria_metrics

    start = start_prometheus if args.store == "prometheus" else start_victoria_metrics
    with tempfile.TemporaryDirectory() as tmp:
        store = start(Path(tmp))
        report = asyncio.run(run_fleet(store, Path(tmp), args.tasks, args.rounds, args.interval, args.outage,
                                       args.restart, start))
    for k, v in report.items():
        print(f"{k}: {v}")
    sys.exit(1 if report["problems"] else 0)


if __name__ == "__main__":
    main()
