"""A stand-in worker for the scale-in protection tests: "jobs" are CPU work, reported as a StatsD gauge
with the real `DogStatsd` client. It works while the file `<flag>` exists, and idles otherwise. Once its
imports are done (a burst of CPU no busy rule should see) it creates `<flag>.ready`.

    python worker.py <statsd port> <flag file>
"""

from __future__ import annotations

import os
import sys
import time

from datadog.dogstatsd import DogStatsd


def main() -> int:
    port, flag = int(sys.argv[1]), sys.argv[2]
    statsd = DogStatsd(host="127.0.0.1", port=port, disable_telemetry=True, disable_buffering=True)
    open(flag + ".ready", "w").close()
    while True:
        busy = os.path.exists(flag)
        statsd.gauge("jobs.in_progress", 1 if busy else 0)
        until = time.monotonic() + 0.1
        if busy:
            while time.monotonic() < until:  # a job: burn CPU
                sum(i * i for i in range(1000))
        else:
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
