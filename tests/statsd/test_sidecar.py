"""The StatsD endpoint inside `tasklens run` (a real process): datagrams in, `/metrics` and `/status` out."""

from __future__ import annotations

import json
import socket
import time

from tests.support import wait_until


def test_statsd_through_the_running_sidecar(sidecar_factory) -> None:
    sidecar = sidecar_factory(TASKLENS_FLUSH_INTERVAL="1", TASKLENS_SERVICE="orders", TASKLENS_TAGS="team:payments")
    sidecar.wait_ready()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"jobs.done:2|c|#queue:orders\njobs.done:1|c|#queue:orders\nbad line", ("127.0.0.1", sidecar.statsd_port))

    def scraped() -> str | None:
        status, body = sidecar.get("/metrics")
        return body if 'jobs_done_total{' in body else None

    body = wait_until(scraped, 20, what="jobs_done_total on /metrics")
    line = next(l for l in body.splitlines() if l.startswith("jobs_done_total{"))
    assert 'queue="orders"' in line and 'service="orders"' in line and 'team="payments"' in line
    assert line.endswith(" 3.0")
    status = json.loads(sidecar.get("/status")[1])["components"]["statsd"]
    assert status["lines"] == 3 and status["parse_errors"] == {"malformed_line": 1}
    assert status["listeners"][0]["name"] == f"udp:127.0.0.1:{sidecar.statsd_port}"
    assert sidecar.stop() == 0


def test_a_series_lives_at_least_two_flushes_whatever_the_prometheus_ttl(sidecar_factory) -> None:
    """A TTL shorter than the flush interval would drop a histogram between two of its flushes, and its
    cumulative count would start again: the TTL in effect is at least two flush intervals."""
    sidecar = sidecar_factory(TASKLENS_FLUSH_INTERVAL="3", TASKLENS_PROMETHEUS_TTL="1")
    sidecar.wait_ready()

    def count() -> float | None:
        line = next((l for l in sidecar.get("/metrics")[1].splitlines() if l.startswith("job_seconds_count{")), None)
        return None if line is None else float(line.rsplit(" ", 1)[1])

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"job.seconds:0.5|h", ("127.0.0.1", sidecar.statsd_port))
        wait_until(lambda: count() == 1, 20, what="the first value on /metrics")
        time.sleep(4)  # past a flush with no value, and four times the configured TTL
        assert count() == 1
        s.sendto(b"job.seconds:0.7|h", ("127.0.0.1", sidecar.statsd_port))
        wait_until(lambda: count() == 2, 20, what="both values counted in one series")
    assert sidecar.stop() == 0
