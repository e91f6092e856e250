"""`model.Points`: one interval's histogram values, sorted when made so that every sink reads buckets,
counts and ranks in O(log n). Checked against the value-by-value definitions the sinks used before, for
any values and sample rates, in C (`_fast.order`) and in Python (`model._order`) alike."""

from __future__ import annotations

import bisect
import math
import threading
import time
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import model
from agent.model import Points, Repeated
from agent.statsd import _fast

BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
values_st = st.lists(st.one_of(st.floats(-1e6, 1e6), st.sampled_from([0.0, -0.0, 1.0, 5.0, 0.005, 10.0])),
                     min_size=1, max_size=300)
RATES = [1.0, 0.5, 0.1, 0.3, 0.25, 0.001]
rates_st = st.sampled_from(RATES)


def weighted(draw_values: list[float], rates: list[float]) -> tuple[list[float], list[float]]:
    return draw_values, [1.0 / rates[i % len(rates)] for i in range(len(draw_values))]


def naive_buckets(values: list[float], weights: list[float], bounds: tuple[float, ...], scale: float) -> list[float]:
    counts = [0.0] * (len(bounds) + 1)
    for v, w in zip(values, weights):
        counts[bisect.bisect_left(bounds, v * scale)] += w
    return counts


def naive_rank(values: list[float], weights: list[float], target: float) -> float:
    pairs = sorted(zip(values, weights))
    running = 0.0
    for value, weight in pairs:
        running += weight
        if running > target:
            return value
    return pairs[-1][0]


@given(values_st, st.lists(rates_st, min_size=1, max_size=3), st.booleans())
def test_buckets_counts_totals_and_ranks_match_the_value_by_value_definitions(
        values: list[float], rates: list[float], milliseconds: bool) -> None:
    values, weights = weighted(values, rates)
    points = Points(list(values), list(weights), milliseconds)
    assert points.valid
    scale = 0.001 if milliseconds else 1.0
    count = sum(weights)
    assert math.isclose(points.count, count, rel_tol=1e-12)
    assert math.isclose(points.total, sum(v * w for v, w in zip(values, weights)), rel_tol=1e-9, abs_tol=1e-6)
    for got, want in zip(points.buckets(BOUNDS, scale), naive_buckets(values, weights, BOUNDS, scale), strict=True):
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6)
    assert sorted(points.values) == list(points.values) == sorted(values)
    for target in (0.0, math.floor((count - 1) / 2), math.floor((95 * count - 1) / 100), count - 1, count):
        assert points.at_rank(target) == naive_rank(values, weights, target)


@given(values_st, st.lists(rates_st, min_size=1, max_size=3), st.integers(1, 50))
def test_a_spread_keeps_the_shape_of_the_distribution(values: list[float], rates: list[float], n: int) -> None:
    values, weights = weighted(values, rates)
    points = Points(values, weights)
    spread = points.spread(n)
    assert len(spread) == n and spread == sorted(spread) and set(spread) <= set(values)
    for x in values:  # at every value, the spread's share at or below it is the true one within 1/n
        share = bisect.bisect_right(spread, x) / n
        assert abs(share - points.weight_upto(x) / points.count) <= 1 / n + 1e-9


@given(values_st, st.lists(rates_st, min_size=1, max_size=3), st.booleans())
def test_the_c_and_python_orderings_agree_exactly(values: list[float], rates: list[float], one: bool) -> None:
    values, weights = weighted(values, rates)
    outs = []
    for order in (_fast.order, model._order):
        v, w = array("d", values), array("d", weights)
        total, valid, cumulative = order(v, weights[0] if one else w)
        outs.append((total, valid, list(v), list(w), None if cumulative is None else bytes(cumulative)))
    assert outs[0] == outs[1]
    assert outs[0][4] is None if one else outs[0][4] is not None


@given(values_st, rates_st)
def test_values_of_one_sample_rate_need_no_array_of_weights(values: list[float], rate: float) -> None:
    weight = 1.0 / rate
    one = Points(list(values), Repeated(weight, len(values)))
    many = Points(list(values), [weight] * len(values))
    assert one.valid and many.valid and list(one.values) == list(many.values)
    # an integer weight (rates 1, 0.5, 0.1 ...) needs no array; others (1 / 0.3) take one, for exact ranks
    assert isinstance(one.cumulative, Repeated) is weight.is_integer() and not isinstance(many.cumulative, Repeated)
    assert list(one.weights) == list(many.weights)
    for got, want in zip(one.cumulative, many.cumulative, strict=True):
        assert math.isclose(got, want, rel_tol=1e-12)
    assert math.isclose(one.total, many.total, rel_tol=1e-9, abs_tol=1e-6)
    assert one.buckets(BOUNDS) == pytest.approx(many.buckets(BOUNDS), rel=1e-9, abs=1e-6)
    count = many.count
    for target in (0.0, math.floor((count - 1) / 2), math.floor((95 * count - 1) / 100), count - 1, count):
        # exactly the value-by-value rule, whatever the weight (1 / 0.3 is not exact as (i + 1) * w)
        assert one.at_rank(target) == many.at_rank(target) == naive_rank(values, [weight] * len(values), target)


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=20),
       st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=20))
def test_anything_not_finite_or_not_positive_is_invalid_and_left_as_it_was(values: list[float],
                                                                            weights: list[float]) -> None:
    weights = (weights * len(values))[:len(values)]
    should = all(map(math.isfinite, values)) and all(math.isfinite(w) and w > 0 for w in weights)
    for order in (_fast.order, model._order):
        v, w = array("d", values), array("d", weights)
        total, valid, cumulative = order(v, w)
        assert valid is should
        if not valid:
            assert math.isnan(total) and cumulative is None
            assert [x for x in v if x == x] == [x for x in values if x == x]  # untouched (NaN != NaN)
    assert Points(values, weights).valid is should
    assert not Points((1.0, 2.0), (1.0,)).valid  # one weight per value


def test_ordering_millions_of_values_leaves_the_interpreter_to_other_threads() -> None:
    values = array("d", [float((i * 7919) % 1_000_003) for i in range(4_000_000)])
    weights = array("d", [1.0, 2.0]) * 2_000_000  # two rates: the sort of pairs, the slower one
    ticks = 0
    done = threading.Event()

    def tick() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    time.sleep(0.05)
    before = ticks
    started = time.perf_counter()
    points = Points(values, weights)  # the sort runs in C without the GIL
    took = time.perf_counter() - started
    after = ticks
    done.set()
    ticker.join()
    assert points.valid and points.count == 6_000_000
    assert list(points.values[:9]) == [0.0] * 4 + [1.0] * 4 + [2.0]  # each value 4 times: i and i + 1,000,003 ...
    # the ticker kept running while the sort did: at least a tick every few of its milliseconds
    assert after - before >= took / 0.02, (after - before, took)


@pytest.mark.parametrize("limit", [1, 7, 10_000])
def test_buckets_ranks_and_spreads_of_a_flood(limit: int) -> None:
    points = Points(array("d", range(2_000_000)), array("d", [1.0]) * 2_000_000, milliseconds=True)
    assert points.buckets(BOUNDS, 0.001)[-1] == 2_000_000 - 10_001  # values above 10 s
    assert points.at_rank(999_999) == 999_999.0
    assert len(points.spread(limit)) == limit
