"""Datadog's histogram aggregates from one interval's points: `.max`, `.median`, `.avg`, `.count`,
`.95percentile` ... computed exactly as the Datadog agent does, for the Datadog sink.

Values are sorted; a sample of weight `w` (1 / sample rate) counts `w` times. The median is the first
value whose cumulative weight exceeds `floor((count - 1) / 2)`, the P-th percentile the first whose
cumulative weight exceeds `floor((P * count - 1) / 100)`; `.count` is a rate: weights per second.
Worked example (values 1..10, rate 1, 10 s): max 10, median 5, avg 5.5, count 1.0, 95percentile 10.
Timer values stay in milliseconds, as the agent sends them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from agent.model import Points

AGGREGATES = ("max", "min", "median", "avg", "sum", "count")


def _first_above(ordered: Sequence[tuple[float, float]], target: float) -> float:
    """The first value whose cumulative weight exceeds `target` (values sorted, with weights)."""
    cumulative = 0.0
    for value, weight in ordered:
        cumulative += weight
        if cumulative > target:
            return value
    return ordered[-1][0]


def _rank(ordered: Sequence[float], target: float) -> float:
    """The same with every weight 1: the value at index `target`."""
    return ordered[min(max(int(target), 0), len(ordered) - 1)]


def summarize(points: Points, interval: float, aggregates: Sequence[str] = ("max", "median", "avg", "count"),
              percentiles: Sequence[float] = (0.95,)) -> list[tuple[str, float]]:
    """[(".max", 10.0), (".median", 5.0), ..., (".95percentile", 10.0)]; [] when there are no points.

    `percentiles` are fractions (0.95); unknown aggregate names are skipped.
    """
    values, weights = points.values, points.weights
    if not values:
        return []
    weighted = len(weights) != len(values) or weights.count(1.0) != len(values)
    if weighted:
        count = math.fsum(weights)
        total = math.fsum(v * w for v, w in zip(values, weights))
        pairs = sorted(zip(values, weights))
        low, high = pairs[0][0], pairs[-1][0]

        def at(target: float) -> float:
            return _first_above(pairs, target)
    else:
        count = float(len(values))
        total = math.fsum(values)
        ordered = sorted(values)
        low, high = ordered[0], ordered[-1]

        def at(target: float) -> float:
            return _rank(ordered, target)
    out: list[tuple[str, float]] = []
    for name in aggregates:
        if name == "max":
            out.append((".max", high))
        elif name == "min":
            out.append((".min", low))
        elif name == "median":
            out.append((".median", at(math.floor((count - 1) / 2))))
        elif name == "avg":
            out.append((".avg", total / count))
        elif name == "sum":
            out.append((".sum", total))
        elif name == "count":
            out.append((".count", count / interval))
    for p in sorted(percentiles):
        percent = round(p * 100, 6)
        target = math.floor((percent * count - 1) / 100)
        out.append((f".{percent:g}percentile", at(target)))
    return out
