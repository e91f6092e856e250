"""Idle footprint of the sidecar: RSS and CPU over 60 s of polling a fixture metadata endpoint.

Starts `tasklens emulate-ecs` with a fixture pair and `tasklens run` against it with the defaults
(10 s poll, StatsD listening, nothing sent), waits for the first poll, then samples the sidecar's
RSS and CPU time for `--seconds`. Target (issue 2): under 50 MiB RSS and under 0.5% of one core.

    .venv/bin/python bench/idle_footprint.py [--seconds 60]
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
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "ecs"
TASKLENS = str(Path(sys.executable).with_name("tasklens"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {url}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fixture", default="fargate-2023")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a sidecar variable, e.g. --set TASKLENS_STATUS_PAGE=off")
    args = parser.parse_args()

    meta_port, http_port = free_port(), free_port()
    emulator = subprocess.Popen(
        [TASKLENS, "emulate-ecs", "--addr", f"127.0.0.1:{meta_port}",
         "--task", str(FIXTURES / f"{args.fixture}.task.json"),
         "--stats", str(FIXTURES / f"{args.fixture}.stats.json")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKLENS_", "DD_", "ECS_"))}
    env.update(ECS_CONTAINER_METADATA_URI_V4=f"http://127.0.0.1:{meta_port}/v4/bench",
               TASKLENS_HTTP_ADDR=f"127.0.0.1:{http_port}", TASKLENS_STATSD_ADDR="127.0.0.1:0")
    env.update(item.split("=", 1) for item in args.set)
    try:
        wait_http(f"http://127.0.0.1:{meta_port}/v4/bench/task", time.monotonic() + 20)
        sidecar = subprocess.Popen([TASKLENS, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_http(f"http://127.0.0.1:{http_port}/ready", time.monotonic() + 30)
            proc = psutil.Process(sidecar.pid)
            cpu0, t0 = proc.cpu_times(), time.monotonic()
            rss = []
            while time.monotonic() - t0 < args.seconds:
                rss.append(proc.memory_info().rss)
                time.sleep(1.0)
            cpu1, t1 = proc.cpu_times(), time.monotonic()
            cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics") as r:
                polls = [line for line in r.read().decode().splitlines() if line.startswith("tasklens_ecs_polls_total")]
        finally:
            sidecar.terminate()
            code = sidecar.wait(timeout=30)
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    mib = 1024 * 1024
    print(f"idle sidecar over {t1 - t0:.0f} s (fixture {args.fixture}, poll every 10 s):")
    print(f"  RSS      median {statistics.median(rss) / mib:.1f} MiB, max {max(rss) / mib:.1f} MiB  (target < 50 MiB)")
    print(f"  CPU      {cpu_s:.3f} s = {100 * cpu_s / (t1 - t0):.3f}% of one core  (target < 0.5%)")
    print(f"  polls    {polls[0] if polls else 'none seen'}")
    print(f"  exit     {code} after SIGTERM")


if __name__ == "__main__":
    main()
