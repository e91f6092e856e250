"""Prometheus text format 0.0.4, rendered fast enough for 100,000 live series.

prometheus_client's `generate_latest` rebuilds, sorts and escapes every label of every sample on every
scrape; with the ten identity labels each series carries, that took ~10 s for 100,000 series here,
past Prometheus's default scrape timeout (bench/metrics_exposition.py). The label block of a series
does not change between scrapes, so it is built once and cached per tag set; a scrape is then one
formatted line per sample. The output is the same as `generate_latest` gives for the sink's collector
(family order, `# HELP`/`# TYPE`, counter `_total` naming, sorted labels, Go float formatting), which a
test checks by parsing both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.utils import floatToGoString

from agent.memory import BURST, release_freed_memory
from agent.model import Kind, Tags

_TYPES = {Kind.COUNTER: "counter", Kind.GAUGE: "gauge", Kind.HISTOGRAM: "histogram"}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float, go: Callable[[float], str] = floatToGoString) -> str:
    """Go's float formatting, as prometheus_client writes it; `repr` is the same below 1e6 (most values)."""
    return repr(value) if -1e16 < value < 1e6 else go(value)


def _counter(pname: str) -> str:
    """`x` -> `x_total`; `x_total` stays (as prometheus_client names counter samples)."""
    return pname if pname.endswith("_total") else pname + "_total"


class TextRenderer:
    def __init__(self, metric_name: Callable[[str], str], labels_of: Callable[[Tags], dict[str, str]]) -> None:
        self.metric_name = metric_name
        self.labels_of = labels_of
        self._labels: dict[Tags, str] = {}  # tags -> `a="x",b="y"` (sorted, escaped)
        self._buckets: dict[Tags, tuple[str, str]] = {}
        self._names: dict[str, str] = {}

    def _label_block(self, tags: Tags) -> str:
        block = self._labels.get(tags)
        if block is None:
            labels = self.labels_of(tags)
            block = self._labels[tags] = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        return block

    def _bucket_blocks(self, tags: Tags) -> tuple[str, str]:
        """The label block split where `le` sorts in: (`a="x",`, `,z="y"`)."""
        split = self._buckets.get(tags)
        if split is None:
            items = sorted(self.labels_of(tags).items())
            before = "".join(f'{k}="{_escape(v)}",' for k, v in items if k < "le")
            after = "".join(f',{k}="{_escape(v)}"' for k, v in items if k > "le")
            split = self._buckets[tags] = (before, after)
        return split

    def render(self, items: Iterable[tuple[str, Tags, Any]]) -> tuple[bytes, int]:
        """(`/metrics` body, number of series skipped for a type conflict) for (name, tags, series) items.

        A series is `.kind` and `.value`: a float, or a histogram with `.buckets()`, `.count`, `.total`.
        """
        families: dict[str, tuple[Kind, str, list[str]]] = {}
        conflicts = 0
        seen = 0
        go = _number
        for name, tags, entry in items:
            seen += 1
            pname = self._names.get(name)
            if pname is None:
                pname = self._names[name] = self.metric_name(name)
            value = entry.value
            is_histogram = not isinstance(value, float)
            kind = Kind.HISTOGRAM if is_histogram else (
                Kind.COUNTER if entry.kind in (Kind.COUNT, Kind.COUNTER) else Kind.GAUGE)
            family = families.get(pname)
            if family is None:
                family = families[pname] = (kind, name, [])
            elif family[0] is not kind:
                conflicts += 1  # two types under one name would make Prometheus reject the scrape
                continue
            lines = family[2]
            block = self._label_block(tags)
            if is_histogram:
                before, after = self._bucket_blocks(tags)
                for bound, cumulative in value.buckets():
                    lines.append(f'{pname}_bucket{{{before}le="{bound}"{after}}} {go(cumulative)}\n')
                labels = f"{{{block}}}" if block else ""
                lines.append(f"{pname}_count{labels} {go(value.count)}\n")
                lines.append(f"{pname}_sum{labels} {go(value.total)}\n")
            elif kind is Kind.COUNTER:
                labels = f"{{{block}}}" if block else ""
                lines.append(f"{_counter(pname)}{labels} {go(value)}\n")
            else:
                labels = f"{{{block}}}" if block else ""
                lines.append(f"{pname}{labels} {go(value)}\n")
        cached = max(len(self._labels), len(self._names))
        if cached > 2 * seen + 1024:  # series came and went: drop the caches
            self._labels.clear()
            self._buckets.clear()
            self._names.clear()
            if cached - seen > BURST:
                release_freed_memory()
        out: list[str] = []
        for pname, (kind, help_text, lines) in families.items():
            fname = _counter(pname) if kind is Kind.COUNTER else pname
            out.append(f"# HELP {fname} {_escape_help(help_text)}\n")
            out.append(f"# TYPE {fname} {_TYPES[kind]}\n")
            out.extend(lines)
        return "".join(out).encode(), conflicts
