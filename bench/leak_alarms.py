"""How often the memory forecast calls a leak that is not there, and misses one that is, against the
number of standard errors it asks for (`agent.health.LEAK_SIGNIFICANCE`).

False leaks: flat working sets of 10-900 MiB of a 1 GiB limit with Gaussian noise up to 5 % of the
level, polled every 1, 10 or 20 s over the 30-minute window. Missed leaks: 10-400 MiB growing 100 MiB/h
to 2 GiB/h (a quarter of the cases at 100 MiB/h exactly) through noise up to 2 % (a quarter at 2 %), of
a 4 GiB limit, polled every 10 s. The same generators as tests/test_health.py, seeded.

    .venv/bin/python bench/leak_alarms.py                      # 3, 4 and 5 standard errors
    .venv/bin/python bench/leak_alarms.py --sigmas 5 --flat 100000
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import health  # noqa: E402

MIB, WINDOW = 2**20, 1800.0


def series(f, step: float) -> list[tuple[float, float]]:  # type: ignore[no-untyped-def]
    return [(i * step, f(i * step)) for i in range(int(WINDOW / step) + 1)]


def false_leaks(n: int) -> int:
    r, found = random.Random(1), 0
    for _ in range(n):
        level, noise, step = r.uniform(10 * MIB, 900 * MIB), r.uniform(0, 0.05), r.choice([1.0, 10.0, 20.0])
        rng = random.Random(r.getrandbits(32))
        got = health.memory_forecast(series(lambda t: max(0.0, level * (1 + rng.gauss(0, noise))), step),
                                     limit=1024 * MIB, window=WINDOW)
        found += bool(got and got.leak_suspected)
    return found


def missed_leaks(n: int) -> int:
    r, missed = random.Random(2), 0
    for _ in range(n):
        level = r.uniform(10 * MIB, 400 * MIB)
        rate = r.choice([100.0, r.uniform(100, 2000)]) * MIB / 3600
        noise = r.choice([0.02, r.uniform(0, 0.02)])
        rng = random.Random(r.getrandbits(32))
        got = health.memory_forecast(series(lambda t: level + rate * t + level * rng.gauss(0, noise), 10.0),
                                     limit=4096 * MIB, window=WINDOW)
        missed += not (got and got.leak_suspected)
    return missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sigmas", default="3,4,5", help="standard errors to try, comma-separated")
    parser.add_argument("--flat", type=int, default=20_000, help="flat noisy windows")
    parser.add_argument("--leaks", type=int, default=3_000, help="leaking windows")
    args = parser.parse_args()
    for sigma in (float(s) for s in args.sigmas.split(",")):
        health.LEAK_SIGNIFICANCE = sigma
        print(f"{sigma:g} standard errors: false leaks {false_leaks(args.flat)} of {args.flat:,} flat windows, "
              f"missed {missed_leaks(args.leaks)} of {args.leaks:,} leaks", flush=True)


if __name__ == "__main__":
    main()
