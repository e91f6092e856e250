"""Datadog's histogram aggregates, computed as the agent does."""

from __future__ import annotations

from array import array

from agent.model import Points
from agent.statsd.summary import summarize


def test_worked_example_values_1_to_10() -> None:
    points = Points(array("d", range(1, 11)), array("d", [1.0] * 10))
    assert summarize(points, 10.0) == [(".max", 10.0), (".median", 5.0), (".avg", 5.5), (".count", 1.0),
                                       (".95percentile", 10.0)]


def test_weights_count_as_repeated_values() -> None:
    # 1 (weight 2), 2 (weight 2), 3 (weight 2) is 1,1,2,2,3,3: median 2, 50th percentile 2, count 6 in 10 s
    points = Points([3.0, 1.0, 2.0], [2.0, 2.0, 2.0])
    assert summarize(points, 10.0, ("max", "min", "median", "avg", "sum", "count", "nonsense"), (0.5, 0.99)) == [
        (".max", 3.0), (".min", 1.0), (".median", 2.0), (".avg", 2.0), (".sum", 12.0), (".count", 0.6),
        (".50percentile", 2.0), (".99percentile", 3.0)]


def test_unweighted_and_weighted_paths_agree() -> None:
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    plain = summarize(Points(values, [1.0] * 6), 2.0, ("max", "min", "median", "avg", "count"), (0.25, 0.75, 0.95))
    # the same values, each sent twice at rate 2 (weight 0.5): the same result
    weighted = summarize(Points(values * 2, [0.5] * 12), 2.0, ("max", "min", "median", "avg", "count"), (0.25, 0.75, 0.95))
    assert plain == weighted == [(".max", 9.0), (".min", 1.0), (".median", 3.0), (".avg", 4.5), (".count", 3.0),
                                 (".25percentile", 2.0), (".75percentile", 7.0), (".95percentile", 9.0)]


def test_timer_values_stay_in_milliseconds_and_empty_points_give_nothing() -> None:
    assert summarize(Points([250.0], [1.0], milliseconds=True), 10.0, ("max",), ()) == [(".max", 250.0)]
    assert summarize(Points([], []), 10.0) == []
