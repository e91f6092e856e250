"""What one sidecar costs: its CPU and memory, its broker API calls, its series (Datadog custom metrics).

Starts `tasklens emulate-ecs --example fargate` and `tasklens run` against it with one Redis queue
(the machine's Redis on 127.0.0.1:6379) and the defaults, lets a worker send `--statsd` distinct
StatsD metrics of each type, then measures the sidecar for `--seconds` and counts the series it
exports, by family. The monthly API calls follow from the poll intervals (30-day month).

    .venv/bin/python bench/cost.py [--seconds 60] [--statsd 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import psutil

from agent.config import Config

TASKLENS = os.path.join(os.path.dirname(sys.executable), "tasklens")
MONTH = 30 * 86400


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def wait(url: str, predicate: object = None, timeout: float = 40.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = get(url)
            if predicate is None or predicate(text):  # type: ignore[operator]
                return text
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {url}")


def series_by_group(text: str) -> tuple[Counter[str], Counter[str]]:
    """(lines on /metrics, Datadog custom metrics) per group. A Prometheus histogram (its `_bucket`,
    `_sum`, `_count` lines) is one StatsD histogram: 5 Datadog metrics (avg, count, max, median, p95)."""
    lines: Counter[str] = Counter()
    contexts: dict[str, set[tuple[str, str]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition("{")
        name = name.split(" ", 1)[0]
        group = next((g for g in ("ecs_", "queue_", "tasklens_") if name.startswith(g)), "statsd")
        lines[group] += 1
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            base = name.removesuffix(suffix)
            if base != name and f"\n{base}_bucket{{" in text:
                family = base + "#histogram"
        labels = ",".join(x for x in rest.rsplit("}", 1)[0].split(",") if not x.startswith("le="))
        contexts.setdefault(group, set()).add((family, labels))
    datadog: Counter[str] = Counter()
    for group, found in contexts.items():
        datadog[group] = sum(5 if family.endswith("#histogram") else 1 for family, _ in found)
    return lines, datadog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--statsd", type=int, default=10, help="distinct StatsD metrics per type the worker sends")
    args = parser.parse_args()

    meta, http, statsd = free_port(), free_port(), free_port(socket.SOCK_DGRAM)
    emulator = subprocess.Popen([TASKLENS, "emulate-ecs", "--addr", f"127.0.0.1:{meta}", "--example", "fargate"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKLENS_", "DD_", "ECS_"))}
    env.update(ECS_CONTAINER_METADATA_URI_V4=f"http://127.0.0.1:{meta}/v4/bench",
               TASKLENS_HTTP_ADDR=f"127.0.0.1:{http}", TASKLENS_STATSD_ADDR=f"127.0.0.1:{statsd}",
               TASKLENS_QUEUES="redis://127.0.0.1:6379/0?list=tasklens-cost-bench", TASKLENS_FLUSH_INTERVAL="2")
    base = f"http://127.0.0.1:{http}"
    try:
        wait(f"http://127.0.0.1:{meta}/v4/bench/task")
        sidecar = subprocess.Popen([TASKLENS, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait(base + "/ready")
            lines = [f"worker.{kind}.{i}:{i + 1}|{kind}|#queue:orders" for kind in ("c", "g", "h", "d", "s")
                     for i in range(args.statsd)]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for i in range(0, len(lines), 20):
                    sock.sendto("\n".join(lines[i:i + 20]).encode(), ("127.0.0.1", statsd))
            wait(base + "/metrics", lambda t: "queue_depth{" in t and "worker_c_0_total{" in t)
            proc = psutil.Process(sidecar.pid)
            cpu0, t0, rss = proc.cpu_times(), time.monotonic(), []
            while time.monotonic() - t0 < args.seconds:
                rss.append(proc.memory_info().rss)
                time.sleep(1.0)
            cpu1, t1 = proc.cpu_times(), time.monotonic()
            lines, datadog = series_by_group(get(base + "/metrics"))
        finally:
            sidecar.terminate()
            sidecar.wait(timeout=30)
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)

    cpu_share = ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (t1 - t0)
    defaults = Config()
    print(f"one sidecar, fargate example task (2 containers), one queue, {args.statsd} StatsD metrics per type:")
    print(f"  CPU       {100 * cpu_share:.3f}% of one core = {cpu_share * 1024:.1f} CPU units (1024 = 1 vCPU)")
    print(f"  memory    RSS median {statistics.median(rss) / 2**20:.1f} MiB, max {max(rss) / 2**20:.1f} MiB")
    print(f"  /metrics  {sum(lines.values())} lines: " + ", ".join(f"{g} {n}" for g, n in sorted(lines.items())))
    print(f"  Datadog   {sum(datadog.values())} custom metrics per task: "
          + ", ".join(f"{g} {n}" for g, n in sorted(datadog.items())))
    print("            (each name + tag set once, task_id included: a fleet pays this per concurrent task;")
    print("            a StatsD histogram counts 5, a distribution is billed by its percentiles, counted 5 here)")
    polls = MONTH / defaults.queue_poll_interval
    print(f"  broker    {polls:,.0f} polls per queue per task per month (one every "
          f"{MONTH / polls:g} s): SQS 1 GetQueueAttributes each, + 1 CloudWatch GetMetricStatistics with "
          "cloudwatch_age=true; Redis/RabbitMQ/NATS/beanstalkd/PostgreSQL: one round trip each, no API charge")
    print(f"  ECS       {MONTH / defaults.poll_interval:,.0f} metadata polls per month, local to the task, free")


if __name__ == "__main__":
    main()
