"""The DogStatsD wire format, line by line: every field, every error reason."""

from __future__ import annotations

import pytest

from agent.model import Event, ServiceCheck
from agent.statsd.parser import (MAX_DATAGRAM, REASONS, Head, MetricLine, ParseError, parse, parse_line,
                                 parse_tags)


def metric(line: bytes) -> MetricLine:
    item = parse_line(line)
    assert isinstance(item, MetricLine)
    return item


def reason(line: bytes) -> str:
    with pytest.raises(ParseError) as info:
        parse_line(line)
    return info.value.reason


@pytest.mark.parametrize("raw, kind", [(b"c", "c"), (b"g", "g"), (b"ms", "ms"), (b"h", "h"), (b"d", "d")])
def test_every_numeric_type(raw: bytes, kind: str) -> None:
    m = metric(b"page.views:2.5|" + raw)
    assert m.head == Head("page.views", kind)
    assert m.values == (2.5,)


def test_all_optional_fields_in_any_order() -> None:
    m = metric(b"req:3|c|T1700000000|c:abc123|#env:prod,canary|@0.25|e:it-false,cn-x|card:high")
    assert m.head == Head("req", "c", 0.25, (("env", "prod"), ("canary", "")), "abc123", 1700000000)
    assert m.values == (3.0,)


def test_value_packing_skips_empty_items() -> None:
    assert metric(b"lat:1:2::3|h").values == (1.0, 2.0, 3.0)
    assert metric(b"x:1:2|c").values == (1.0, 2.0)


def test_a_set_member_is_the_whole_text_after_the_first_colon() -> None:
    m = metric(b"users:abc:def|s|#a:b")
    assert m.member == b"abc:def" and m.values == ()


def test_tags_keep_order_and_drop_duplicates() -> None:
    assert parse_tags(b"a:1,b,,a:2,c:x:y") == (("a", "2"), ("b", ""), ("c", "x:y"))


def test_rate_zero_or_out_of_range_counts_as_one() -> None:
    assert metric(b"x:1|c|@0").head.rate == 1.0
    assert metric(b"x:1|c|@1.5").head.rate == 1.0
    assert metric(b"x:1|c|@-0.5").head.rate == 1.0


def test_signed_gauge_values_are_marked_relative() -> None:
    m = metric(b"g:+5:-2:7|g")
    assert m.values == (5.0, -2.0, 7.0) and m.relative == (True, True, False)


def test_trailing_carriage_return_and_empty_lines() -> None:
    assert metric(b"x:1|c|#a:b\r").head.tags == (("a", "b"),)
    assert parse_line(b"") is None and parse_line(b"\r") is None
    parsed = parse(b"x:1|c\r\n\n\ny:2|g\n")
    assert parsed.lines == 2 and [m.head.name for m in parsed.metrics] == ["x", "y"]


@pytest.mark.parametrize("line, expected", [
    (b"novalue", "malformed_line"),
    (b"x:1", "malformed_line"),  # no type
    (b":1|c", "malformed_line"),  # no name
    (b"a|b:1|c", "malformed_line"),  # a `|` in the name: DogStatsD splits on `|` first
    (b"\xff\xfe:1|c", "malformed_line"),  # not UTF-8
    (b"x:1|c|#\xff", "malformed_line"),
    (b"x:abc|c", "bad_value"),
    (b"x:|c", "bad_value"),
    (b"x:1:nan|h", "bad_value"),
    (b"x:inf|g", "bad_value"),
    (b"u:|s", "bad_value"),
    (b"x:1|q", "bad_type"),
    (b"x:1|", "bad_type"),
    (b"x:1|C", "bad_type"),
    (b"x:1|c|@abc", "bad_rate"),
    (b"x:1|c|@nan", "bad_rate"),
    (b"x:1|c|Tabc", "bad_timestamp"),
    (b"x:1|c|T-5", "bad_timestamp"),
    (b"x:1|c|T", "bad_timestamp"),
    (b"x" * 201 + b":1|c", "too_long"),
    (b"x:1|c|#" + b"k:" + b"v" * 199, "too_long"),
    (b"_e{5,4}:title|tex", "bad_event"),
    (b"_e{x,4}:title|text", "bad_event"),
    (b"_e{0,4}:|text", "bad_event"),
    (b"_e{5,4}:title|text|d:yesterday", "bad_event"),
    (b"_e{5,4}:titletext", "bad_event"),
    (b"_sc|svc|4", "bad_service_check"),
    (b"_sc||0", "bad_service_check"),
    (b"_sc|svc", "bad_service_check"),
    (b"_sc|svc|0|d:now", "bad_service_check"),
])
def test_each_error_reason(line: bytes, expected: str) -> None:
    assert expected in REASONS
    assert reason(line) == expected


