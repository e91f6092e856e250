"""The sidecar as a real process (`tasklens run`) with two queues: one broker goes away and comes back."""

from __future__ import annotations

import json
import socket
import subprocess

import greenstalk
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from tests.support import TASKLENS, wait_until

from tests.integrations.queues.support import port_open

pytestmark = pytest.mark.skipif(not port_open(6379), reason="Redis is not running on 127.0.0.1:6379")


def failing_queues(sidecar) -> set[str]:
    """The queues with a failed poll counted (every reason is exported from the start, at 0)."""
    _, text = sidecar.get("/metrics")
    return {s.labels["queue"] for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "tasklens_queue_poll_errors_total" and s.value > 0}


def series(sidecar, name: str) -> dict[str, float]:
    """`{queue label (or the whole label set): value}` of one metric in the sidecar's /metrics."""
    _, text = sidecar.get("/metrics")
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[s.labels.get("queue") or json.dumps(s.labels, sort_keys=True)] = s.value
    return out


def test_outage_of_one_broker_is_a_gap_and_the_rest_goes_on(sidecar_factory, beanstalkd, unique):
    with greenstalk.Client(("127.0.0.1", beanstalkd.port), use=unique) as c:
        for i in range(4):
            c.put(f"job {i}")
    r = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    r.rpush(unique, 1, 2)
    try:
        sidecar = sidecar_factory(
            TASKLENS_SERVICE="mailer",
            TASKLENS_QUEUES=f"beanstalk://127.0.0.1:{beanstalkd.port}/{unique}?name=jobs,"
                            f"redis://:hunter2-secret@127.0.0.1:6379/0?list={unique}&name=emails",
            TASKLENS_QUEUE_POLL_INTERVAL="0.2")
        sidecar.wait_ready()
        wait_until(lambda: series(sidecar, "queue_depth") == {"jobs": 4.0, "emails": 2.0}, what="both queues")
        _, text = sidecar.get("/metrics")
        labels = next(s.labels for f in text_string_to_metric_families(text) for s in f.samples
                      if s.name == "queue_depth" and s.labels["queue"] == "jobs")
        assert (labels["queue_type"], labels["service"]) == ("beanstalkd", "mailer")

        beanstalkd.stop()
        wait_until(lambda: "jobs" not in series(sidecar, "queue_depth"), what="the gap")
        wait_until(lambda: failing_queues(sidecar), what="a counted error")
        assert failing_queues(sidecar) == {"jobs"}
        # the rest of the sidecar is unaffected: the other queue, health, StatsD
        r.rpush(unique, 3)
        wait_until(lambda: series(sidecar, "queue_depth") == {"emails": 3.0}, what="the other queue")
        assert sidecar.get("/health")[0] == 200
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"mailer.sent:1|c", ("127.0.0.1", sidecar.statsd_port))
        wait_until(lambda: "mailer_sent" in sidecar.get("/metrics")[1], what="a StatsD metric")
        status = json.loads(sidecar.get("/status")[1])
        assert "queue:jobs" in json.dumps(status) and "connection" in json.dumps(status)

        beanstalkd.start()  # its binlog brings the four jobs back
        wait_until(lambda: series(sidecar, "queue_depth") == {"jobs": 4.0, "emails": 3.0}, timeout=30,
                 what="the values back")
        assert sidecar.stop() == 0
        assert "hunter2-secret" not in sidecar.log
        assert "hunter2-secret" not in json.dumps(status)
    finally:
        r.delete(unique)


def test_check_describes_the_queues_masked():
    env = {"PATH": "/usr/bin:/bin", "TASKLENS_QUEUES": "amqp://app:hunter2@rabbit:5672/?queue=orders,"
                                                      "sqs://orders?region=eu-west-1&interval=60&name=orders-sqs"}
    out = subprocess.run([TASKLENS, "check"], capture_output=True, text=True, env=env, timeout=60)
    assert "hunter2" not in out.stdout + out.stderr
    queues = json.loads(out.stdout)["queues"]
    assert [(q["queue"], q["queue_type"], q["interval_seconds"]) for q in queues] == [
        ("orders", "rabbitmq", 15.0), ("orders-sqs", "sqs", 60.0)]  # one name each: `run` refuses two alike
    assert queues[0]["url"] == "amqp://app:***@rabbit:5672/?queue=orders"
