"""Property: whatever names, tags and values reach the Prometheus sink, `/metrics` is valid in both formats.

Hypothesis generates hostile batches (names and tags that collide after sanitising, the sidecar's own
prefixes, family suffixes, reserved and identity labels, digits, empty strings, control characters,
lone surrogates, NaN, infinities, overflowing counters and histograms, negative counts) beside a
control counter. Every rendering must parse with prometheus_client's text parser and its strict
OpenMetrics parser, have one family per name and one series per label set, show the control exactly,
and agree between the two formats; all renderings of a run are then checked by `promtool check metrics`
in one call.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families as text_families

from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Kind, Points, Sample
from agent.sinks.prometheus import PrometheusSink, _label, _labels_in_turn, labels_of
from agent.sinks.prometheus_text import LabelSet

CONTROL = Sample("zz.control", 1.0, Kind.COUNT, (("queue", "orders"),), interval=10)
# with an extra tag from TASKLENS_TAGS whose key is no label name as it is
IDENTITY = Identity(service="orders", env="prod", task_id="abc", extra=(("team-name", "core"),))

_NAME_PARTS = ["a.b", "a_b", "a-b", "x", "x_total", "y", "y_count", "y_bucket", "y_sum", "y_created", "_total",
               "tasklens.", "ecs.", "queue.", "ecs_task_info", "1", "9x", ".", "-", ":", "é", "\x00", "\n", " ",
               "le", "quantile", "__", "total", "_"]
_KEYS = ["le", "quantile", "service", "task_id", "env", "exported_service", "__name__", "__x", "a-b", "a_b",
         "team-name", "team_name", "exported_team_name",
         "1a", "", "-", "é", "queue", "a\nb"]
# no `z`: nothing generated can become the control's name
_NO_Z = st.characters(blacklist_categories=(), blacklist_characters="zZ")
names = st.lists(st.one_of(st.sampled_from(_NAME_PARTS), st.text(_NO_Z, max_size=4)), min_size=0, max_size=4).map("".join)
values = st.text(st.characters(blacklist_categories=()), max_size=6)  # surrogates and controls included
tags = st.lists(st.tuples(st.one_of(st.sampled_from(_KEYS), st.text(_NO_Z, max_size=3)), values),
                max_size=4).map(lambda kv: tuple({k: v for k, v in kv}.items()))
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 0.0, -0.0, 1.0]))
points = st.builds(lambda vs, ws, ms: Points(tuple(vs), tuple(ws[:len(vs)] + [1.0] * (len(vs) - len(ws))), ms),
                   st.lists(numbers, min_size=1, max_size=3),
                   st.lists(st.one_of(st.floats(0.001, 1e6), st.sampled_from([1.0, 2.5, 1e300])), max_size=3),
                   st.booleans())
samples = st.one_of(
    st.builds(lambda n, v, t: Sample(n, v, Kind.COUNT, t, interval=10), names, numbers, tags),
    st.builds(lambda n, v, t: Sample(n, v, Kind.GAUGE, t), names, numbers, tags),
    st.builds(lambda n, v, t: Sample(n, v, Kind.COUNTER, t), names, numbers, tags),
    st.builds(lambda n, p, k, t: Sample(n, p, k, t, interval=10), names, points,
              st.sampled_from([Kind.HISTOGRAM, Kind.DISTRIBUTION]), tags),
)
intervals = st.lists(st.lists(samples, max_size=12), min_size=1, max_size=4)

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parsed(families: Iterable[object]) -> Series:
    """Sample -> value, asserting one family per name and one sample per (name, labels)."""
    out: Series = {}
    seen: set[str] = set()
    for family in families:
        assert family.name not in seen, f"two families {family.name!r}"  # type: ignore[attr-defined]
        seen.add(family.name)  # type: ignore[attr-defined]
        for s in family.samples:  # type: ignore[attr-defined]
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"two series {key!r}"
            assert not s.name.startswith("__"), f"a name Prometheus keeps for itself: {s.name!r}"  # `.` as `__total`
            out[key] = s.value
    return out


def check(sink: PrometheusSink, control_value: float) -> tuple[str, str]:
    text = sink.render().decode()
    om = sink.render(openmetrics=True).decode()
    in_text = parsed(text_families(text))
    in_om = parsed(openmetrics_families(om))
    control = ("zz_control_total", (("env", "prod"), ("queue", "orders"), ("service", "orders"), ("task_id", "abc"),
                                    ("team_name", "core")))
    assert in_text[control] == control_value and in_om[control] == control_value
    # the same series in both formats; OpenMetrics rounds histogram counts and may leave out _sum/_count
    histogram = re.compile(r"_(bucket|count|sum)$")
    assert {k for k in in_om if not histogram.search(k[0])} == {k for k in in_text if not histogram.search(k[0])}
    assert {k for k in in_om if k[0].endswith("_bucket")} == {k for k in in_text if k[0].endswith("_bucket")}
    for key, value in in_om.items():
        if not histogram.search(key[0]):
            assert in_text[key] == value or (math.isnan(value) and math.isnan(in_text[key]))
    return text, om


def test_any_input_gives_valid_metrics_in_both_formats() -> None:
    renderings: list[str] = []

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(intervals)
    def one(batches: list[list[Sample]]) -> None:
        hub = Hub(IDENTITY)
        sink = PrometheusSink(hub.metrics, pull=hub.pull, buckets=(-1.0, 0.5, 1e6) if len(batches) == 4 else (0.1, 1.0),
                              identity=lambda: hub.identity.tags, max_label_bytes=4000)
        hub.add_sink(sink)
        for n, batch in enumerate(batches, 1):
            hub.publish(Batch("statsd", [CONTROL] + batch))
            renderings.extend(check(sink, float(n)))
        assert hub.metrics.get("tasklens.sink.errors", sink="prometheus") == 0
        rejected = hub.metrics.total("tasklens.sink.points_rejected")
        assert rejected >= 0 and rejected == int(rejected)

    one()
    promtool(renderings)


def test_a_reserved_name_never_reaches_metrics_from_a_worker() -> None:
    @settings(max_examples=100, deadline=None)
    @given(st.sampled_from(["tasklens", "ecs", "queue"]), st.sampled_from([".", "_", "-", ":", " "]), names)
    def one(prefix: str, sep: str, rest: str) -> None:
        hub = Hub(IDENTITY)
        sink = PrometheusSink(hub.metrics, pull=hub.pull, identity=lambda: hub.identity.tags)
        hub.add_sink(sink)
        hub.publish(Batch("statsd", [Sample(prefix + sep + rest, 12345.5, Kind.GAUGE)]))
        assert b" 12345.5\n" not in sink.render() and b" 12345.5\n" not in sink.render(openmetrics=True)
        assert hub.metrics.get("tasklens.sink.points_rejected", sink="prometheus", reason="reserved_name") == 1

    one()


def test_no_series_of_a_worker_is_named_under_a_reserved_prefix() -> None:
    """The word alone too, of any type: `tasklens` as a counter would be `tasklens_total`, `ecs` as a
    histogram `ecs_bucket`: refused as `reserved_name`, beside any other samples."""
    @settings(max_examples=200, deadline=None)
    @given(st.lists(samples, max_size=6), st.sampled_from(["tasklens", "ecs", "queue", "queue-", "ecs.", "tasklens_"]),
           st.sampled_from([Kind.COUNT, Kind.GAUGE, Kind.COUNTER, Kind.HISTOGRAM]))
    def one(batch: list[Sample], word: str, kind: Kind) -> None:
        hub = Hub(IDENTITY)
        sink = PrometheusSink(hub.metrics, pull=hub.pull, identity=lambda: hub.identity.tags)
        hub.add_sink(sink)
        value = Points((12345.5,), (1.0,), False) if kind is Kind.HISTOGRAM else 12345.5
        hub.publish(Batch("statsd", batch + [Sample(word, value, kind, (("mark", "reserved"),), interval=10)]))
        for body in (sink.render(), sink.render(openmetrics=True)):
            assert b'mark="reserved"' not in body
        assert hub.metrics.get("tasklens.sink.points_rejected", sink="prometheus", reason="reserved_name") >= 1

    one()


def promtool(renderings: list[str]) -> None:
    """All renderings through one `promtool check metrics`, each example's names prefixed to keep them apart."""
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("needs Debian's `prometheus` package for promtool")
    parts = []
    for i, body in enumerate(renderings):
        prefixed = re.sub(r"^(# (?:HELP|TYPE) )?(?=[a-zA-Z_])", rf"\g<1>e{i}_", body, flags=re.MULTILINE)
        parts.append(prefixed.replace("# EOF\n", ""))
    out = subprocess.run([tool, "check", "metrics"], input="".join(parts).encode(), capture_output=True, timeout=60,
                         check=False)
    report = (out.stdout + out.stderr).decode(errors="replace")
    # exit 3 is lint advice only (names without help, non-snake-case names a worker chose); 1 is an error
    assert out.returncode in (0, 3) and "error while linting" not in report, report[:2000]


