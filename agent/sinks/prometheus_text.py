"""`/metrics` in the Prometheus text format 0.0.4 and in OpenMetrics 1.0, fast with 100,000 series.

prometheus_client's encoders rebuild, sort and escape every label of every sample on every scrape;
with the ten identity labels each series carries, that took ~10 s for 100,000 series here, past
Prometheus's default scrape timeout (bench/metrics_exposition.py). The label block of a series does
not change between scrapes, so it is built once per tag set (`LabelSet`); a scrape is then one
formatted line per sample.

The families handed in are already valid (prometheus.py checks every point when it arrives): unique
family names, one series per label block. What differs between the two formats is handled here:

| | text 0.0.4 | OpenMetrics |
|---|---|---|
| counter family | `# TYPE x_total counter` | `# TYPE x counter` |
| histogram bucket and `_count` values | the weighted counts as they are | rounded to integers (the format requires it) |
| histogram `_sum` below zero, or a negative bucket bound | written | `_sum` and `_count` left out (the format forbids them) |
| end | | `# EOF` |
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from prometheus_client.utils import floatToGoString

from agent.model import KIND_HISTOGRAM, Kind

_TEXT = itemgetter(2)  # of a label (`LabelSet`)
_TYPES = {Kind.COUNTER: "counter", Kind.GAUGE: "gauge", Kind.HISTOGRAM: "histogram"}
go_float: Callable[[float], str] = floatToGoString  # typed: prometheus_client's is not


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:  # rarely: three tests cost less than three calls
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")  # the same in both formats (no `"` in HELP)


def _number(value: float, go: Callable[[float], str] = floatToGoString) -> str:
    """Go's float formatting, as prometheus_client writes it; `repr` is the same below 1e6 (most values)."""
    return repr(value) if -1e16 < value < 1e6 else go(value)


def label_text(name: str, value: str) -> str:
    """A label as written in a series' label block: `name="value"`, escaped."""
    return f'{name}="{_escape(value)}"'


# a label in a block, as `label_text` writes it: a name (never `=`, `,` or `"`), its value escaped
_LABEL = re.compile(r'([^=,"]+)="((?:[^"\\]|\\.)*)"', re.DOTALL)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


def _unescaped(match: re.Match[str]) -> str:
    return "\n" if match[1] == "n" else match[1]  # `\\` is `\`, `\"` is `"` (what `_escape` makes)


class LabelSet:
    """The labels of a series: sorted, escaped once, shared by every series with the same tags. Made
    from (name, value, label_text) of each label, sorted by name: a label's text is made once per tag
    pair (`labels_of` remembers them), not once per series. Only the block is kept: the labels of a
    series whose pairs are its own (a storm's `request_id:<id>`, or a hundred tags a series) would
    hold their text twice; `items` and `around_le`, needed once a series if at all, read it back."""

    __slots__ = ("block", "size", "_around_le")

    def __init__(self, labels: list[tuple[str, str, str]]) -> None:
        self.block = ",".join(map(_TEXT, labels))
        self.size = (len(self.block) if self.block.isascii() else len(self.block.encode())) + 2  # with the braces
        self._around_le: tuple[str, str] | None = None

    def _labels(self) -> list[tuple[str, str, str]]:
        """(name, value, label_text) of each label, read back from the block."""
        return [(m[1], _UNESCAPE.sub(_unescaped, m[2]), m[0]) for m in _LABEL.finditer(self.block)]

    @property
    def items(self) -> tuple[tuple[str, str], ...]:
        """(name, value) of each label, sorted by name."""
        return tuple((name, value) for name, value, _ in self._labels())

    def around_le(self) -> tuple[str, str]:
        """The block split where `le` sorts in, for bucket lines: (`a="x",`, `,z="y"`). Made when a
        histogram's buckets are first rendered: most series are not histograms."""
        if self._around_le is None:
            labels = self._labels()
            self._around_le = ("".join([text + "," for name, _, text in labels if name < "le"]),
                               "".join(["," + text for name, _, text in labels if name > "le"]))
        return self._around_le

    def cost(self, kind: Kind, buckets: int) -> int:
        """Bytes of label text this series puts into `/metrics` (counted against the limit)."""
        lines = buckets + 3 if kind is KIND_HISTOGRAM else 1
        return self.size * lines


