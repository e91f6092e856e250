"""Example microworker for the compose setup.

`consume`: pop jobs from a Redis list, burn a little CPU on each, and report with the `datadog`
client's DogStatsD (which reads DD_AGENT_HOST, DD_DOGSTATSD_PORT, DD_SERVICE, DD_ENV, DD_VERSION).
`produce`: push jobs in bursts, faster than one consumer drains them half of the time, so the
queue visibly backs up and drains again (and the "queue backing up" alert has something to do).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time

import redis
from datadog import DogStatsd

QUEUE = os.environ.get("QUEUE", "jobs")


def connect() -> redis.Redis:
    return redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://localhost:6379/0"))


def burn(rounds: int) -> str:
    digest = b""
    for i in range(rounds):
        digest = hashlib.sha256(digest + i.to_bytes(4, "big")).digest()
    return digest.hex()


def consume() -> None:
    r, statsd = connect(), DogStatsd()
    while True:
        item = r.blpop([QUEUE], timeout=5)
        if item is None:
            statsd.increment("worker.idle_polls")
            continue
        job = json.loads(item[1])
        started = time.perf_counter()
        try:
            burn(job["rounds"])
            time.sleep(job.get("io_seconds", 0.0))
        except Exception:  # a bad job is counted, never fatal
            statsd.increment("worker.jobs", tags=["outcome:error"])
            continue
        statsd.increment("worker.jobs", tags=["outcome:ok", f"kind:{job['kind']}"])
        statsd.timing("worker.job.duration", (time.perf_counter() - started) * 1000, tags=[f"kind:{job['kind']}"])
        statsd.gauge("worker.last_job.rounds", job["rounds"])


def produce() -> None:
    r = connect()
    while True:
        # 2 minutes of burst (~20 jobs/s), then 2 minutes of trickle (~2 jobs/s)
        burst = (time.time() // 120) % 2 == 0
        rate = 20 if burst else 2
        for _ in range(rate):
            kind = random.choice(["resize", "thumbnail", "ocr"])
            r.rpush(QUEUE, json.dumps({"kind": kind, "rounds": random.randint(2_000, 20_000), "io_seconds": 0.05}))
        time.sleep(1)


if __name__ == "__main__":
    {"consume": consume, "produce": produce}[sys.argv[1] if len(sys.argv) > 1 else "consume"]()
