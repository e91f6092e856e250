"""The pure conversions behind the Datadog exporter, checked against numbers worked by hand."""

from __future__ import annotations

import json
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.model import Event, Points, ServiceCheck
from agent.sinks import datadog_series as dd
from agent.sinks.deltas import CounterDeltas
from tests.sinks.intake import tag_problem


def test_histogram_worked_example_from_the_spec() -> None:
    # values 1..10 in one 10 s interval at rate 1 -> max 10, median 5, avg 5.5, count 1.0/s, p95 10
    points = Points(tuple(float(v) for v in range(10, 0, -1)), (1.0,) * 10)  # order must not matter
    out = dd.histogram_aggregates(points, 10.0, ("max", "median", "avg", "count"), (0.95,))
    assert out == [(".max", 10.0, dd.GAUGE), (".median", 5.0, dd.GAUGE), (".avg", 5.5, dd.GAUGE),
                   (".count", 1.0, dd.RATE), (".95percentile", 10.0, dd.GAUGE)]


def test_histogram_weights_follow_the_agent_rank_rule() -> None:
    # 1, 2, 3 each sampled at rate 0.5 (weight 2): count 6 over 10 s -> 0.6/s; sum 12 -> avg 2;
    # median target floor(5 / 2) = 2: cumulative weights 2, 4 -> first above 2 is value 2;
    # p95 target floor((95 * 6 - 1) / 100) = 5: cumulative 6 > 5 at value 3; p50 target 2 -> 2
    points = Points((3.0, 1.0, 2.0), (2.0, 2.0, 2.0))
    out = dict((s, v) for s, v, _ in dd.histogram_aggregates(
        points, 10.0, ("min", "max", "median", "avg", "sum", "count"), (0.5, 0.95)))
    assert out == {".min": 1.0, ".max": 3.0, ".median": 2.0, ".avg": 2.0, ".sum": 12.0, ".count": 0.6,
                   ".50percentile": 2.0, ".95percentile": 3.0}


def test_single_value_histogram_and_unknown_aggregate() -> None:
    out = dd.histogram_aggregates(Points((7.0,), (1.0,)), 2.0, ("median", "bogus", "count"), (0.99,))
    assert out == [(".median", 7.0, dd.GAUGE), (".count", 0.5, dd.RATE), (".99percentile", 7.0, dd.GAUGE)]


def test_percentile_suffixes() -> None:
    assert dd.percentile_suffix(0.95) == "95percentile"
    assert dd.percentile_suffix(0.99) == "99percentile"
    assert dd.percentile_suffix(0.999) == "99_9percentile"
    assert dd.percentile_suffix(0.5) == "50percentile"


def test_metric_names_follow_datadog_rules() -> None:
    assert dd.metric_name("ecs.container.cpu.usage_vcpus") == "ecs.container.cpu.usage_vcpus"
    assert dd.metric_name("my-app.latency ms") == "my_app.latency_ms"
    assert dd.metric_name("1st.metric") == "st.metric"
    assert dd.metric_name("__x") == "x"
    assert dd.metric_name("123") == ""
    assert dd.metric_name("a" * 300) == "a" * 300  # never cut: the sink drops it, counted, with its suffix


def test_tags_are_key_value_strings() -> None:
    assert dd.tag_list((("service", "orders"), ("canary", ""), ("url", "http://x:1"))) == [
        "service:orders", "canary", "url:http://x:1"]


def test_tags_are_normalised_as_datadog_stores_them() -> None:
    # getting_started/tagging: a letter first; letters, digits, `_ - : . /`; other characters become `_`,
    # contiguous underscores one, no trailing `_`; lower case; 200 characters
    cases = {
        "Env:Prod": "env:prod",
        "#test_starting_hash": "test_starting_hash",
        "1abc": "abc",
        "__x": "x",
        ":key:v": "key:v",
        "Test Conversion Of Weird !@#$%^&**() Characters": "test_conversion_of_weird_characters",
        "a__b": "a_b",
        "trailing_": "trailing",
        "key:": "key",
        "path:/a/b-c.d": "path:/a/b-c.d",
        "日本語:値": "日本語:値",  # Unicode letters are kept
        "ÉTÉ:Ça": "été:ça",
        "x:½²": "x",  # not decimal digits
        "a\ud800b": "a_b",
        "123": "",
        "": "",
        "a" * 300: "a" * 200,
        "a" * 199 + "!b": "a" * 199,  # the `_` would make 201 characters with the `b`
    }
    for raw, want in cases.items():
        raw = raw.encode().decode("unicode_escape") if "\\u" in raw else raw
        assert dd.normalize_tag(raw) == want, raw
    # empty after normalisation: left out; equal after normalisation: once
    assert dd.tag_list((("123", ""), ("Env", "Prod"), ("env", "prod"), ("q", "1"))) == ["env:prod", "q:1"]