@dataclass(slots=True)
class Family:
    name: str  # the OpenMetrics family name (a counter's without `_total`)
    kind: Kind  # COUNTER, GAUGE or HISTOGRAM
    help: str
    series: list[Any] = field(default_factory=list)  # each with `.value` and `.labels`


# Lines rendered before they are joined and encoded into the body: the body is built as bytes a piece at
# a time (~1 MiB with 4 KB label blocks). Held whole as lines, then as one str, then encoded, a rendering
# took 2x its body beyond it at its peak (~145 MB with the label bytes full: a 70 MB body)
LINES_PER_PIECE = 256


class Renderer:
    def __init__(self, buckets: Iterable[float]) -> None:
        self.bounds = tuple(buckets)
        self.le = [go_float(b) for b in self.bounds] + ["+Inf"]
        # OpenMetrics forbids `_sum` next to a negative bucket bound
        self.negative_bounds = any(b < 0 for b in self.bounds)

    def render(self, families: Iterable[Family], openmetrics: bool) -> bytes:
        """The families, encoded, without the OpenMetrics `# EOF` (the caller joins parts).

        Written into a BytesIO a piece at a time: its buffer grows in place, and `getvalue` hands it
        over without a copy, so the body is held once, plus a piece's lines."""
        body = io.BytesIO()
        out: list[str] = []
        add = out.append
        go = _number
        per_histogram = max(1, LINES_PER_PIECE // (len(self.le) + 2))  # its buckets, `_count` and `_sum`
        for family in families:
            name, kind = family.name, family.kind
            entries = family.series
            if not entries:
                continue
            fname = name + "_total" if kind is Kind.COUNTER and not openmetrics else name
            add(f"# HELP {fname} {_escape_help(family.help)}\n")
            add(f"# TYPE {fname} {_TYPES[kind]}\n")
            sample = name + "_total" if kind is Kind.COUNTER else name
            step = per_histogram if kind is Kind.HISTOGRAM else LINES_PER_PIECE  # series a piece
            for start in range(0, len(entries), step):
                piece = entries[start:start + step] if len(entries) > step else entries
                if kind is Kind.HISTOGRAM:
                    self._histograms(name, piece, openmetrics, add)
                else:
                    for entry in piece:
                        block = entry.labels.block
                        add(f"{sample}{{{block}}} {go(entry.value)}\n" if block else f"{sample} {go(entry.value)}\n")
                if len(out) >= LINES_PER_PIECE:
                    body.write("".join(out).encode())
                    out.clear()
        body.write("".join(out).encode())
        return body.getvalue()

    def _histograms(self, name: str, entries: list[Any], openmetrics: bool, add: Callable[[str], None]) -> None:
        go = _number
        le = self.le
        for entry in entries:
            h = entry.value
            labels = entry.labels
            before, after = labels.around_le()
            count, total = h.count, h.total
            cumulative = h.cumulative()
            if openmetrics:  # integer counts; rounding a non-decreasing list keeps it non-decreasing
                cumulative = [float(round(c)) for c in cumulative]
                count = cumulative[-1]
            for bound, value in zip(le, cumulative):
                add(f'{name}_bucket{{{before}le="{bound}"{after}}} {go(value)}\n')
            if openmetrics and (total < 0 or self.negative_bounds or not math.isfinite(total)):
                continue
            block = f"{{{labels.block}}}" if labels.block else ""
            add(f"{name}_count{block} {go(count)}\n")
            add(f"{name}_sum{block} {go(total)}\n")
