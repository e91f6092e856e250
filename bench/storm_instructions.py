"""Instructions per line of the C loop (`Table.run`), counted by valgrind's callgrind: repeatable
whatever else the machine is doing, where CPU time on a shared machine varies up to 2x.

The lines are `bench/storm.py`'s (`storm.requests:1|c|#env:prod,service:api,request_id:<id>`, 30 per
datagram, 16 datagrams per `ingest_many`), against a cap of 1,000 contexts, all live, so that the tables
fit in the caches and what is counted is the work on a line:

- *known*: lines of the 1,000 live contexts;
- *refused*: lines that each name a new context, refused at the cap;
- *refused, tags in key order*: the same with `request_id` written before `service`, the order of
  the context's key, which spares rewriting the key and hashing it again;
- *refused again*: lines of 1,000 contexts refused before;
- *refused, two values*: lines that each name a new context by two tag values at once, which no shape
  of a head fits (`fits` in _fast.c): each head is read in full.

Each phase runs twice, with N and 3N lines; the difference divided by 2N is the cost of a line, without
what a run costs once. Instructions are not time (a cache miss is one instruction): `bench/storm.py`
gives the CPU time of the same lines.

    .venv/bin/python bench/storm_instructions.py            # N = 100,000 (about 4 minutes)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
KNOWN = 1_000
PHASES = {
    "known": "a line of a known context",
    "refused": "a line of a new context, refused at the cap",
    "sorted": "the same, its tags in key order",
    "again": "a line of a context refused before",
    "two": "a line of a new context, refused, two of its tag values new",
}


def lines(phase: str, n: int) -> list[bytes]:
    if phase == "known":
        return [b"storm.requests:1|c|#env:prod,service:api,request_id:k%d" % (i % KNOWN) for i in range(n)]
    if phase == "sorted":
        return [b"storm.requests:1|c|#env:prod,request_id:r%d,service:api" % i for i in range(n)]
    if phase == "two":
        return [b"storm.requests:1|c|#env:prod,service:api,request_id:r%d,user:u%d" % (i, i) for i in range(n)]
    ids = (i % KNOWN for i in range(n)) if phase == "again" else range(n)
    return [b"storm.requests:1|c|#env:prod,service:api,request_id:r%d" % i for i in ids]


def calls(batch: list[bytes]) -> list[list[bytes]]:
    grams = [b"\n".join(batch[k:k + 30]) for k in range(0, len(batch), 30)]
    return [grams[k:k + 16] for k in range(0, len(grams), 16)]


def worker(phase: str, n: int) -> None:
    sys.path.insert(0, str(HERE.parent))
    from agent import memory
    from agent.statsd.receive import Aggregator

    memory.configure()
    agg = Aggregator(max_contexts=KNOWN)
    for group in calls(lines("known", KNOWN)):
        agg.ingest_many(group)
    if phase == "again":  # refused once before the count starts
        for group in calls(lines("refused", KNOWN)):
            agg.ingest_many(group)
    agg.swap(0.0)
    batch = calls(lines(phase, n))
    for group in batch:
        agg.ingest_many(group)
    assert len(agg.contexts) == KNOWN


def counted(phase: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        run = subprocess.run(["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=Table_run",
                              f"--callgrind-out-file={out}", sys.executable, __file__, "--worker", phase, str(n)],
                             capture_output=True, text=True, check=True)
        match = re.search(r"Collected : (\d+)", run.stderr)
        assert match, run.stderr[-2000:]
        return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="lines of the shorter run of each phase")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]))
        return
    per_line = {phase: (counted(phase, 3 * args.n) - counted(phase, args.n)) / (2 * args.n) for phase in PHASES}
    for phase, what in PHASES.items():
        print(f"{what}: {per_line[phase]:.0f} instructions ({per_line[phase] / per_line['known']:.2f}x a known line)")


if __name__ == "__main__":
    main()
