"""A stand-in worker for the SIGKILL test: sends StatsD with the real `DogStatsd` client over UDP and a
Unix socket at a steady pace, timing every call, and writes what happened as JSON when it is done.

    python worker.py <udp port> <socket path> <seconds> <out.json>
"""

from __future__ import annotations

import json
import sys
import time

from datadog.dogstatsd import DogStatsd


def main() -> int:
    port, path, seconds, out = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
    clients = {"udp": DogStatsd(host="127.0.0.1", port=port, disable_telemetry=True, disable_buffering=True),
               "uds": DogStatsd(socket_path=path, disable_telemetry=True, disable_buffering=True)}
    sends, errors, slowest = 0, [], 0.0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        for transport, client in clients.items():
            t = time.perf_counter()
            try:
                client.increment("worker.jobs", tags=[f"transport:{transport}"])
                client.histogram("worker.seconds", 0.25, tags=[f"transport:{transport}"])
            except Exception as exc:  # what the test checks never happens
                errors.append(repr(exc))
            slowest = max(slowest, time.perf_counter() - t)
            sends += 2
        time.sleep(0.005)
    with open(out, "w") as fh:
        json.dump({"sends": sends, "errors": errors, "slowest_seconds": slowest,
                   "seconds": time.monotonic() - started}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
