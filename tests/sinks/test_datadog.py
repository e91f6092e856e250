"""The Datadog exporter against a strict local intake on real HTTP (loopback).

Timings are scaled down so the suite stays quick: flush intervals of 0.1-0.2 s and a backoff base of
50 ms. "An intake that answers 500 for a minute" is simulated as an intake that answers 500 for
1.5 s, which spans many flushes and several retries with backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Event, Kind, Points, Sample, ServiceCheck
from agent.sinks.datadog import DatadogSink, base_url, check_api_key, endpoint
from tests.sinks.intake import Intake, start_intake
from tests.support import until

KEY = "0123456789abcdef0123456789abcdef"
IDENTITY = Identity(service="orders-worker", env="test", ecs_cluster="prod", task_family="orders",
                    task_revision="7", task_id="4f1c2d3e", task_arn="arn:aws:ecs:eu-west-1:1:task/prod/4f1c2d3e")
TASK_TAGS = ("service:orders-worker", "env:test", "ecs_cluster:prod", "task_family:orders", "task_revision:7",
             "task_id:4f1c2d3e")


@pytest.fixture
async def intake() -> AsyncIterator[Intake]:
    async for running in start_intake(Intake(KEY)):
        yield running
        assert running.errors == [], running.errors  # every request the exporter made was valid


def make(intake: Intake, **overrides: object) -> tuple[DatadogSink, Hub]:
    options = {"dd_api_key": KEY, "dd_url": intake.url, "flush_interval": 0.1, "datadog_timeout": 2.0, **overrides}
    sink_options = {k: options.pop(k) for k in ("backoff_base", "backoff_max", "drain_timeout", "wall") if k in options}
    config = replace(Config(), **options)  # type: ignore[arg-type]
    hub = Hub(IDENTITY)
    sink = DatadogSink(config, hub, **{"backoff_base": 0.05, "backoff_max": 0.2, **sink_options})  # type: ignore[arg-type]
    hub.add_sink(sink)
    return sink, hub




def exported(sink: DatadogSink, what: str, **labels: str) -> float:
    return sink.metrics.get(f"tasklens.exporter.{what}", exporter="datadog", **labels)


def test_site_and_url_override() -> None:
    assert base_url(Config()) == "https://api.datadoghq.com"
    assert base_url(Config(dd_site="datadoghq.eu")) == "https://api.datadoghq.eu"
    assert base_url(Config(dd_site="us5.datadoghq.com")) == "https://api.us5.datadoghq.com"
    assert base_url(Config(dd_site="datadoghq.com", dd_url="http://127.0.0.1:9/")) == "http://127.0.0.1:9"


@pytest.mark.parametrize(("base", "url"), [
    ("http://127.0.0.1:9", "http://127.0.0.1:9/api/v2/series"),
    ("http://127.0.0.1:9/", "http://127.0.0.1:9/api/v2/series"),
    ("https://proxy.example/datadog/", "https://proxy.example/datadog/api/v2/series"),  # a prefix is kept
    ("http://u:p@127.0.0.1:9/dd", "http://u:p@127.0.0.1:9/dd/api/v2/series"),
    ("http://127.0.0.1:9/#f", "http://127.0.0.1:9/api/v2/series"),  # never before the path
    ("http://127.0.0.1:9?x=1", "http://127.0.0.1:9/api/v2/series"),
])
def test_request_urls_are_the_path_under_the_base(base: str, url: str) -> None:
    assert endpoint(base, "/api/v2/series") == url


async def test_known_statsd_and_ecs_samples_arrive_typed_with_exact_values(intake: Intake) -> None:
    now = time.time()
    # flushed by stop, so one interval holds it all; the sink's clock stands at `now`: a second (or the hour)
    # that began between `now` and the publish would stamp the points a second later (or flush them early)
    sink, hub = make(intake, flush_interval=3600.0, wall=lambda: now)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    own = (("endpoint", "/pay"),)
    hub.publish(Batch("statsd", [
        # `x:1|c|@0.5` received 3 times in a 10 s interval: sum 6 -> rate 0.6/s with interval 10
        Sample("x", 6.0, Kind.COUNT, own, interval=10.0),
        Sample("queue.size", 42.0, Kind.GAUGE, (("service", "override"),)),  # the client's tag wins
        Sample("job.seconds", Points(tuple(float(v) for v in range(1, 11)), (1.0,) * 10), Kind.HISTOGRAM,
               interval=10.0),
        Sample("req.ms", Points((5.0, 7.0), (2.0, 1.0), milliseconds=True), Kind.DISTRIBUTION, interval=10.0),
        Sample("backfilled", 3.0, Kind.GAUGE, timestamp=now - 120),
    ], events=[Event("deploy", "v42 rolled out", (("team", "pay"),), alert_type="info")],
        service_checks=[ServiceCheck("orders.db", 2, message="refused")]))
    hub.publish(Batch("ecs", [
        Sample("ecs.container.memory.working_set_bytes", 156966912.0, Kind.GAUGE, (("container_name", "dd-agent"),)),
        Sample("ecs.container.io.read_bytes_total", 1000.0, Kind.COUNTER, (("container_name", "app"),)),
    ], snapshot=True))
    hub.publish(Batch("ecs", [
        Sample("ecs.container.io.read_bytes_total", 1750.0, Kind.COUNTER, (("container_name", "app"),)),
    ], snapshot=True))
    stop.set()
    await asyncio.wait_for(task, 10)

    assert intake.points("x") == [(int(now), 0.6, TASK_TAGS + ("endpoint:/pay",), 2, 10)]
    ((ts, value, tags, kind, interval),) = intake.points("queue.size")
    assert (value, kind, interval) == (42.0, 3, None)
    assert tags == tuple(t for t in TASK_TAGS if not t.startswith("service:")) + ("service:override",)
    hist = {m: intake.points(m)[0][1:4:2] for m in intake.metrics() if m.startswith("job.seconds.")}
    assert hist == {"job.seconds.max": (10.0, 3), "job.seconds.median": (5.0, 3), "job.seconds.avg": (5.5, 3),
                    "job.seconds.count": (1.0, 2), "job.seconds.95percentile": (10.0, 3)}
    assert intake.points("job.seconds.count")[0][4] == 10
    assert intake.distributions == [{"metric": "req.ms", "points": [[int(now), [5.0, 5.0, 7.0]]],
                                     "tags": list(TASK_TAGS), "type": "distribution"}]
    assert intake.points("backfilled")[0][0] == int(now - 120)  # a timestamped sample keeps its time
    ((_, wss, wss_tags, wss_kind, _),) = intake.points("ecs.container.memory.working_set_bytes")
    assert (wss, wss_kind, wss_tags[-1]) == (156966912.0, 3, "container_name:dd-agent")
    # the cumulative counter arrives as the delta between sightings, as a count: never the raw 1750
    ((_, delta, _, delta_kind, delta_interval),) = intake.points("ecs.container.io.read_bytes_total")
    assert (delta, delta_kind, delta_interval) == (750.0, 1, 3600)
    assert [e["title"] for e in intake.events] == ["deploy"]
    assert intake.events[0]["tags"] == list(TASK_TAGS) + ["team:pay"] and intake.events[0]["alert_type"] == "info"
    assert [(c["check"], c["status"], c["message"]) for c in intake.checks] == [("orders.db", 2, "refused")]
    assert intake.checks[0]["tags"] == list(TASK_TAGS)
    # the task info series and the self-metrics ride along with every flush
    assert intake.points("ecs.task.info")[0][1] == 1.0
    assert "task_arn:arn:aws:ecs:eu-west-1:1:task/prod/4f1c2d3e" in intake.points("ecs.task.info")[0][2]
    assert intake.encodings == {"deflate", None}
    sent = exported(sink, "points_sent")
    assert sent == exported(sink, "points_queued") and sent >= 14


async def test_outage_then_recovery_delivers_every_point_exactly_once(intake: Intake) -> None:
    sink, hub = make(intake, flush_interval=0.1)
    intake.fail_for(1.5, 500)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    for i in range(60):  # 60 distinct values over ~1.8 s: most of them published during the outage
        hub.publish(Batch("statsd", [Sample("seq", float(i), Kind.GAUGE, (("i", str(i)),))]))
        await asyncio.sleep(0.03)
    await until(lambda: len(intake.points("seq")) >= 60 and not sink.status()["buffered_points"], what="recovery")
    stop.set()
    await asyncio.wait_for(task, 10)
    values = sorted(v for _, v, _, _, _ in intake.points("seq"))
    assert values == [float(i) for i in range(60)]  # all of them, none twice
    failed = sum(1 for _, status in intake.requests if status == 500)
    assert failed >= 3
    assert exported(sink, "retries") == failed
    assert exported(sink, "points_sent") == exported(sink, "points_queued")
    assert sink.status()["points_dropped"] == 0


async def test_buffer_bound_drops_the_oldest_and_counts_them(intake: Intake) -> None:
    sink, hub = make(intake, datadog_buffer_points=25)
    hub.pull = list  # type: ignore[method-assign]  # only the samples below: exact numbers
    for flush in range(5):  # not running: nothing is sent; 5 payloads of 10 points each
        hub.publish(Batch("s", [Sample(f"m{j}", float(flush), Kind.GAUGE) for j in range(10)]))
        sink.flush()
    assert sink.status()["buffered_points"] == 20  # the two newest payloads
    assert exported(sink, "points_dropped", reason="buffer_full") == 30
    assert sink.metrics.get("tasklens.exporter.buffer_points", exporter="datadog") == 20
    # what is left is the newest data, delivered once the exporter runs
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    await until(lambda: len(intake.points("m0")) == 2, what="delivery")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert sorted(v for _, v, _, _, _ in intake.points("m0")) == [3.0, 4.0]


async def test_a_bound_smaller_than_a_flush_still_delivers_every_flush(intake: Intake) -> None:
    sink, hub = make(intake, flush_interval=0.1, datadog_buffer_points=20)  # the self-metrics alone are more
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    for _ in range(50):
        hub.publish(Batch("statsd", [Sample("jobs", 1.0, Kind.COUNT, interval=1.0)]))
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert sum(v * i for _, v, _, _, i in intake.points("jobs")) == 50
    assert exported(sink, "points_dropped", reason="buffer_full") == 0
    assert exported(sink, "points_sent") == exported(sink, "points_queued")


async def test_a_flush_larger_than_the_bound_is_kept_while_it_is_retried(intake: Intake) -> None:
    sink, hub = make(intake, flush_interval=3600.0, datadog_buffer_points=20)
    hub.pull = list  # type: ignore[method-assign]
    intake.fail_next(2, 500)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    hub.publish(Batch("s", [Sample(f"m{j}", 1.0) for j in range(30)]))
    stop.set()  # one flush of 30 points, back at the head of the buffer after each 500
    await asyncio.wait_for(task, 10)
    assert len(intake.metrics()) == 30 and exported(sink, "retries") == 2
    assert exported(sink, "points_dropped", reason="buffer_full") == 0


async def test_intake_that_never_recovers_keeps_memory_bounded(intake: Intake) -> None:
    sink, hub = make(intake, flush_interval=0.05, datadog_buffer_points=200, drain_timeout=0.3)
    intake.always(503)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    high = 0.0
    for i in range(60):  # 60 x 20 points = 1,200 points (plus self-metrics), the buffer keeps 200
        hub.publish(Batch("s", [Sample(f"m{j}", float(i), Kind.GAUGE) for j in range(20)]))
        await asyncio.sleep(0.01)
        high = max(high, sink.status()["buffered_points"])
    await until(lambda: exported(sink, "retries") >= 3, what="retries")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert 0 < high <= 200
    dropped = exported(sink, "points_dropped", reason="buffer_full")
    assert dropped >= 1000
    # every point is accounted for: dropped for space, or given up at shutdown; none sent
    assert exported(sink, "points_sent") == 0
    assert dropped + exported(sink, "points_dropped", reason="shutdown") == exported(sink, "points_queued")


async def test_forbidden_is_reported_and_not_retried(intake: Intake, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tasklens")
    sink, hub = make(intake, flush_interval=0.1)
    intake.always(403)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    for i in range(5):
        hub.publish(Batch("s", [Sample("m", float(i), Kind.GAUGE)]))
        await asyncio.sleep(0.1)
    await until(lambda: len(intake.requests) >= 5, what="requests")
    stop.set()
    await asyncio.wait_for(task, 5)
    # one request per flushed payload, each refused once: no retry loop (a payload tried twice
    # would count its points as failed twice, or as a retry)
    assert exported(sink, "retries") == 0
    assert exported(sink, "points_failed", reason="http_403") == exported(sink, "points_queued") > 0
    assert len(intake.requests) == sum(1 for _, s in intake.requests if s == 403)
    refusals = [r for r in caplog.records if "refused the API key (HTTP 403)" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR  # said once, clearly
    assert "http_403" in sink.status()["last_error"]
    assert KEY not in caplog.text


async def test_stop_delivers_pending_points_before_returning(intake: Intake) -> None:
    sink, hub = make(intake, flush_interval=3600.0)  # nothing would be sent before the stop
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    hub.publish(Batch("statsd", [Sample("last.interval", 9.0, Kind.COUNT, interval=1.0)]))
    await asyncio.sleep(0.05)
    assert intake.requests == []
    stop.set()
    await asyncio.wait_for(task, 5)
    assert [v for _, v, _, _, _ in intake.points("last.interval")] == [9.0]


async def test_stop_with_intake_down_gives_up_at_the_deadline_and_logs_the_count(
        intake: Intake, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tasklens")
    sink, hub = make(intake, flush_interval=3600.0, drain_timeout=0.5)
    hub.pull = list  # type: ignore[method-assign]
    intake.always(500)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    hub.publish(Batch("s", [Sample(f"m{j}", 1.0, Kind.GAUGE) for j in range(7)]))
    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert 0.4 < time.monotonic() - started < 4.0  # the 0.5 s deadline, plus a loaded machine's delays
    assert exported(sink, "points_dropped", reason="shutdown") == 7
    assert "datadog: 7 points could not be delivered before the shutdown deadline" in caplog.text
    assert len(intake.requests) >= 2  # it kept trying until the deadline


async def test_timeouts_are_retried(intake: Intake) -> None:
    sink, hub = make(intake, flush_interval=3600.0, datadog_timeout=0.2, drain_timeout=5.0)
    intake.delay = 0.5
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    hub.publish(Batch("s", [Sample("slow", 1.0, Kind.GAUGE)]))
    stop.set()
    await until(lambda: exported(sink, "retries") >= 1, what="a timed-out submission")
    intake.delay = 0.0
    await asyncio.wait_for(task, 6)
    assert "timeout" in sink.last_error
    # the timed-out request may have landed too (at-least-once); after that, it was accepted
    assert [v for _, v, _, _, _ in intake.points("slow")][-1] == 1.0
    assert exported(sink, "points_sent") == exported(sink, "points_queued")


@pytest.mark.parametrize("timeout", [1.0, 3.0])  # the request's timeout first, or the body's own bound (2 s)
async def test_a_refusal_whose_body_stalls_is_final_not_a_timeout(
        intake: Intake, caplog: pytest.LogCaptureFixture, timeout: float) -> None:
    caplog.set_level(logging.INFO, logger="tasklens")
    sink, hub = make(intake, flush_interval=3600.0, datadog_timeout=timeout, drain_timeout=10.0)
    hub.pull = list  # type: ignore[method-assign]
    intake.slow_body = timeout + 1.5  # status, headers and text at once, then the body stalls past the timeout
    intake.fail_next(1, 400)  # a retry would be accepted: it must not happen
    intake.fail_text = '{"errors":["Bad Request: metric"]}'
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    hub.publish(Batch("s", [Sample("m", 1.0)]))
    stop.set()
    await asyncio.wait_for(task, 10)
    assert intake.requests == [("/api/v2/series", 400)] and intake.points("m") == []
    assert exported(sink, "retries") == 0 and exported(sink, "points_failed", reason="http_400") == 1
    assert "timeout" not in caplog.text and "retrying" not in caplog.text
    # the body is read for the log as far as it came
    assert sink.status()["last_error"].startswith('http_400: {"errors":["Bad Request: metric"]}')


async def test_the_api_key_is_never_shown(intake: Intake, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sink, hub = make(intake, flush_interval=0.05, drain_timeout=0.3)
    intake.fail_next(3, 500)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    hub.publish(Batch("s", [Sample("m", 1.0, Kind.GAUGE)]))
    await until(lambda: intake.points("m"), what="delivery")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert exported(sink, "retries") == 3
    shown = json.dumps(sink.status()) + repr(sink) + repr(sink.config) + caplog.text + json.dumps(
        [(s.name, s.tags) for s in hub.pull()])
    assert KEY not in shown and KEY[-8:] not in shown


def test_flushes_follow_the_clock_aligned_boundaries() -> None:
    sink, _ = DatadogSink(replace(Config(), flush_interval=10.0), Hub(IDENTITY)), None
    # just past each 10 s boundary (offset 1 s): the StatsD source closed its interval there
    assert sink._next_flush(1000.0) == 1001.0
    assert sink._next_flush(1001.0) == 1011.0
    assert sink._next_flush(1005.5) == 1011.0


async def test_a_bad_sample_costs_only_itself(intake: Intake) -> None:
    sink, hub = make(intake, flush_interval=3600.0)
    hub.pull = list  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    hub.publish(Batch("s", [
        Sample("ok.before", 1.0),
        Sample("h", Points((1.0, float("nan")), (1.0, 1.0)), Kind.HISTOGRAM, interval=10.0),
        Sample("bad.value", "x", Kind.GAUGE),  # type: ignore[arg-type]
        Sample("zero.interval", 3.0, Kind.COUNT, interval=0.0),  # no interval: a count, not a rate
        Sample("ok.after", 2.0),
    ]))
    stop.set()
    await asyncio.wait_for(task, 5)
    assert intake.metrics() == {"ok.before", "ok.after", "zero.interval"}
    assert intake.points("zero.interval")[0][3] == 1
    # rejected before queuing: a histogram counts the points it would have become (4 aggregates, p95)
    assert sink.metrics.get("tasklens.sink.points_rejected", sink="datadog", reason="not_finite") == 5
    assert sink.metrics.get("tasklens.sink.points_rejected", sink="datadog", reason="invalid") == 1
    assert sink.status()["points_rejected"] == 6 and sink.status()["points_dropped"] == 0


async def test_retries_back_off_exponentially_with_jitter(intake: Intake) -> None:
    sink, hub = make(intake, flush_interval=3600.0, backoff_base=0.1, backoff_max=0.4, drain_timeout=0.2)
    hub.pull = list  # type: ignore[method-assign]
    intake.always(500)
    hub.publish(Batch("s", [Sample("m", 1.0)]))
    sink.flush()  # one payload, retried until stop
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    await until(lambda: len(intake.arrivals) >= 6, what="6 attempts")
    stop.set()
    await asyncio.wait_for(task, 5)
    gaps = [b - a for a, b in zip(intake.arrivals, intake.arrivals[1:])][:5]
    # waits drawn from [d/2, d] for d = 0.1, 0.2, 0.4, 0.4, 0.4: never earlier; later only by load
    for gap, d in zip(gaps, (0.1, 0.2, 0.4, 0.4, 0.4)):
        assert d / 2 - 0.01 <= gap <= d + 1.0, gaps
    assert exported(sink, "retries") >= 6


async def test_delivery_resumes_after_more_failures_than_the_backoff_has_doublings(intake: Intake) -> None:
    """2 ** 1024 is past the float range: an intake down for over 1,024 attempts (six hours at the real
    backoff) must not end the sender, or nothing is sent again until a restart."""
    sink, hub = make(intake, flush_interval=3600.0, backoff_base=0.0001, backoff_max=0.0002)
    hub.pull = list  # type: ignore[method-assign]
    intake.fail_next(1100, 503)
    hub.publish(Batch("s", [Sample("m", 1.0)]))
    sink.flush()
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    await until(lambda: intake.points("m"), 30, "delivery after 1,100 failures")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert [v for _, v, _, _, _ in intake.points("m")] == [1.0]
    assert exported(sink, "retries") == 1100


async def test_a_defect_while_sending_costs_that_payload_never_the_sink(intake: Intake) -> None:
    """An exception the sender does not expect loses the payload it was sending, counted, and the sender
    goes on with the next one."""
    sink, hub = make(intake, flush_interval=3600.0, backoff_base=0.01, backoff_max=0.02)
    hub.pull = list  # type: ignore[method-assign]
    deliver = sink._deliver
    broken = []

    async def broken_once(session, payload):  # type: ignore[no-untyped-def]
        if not broken:
            broken.append(payload)
            raise RuntimeError("a defect")
        await deliver(session, payload)

    sink._deliver = broken_once  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    hub.publish(Batch("s", [Sample("lost", 1.0)]))
    sink.flush()
    await until(lambda: broken, 10, "the defect")
    hub.publish(Batch("s", [Sample("kept", 2.0)]))
    sink.flush()
    await until(lambda: intake.points("kept") or task.done(), 10, "the next payload delivered")
    assert not task.done(), task.exception()
    assert intake.points("lost") == [] and exported(sink, "points_dropped", reason="internal") == broken[0].points
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_redirects_are_not_followed_with_the_key_and_are_retried(intake: Intake) -> None:
    async for elsewhere in start_intake(Intake(KEY)):
        sink, hub = make(intake, flush_interval=3600.0)
        hub.pull = list  # type: ignore[method-assign]
        intake.redirect_to = elsewhere.url
        stop = asyncio.Event()
        task = asyncio.create_task(sink.run(stop))
        hub.publish(Batch("s", [Sample("m", 1.0)]))
        sink.flush()
        await until(lambda: exported(sink, "retries") >= 2, what="two redirects")
        intake.redirect_to = ""  # the intake answers again: the payload was kept for it
        await until(lambda: intake.points("m"), what="delivery")
        stop.set()
        await asyncio.wait_for(task, 5)
        assert elsewhere.requests == [] and elsewhere.arrivals == []
        assert sink.metrics.get("tasklens.exporter.submissions", exporter="datadog", status="307") >= 2
        assert exported(sink, "points_failed", reason="http_307") == 0
        assert [v for _, v, _, _, _ in intake.points("m")] == [1.0]
        assert "http_307 (a redirect, not followed" in sink.last_error


async def test_check_api_key(intake: Intake) -> None:
    good = replace(Config(), dd_api_key=KEY, dd_url=intake.url)
    assert await check_api_key(good) == {"url": intake.url, "api_key": "valid"}
    bad = await check_api_key(replace(good, dd_api_key="wrong" * 8))
    assert bad["api_key"] == "invalid (HTTP 403): check DD_API_KEY and DD_SITE" and "wrong" not in str(bad)
    down = await check_api_key(replace(good, dd_url="http://127.0.0.1:9"), timeout=2.0)
    assert down["api_key"].startswith("not checked: the intake did not answer")


@pytest.mark.parametrize("token", ["Zq7DdTok", "Zq7-Dd.Tok_~x", "Zq7%2FDd%40Tok", "Zq7DdTok:"])
async def test_a_token_as_the_urls_user_info_is_never_shown(intake: Intake, token: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """`DD_DD_URL=http://<token>@proxy`: a proxy's token with no password. `check`'s configuration section
    hid it; its intake section, `/status` and the log lines that name the URL showed it."""
    caplog.set_level(logging.INFO, logger="tasklens")
    url = intake.url.replace("://", f"://{token}@")
    shown_url = intake.url.replace("://", "://***@")
    checked = await check_api_key(replace(Config(), dd_api_key=KEY, dd_url=url))
    assert checked["url"] == shown_url
    sink, hub = make(intake, dd_url=url)
    intake.always(403)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    hub.publish(Batch("s", [Sample("m", 1.0, Kind.GAUGE)]))
    await until(lambda: "http_403" in (sink.status()["last_error"] or ""), what="the refusal")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert sink.status()["url"] == shown_url and shown_url in caplog.text
    for text in (str(checked), str(sink.status()), repr(sink), caplog.text):
        assert "Zq7" not in text, text
