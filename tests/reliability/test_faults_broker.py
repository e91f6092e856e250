"""Broker restarts: the sidecar polls a Redis list and a beanstalkd tube, each broker a process this
test starts, kills with SIGKILL and starts again on the same port with its data (append-only file,
binlog).

Kept: while one broker is down its queue shows a gap (never a 0 that would look healthy), the other
queue and the StatsD endpoint are unaffected; after the restart the depth is back, exact, with no
restart of the sidecar. Counted: the failed polls of the dead broker's queue only, reason
`connection`.
"""

from __future__ import annotations

import socket

import greenstalk
import pytest
import redis

from tests.support import Sidecar, wait_until
from tests.reliability.support import BrokerProcess, beanstalkd_server, redis_server, scrape


def depth(sidecar: Sidecar, queue: str) -> float | None:
    s = scrape(sidecar)
    return s.value("queue_depth", queue=queue) if s.has("queue_depth", queue=queue) else None


def queue_errors(sidecar: Sidecar, queue: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, v in scrape(sidecar).series("tasklens_queue_poll_errors_total"):
        if labels.get("queue") == queue:
            out[labels["reason"]] = out.get(labels["reason"], 0.0) + v
    return out


@pytest.mark.slow
def test_broker_restarts_show_a_gap_then_the_exact_depth(tmp_path) -> None:
    rds: BrokerProcess = redis_server(tmp_path)
    bst: BrokerProcess = beanstalkd_server(tmp_path)
    rds.start()
    bst.start()
    sidecar = None
    try:
        r = redis.Redis(port=rds.port)
        r.rpush("jobs", *range(5))
        with greenstalk.Client(("127.0.0.1", bst.port), use="work") as b:
            for i in range(3):
                b.put(f"job {i}")
        sidecar = Sidecar(tmp_path, TASKLENS_QUEUES=f"redis://127.0.0.1:{rds.port}/0?list=jobs&interval=0.5,"
                                                    f"beanstalk://127.0.0.1:{bst.port}/work?interval=0.5",
                          TASKLENS_FLUSH_INTERVAL="1")
        sidecar.wait_ready()
        wait_until(lambda: depth(sidecar, "jobs") == 5 and depth(sidecar, "work") == 3, 20, what="both depths")
        statsd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

        for broker, down, up, refill in ((rds, "jobs", "work", lambda: r.rpush("jobs", 5, 6)),
                                         (bst, "work", "jobs", None)):
            up_errors = queue_errors(sidecar, up)
            broker.kill()
            wait_until(lambda: depth(sidecar, down) is None, 20, what=f"a gap for {down}")
            wait_until(lambda: queue_errors(sidecar, down).get("connection", 0) >= 2, 20, what="failed polls counted")
            # the other queue and StatsD carry on while this broker is down
            statsd.sendto(f"while.{down}.down:4|c".encode(), ("127.0.0.1", sidecar.statsd_port))
            wait_until(lambda: scrape(sidecar).value(f"while_{down}_down_total") == 4, 10, what="StatsD")
            assert depth(sidecar, up) == (7 if up == "jobs" else 3)
            assert queue_errors(sidecar, up) == up_errors  # not one failed poll for the healthy broker
            broker.start()
            if refill:
                refill()
            wait_until(lambda: depth(sidecar, down) == (7 if down == "jobs" else 3), 30,
                       what=f"{down} back after the restart")
            assert {reason for reason, v in queue_errors(sidecar, down).items() if v} == {"connection"}
        assert sidecar.proc.poll() is None
        statsd.close()
    finally:
        if sidecar is not None:
            sidecar.stop()
        rds.kill()
        bst.kill()
