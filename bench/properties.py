"""The property-based tests of hostile input, run for longer than the suite runs them.

    .venv/bin/python bench/properties.py [--minutes 10] [test paths...]

In the suite each property runs a bounded number of examples (a few seconds). Here the same tests
run again and again, each time with a fresh random seed, so every run explores new examples, until
the time is up or one fails. A failure prints its seed: `pytest --hypothesis-seed=SEED PATH`
replays it. Default targets: the StatsD parser and limits, the C loop against the Python loop,
`/metrics` in both formats (promtool and the strict OpenMetrics parser), the Datadog payload rules,
every setting.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = [
    "tests/statsd/test_parser_property.py",
    "tests/statsd/test_limits_property.py",
    "tests/statsd/test_fast_loop.py",
    "tests/statsd/test_flush.py",
    "tests/sinks/test_prometheus_properties.py",
    "tests/sinks/test_datadog_isolation.py",
    "tests/sinks/test_datadog_series.py",
    "tests/test_config.py",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("paths", nargs="*", default=TARGETS)
    args = parser.parse_args()
    deadline = time.monotonic() + args.minutes * 60
    runs = 0
    while time.monotonic() < deadline:
        seed = random.getrandbits(63)
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                                 f"--hypothesis-seed={seed}", *args.paths], cwd=ROOT, capture_output=True,
                                text=True)
        runs += 1
        summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(f"run {runs}, seed {seed}: {summary} ({time.monotonic() - started:.0f} s)", flush=True)
        if result.returncode != 0:
            print(result.stdout[-6000:], result.stderr[-2000:], sep="\n")
            print(f"FAILED: replay with: .venv/bin/python -m pytest --hypothesis-seed={seed} {' '.join(args.paths)}")
            return 1
    print(f"{runs} runs with fresh seeds in {args.minutes:g} min: no failure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
