"""The worst load for the event loop, all at once: 100,000 live contexts, a 1 s flush, 20 scrapers.

    .venv/bin/python bench/health_under_load.py [--contexts 100000] [--scrapers 20] [--seconds 20]

Starts `tasklens run` with `TASKLENS_FLUSH_INTERVAL=1` (the minimum allowed), creates the contexts, then sends every one of them again in every
interval while a second process runs `--scrapers` threads scraping `/metrics` back to back (gzip, as
Prometheus does). Meanwhile `/health` is asked every 20 ms on a new connection, as a health checker
does. Prints the `/health` latencies, the scrapes done and how long SIGTERM took afterwards.
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

from tests.reliability.support import SteadyLoad, context_datagrams, latency, send_paced  # noqa: E402
from tests.support import Sidecar  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=100_000)
    parser.add_argument("--scrapers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--flush-interval", default="1", help="TASKLENS_FLUSH_INTERVAL (default 1 s)")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        scrapers(args.client, args.scrapers, args.seconds)
        return
    with tempfile.TemporaryDirectory() as tmp:
        sidecar = Sidecar(Path(tmp), TASKLENS_FLUSH_INTERVAL=args.flush_interval, TASKLENS_SHUTDOWN_TIMEOUT="20")
        load = None
        try:
            sidecar.wait_ready()
            datagrams = context_datagrams("load", args.contexts)
            send_paced(sidecar, datagrams)
            load = SteadyLoad(sidecar.statsd_port, datagrams).start()
            client = subprocess.Popen([sys.executable, __file__, "--client", sidecar.url, "--scrapers",
                                       str(args.scrapers), "--seconds", str(args.seconds)], stdout=subprocess.PIPE,
                                      text=True)
            took: list[float] = []
            started = time.monotonic()
            while time.monotonic() - started < args.seconds:
                took.append(latency(sidecar.url + "/health", timeout=30))
                time.sleep(0.02)
            scraped = client.communicate(timeout=120)[0].strip()
            took.sort()
            print(f"{args.contexts:,} contexts sent in every {args.flush_interval} s interval ({load.rounds} rounds), "
                  f"{args.scrapers} scrapers: {scraped} scrapes of /metrics in {args.seconds:g} s")
            print(f"/health over {len(took)} requests: median {statistics.median(took) * 1000:.1f} ms, "
                  f"p95 {took[int(len(took) * 0.95)] * 1000:.1f} ms, p99 {took[int(len(took) * 0.99)] * 1000:.1f} ms, "
                  f"max {took[-1] * 1000:.1f} ms")
        finally:
            if load is not None:
                load.stop()
            stopping = time.monotonic()
            code = sidecar.stop()
            print(f"SIGTERM: exit {code} after {time.monotonic() - stopping:.1f} s (deadline 20 s)")


if __name__ == "__main__":
    main()
