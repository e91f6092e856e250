"""`TASKLENS_REMOTE_WRITE_METRICS`: a selector (an fnmatch glob) pushes a series when it matches any
name that series shows on `/metrics`: its family's (`# TYPE`) and each of its samples'.

An outside tester's finding: a histogram `lat` was selected by `lat` only, never by `lat_bucket`,
`lat_sum`, `lat_count` or `lat_*`, the names `/metrics` shows; a counter `jobs` by `jobs_total` only,
not by its family `jobs`."""

from __future__ import annotations

import fnmatch
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Kind, Points, Sample
from agent.sinks.prometheus import PrometheusSink
from agent.sinks.remote_write import RemoteWriteSink
from tests.support import remote_write_series

pytest.importorskip("cramjam")

PROBE = ("probe", "x1")  # the one series under test, told apart from the sidecar's own


def value_of(kind: Kind) -> object:
    return Points((0.2, 3.0), (1.0, 2.0)) if kind is Kind.HISTOGRAM else 5.0


def shown_on_metrics(name: str, kind: Kind) -> set[str]:
    """The names the probe series shows on `/metrics`, read from the Prometheus sink's own text."""
    hub = Hub(Identity(service="s"))
    sink = PrometheusSink(hub.metrics, pull=hub.pull, identity=lambda: hub.identity.tags)
    hub.add_sink(sink)
    hub.publish(Batch("statsd", [Sample(name, value_of(kind), kind, (PROBE,), interval=10.0)]))
    out: set[str] = set()
    for family in text_string_to_metric_families(sink.render().decode()):
        samples = {s.name for s in family.samples if s.labels.get(PROBE[0]) == PROBE[1]}
        if samples:
            out |= samples | {family.name}
    return out


def pushed(name: str, kind: Kind, selectors: tuple[str, ...]) -> set[str]:
    """The `__name__`s of the probe series remote_write pushes with these selectors."""
    config = replace(Config(), remote_write_url="http://127.0.0.1:9/api/v1/write", remote_write_metrics=selectors)
    hub = Hub(Identity(service="s"))
    sink = RemoteWriteSink(config, hub)
    hub.add_sink(sink)
    hub.publish(Batch("statsd", [Sample(name, value_of(kind), kind, (PROBE,), interval=10.0)]))
    return {labels["__name__"] for labels, _ in remote_write_series(sink.flush()) if labels.get(PROBE[0]) == PROBE[1]}


KINDS = {"counter": Kind.COUNT, "gauge": Kind.GAUGE, "histogram": Kind.HISTOGRAM}
names = st.from_regex(r"[a-z][a-z0-9]{0,6}([._][a-z0-9]{1,6}){0,2}(_total|_count|_sum|_bucket)?", fullmatch=True)


@st.composite
def selectors_for(draw: st.DrawFn, shown: list[str]) -> tuple[str, ...]:
    """Globs drawn around the names shown: one of them, a prefix or a suffix of one with `*`, a `?` in
    place of a character, or a name that is not shown."""
    def one() -> str:
        base = draw(st.sampled_from(shown))
        cut = draw(st.integers(0, len(base)))
        return draw(st.sampled_from([base, base[:cut] + "*", "*" + base[cut:], base[:cut] + "?" + base[cut + 1:],
                                     base + "x", "x" + base, base + "_bucket", base + "_total"]))
    return tuple(draw(st.lists(st.builds(one), min_size=1, max_size=3)))


@settings(max_examples=200, deadline=None)
@given(name=names, kind=st.sampled_from(sorted(KINDS)), data=st.data())
def test_a_selector_pushes_a_series_when_it_matches_any_name_metrics_shows(name: str, kind: str, data) -> None:  # type: ignore[no-untyped-def]
    shown = shown_on_metrics(name, KINDS[kind])
    assume(shown)  # a name /metrics refuses (reserved) is pushed by no selector either
    selectors = data.draw(selectors_for(sorted(shown)))
    wanted = any(fnmatch.fnmatchcase(n, g) for n in shown for g in selectors)
    got = pushed(name, KINDS[kind], selectors)
    all_names = pushed(name, KINDS[kind], ("*",))
    assert got == (all_names if wanted else set()), (shown, selectors)
    assert all_names <= shown  # and pushed under the names /metrics shows


@pytest.mark.parametrize(("selector", "kind"), [
    ("lat", Kind.HISTOGRAM), ("lat_bucket", Kind.HISTOGRAM), ("lat_sum", Kind.HISTOGRAM),
    ("lat_count", Kind.HISTOGRAM), ("lat_*", Kind.HISTOGRAM),
    ("jobs", Kind.COUNT), ("jobs_total", Kind.COUNT), ("jobs*", Kind.COUNT),
])
def test_the_testers_selectors(selector: str, kind: Kind) -> None:
    name = "lat" if kind is Kind.HISTOGRAM else "jobs"
    expected = {"lat_bucket", "lat_sum", "lat_count"} if kind is Kind.HISTOGRAM else {"jobs_total"}
    assert pushed(name, kind, (selector,)) == expected


def test_a_selector_of_another_name_pushes_nothing() -> None:
    assert pushed("lat", Kind.HISTOGRAM, ("lat_total", "jobs_bucket")) == set()
    assert pushed("jobs", Kind.COUNT, ("jobs_count", "jobs_bucket")) == set()
