"""Do concurrent scrapes of a large `/metrics` stall the sidecar? `/health` latency under 20 scrapers.

The real sink behind the real aiohttp app (`agent.http.make_app`) on loopback, filled through the hub
with 100,000 live series (the workload of bench/metrics_exposition.py: identity labels, 5% histograms).
A client process (this script with `--client`, so that the clients do not share the server's GIL)
runs 20 threads that scrape `/metrics` back to back as Prometheus does (gzip, the text format) and one
thread that asks `/health` every 20 ms. In the server, a 10 ms ticker measures how late the event loop
runs, and every `--flush` seconds one batch updates every series on the event loop in one go (its
time is printed, and the sink's share of it: the rest is the hub's tagging). The StatsD server itself
hands a flush to the sinks in slices of about 2 ms; bench/health_under_load.py measures the real
process, flushes and scrapes together.

    .venv/bin/python bench/scrape_stall.py                       # this checkout
    .venv/bin/python bench/scrape_stall.py --baseline d2b0790    # also the code of another commit, same run

`--baseline REV` exports `agent/` of that commit (`git archive`) into a temporary directory and runs
the same measurement against it first, then against this checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def client(url: str, scrapers: int, duration: float) -> None:
    """Scrape and probe for `duration` seconds; print one JSON line of latencies."""
    deadline = time.monotonic() + duration
    scrapes: list[float] = []
    health: list[float] = []
    failures: list[str] = []
    sizes: list[int] = []

    def scrape() -> None:
        request = urllib.request.Request(url + "/metrics", headers={
            "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
                      "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", "Accept-Encoding": "gzip"})
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=120) as r:
                    sizes.append(len(r.read()))
                scrapes.append(time.perf_counter() - started)
            except OSError as exc:
                failures.append(repr(exc))

    def probe() -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(url + "/health", timeout=60) as r:
                    r.read()
                health.append(time.perf_counter() - started)
            except OSError as exc:
                failures.append(repr(exc))
            time.sleep(0.02)

    threads = [threading.Thread(target=scrape) for _ in range(scrapers)] + [threading.Thread(target=probe)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"scrapes": scrapes, "health": health, "failures": failures[:5], "size": max(sizes, default=0)}))


async def server(args: argparse.Namespace) -> dict[str, object]:
    sys.path.insert(0, str(HERE))
    from aiohttp import web
    from metrics_exposition import IDENTITY, workload

    from agent.http import make_app
    from agent.hub import Hub
    from agent.model import Batch
    from agent.sinks.prometheus import PrometheusSink

    hub = Hub(IDENTITY)
    sink = PrometheusSink(hub.metrics, pull=hub.pull, ttl=300.0)
    hub.add_sink(sink)
    samples = workload(args.series, 0.05)
    hub.publish(Batch("statsd", samples))
    runner = web.AppRunner(make_app(hub, sink, lambda: True, dict), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"

    loop = asyncio.get_running_loop()
    lateness: list[float] = []
    ingest: list[float] = []
    sink_ingest: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            due = loop.time() + 0.01
            await asyncio.sleep(0.01)
            lateness.append(loop.time() - due)

    async def flusher() -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), args.flush)
            except TimeoutError:
                # what hub.publish does, in two timed steps: the hub's tagging, then the sink
                started = time.perf_counter()
                enriched = hub.enrich(Batch("statsd", samples))
                tagged = time.perf_counter()
                sink.accept(enriched)
                ingest.append(time.perf_counter() - started)
                sink_ingest.append(time.perf_counter() - tagged)

    tasks = [asyncio.create_task(ticker()), asyncio.create_task(flusher())]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", url, "--scrapers", str(args.scrapers), "--duration", str(args.duration),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    stop.set()
    await asyncio.gather(*tasks)
    await runner.cleanup()
    result: dict[str, object] = json.loads(out)
    result.update(lateness=lateness, ingest=ingest, sink_ingest=sink_ingest)
    return result


def summary(label: str, values: list[float]) -> str:
    if not values:
        return f"{label:26} none"
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
    return (f"{label:26} median {statistics.median(values) * 1000:7.1f} ms, p99 {p99 * 1000:7.1f} ms, "
            f"max {values[-1] * 1000:7.1f} ms  (n={len(values)})")


def report(title: str, r: dict[str, object]) -> None:
    print(f"== {title}")
    print(summary("/health latency", r["health"]))  # type: ignore[arg-type]
    print(summary("event-loop lateness (10ms)", r["lateness"]))  # type: ignore[arg-type]
    print(summary("/metrics scrape", r["scrapes"]))  # type: ignore[arg-type]
    print(summary("ingest of one flush", r["ingest"]))  # type: ignore[arg-type]
    print(summary("  of which the sink", r["sink_ingest"]))  # type: ignore[arg-type]
    print(f"{'scrape body (gzip)':26} {int(r['size']) / 1e6:.1f} MB; failures: {r['failures'] or 'none'}")  # type: ignore[call-overload]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--scrapers", type=int, default=20)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of scraping")
    parser.add_argument("--flush", type=float, default=10.0, help="seconds between flushes of every series")
    parser.add_argument("--baseline", help="also measure agent/ of this git revision, first")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.client, args.scrapers, args.duration)
        return
    print(f"{args.series:,} series, {args.scrapers} concurrent scrapers for {args.duration:.0f} s, "
          f"a flush of every series every {args.flush:g} s; load {os.getloadavg()[0]:.2f}")
    if args.baseline:
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", args.baseline, "agent"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            argv = [a for a in sys.argv[1:] if a != "--baseline" and a != args.baseline]
            env = {**os.environ, "PYTHONPATH": tmp}
            out = subprocess.run([sys.executable, __file__, *argv, "--json"], env=env, check=True,
                                 capture_output=True, text=True).stdout
            report(f"baseline {args.baseline}", json.loads(out.splitlines()[-1]))
    result = asyncio.run(server(args))
    if args.json:
        print(json.dumps(result))
    else:
        report("this checkout", result)


if __name__ == "__main__":
    main()