identities = st.dictionaries(st.sampled_from(["service", "task_id", "env", "team-name", "a-b"]), values, max_size=3)


@given(st.lists(tags, max_size=8), identities)
@settings(max_examples=300, deadline=None)
def test_remembered_pair_labels_give_the_labels_of_a_fresh_look(tag_sets: list, identity: dict) -> None:
    """The sink remembers each tag pair's label (`labels_of(..., known)`): whatever tag sets came
    before, a tag set gets the labels, or the refusal, that a look without memory gives it."""
    known: dict = {}
    for tag_set in tag_sets + tag_sets:  # each again, its pairs remembered by then
        assert_same_labels(labels_of(tag_set, identity, known), labels_of(tag_set, identity))


@given(tags, identities)
@settings(max_examples=500, deadline=None)
def test_a_tag_set_gets_the_labels_of_a_look_pair_by_pair(tag_set: list, identity: dict) -> None:
    """`labels_of` looks at a tag set whose labels are all plain with C-level calls (sort, set) and
    leaves the others to a look pair by pair (`_labels_in_turn`): both give what the pair-by-pair look
    gives for every tag set, the same labels in the same order or the same refusal."""
    tag_set = tuple(tag_set)
    got = labels_of(tag_set, identity)
    assert_same_labels(got, _labels_in_turn([_label(k, v, identity) for k, v in tag_set]))
    if not isinstance(got, str):
        assert [name for name, _ in got.items] == sorted({name for name, _ in got.items})  # sorted, unique


