"""Datadog intake faults against the real sidecar: HTTP 500s, answers that never come (timeouts),
connection resets and a blackout (connection refused), with recoveries in between.

Kept: every StatsD increment sent in every phase reaches the intake exactly once (a duplicate would
double a phase's total, a loss would shrink it), in payloads the strict intake accepts. Counted: each
500 in `submissions{status="500"}`, every failed attempt in `retries`, nothing dropped or failed.
The suite's blackout is 8 s; `bench/soak.py --datadog-blackout 30` runs the 30 s one.
"""

from __future__ import annotations

import pytest

from tests.reliability.scenarios import run_datadog_faults

# a recovery after each fault, so that each starts with the exporter's backoff at its first step
PHASES = [("ok", 2.0), ("http_500", 3.0), ("ok", 2.0), ("timeout", 3.0), ("ok", 2.0), ("reset", 3.0), ("ok", 2.0),
          ("blackout", 8.0), ("ok", 1.0)]


@pytest.mark.slow
async def test_intake_faults_lose_nothing_and_duplicate_nothing(tmp_path, record_property) -> None:
    r = await run_datadog_faults(tmp_path, PHASES)
    record_property("recovery_after_8s_blackout_seconds", round(r.recovery_seconds, 2))
    print("datadog faults:", {"recovery_seconds": round(r.recovery_seconds, 2), "broken": r.broken,
                              "answered_500": r.answered_500})
    assert r.intake_errors == []
    # kept: each phase's total, exactly once
    assert r.delivered == r.sent
    assert len(r.sent) == len(PHASES)
    # counted
    m = r.metrics
    assert r.answered_500 >= 2 and r.broken["reset"] >= 1 and r.broken["blackhole"] >= 1
    assert m.value("tasklens_exporter_submissions_total", exporter="datadog", status="500") == r.answered_500
    assert m.value("tasklens_exporter_retries_total", exporter="datadog") >= \
        r.answered_500 + r.broken["reset"] + r.broken["blackhole"]
    assert m.value("tasklens_exporter_points_dropped_total") == 0
    assert m.value("tasklens_exporter_points_failed_total") == 0
    # (the buffer drained: the scenario waited for `tasklens_exporter_buffer_points` to reach 0)
    # exponential backoff with full jitter: the first attempt after an outage of B seconds comes
    # within about 2 B more (each wait is at most twice the time already waited) plus a flush
    assert r.recovery_seconds < 2 * 8.0 + 4
    assert r.exit_code == 0
    assert "all points delivered before exit" in r.log
