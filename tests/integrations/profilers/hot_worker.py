"""A stand-in worker for the profiling tests: it spends its time in `crunch_numbers_hot`.

Usage: `python hot_worker.py MARKER SECONDS` (the marker lets a test's TASKLENS_PROFILE_MATCH find it
among the machine's other Python processes). Prints `ready` once started, then after SECONDS the
number of calls done and whether pyroscope-io was loaded into it. The `ready` line also names the
threads alive at that moment.
"""

import sys
import threading
import time


def crunch_numbers_hot(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def main():
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3600.0
    # the threads alive at start: the bootstrap's must still be busy (it never delays start-up)
    print("ready", ",".join(sorted(t.name for t in threading.enumerate())), flush=True)
    calls = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        crunch_numbers_hot(20_000)
        calls += 1
    print(f"calls {calls}", flush=True)
    print(f"pyroscope loaded: {'pyroscope' in sys.modules}", flush=True)


if __name__ == "__main__":
    main()