def assert_same_labels(got: LabelSet | str, want: LabelSet | str) -> None:
    """The same refusal, or the same labels in the same order, block, size and split at `le`."""
    if isinstance(want, str):
        assert got == want
    else:
        assert not isinstance(got, str)
        assert (got.items, got.block, got.size, got.around_le()) == \
            (want.items, want.block, want.size, want.around_le())


def test_the_task_value_of_a_renamed_key_is_written_as_its_own_pair_would_be() -> None:
    """A worker's value for an identity key puts the task's value into the series without the task's
    pair: written as that pair's label would be (a lone surrogate as `?`, a bare value as `true`), or
    the block could not be encoded and the batch's other series would be lost with it."""
    for task_value, written in (("a\ud800", "a?"), ("", "true")):
        got = labels_of((("service", "mine"),), {"service": task_value})
        assert not isinstance(got, str)
        assert got.items == (("exported_service", "mine"), ("service", written))
        assert got.block.encode() == f'exported_service="mine",service="{written}"'.encode()
        with_pair = labels_of((("service", task_value), ("service", "mine")), {"service": task_value})
        assert not isinstance(with_pair, str) and with_pair.block == got.block  # the same, pair or not


def test_names_prometheus_writes_itself_never_come_from_a_worker() -> None:
    """A worker's `up:0|g` was served as `up{service=...} 0` and stored by Prometheus: `up == 0` fired for a
    healthy target. The same for `scrape_*` series and names beginning `__`, however written."""
    from agent.sinks.names import PROMETHEUS_OWN

    written = st.tuples(st.sampled_from(sorted(PROMETHEUS_OWN)), st.sampled_from(["_", ".", "-"]))

    @settings(max_examples=150)
    @given(st.one_of(written.map(lambda ns: ns[0].replace("_", ns[1])),
                     st.builds(lambda sep, rest: "_" + sep + rest, st.sampled_from(["_", ".", "-", " "]), names)),
           st.sampled_from([Kind.COUNT, Kind.GAUGE, Kind.COUNTER, Kind.HISTOGRAM]))
    def one(name: str, kind: Kind) -> None:
        hub = Hub(IDENTITY)
        sink = PrometheusSink(hub.metrics, pull=hub.pull, identity=lambda: hub.identity.tags)
        hub.add_sink(sink)
        value = Points((12345.5,), (1.0,), False) if kind is Kind.HISTOGRAM else 12345.5
        hub.publish(Batch("statsd", [Sample(name, value, kind, (("mark", "reserved"),), interval=10),
                                     Sample("jobs.done", 1.0, Kind.GAUGE)]))
        for body in (sink.render(), sink.render(openmetrics=True)):
            assert b'mark="reserved"' not in body and b"\njobs_done{" in body
        assert hub.metrics.get("tasklens.sink.points_rejected", sink="prometheus", reason="reserved_name") == 1

    one()

