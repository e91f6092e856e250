"""Isolation: whatever one context carries, every other context reaches the strict intake exactly.

Each class of input the intake refuses (names too long with their suffix, tags it would normalise,
non-finite values, timestamps outside its window, bad events and service checks, objects that break
the code) is sent beside a control; the control must arrive exactly, the intake must find nothing to
refuse, and each drop must be counted by reason. Then hypothesis generates hostile batches and checks
every payload the sink would send with the intake's own checks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import zlib
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import Config
from agent.hub import Hub
from agent.model import Batch, Event, Kind, Points, Sample, ServiceCheck
from agent.redact import Redactor, config_secrets
from agent.sinks import datadog_series as dd
from agent.sinks.datadog import DatadogSink
from tests.sinks.intake import Intake, check_payload, tag_problem
from tests.sinks.test_datadog import IDENTITY, KEY, TASK_TAGS, exported, intake, make, until

__all__ = ["intake"]  # the fixture, shared with test_datadog.py

REJECTED = "tasklens.sink.points_rejected"


def rejected(sink: DatadogSink, reason: str) -> float:
    return sink.metrics.get(REJECTED, sink="datadog", reason=reason)


def rejected_by_reason(sink: DatadogSink) -> dict[str, float]:
    """The reasons counted so far (every known reason is exported from the start, at 0)."""
    return {dict(s.tags)["reason"]: float(s.value) for s in sink.metrics.samples()  # type: ignore[arg-type]
            if s.name == REJECTED and ("sink", "datadog") in s.tags and s.value}


async def test_each_hostile_class_costs_only_itself(intake: Intake) -> None:
    now = time.time()
    # the sink's clock stands at `now`: a second that began between `now` and the publish stamped the
    # control point int(now)+1 (and an hour boundary flushed early)
    sink, hub = make(intake, flush_interval=3600.0, wall=lambda: now)
    hub.pull = list  # type: ignore[method-assign]  # only what this test publishes
    h = "h" * 195  # `.max` and `.avg` fit in 200 characters, `.median`, `.count`, `.95percentile` do not
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    hub.publish(Batch("s", [
        Sample("control", 42.0, Kind.GAUGE, (("q", "a"),)),
        Sample("1Bad Name!", 1.0, Kind.GAUGE, (("3rd", "X Y"), ("Q", "A"))),  # repaired, as the intake would
        Sample(h, Points((1.0, 2.0), (1.0, 1.0)), Kind.HISTOGRAM, interval=10.0),
        Sample("old", 1.0, timestamp=now - 7200),
        Sample("future", 1.0, timestamp=now + 3600),
        Sample("big", Points((1e308, 1e308), (1.0, 1.0)), Kind.HISTOGRAM, interval=10.0),  # its sum overflows
        Sample("denormal", Points((1.0,), (math.inf,)), Kind.HISTOGRAM, interval=10.0),  # rate 5e-324
        Sample("nan", math.nan),
        Sample("rate", 1e308, Kind.COUNT, interval=1e-300),  # a rate over the 1 s it is sent with: finite
        Sample("123", 1.0),
        Sample("bad.type", "x", Kind.GAUGE),  # type: ignore[arg-type]
        Sample("bad.interval", 1.0, Kind.COUNT, interval=math.nan),
    ], events=[
        Event("deploy", "v2", (("Team", "Core"),)),
        Event("", "no title"),
        Event("old", "x", timestamp=now - 86400),
        Event(None, "x"),  # type: ignore[arg-type]
    ], service_checks=[
        ServiceCheck("orders.up", 0, message="m" * 600),
        ServiceCheck("bad.status", 7),
        ServiceCheck("old", 0, timestamp=now - 1200),
        ServiceCheck("", 0),
    ]))
    stop.set()
    await asyncio.wait_for(task, 10)

    assert intake.points("control") == [(int(now), 42.0, TASK_TAGS + ("q:a",), dd.GAUGE, None)]
    assert [p[2] for p in intake.points("Bad_Name_")] == [TASK_TAGS + ("rd:x_y", "q:a")]
    assert {m for m in intake.metrics() if m.startswith("h")} == {h + ".max", h + ".avg"}
    assert {m for m in intake.metrics() if m.startswith("big")} == {
        "big.max", "big.median", "big.count", "big.95percentile"}
    assert [p[1] for p in intake.points("big.max")] == [1e308]
    assert intake.metrics() & {"old", "future", "denormal.max", "nan", "bad.type", "bad.interval"} == set()
    assert [(p[1], p[3], p[4]) for p in intake.points("rate")] == [(1e308, dd.RATE, 1)]  # value x interval: the count
    assert [(e["title"], e["tags"]) for e in intake.events] == [("deploy", list(TASK_TAGS) + ["team:core"])]
    assert [(c["check"], len(c.get("message", ""))) for c in intake.checks] == [("orders.up", 600)]
    assert rejected_by_reason(sink) == {
        "name_too_long": 3, "timestamp_out_of_range": 4, "not_finite": 7, "invalid_name": 1, "invalid": 3,
        "invalid_event": 1, "invalid_service_check": 2}
    assert sink.status()["points_rejected"] == 21
    # nothing queued was lost: the rejected points never entered the accounting of delivery
    assert exported(sink, "points_sent") == exported(sink, "points_queued")


async def test_rejections_are_logged_once_a_minute_per_reason(
        intake: Intake, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "tasklens.datadog")
    sink, hub = make(intake, flush_interval=3600.0)
    hub.pull = list  # type: ignore[method-assign]
    for _ in range(3):
        hub.publish(Batch("s", [Sample("nan", math.nan), Sample("123", 1.0)]))
    assert rejected(sink, "not_finite") == 3 and rejected(sink, "invalid_name") == 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "(not_finite): 'nan' = nan" in lines[0] and "(invalid_name)" in lines[1]


async def test_a_backdated_point_expires_alone(intake: Intake) -> None:
    """A point the intake still takes now, but not after an outage, never shares a payload with current ones."""
    sink, hub = make(intake, flush_interval=3600.0)
    hub.pull = list  # type: ignore[method-assign]
    now = time.time()
    intake.fail_for(2.5, 500)
    hub.publish(Batch("s", [Sample("control", 1.0),
                            Sample("backdated", 2.0, timestamp=now - 3600 + dd.SEND_MARGIN + 1.0)]))
    sink.flush()
    paths = [p.path for p in sink.pending()]
    assert paths == [dd.SERIES_PATH, dd.SERIES_PATH]
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    await until(lambda: intake.points("control"), what="the control after the outage")
    await until(lambda: exported(sink, "points_dropped", reason="expired") == 1, what="the expired payload")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert intake.metrics() == {"control"}
    assert exported(sink, "points_sent") == 1


def test_far_apart_timestamps_never_share_a_payload() -> None:
    now = 1_700_000_000.0
    stamps = [now, now - 1, now - 3000, now - 290, now - 3001]
    items = [dd.series(f"m{i}", dd.GAUGE, 1.0, ts, ()) for i, ts in enumerate(stamps)]
    payloads = dd.encode(dd.SERIES_PATH, items, [1] * 5, stamps, dd.SERIES_WINDOW)
    groups = [[s["metric"] for s in json.loads(zlib.decompress(p.body))["series"]] for p in payloads]
    assert groups == [["m0", "m1", "m3"], ["m2", "m4"]]  # within 300 s (a twelfth of the hour) of the newest
    assert [p.expires for p in payloads] == [now - 290 + 3600 - 60, now - 3001 + 3600 - 60]
    # the usual case: one payload
    (one,) = dd.encode(dd.SERIES_PATH, items[:2], [1, 1], stamps[:2], dd.SERIES_WINDOW)
    assert one.points == 2 and one.expires == now - 1 + 3600 - 60


async def test_an_intake_error_that_echoes_secrets_is_masked(
        intake: Intake, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    password = "s3cr3t/p@ss"
    sink, hub = make(intake, flush_interval=3600.0, pyroscope_password=password)
    hub.pull = list  # type: ignore[method-assign]
    # the key as sent, in upper case, and the password percent-encoded, with a line break to inject a log line
    intake.fail_text = (f'{{"errors":["Invalid key {KEY} ({KEY.upper()})",\n"FAKE LOG LINE",'
                        f' "password s3cr3t%2Fp%40ss"]}}' + "x" * 100_000)
    intake.fail_next(1, 400)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    hub.publish(Batch("s", [Sample("m", 1.0)]))
    stop.set()
    await asyncio.wait_for(task, 5)
    assert exported(sink, "points_failed", reason="http_400") == 1
    last_error = sink.status()["last_error"]
    assert last_error.startswith('http_400: {"errors":["Invalid key *** (***)", "FAKE LOG LINE", "password ***"]')
    assert len(last_error) <= 220 and "\n" not in last_error
    shown = (json.dumps(sink.status()) + caplog.text).lower()
    for secret in (KEY, password, "s3cr3t%2fp%40ss"):
        assert secret.lower() not in shown
    assert "\nFAKE LOG LINE" not in caplog.text


def test_redactor() -> None:
    r = Redactor(["Key123456", "p@ss word", ""])
    assert r.mask("a Key123456 b KEY123456 c") == "a *** b *** c"
    assert r.mask("p%40ss%20word p%40ss+word \"p@ss word\"") == "*** *** \"***\""
    assert r.remote_text(b"x\r\n\x1b[31mKey123456\xff" + b"y" * 500, limit=20) == "x [31m***\ufffd" + "y" * 10 + "..."
    # masked before it is cut: the cut never shows a piece of the key
    assert r.remote_text("y" * 15 + "Key123456", limit=20) == "y" * 15 + "***"
    assert Redactor([]).mask("Key123456") == "Key123456"
    # a longer secret containing a shorter one is masked whole
    assert Redactor(["abc", "abcdef"]).mask("abcdef") == "***"


def test_config_secrets() -> None:
    config = replace(Config(), dd_api_key=KEY, dd_url="http://proxy:pr0xy@127.0.0.1:1", pyroscope_password="pw",
                     queues=("redis://:r3dis@h:6379/0?queue=q", "amqp://u:amqp-pw@h/v",
                             "postgresql://app@db/app?password_env=PG_PASSWORD&table=jobs"))
    found = config_secrets(config, environ={"PG_PASSWORD": "pg-secret", "OTHER": "not-a-secret"})
    assert set(found) >= {KEY, "pr0xy", "pw", "r3dis", "amqp-pw", "pg-secret"}
    assert "not-a-secret" not in found and "" not in found


# --- property tests: hostile batches, every payload checked by the intake's own rules -------------

NOW = 1_700_000_000.0
CONTROL = "tasklens_test.control"
FINITE_OR_NOT = st.floats() | st.sampled_from([1e308, -1e308, 5e-324, 0.0, math.inf, math.nan])
WEIGHTS = st.floats() | st.sampled_from([math.inf, 5e-324, 1e308, 0.0, -1.0, 1.0, 2.0])
TEXT = st.text(max_size=40) | st.sampled_from(["", "1abc", "#x", "A B", "a" * 250, "\ud800", "é", ":", "_"])
TAGS = st.lists(st.tuples(TEXT, TEXT), max_size=4).map(tuple)
STAMPS = st.none() | st.floats(NOW - 100_000, NOW + 100_000) | st.sampled_from([math.nan, math.inf, -1.0, 1e30])
NAMES = TEXT | st.integers(185, 199).map(lambda n: "n" * n)
INTERVALS = st.none() | st.sampled_from([0.0, 10.0, 1e-300, 5e-324, -1.0, math.nan, math.inf, 1e30])


@st.composite
def hostile_sample(draw: Any, kinds: tuple[Kind, ...]) -> Sample:
    kind = draw(st.sampled_from(kinds))
    if kind in (Kind.HISTOGRAM, Kind.DISTRIBUTION):
        n = draw(st.integers(0, 4))
        values = draw(st.lists(FINITE_OR_NOT, min_size=n, max_size=n))
        weights = draw(st.lists(WEIGHTS, min_size=n, max_size=n))
        value: Any = Points(tuple(values), tuple(weights))
    else:
        value = draw(FINITE_OR_NOT)
    return Sample(draw(NAMES), value, kind, draw(TAGS), draw(STAMPS), draw(INTERVALS))


HOSTILE_EVENTS = st.builds(Event, TEXT, st.text(max_size=50) | st.just("x" * 5000), TAGS, STAMPS, st.none() | TEXT,
                           st.none() | TEXT, st.none() | TEXT, st.none() | TEXT, st.none() | TEXT)
HOSTILE_CHECKS = st.builds(ServiceCheck, TEXT, st.integers(-2, 5), TAGS, STAMPS, st.none() | TEXT,
                           st.none() | TEXT | st.just("m" * 600))


def flushed(batch: Batch, flush_interval: float = 10.0) -> tuple[DatadogSink, dict[str, list[Any]]]:
    """The batch through a sink (clock at NOW), and every payload it queued as the intake reads it."""
    config = replace(Config(), dd_api_key=KEY, dd_url="http://127.0.0.1:9", flush_interval=flush_interval)
    hub = Hub(IDENTITY)
    hub.pull = list  # type: ignore[method-assign]
    sink = DatadogSink(config, hub, wall=lambda: NOW)
    hub.add_sink(sink)
    hub.publish(batch)
    sink.flush()
    docs: dict[str, list[Any]] = {dd.SERIES_PATH: [], dd.DISTRIBUTION_PATH: [], dd.EVENTS_PATH: [],
                                  dd.CHECK_RUN_PATH: []}
    for payload in sink.pending():
        # raises, naming the rule, for any payload the intake would refuse whole
        doc = check_payload(payload.path, payload.encoding, payload.body, now=NOW)
        docs[payload.path].extend(doc["series"] if isinstance(doc, dict) and "series" in doc else
                                  doc if isinstance(doc, list) else [doc])
    return sink, docs


def control_arrived(docs: dict[str, list[Any]]) -> None:
    series = [s for s in docs[dd.SERIES_PATH] if s["metric"] == CONTROL]
    assert series == [{"metric": CONTROL, "type": dd.GAUGE, "points": [{"timestamp": int(NOW), "value": 42.5}],
                       "tags": list(TASK_TAGS) + ["q:a"]}]
    assert [e for e in docs[dd.EVENTS_PATH] if e["title"] == "control"] == [
        {"title": "control", "text": "kept", "date_happened": int(NOW), "tags": list(TASK_TAGS)}]
    assert [c for c in docs[dd.CHECK_RUN_PATH] if c["check"] == CONTROL] == [
        {"check": CONTROL, "host_name": "", "status": 1, "tags": list(TASK_TAGS), "timestamp": int(NOW)}]


def with_control(samples: list[Sample], events: list[Event], checks: list[ServiceCheck]) -> Batch:
    return Batch("s", [Sample(CONTROL, 42.5, Kind.GAUGE, (("q", "a"),))] + samples,
                 events=[Event("control", "kept")] + events, service_checks=[ServiceCheck(CONTROL, 1)] + checks)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_sample(tuple(Kind)), max_size=8), st.lists(HOSTILE_EVENTS, max_size=3),
       st.lists(HOSTILE_CHECKS, max_size=3))
def test_hostile_batches_never_spoil_a_payload(samples: list[Sample], events: list[Event],
                                               checks: list[ServiceCheck]) -> None:
    _, docs = flushed(with_control(samples, events, checks))
    control_arrived(docs)
    for obj in (o for objs in docs.values() for o in objs):
        assert all(tag_problem(t) is None for t in obj.get("tags", ()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_sample((Kind.GAUGE, Kind.COUNT, Kind.HISTOGRAM)), max_size=8),
       st.lists(HOSTILE_EVENTS, max_size=3), st.lists(HOSTILE_CHECKS, max_size=3))
def test_every_hostile_point_is_delivered_or_counted(samples: list[Sample], events: list[Event],
                                                     checks: list[ServiceCheck]) -> None:
    sink, docs = flushed(with_control(samples, events, checks))
    per_histogram = 5  # max, median, avg, count, 95percentile
    expected = sum((per_histogram if len(s.value.values) else 0) if isinstance(s.value, Points) else 1
                   for s in samples) + len(events) + len(checks)
    delivered = (sum(len(s["points"]) for s in docs[dd.SERIES_PATH]) + len(docs[dd.EVENTS_PATH])
                 + len(docs[dd.CHECK_RUN_PATH]) - 3)  # less the three controls
    assert delivered + sum(rejected_by_reason(sink).values()) == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.floats(1, 3600), st.integers(1, 3), st.lists(st.floats(0, 1e9), min_size=1, max_size=4),
       st.lists(st.lists(st.sampled_from([1.0, 2.0, 4.0, 10.0, 1 / 0.3]), min_size=1, max_size=4), max_size=3))
def test_a_rate_times_its_interval_is_the_count_for_any_flush_interval(
        flush_interval: float, periods: int, counts: list[float], weights: list[list[float]]) -> None:
    # as the StatsD flush makes them: over the interval times the periods it covered (1.5 s, 2.5 s ...)
    seconds = flush_interval * periods
    samples = [Sample(f"c{i}", c, Kind.COUNT, interval=seconds) for i, c in enumerate(counts)]
    samples += [Sample(f"h{i}", Points(tuple(float(v) for v in range(len(w))), tuple(w)), Kind.HISTOGRAM,
                       interval=seconds) for i, w in enumerate(weights)]
    sink, docs = flushed(Batch("statsd", samples), flush_interval)
    sent = {s["metric"]: [p["value"] * s["interval"] for p in s["points"]]
            for s in docs[dd.SERIES_PATH] if s["type"] == dd.RATE}
    assert all(isinstance(s["interval"], int) for s in docs[dd.SERIES_PATH] if "interval" in s)
    for i, c in enumerate(counts):
        assert sent[f"c{i}"] == [pytest.approx(c, rel=1e-12)]
    for i, w in enumerate(weights):  # `.count`: the weighted count, sample rates applied
        assert sent[f"h{i}.count"] == [pytest.approx(math.fsum(w), rel=1e-12)]
    assert math.fsum(v for vs in sent.values() for v in vs) == pytest.approx(
        math.fsum(counts) + math.fsum(math.fsum(w) for w in weights), rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 100), st.lists(st.lists(st.integers(1, 60), min_size=1, max_size=4), min_size=1, max_size=8))
def test_the_buffer_bound_drops_the_oldest_never_the_newest_flush(bound: int, flushes: list[list[int]]) -> None:
    config = replace(Config(), dd_api_key=KEY, dd_url="http://127.0.0.1:9", datadog_buffer_points=bound)
    sink = DatadogSink(config, Hub(IDENTITY), wall=lambda: NOW)
    queued: list[dd.Payload] = []
    for sizes in flushes:  # not running: nothing leaves but what the bound drops
        payloads = [dd.Payload(dd.SERIES_PATH, b"", "deflate", n, NOW + 3000) for n in sizes]
        queued += payloads
        sink.queue(payloads)
        kept = sink.pending()
        assert kept[-len(payloads):] == payloads and all(a is b for a, b in zip(kept[-len(payloads):], payloads))
        buffered = sum(p.points for p in kept)
        assert buffered <= bound or kept == payloads  # over the bound only with the newest flush alone
        # the oldest go first: what is kept is the newest payloads, in order
        assert kept == queued[len(queued) - len(kept):]
        dropped = exported(sink, "points_dropped", reason="buffer_full")
        assert dropped + buffered == exported(sink, "points_queued") == sum(p.points for p in queued)


SIDECAR_KEYS = [t.partition(":")[0] for t in TASK_TAGS]
# a client's spelling of a sidecar key that Datadog normalises to it: case, leading non-letters, a trailing `_`
CLIENT_KEYS = st.builds(lambda key, upper, lead, trail: lead + "".join(c.upper() if u else c for c, u in zip(
    key, upper)) + trail, st.sampled_from(SIDECAR_KEYS), st.lists(st.booleans(), min_size=20, max_size=20),
    st.sampled_from(["", "1", "#", "_", "$#", "9 "]), st.sampled_from(["", "_", "__"]))
CLIENT_TAGS = st.lists(st.tuples(CLIENT_KEYS | st.sampled_from(["q", "Q", "role"]),
                                 st.sampled_from(["mine", "Mine", "z", "a b", "x:y"])), max_size=5).map(tuple)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CLIENT_TAGS)
def test_a_client_tag_that_normalises_to_a_sidecar_key_replaces_the_sidecars(tags: tuple[tuple[str, str], ...]) -> None:
    _, docs = flushed(Batch("s", [Sample("m", 1.0, Kind.GAUGE, tags)], events=[Event("e", "t", tags)],
                            service_checks=[ServiceCheck("c", 0, tags)]))
    client = [dd.normalize_tag(f"{k}:{v}") for k, v in tags]
    for obj in (docs[dd.SERIES_PATH] + docs[dd.EVENTS_PATH] + docs[dd.CHECK_RUN_PATH]):
        sent = obj["tags"]
        for sidecar in TASK_TAGS:
            key = sidecar.partition(":")[0]
            theirs = [t for t in client if t.partition(":")[0] == key]
            # one tag of each sidecar key: the client's last spelling of it, else the sidecar's
            assert [t for t in sent if t.partition(":")[0] == key] == [theirs[-1] if theirs else sidecar]
        # the client's other tags all kept
        assert [t for t in sent if t.partition(":")[0] not in SIDECAR_KEYS] == list(dict.fromkeys(
            t for t in client if t.partition(":")[0] not in SIDECAR_KEYS))


def test_a_configured_tag_key_is_the_sidecars_too() -> None:
    config = replace(Config(), dd_api_key=KEY, dd_url="http://127.0.0.1:9", tags=(("Team", "pay"),))
    hub = Hub(replace(IDENTITY, extra=config.tags))
    hub.pull = list  # type: ignore[method-assign]
    sink = DatadogSink(config, hub, wall=lambda: NOW)
    hub.add_sink(sink)
    hub.publish(Batch("s", [Sample("m", 1.0, Kind.GAUGE, (("team", "core"),)), Sample("n", 1.0)]))
    sink.flush()
    (payload,) = sink.pending()
    doc = check_payload(payload.path, payload.encoding, payload.body, now=NOW)
    assert {s["metric"]: s["tags"][len(TASK_TAGS):] for s in doc["series"]} == {"m": ["team:core"], "n": ["team:pay"]}