def test_distribution_weights_are_expanded() -> None:
    # rate 0.5 -> weight 2; rate 0.4 -> weight 2.5 -> 3 copies (half up)
    assert dd.expand_weights(Points((1.0, 2.0, 5.0), (1.0, 2.0, 2.5))) == [1.0, 2.0, 2.0, 5.0, 5.0, 5.0]
    # past the cap the weights are scaled down: 4 values of weight 100 (400 values) into 40 -> 10 each
    assert dd.expand_weights(Points((1.0, 2.0, 3.0, 4.0), (100.0,) * 4), limit=40) == sum(
        ([v] * 10 for v in (1.0, 2.0, 3.0, 4.0)), [])


def test_series_objects() -> None:
    tags = (("service", "orders"), ("path", 'a"b\\c'))
    assert json.loads(dd.series("x", dd.RATE, 0.6, 1700000000.9, tags, 10.0)) == {
        "metric": "x", "type": 2, "points": [{"timestamp": 1700000000, "value": 0.6}],
        "tags": ["service:orders", "path:a_b_c"], "interval": 10}  # quote and backslash normalised
    assert json.loads(dd.series("g", dd.GAUGE, 1.5, 1700000000, ())) == {
        "metric": "g", "type": 3, "points": [{"timestamp": 1700000000, "value": 1.5}], "tags": []}
    assert json.loads(dd.series("c", dd.COUNT, 3, 1700000000, (), 0.2))["interval"] == 1  # never 0
    # every finite float is written as a JSON number that reads back exactly
    for value in (1e20, 1e-7, -0.0, 156966912.0, 2 ** 53 + 0.0, 0.1 + 0.2):
        assert json.loads(dd.series("v", dd.GAUGE, value, 1700000000, ()))["points"][0]["value"] == value


def test_event_and_service_check_objects() -> None:
    e = Event("deploy", "x" * 5000, (("service", "orders"),), timestamp=1700000000.5, aggregation_key="k" * 150,
              priority="low", alert_type="info")
    obj = dd.event(e, now=1700000001.0)
    assert obj == {"title": "deploy", "text": "x" * 4000, "date_happened": 1700000000, "tags": ["service:orders"],
                   "aggregation_key": "k" * 100, "priority": "low", "alert_type": "info"}
    c = ServiceCheck("orders.can_connect", 2, (("db", "main"),), message="refused")
    assert dd.service_check(c, now=1700000001.7) == {
        "check": "orders.can_connect", "host_name": "", "status": 2, "tags": ["db:main"],
        "timestamp": 1700000001, "message": "refused"}


def test_encode_splits_under_the_size_limits() -> None:
    # 30,000 series with ~40 random-looking bytes each: raw JSON well over one 2 MB chunk
    objs = [dd.series(f"m.{i}", dd.GAUGE, i, 1700000000, (("id", f"{i * 2654435761 % 2**32:x}" * 4),))
            for i in range(30_000)]
    payloads = dd.encode(dd.SERIES_PATH, objs, [1] * len(objs), [1700000000.0] * len(objs), dd.SERIES_WINDOW)
    assert len(payloads) >= 2
    assert sum(p.points for p in payloads) == 30_000
    seen = []
    for p in payloads:
        assert p.encoding == "deflate" and len(p.body) <= dd.MAX_COMPRESSED
        raw = zlib.decompress(p.body)
        assert len(raw) < dd.MAX_DECOMPRESSED
        seen += [s["metric"] for s in json.loads(raw)["series"]]
    assert seen == [f"m.{i}" for i in range(30_000)]


