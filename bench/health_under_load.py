"""The worst load for the event loop, all at once: 100,000 live contexts, a 1 s flush, 20 scrapers.

    .venv/bin/python bench/health_under_load.py [--contexts 100000] [--scrapers 20] [--seconds 20]
    .venv/bin/python bench/health_under_load.py --baseline 4f27b28 --rounds 3   # old and new, in turn

Starts `tasklens run` with `TASKLENS_FLUSH_INTERVAL=1` (the minimum allowed), creates the contexts,
then sends every one of them again in every interval while a second process runs `--scrapers` threads
scraping `/metrics` back to back (gzip, as Prometheus does). Meanwhile `/health` is asked every 20 ms
on a new connection, as a health checker does. Prints the `/health` latencies, the scrapes done and
how long SIGTERM took afterwards.

`--flood N` adds a histogram flood: N distinct timer values in every interval, packed ~900 to a line
(`flood.latency:0.37:0.74:...|ms`), sent alongside. `--datadog` also runs the Datadog sink, against a
strict local intake (`tests/sinks/intake.py`) in a process of its own: with a flood, its percentiles
are computed over millions of values at every flush.

`--baseline REV` also runs the code of another commit (`bench/baseline.py`: its `agent/`, its C extensions
compiled in place, put first on `PYTHONPATH`), alternating with this checkout for `--rounds` rounds,
and prints the medians of each.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.baseline import export  # noqa: E402
from tests.reliability.support import (RssSampler, SteadyLoad, context_datagrams, histogram_flood, latency,  # noqa: E402
                                       send_paced)
from tests.support import Sidecar, free_port  # noqa: E402

INTAKE_KEY = "0123456789abcdef0123456789abcdef"


def scrapers(url: str, threads: int, seconds: float) -> None:
    """The client process: `threads` scrapers for `seconds`; prints the number of scrapes."""
    deadline, done = time.monotonic() + seconds, [0]

    def scrape() -> None:
        while time.monotonic() < deadline:
            request = urllib.request.Request(url + "/metrics", headers={"Accept-Encoding": "gzip"})
            with urllib.request.urlopen(request, timeout=60) as r:
                r.read()
            done[0] += 1

    pool = [threading.Thread(target=scrape) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    print(done[0])


def measure(args: argparse.Namespace, env: dict[str, str]) -> dict[str, float]:
    """One run against `tasklens run` with `env` added; the latencies in ms, scrapes and SIGTERM time."""
    intake = None
    if args.datadog:
        port = free_port()
        intake = subprocess.Popen([sys.executable, "-m", "tests.sinks.intake", "--port", str(port)], cwd=ROOT,
                                  stdout=subprocess.DEVNULL)
        env = {**env, "DD_API_KEY": INTAKE_KEY, "DD_DD_URL": f"http://127.0.0.1:{port}"}
    with tempfile.TemporaryDirectory() as tmp:
        sidecar = Sidecar(Path(tmp), TASKLENS_FLUSH_INTERVAL="1", TASKLENS_SHUTDOWN_TIMEOUT="20", **env)
        load = flood = None
        try:
            sidecar.wait_ready()
            datagrams = context_datagrams("load", args.contexts)
            send_paced(sidecar, datagrams)
            load = SteadyLoad(sidecar.statsd_port, datagrams).start()
            if args.flood:
                flood = SteadyLoad(sidecar.statsd_port, histogram_flood(args.flood, per_line=900)).start()
            rss = RssSampler(sidecar.proc.pid)
            client = subprocess.Popen([sys.executable, __file__, "--client", sidecar.url, "--scrapers",
                                       str(args.scrapers), "--seconds", str(args.seconds)], stdout=subprocess.PIPE,
                                      text=True)
            took: list[float] = []
            started = time.monotonic()
            while time.monotonic() - started < args.seconds:
                took.append(latency(sidecar.url + "/health", timeout=30))
                time.sleep(0.02)
            scraped = int(client.communicate(timeout=120)[0].strip())
            rounds, peak = load.rounds, rss.stop()
        finally:
            for sender in (load, flood):
                if sender is not None:
                    sender.stop()
            stopping = time.monotonic()
            code = sidecar.stop()
            sigterm = time.monotonic() - stopping
            if intake is not None:
                intake.kill()
                intake.wait()
    took.sort()
    return {"requests": len(took), "median": statistics.median(took) * 1000, "p95": took[int(len(took) * 0.95)] * 1000,
            "p99": took[int(len(took) * 0.99)] * 1000, "max": took[-1] * 1000, "scrapes": scraped, "rounds": rounds,
            "sigterm": sigterm, "exit": code, "rss": peak / 2**20}


def show(label: str, r: dict[str, float], args: argparse.Namespace) -> None:
    print(f"{label}: {args.contexts:,} contexts sent in every 1 s interval ({r['rounds']:.0f} rounds), "
          f"{args.scrapers} scrapers: {r['scrapes']:.0f} scrapes of /metrics in {args.seconds:g} s; "
          f"/health over {r['requests']:.0f} requests: median {r['median']:.1f} ms, p95 {r['p95']:.1f} ms, "
          f"p99 {r['p99']:.1f} ms, max {r['max']:.1f} ms; peak RSS {r['rss']:.0f} MiB; "
          f"SIGTERM: exit {r['exit']:.0f} after {r['sigterm']:.1f} s (deadline 20 s)"
          + (f"; flood of {args.flood:,} timer values a second" if args.flood else "")
          + ("; Datadog sink on" if args.datadog else ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=100_000)
    parser.add_argument("--scrapers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--baseline", help="also run the code of this git revision, in turn with this checkout")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each (with --baseline: alternating)")
    parser.add_argument("--flood", type=int, default=0, help="distinct timer values sent in every interval too")
    parser.add_argument("--datadog", action="store_true", help="also export to Datadog (a strict local intake)")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        scrapers(args.client, args.scrapers, args.seconds)
        return
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"this checkout": {}}
        if args.baseline:
            baseline = {"PYTHONPATH": str(export(args.baseline, Path(tmp)))}
            variants = {f"baseline {args.baseline}": baseline, **variants}
        results: dict[str, list[dict[str, float]]] = {label: [] for label in variants}
        for _ in range(args.rounds):
            for label, env in variants.items():
                results[label].append(measure(args, env))
                show(label, results[label][-1], args)
    if args.rounds > 1:
        for label, runs in results.items():
            medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            show(f"{label}, median of {args.rounds}", medians, args)


if __name__ == "__main__":
    main()