def test_limits_are_inclusive() -> None:
    assert metric(b"x" * 200 + b":1|c").head.name == "x" * 200
    assert metric(b"x:1|c|#k:" + b"v" * 198).head.tags == (("k", "v" * 198),)


def test_unknown_fields_are_ignored() -> None:
    assert metric(b"x:1|c|x:whatever|zzz||#a:b").head == Head("x", "c", tags=(("a", "b"),))


def test_event_with_every_field() -> None:
    title, text = "Déploy", "line1\\nline2|still text"
    raw = f"_e{{{len(title.encode())},{len(text.encode())}}}:{title}|{text}|d:1700000000|h:host1|k:key|p:low|s:jenkins|t:warning|#a:b,c|c:abc".encode()
    event, container = parse_line(raw)  # type: ignore[misc]
    assert event == Event("Déploy", "line1\nline2|still text", (("a", "b"), ("c", "")), 1700000000.0, "host1",
                          "key", "low", "jenkins", "warning")
    assert container == "abc"


def test_minimal_event_and_unknown_priority() -> None:
    event, container = parse_line(b"_e{1,0}:t||p:urgent")  # type: ignore[misc]
    assert event == Event("t", "") and container == ""


def test_service_check_message_is_last_and_may_hold_bars() -> None:
    check, container = parse_line(b"_sc|db.up|2|d:1700000000|h:h1|#a:b|c:abc|m:down | see runbook\\nnow")  # type: ignore[misc]
    assert check == ServiceCheck("db.up", 2, (("a", "b"),), 1700000000.0, "h1", "down | see runbook\nnow")
    assert container == "abc"


def test_a_bad_line_never_spoils_the_others() -> None:
    parsed = parse(b"a:1|c\nbad\nb:2|q\n_sc|x|9\nc:3|g\n_e{1,1}:t|x\n_sc|ok|0")
    assert [m.head.name for m in parsed.metrics] == ["a", "c"]
    assert dict(parsed.errors) == {"malformed_line": 1, "bad_type": 1, "bad_service_check": 1}
    assert len(parsed.events) == 1 and len(parsed.service_checks) == 1
    assert parsed.lines == 7


def test_a_datagram_over_64_kib_is_rejected_whole() -> None:
    parsed = parse(b"x:1|c\n" * (MAX_DATAGRAM // 6 + 1))
    assert parsed.metrics == [] and dict(parsed.errors) == {"too_long": 1}


@pytest.mark.parametrize("line, reason", [
    (b"a:1|c|T" + b"9" * 5000, "bad_timestamp"),  # int() of over 4,300 digits raises ValueError
    (b"_e{1,1}:a|b|d:" + b"9" * 400, "bad_event"),  # float() of that many digits: OverflowError
    (b"_sc|s|0|d:" + b"9" * 400, "bad_service_check"),
    (b"_e{" + b"9" * 5000 + b",1}:a|b", "bad_event"),
])
def test_numbers_of_absurd_length_are_parse_errors(line: bytes, reason: str) -> None:
    parsed = parse(line + b"\nok:1|c")
    assert dict(parsed.errors) == {reason: 1} and [m.head.name for m in parsed.metrics] == ["ok"]