def test_encode_events_one_per_request_and_checks_as_an_array() -> None:
    events = [dd.dumps(dd.event(Event("a", "b"), 1700000000)), dd.dumps(dd.event(Event("c", "d"), 1700000000))]
    out = dd.encode(dd.EVENTS_PATH, events, [1, 1], [1700000000.0] * 2, dd.EVENT_WINDOW)
    assert [json.loads(p.body)["title"] for p in out] == ["a", "c"] and all(p.encoding is None for p in out)
    checks = [dd.dumps(dd.service_check(ServiceCheck("a", 0), 1700000000)),
              dd.dumps(dd.service_check(ServiceCheck("b", 1), 1700000000))]
    (payload,) = dd.encode(dd.CHECK_RUN_PATH, checks, [1, 1], [1700000000.0] * 2, dd.CHECK_WINDOW)
    assert [c["check"] for c in json.loads(payload.body)] == ["a", "b"] and payload.points == 2


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, dd.MAX_OBJECT - 200), min_size=1, max_size=14))
def test_service_checks_of_any_size_are_split_under_the_payload_limit(sizes: list[int]) -> None:
    """Checks go uncompressed: however long their messages, each payload's array is within the intake's
    512,000 bytes and every check is in one payload, in order (nine checks of 60,000 characters went in
    one payload of 541,142 bytes, refused whole, an ordinary check with them)."""
    checks = [dd.dumps(dd.service_check(ServiceCheck(f"c{i}", 0, message="m" * n), 1700000000))
              for i, n in enumerate(sizes)]
    payloads = dd.encode(dd.CHECK_RUN_PATH, checks, [1] * len(checks), [1700000000.0] * len(checks), dd.CHECK_WINDOW)
    assert all(p.encoding is None and len(p.body) <= dd.MAX_COMPRESSED for p in payloads)
    assert [c["check"] for p in payloads for c in json.loads(p.body)] == [f"c{i}" for i in range(len(sizes))]
    assert sum(p.points for p in payloads) == len(sizes)


def test_counter_deltas_skip_first_sighting_and_resets() -> None:
    d = CounterDeltas()
    assert d.update("k", 1000.0, now=1.0) is None  # first sighting
    assert d.update("k", 1500.0, now=2.0) == 500.0
    assert d.update("k", 1200.0, now=3.0) is None  # the source restarted
    assert d.update("k", 1300.0, now=4.0) == 100.0
    assert d.update("other", 5.0, now=4.0) is None
    assert d.prune(older_than=4.0) == 0 and d.prune(older_than=4.5) == 2 and len(d) == 0


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=220) | st.text("abcXYZ019_:./- #é", max_size=220))
def test_a_normalised_tag_is_one_the_intake_takes_and_stays_as_it_is(raw: str) -> None:
    tag = dd.normalize_tag(raw)
    assert tag == "" or tag_problem(tag) is None, (raw, tag)
    assert dd.normalize_tag(tag) == tag  # idempotent: the fast path and the slow one agree
    if tag_problem(raw) is None:  # already normal: unchanged
        assert tag == raw


def test_one_tag_per_sidecar_key_after_normalising_the_clients_last() -> None:
    unique = frozenset({"service", "env"})
    # `Service:Mine` and `1service:z` are `service:...` as Datadog stores them: the client's (later) wins
    assert dd.tag_list((("service", "tester"), ("env", "test"), ("Service", "Mine")), unique) == [
        "env:test", "service:mine"]
    assert dd.tag_list((("service", "tester"), ("1service", "z")), unique) == ["service:z"]
    assert dd.tag_list((("service", "tester"), ("#Service", "")), unique) == ["service"]  # bare, as merge_tags
    # a key that is not the sidecar's keeps all its values (Datadog takes several values of a key)
    assert dd.tag_list((("service", "tester"), ("role", "a"), ("Role", "b")), unique) == [
        "service:tester", "role:a", "role:b"]
    # without sidecar keys: every value kept, as before
    assert dd.tag_list((("service", "tester"), ("Service", "Mine"))) == ["service:tester", "service:mine"]
