"""ECS metadata faults against the real sidecar: an endpoint that flaps between answering, HTTP 500,
answering after the timeout, truncated JSON, JSON that is not a task, and a closed port.

Kept: the last known identity (StatsD metrics sent during every fault carry the task's tags), the
StatsD endpoint and `/health`; the container series show a gap while the endpoint fails (never a
stale value) and come back exact after it recovers. Counted: every failed poll, once, by reason,
matching what the endpoint served.
"""

from __future__ import annotations

import asyncio

import pytest
from datadog.dogstatsd import DogStatsd

from tests.support import Sidecar
from tests.reliability.scenarios import DD_AGENT_WORKING_SET, STATS, TASK
from tests.reliability.support import FlakyMetadata, poll, scrape
from agent.sources.ecs import POLL_ERRORS

REASONS = {"http_500": "http_5xx", "slow": "timeout", "garbage": "bad_json", "wrong_shape": "bad_shape",
           "refused": "connection"}
# flapping: every fault, some twice, with recoveries in between
PHASES = ["ok", "http_500", "ok", "slow", "garbage", "ok", "refused", "wrong_shape", "http_500", "refused", "ok"]
TASK_ID = "67cd8a22b533459696d4ccab5278e009"
WORKING_SET = "ecs_container_memory_working_set_bytes"


@pytest.mark.slow
async def test_flapping_metadata_endpoint_keeps_identity_and_counts_every_failure(tmp_path) -> None:
    endpoint = FlakyMetadata(open(TASK, "rb").read(), open(STATS, "rb").read(), slow_seconds=1.5)
    await endpoint.start()
    sidecar = Sidecar(tmp_path, ECS_CONTAINER_METADATA_URI_V4=endpoint.url, TASKLENS_POLL_INTERVAL="0.5",
                      TASKLENS_METADATA_TIMEOUT="0.5", TASKLENS_FLUSH_INTERVAL="1")
    statsd = DogStatsd(host="127.0.0.1", port=sidecar.statsd_port, disable_telemetry=True, disable_buffering=True)
    try:
        await poll(lambda: sidecar.get("/ready")[0] == 200, 30, "sidecar ready")
        for i, mode in enumerate(PHASES):
            await endpoint.set_mode(mode)
            served = endpoint.served.get(mode, 0)
            statsd.increment(f"during.{mode}", 3, tags=[f"phase:{i}"])
            if mode == "ok":
                # recovered: the container series are back with the exact value of the capture
                await poll(lambda: scrape(sidecar).value(WORKING_SET, container_name="dd-agent")
                           == DD_AGENT_WORKING_SET, 15, "the ECS series after recovery")
            else:
                reason = REASONS[mode]
                before = scrape(sidecar).value("tasklens_ecs_poll_errors_total", reason=reason)
                await poll(lambda: scrape(sidecar).value("tasklens_ecs_poll_errors_total", reason=reason) >= before + 2,
                           15, f"two polls failing with {reason}")
                # a gap while it fails: no stale container value
                assert not scrape(sidecar).has(WORKING_SET)
                if mode != "refused":
                    assert endpoint.served.get(mode, 0) > served
            assert (await asyncio.to_thread(sidecar.get, "/health"))[0] == 200

        def settled() -> bool:
            s = scrape(sidecar)
            polls = s.value("tasklens_ecs_polls_total")
            errors = s.by_label("tasklens_ecs_poll_errors_total", "reason")
            return polls == endpoint.served["ok"] + sum(errors.values())  # no poll in flight
        await poll(settled, 10, "no poll in flight")

        def all_phases() -> bool:
            s = scrape(sidecar)
            return all(any(l.get("phase") == str(i) for l, _ in s.series(f"during_{m}_total"))
                       for i, m in enumerate(PHASES))
        await poll(all_phases, 10, "the StatsD counters of every phase")
        final = scrape(sidecar)
        errors = final.by_label("tasklens_ecs_poll_errors_total", "reason")
        # counted: each failed poll once, under the reason of what the endpoint did
        for mode, reason in REASONS.items():
            if mode != "refused":
                assert errors.get(reason) == endpoint.served[mode], (reason, errors, endpoint.served)
        assert errors.get("connection", 0) >= 4
        assert {reason for reason, n in errors.items() if n} <= set(REASONS.values()), errors
        assert set(errors) >= set(POLL_ERRORS)  # every reason exported, at 0 until it happens
        # kept: every StatsD increment, with the last known identity of the task, in every phase
        for i, mode in enumerate(PHASES):
            ((labels, value),) = [(l, v) for l, v in final.series(f"during_{mode}_total") if l.get("phase") == str(i)]
            assert value == 3.0
            assert (labels["task_id"], labels["service"], labels["launch_type"]) == (
                TASK_ID, "akira-fargate-check", "FARGATE")
        assert sidecar.proc.poll() is None
        assert "Traceback" not in sidecar.log
    finally:
        statsd.close_socket()
        await asyncio.to_thread(sidecar.stop)
        await endpoint.stop()
