"""Hostile DogStatsD traffic against the real sidecar exporting to the strict Datadog intake.

A worker sends, with the real `datadog.DogStatsd` client and in the same datagrams as a control, what
the intake would refuse or normalise: tags that start with a digit or carry upper case, a histogram
name that passes the StatsD limit but not Datadog's once `.median` is added, `T` timestamps two hours
back and one hour ahead, a histogram whose sum overflows, an event and a service check older than
their endpoints accept. Kept: the control metrics (a gauge, a counter, a valid timestamped gauge), a
control event and service check, exactly, in payloads the intake accepts (it refuses a whole payload
for one bad object). Counted: every dropped point on `/metrics` as
`tasklens_sink_points_rejected_total{sink="datadog", reason}`. Then the intake answers 400 with a
body that echoes the API key: `/status` and the log show it masked.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from datadog.dogstatsd.base import DogStatsd

from tests.support import Sidecar
from tests.reliability.scenarios import DD_KEY
from tests.reliability.support import poll, scrape, status
from tests.sinks.intake import Intake, start_intake, tag_problem

H = "h" * 195  # 195 bytes pass the StatsD limit; `.max` and `.avg` fit Datadog's 200, the rest do not


def send(statsd: DogStatsd, now: float) -> None:
    statsd.open_buffer()  # the hostile lines share datagrams with the control lines
    statsd.gauge("control.gauge", 42, tags=["q:a"])
    statsd.increment("tagged", tags=["1st:X", "Upper:Case", "123"])  # repaired: st:x, upper:case; `123` left out
    statsd.histogram(H, 1)
    statsd.histogram(H, 2)
    statsd.gauge_with_timestamp("old.gauge", 1, timestamp=int(now) - 7200)
    statsd.gauge_with_timestamp("future.gauge", 1, timestamp=int(now) + 3600)
    statsd.gauge_with_timestamp("control.stamped", 7, timestamp=int(now) - 30, tags=["q:a"])
    for _ in range(2):
        statsd.histogram("big.hist", 1e308)  # sum and avg overflow; max, median, count, p95 do not
    for _ in range(5):
        statsd.increment("control.count", tags=["q:a"])
    statsd.event("old event", "x", date_happened=int(now) - 86400)
    statsd.event("control event", "kept", tags=["q:a"])
    statsd.service_check("old.check", 0, timestamp=int(now) - 1200)
    statsd.service_check("control.check", 1, tags=["q:a"], message="ok")
    statsd.close_buffer()


@pytest.mark.slow
async def test_hostile_lines_cost_only_themselves_and_are_counted(tmp_path: Path) -> None:
    async for intake in start_intake(Intake(DD_KEY)):
        sidecar = Sidecar(tmp_path, DD_API_KEY=DD_KEY, DD_DD_URL=intake.url, TASKLENS_FLUSH_INTERVAL="1")
        try:
            await poll(lambda: sidecar.get("/ready")[0] == 200, 30, "sidecar ready")
            statsd = DogStatsd(host="127.0.0.1", port=sidecar.statsd_port, disable_telemetry=True,
                               disable_buffering=False, disable_aggregation=True)
            now = time.time()
            send(statsd, now)

            def rejected() -> dict[str, float]:  # the Datadog sink's (the Prometheus sink has rules of its own)
                return {labels["reason"]: v for n, labels, v in scrape(sidecar).samples
                        if n == "tasklens_sink_points_rejected_total" and labels.get("sink") == "datadog" and v}
            want = {"name_too_long": 3, "timestamp_out_of_range": 4, "not_finite": 1}
            await poll(lambda: rejected() == want, 20, f"the rejects {want}")
            await poll(lambda: intake.points("control.gauge") and intake.points("control.count")
                       and intake.points("control.stamped") and intake.events and intake.checks, 20,
                       "the controls at the intake")
            assert scrape(sidecar).value("tasklens_sink_points_rejected_total", sink="datadog") == 8
            # logged once a minute per reason: three name_too_long points, one line
            await poll(lambda: "before sending (name_too_long)" in sidecar.log, 10, "the rejects logged")
            assert sidecar.log.count("before sending (name_too_long)") == 1
            assert sidecar.log.count("before sending (timestamp_out_of_range)") == 1

            # kept, exactly: one gauge point, five increments (a rate per second times the interval), the
            # timestamped gauge at its own time
            (gauge,) = intake.points("control.gauge")
            assert gauge[1] == 42.0 and "q:a" in gauge[2]
            assert sum(v * (interval or 1) for _, v, _, _, interval in intake.points("control.count")) == 5
            assert [(ts, v) for ts, v, _, _, _ in intake.points("control.stamped")] == [(int(now) - 30, 7.0)]
            assert [(e["title"], e["text"]) for e in intake.events] == [("control event", "kept")]
            assert [(c["check"], c["status"], c["message"]) for c in intake.checks] == [("control.check", 1, "ok")]
            # repaired as the intake would, not refused
            (tagged,) = {p[2] for p in intake.points("tagged")}
            assert {"st:x", "upper:case"} <= set(tagged) and not any(t.startswith(("1", "123")) for t in tagged)
            # the parts of the hostile contexts the intake takes still arrive
            assert {m for m in intake.metrics() if m.startswith("h")} == {H + ".max", H + ".avg"}
            assert {m for m in intake.metrics() if m.startswith("big.")} == {
                "big.hist.max", "big.hist.median", "big.hist.count", "big.hist.95percentile"}
            assert not intake.metrics() & {"old.gauge", "future.gauge"}
            assert all(tag_problem(t) is None for s in intake.series for t in s.get("tags", ()))
            assert intake.errors == []  # not one payload refused

            # an intake that echoes the key in its refusal: masked wherever the sidecar keeps or logs it
            intake.fail_text = json.dumps({"errors": [f"API key {DD_KEY} is not valid for {DD_KEY.upper()}"]})
            intake.fail_next(1, 400)
            statsd.gauge("after.refusal", 1)
            await poll(lambda: status(sidecar)["components"]["datadog"]["points_failed"] >= 1, 20,
                       "the refused payload")
            datadog_status = status(sidecar)["components"]["datadog"]
            assert datadog_status["last_error"].startswith('http_400: {"errors": ["API key *** is not valid for ***"]')
            assert datadog_status["points_rejected"] == 8
            await poll(lambda: "refused a payload" in sidecar.log, 10, "the refusal logged")
            assert DD_KEY.lower() not in sidecar.log.lower()
            assert DD_KEY.lower() not in json.dumps(status(sidecar)).lower()
            statsd.close_socket()
        finally:
            if sidecar.proc.poll() is None:
                assert sidecar.stop() == 0
        assert DD_KEY.lower() not in sidecar.log.lower()
