"""Set contexts that resolve to one series (docs/statsd.md: a `c:` naming no container of the task, the
task's own `#service`, a tag equal to the container's) are one set: the series counts the distinct
members of them all, not those of the context that came last."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.model import Kind
from agent.statsd.flush import Flusher
from agent.statsd.receive import Aggregator

pytestmark = pytest.mark.usefixtures("both_loops")  # the C loop and the Python loop alike

SETTINGS = settings(max_examples=int(os.environ.get("STATSD_EXAMPLES", "150")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
BASE = (("service", "orders"),)
CONTAINERS = {"c1": (("container_name", "one"),)}
# the heads of one series: without tags, an unknown container, the task's own service, both
ONE_SERIES = [b"|s", b"|s|c:0123456789ab", b"|s|#service:orders", b"|s|#service:orders|c:0123456789ab"]
# the heads of another: a known container, and its tag sent by the line itself
CONTAINER_SERIES = [b"|s|c:c1", b"|s|#container_name:one", b"|s|#container_name:one|c:c1"]


def _sets(lines: list[bytes]) -> dict[frozenset[tuple[str, str]], float]:
    agg = Aggregator()
    for line in lines:
        agg.ingest(line)
    batch = Flusher(10.0).batch(agg.swap(1000.0), CONTAINERS, now=1000.0, base=BASE)
    assert all(s.kind is Kind.GAUGE and s.name == "users" for s in batch.samples)
    out = {frozenset(s.tags): float(s.value) for s in batch.samples}  # type: ignore[arg-type]
    assert len(out) == len(batch.samples), "one sample per series"
    return out


def test_the_reviewers_case_counts_the_union() -> None:
    lines = [b"users:%s|s|c:0123456789ab" % m for m in (b"alice", b"bob", b"carol", b"dave", b"erin")]
    lines += [b"users:%s|s" % m for m in (b"frank", b"grace", b"heidi")]
    assert _sets(lines) == {frozenset(BASE): 8.0}
    lines = [b"users:%s|s|#service:orders" % m for m in (b"a", b"b", b"c", b"d")]
    lines += [b"users:%s|s" % m for m in (b"e", b"f")]
    assert _sets(lines) == {frozenset(BASE): 6.0}


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(ONE_SERIES + CONTAINER_SERIES), st.integers(0, 30)), min_size=1, max_size=60))
def test_a_series_of_several_set_contexts_counts_the_union_of_their_members(lines: list[tuple[bytes, int]]) -> None:
    members: dict[frozenset[tuple[str, str]], set[int]] = {}
    for head, member in lines:
        tags = BASE + (CONTAINERS["c1"] if head in CONTAINER_SERIES else ())
        members.setdefault(frozenset(tags), set()).add(member)
    got = _sets([b"users:m%d%s" % (member, head) for head, member in lines])
    assert got == {tags: float(len(held)) for tags, held in members.items()}


def test_the_union_leaves_each_context_s_own_members_as_received() -> None:
    agg = Aggregator()
    for line in (b"users:a|s", b"users:b|s|c:0123456789ab", b"users:c|s|#service:orders"):
        agg.ingest(line)
    iv = agg.swap(1000.0)
    before = {ctx.container + repr(ctx.tags): set(held) for ctx, held in iv.sets.items()}
    Flusher(10.0).batch(iv, CONTAINERS, now=1000.0, base=BASE)
    assert {ctx.container + repr(ctx.tags): held for ctx, held in iv.sets.items()} == before
