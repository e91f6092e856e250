"""CloudWatch Embedded Metric Format sink: chosen metrics as EMF JSON lines on stdout, which the task's
`awslogs` log group turns into CloudWatch metrics (no API calls, no credentials in the sidecar).

Enabled by `TASKLENS_CLOUDWATCH=emf`. Every `TASKLENS_CLOUDWATCH_INTERVAL` seconds (default 60) it writes
one document per dimension set:
- metrics: the series whose Prometheus-style name (as on `/metrics`: `queue_depth`, counters `*_total`)
  matches one of the `TASKLENS_CLOUDWATCH_METRICS` globs; the EMF metric name is that name;
- dimensions: the series' tags restricted to `TASKLENS_CLOUDWATCH_DIMENSIONS` (default
  `ecs_cluster,service,queue`), in that order; series with the same dimension values share a document.
  A worker's tag that gives an identity key another value (`service:billing`) is `exported_service`,
  the key keeping the task's value, as on `/metrics`;
- values: a gauge's last value; a counter's increase over the interval (a StatsD count's sum, a
  cumulative counter's difference), since CloudWatch aggregates per period; several series of one name
  in a document (two containers) give an array of values, as EMF allows;
- `_aws.Timestamp`: set explicitly to the middle of the interval the values describe, so that a
  60-second record lands inside the minute it covers, not on the next minute's boundary;
- the task heartbeat (`tasklens_scaling_task_heartbeat`): only in the first record stamped in each
  wall-clock minute, whatever the interval, since its one-minute SampleCount is the running-task count
  the scaling policy divides by (docs/scaling.md). An interval over 60 s, which would leave minutes
  without one, is refused while the heartbeat is selected.
Limits (EMF specification): at most 100 metrics per directive and 100 values per metric (larger
documents are split), a document at most 256 KB (the older event limit; today's is 1 MB). The settings
are checked when loaded (agent/config.py: at most 9 dimension keys, each once, not `_aws`). A point
CloudWatch would refuse, or that would take another's place at the record's root, is dropped alone and
counted in `tasklens.sink.points_rejected{sink="emf"}` by reason, so the rest of its record still counts:
- `reserved_name`: its metric name is `_aws` or one of the dimension keys;
- `invalid_name`: its metric name is over 255 characters;
- `invalid_dimension`: a dimension value that is not 1 to 1,024 ASCII characters without control
  characters and not only spaces (CloudWatch API reference, Dimension). Not repaired: a rewritten
  value could merge two queues into one metric;
- `non_finite`: a counter's increase that overflowed;
- `duplicate_series`: a second series that `/metrics` shows as the same one (`jobs.done` and `jobs_done`
  with the same tags: one name, one label set); the first keeps it, as there.
Histograms are not sent (CloudWatch would need every value); use remote_write or OTLP for them.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import math
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from agent.config import EMF_MAX_NAME, EMF_ROOT, Config, ConfigError, is_cloudwatch_text, number_text
from agent.hub import Hub
from agent.logs import RateLimitedLog
from agent.model import Batch, Kind, Tags
from agent.scaling import HEARTBEAT
from agent.sinks.cumulative import CumulativeState, Histogram, Key, Series
from agent.sinks.deltas import CounterDeltas
from agent.sinks.names import counter_name, metric_name, shown_names
from agent.sinks.prometheus import labels_of
from agent.sinks.push import next_tick, stepped_back

NAME = "emf"
MAX_METRICS = 100
MAX_VALUES = 100
MAX_DIMENSION_VALUE = 1024
MAX_BYTES = 256 * 1024
# CloudWatch refuses values "either too small or too large" (PutMetricData's MetricDatum): -2^360 to 2^360
# now, 8.515920e-109 to 1.174271e+108 in magnitude in earlier text; the narrower range is kept
SMALLEST, LARGEST = 8.515920e-109, 1.174271e+108
_UNITS = (("_percent", "Percent"), ("_bytes", "Bytes"), ("_seconds", "Seconds"), ("_total", "Count"))


def unit_of(name: str) -> str:
    for suffix, unit in _UNITS:
        if name.endswith(suffix):
            return unit
    return "None"


def prometheus_name(name: str, kind: Kind) -> str:
    pname = metric_name(name)
    return counter_name(pname) if kind is Kind.COUNTER else pname


def shown_labels(tags: Tags, identity: dict[str, str] | None) -> object:
    """A series' labels as `/metrics` shows them (`labels_of`; `identity`: the task's tags, for a worker's
    series): two series with the same name and labels are one series there. The tags themselves when
    `/metrics` shows none."""
    labels = labels_of(tags, identity)
    return tags if isinstance(labels, str) else labels.block


# CloudWatch counts a service's tasks as the SampleCount of this metric over one minute
TASK_HEARTBEAT = metric_name(HEARTBEAT)


def heartbeat_fits(config: Config) -> bool:
    """Whether the records can carry the heartbeat: one a minute needs a record every minute. Over a
    minute, minutes without a record would count no task (the scale-from-zero alarm fires), and a
    heartbeat stamped back into each minute would arrive up to an interval late, after alarms read it.
    So it is left out, with a warning (`check`, the log), when only the default selection names it, and
    the interval is refused when the user's selection does (even one written out equal to the default):
    `check` and the sink both ask."""
    interval = config.cloudwatch_interval
    if interval <= 60 or not any(fnmatch.fnmatchcase(TASK_HEARTBEAT, p) for p in config.cloudwatch_metrics):
        return True
    if config.chosen("cloudwatch_metrics"):
        raise ConfigError(
            f"{config.where('cloudwatch_interval')}={number_text(interval)} is invalid: expected at most "
            f"60 seconds while {TASK_HEARTBEAT} is exported (CloudWatch counts the running tasks as its "
            f"datapoints per minute); leave it out of {config.where('cloudwatch_metrics')} for a longer interval")
    return False


HEARTBEAT_LEFT_OUT = (f"{TASK_HEARTBEAT} is left out of the EMF records: one a minute needs an interval of at most "
                      "60 seconds (scaling on the task count it gives needs it)")


class EmfSink:
    name = NAME

    def __init__(self, config: Config, hub: Hub, *, stream: IO[str] | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.hub = hub
        self.metrics = hub.metrics
        self.namespace = config.cloudwatch_namespace
        self.patterns = config.cloudwatch_metrics
        self.dimensions = config.cloudwatch_dimensions
        # names a metric may not take: the record's root holds `_aws` and the dimensions beside the metrics
        self.reserved = frozenset((EMF_ROOT, *self.dimensions))
        self.interval = config.cloudwatch_interval
        self.stream = stream
        self.wall = wall
        # a long TTL: a series is sent while it lives; snapshots end theirs themselves
        self.state = CumulativeState(NAME, hub.metrics, (), max(config.series_ttl, 2 * self.interval), wall=wall)
        self._deltas = CounterDeltas()
        self._selected: dict[tuple[str, Kind], bool] = {}
        self._log = RateLimitedLog(interval=60.0)
        self._heartbeat_minute = -1  # the wall-clock minute of the last heartbeat written
        self._heartbeat = heartbeat_fits(config)  # when not, `check` and `run` warn (cli.validate)

    def accept(self, batch: Batch) -> None:
        self.state.accept(batch)

    def selected(self, name: str, kind: Kind) -> bool:
        """Is this series sent (`TASKLENS_CLOUDWATCH_METRICS`)? When a glob matches any name it shows on
        `/metrics` (`shown_names`: a counter `jobs` by `jobs` or `jobs_total`), as remote_write selects."""
        hit = self._selected.get((name, kind))
        if hit is None:
            if len(self._selected) > 100_000:
                self._selected.clear()
            names = shown_names(metric_name(name), kind)
            hit = self._selected[(name, kind)] = any(fnmatch.fnmatchcase(n, p) for p in self.patterns for n in names)
        return hit

    # -- one emission --------------------------------------------------------------------------------

    def documents(self, boundary: float, since: float | None = None) -> list[dict[str, Any]]:
        """The EMF documents for the interval from `since` (one interval before, by default) to `boundary`
        (wall clock, seconds)."""
        # explicitly inside the period the values describe (its middle), never on the next boundary: the
        # final record, a moment after a regular one, lands in its own minute (one heartbeat a minute)
        start = boundary - self.interval if since is None else since
        timestamp = int((start + boundary) / 2 * 1000)
        minute = timestamp // 60_000
        self.state.accept(Batch("tasklens:pull", self.hub.pull(), snapshot=True))
        self.state.expire()
        for key, _ in self.state.take_ended():  # one that comes back is a new count from 0
            self._deltas.forget(key)
        groups: dict[tuple[tuple[str, str], ...], dict[str, list[float]]] = {}
        written: set[tuple[str, object]] = set()  # (metric name, its labels on /metrics)
        identity = dict(self.hub.identity.tags)
        for key, series in list(self.state.items()):
            name, tags = key
            if isinstance(series.value, Histogram):
                continue
            pname = prometheus_name(name, series.kind)
            if not self.selected(name, series.kind):
                continue
            if pname == TASK_HEARTBEAT and (not self._heartbeat or minute == self._heartbeat_minute):
                continue  # this minute has its heartbeat (a second would count this task twice), or none fits
            # the increase is tracked per series (its own name and tags), never per sanitised name:
            # `jobs.done` and `jobs_done` would overwrite each other's last value
            value = self._value(key, series, boundary)
            if value is None:
                continue
            task = identity if series.worker else None  # a worker's tags cannot replace the task's identity
            dims = self._dimensions(tags, task)
            if pname in self.reserved:
                self._reject("reserved_name", f"the metric name {pname!r} is a dimension key or _aws")
            elif len(pname) > EMF_MAX_NAME:
                self._reject("invalid_name", f"the metric name {pname[:100]!r}... is over {EMF_MAX_NAME} characters")
            elif isinstance(dims, str):
                self._reject("invalid_dimension", f"{pname!r}: {dims}")
            elif not math.isfinite(value):
                self._reject("non_finite", f"{pname!r}: its increase is {value!r}")
            elif value and not SMALLEST <= abs(value) <= LARGEST:
                self._reject("out_of_range", f"{pname!r}: {value!r} is a value CloudWatch refuses")
            elif (same := (pname, shown_labels(tags, task))) in written:
                self._reject("duplicate_series", f"{name!r}: another series is {pname!r} with the same tags")
            else:
                written.add(same)
                groups.setdefault(dims, {}).setdefault(pname, []).append(value)
                if pname == TASK_HEARTBEAT:
                    self._heartbeat_minute = minute
        self._deltas.prune(boundary - 3 * self.interval)
        docs: list[dict[str, Any]] = []
        for dims, by_name in groups.items():
            docs += self._split(timestamp, dims, by_name)
        return docs

    def _value(self, key: Key, series: Series, now: float) -> float | None:
        value = float(series.value)  # type: ignore[arg-type]
        if series.kind is not Kind.COUNTER:
            return value
        # counters: the increase since the last record (none for a source's counter first seen or reset;
        # a StatsD count summed from 0 is all increase)
        delta = self._deltas.update(key, value, now)
        if delta is None and series.summed:
            return value
        return delta

    def _reject(self, reason: str, detail: str) -> None:
        self.state.reject(reason)
        self._log.warning(f"emf:{reason}", "emf: a point is not sent (%s): %s", reason, detail)

    def _dimensions(self, tags: Tags, identity: dict[str, str] | None) -> tuple[tuple[str, str], ...] | str:
        """The point's dimensions, or why CloudWatch would refuse one of them. `identity`: the task's tags,
        for a worker's series."""
        have = dict(tags)
        if identity is not None:
            # a worker's `service:billing` in service `orders`: `exported_service`, the key keeping the
            # task's value, as on /metrics (`labels_of`), in remote_write and OTLP; else this task's
            # numbers would count in another service's metric (and its scaling policy)
            for tag, given in tags:
                theirs = identity.get(tag, given)
                if theirs != given:
                    have[tag], have["exported_" + tag] = theirs, given
        out = []
        for key in self.dimensions:
            value = have.get(key)
            if value is None:
                continue
            value = value or "true"  # a bare tag, as on /metrics
            if not is_cloudwatch_text(value, MAX_DIMENSION_VALUE):
                return (f"the value of dimension {key!r}, {value[:100]!r}, is not 1-{MAX_DIMENSION_VALUE} ASCII "
                        "characters without control characters and not only spaces")
            out.append((key, value))
        return tuple(out)

    def _split(self, timestamp: int, dims: tuple[tuple[str, str], ...],
               by_name: dict[str, list[float]]) -> list[dict[str, Any]]:
        """Documents within the limits: ≤100 metrics, ≤100 values each, ≤256 KB."""
        chunks: list[list[tuple[str, list[float]]]] = [[]]
        pending = [(n, vs[i:i + MAX_VALUES]) for n, vs in by_name.items() for i in range(0, len(vs), MAX_VALUES)]
        for name, values in pending:
            # a name appears once per document: its second slice of 100 values goes to another document
            target = next((c for c in chunks if len(c) < MAX_METRICS and all(n != name for n, _ in c)), None)
            if target is None:
                target = []
                chunks.append(target)
            target.append((name, values))
        docs = []
        for chunk in chunks:
            if chunk:
                docs += self._fit(timestamp, dims, chunk)
        return docs

    def _fit(self, timestamp: int, dims: tuple[tuple[str, str], ...],
             chunk: list[tuple[str, list[float]]]) -> list[dict[str, Any]]:
        doc: dict[str, Any] = {
            "_aws": {"Timestamp": timestamp, "CloudWatchMetrics": [{
                "Namespace": self.namespace,
                "Dimensions": [[k for k, _ in dims]],
                "Metrics": [{"Name": n, "Unit": unit_of(n)} for n, _ in chunk],
            }]},
            **dict(dims),
            **{n: (vs[0] if len(vs) == 1 else vs) for n, vs in chunk},
        }
        if len(json.dumps(doc)) <= MAX_BYTES or len(chunk) == 1:
            return [doc]
        half = len(chunk) // 2
        return self._fit(timestamp, dims, chunk[:half]) + self._fit(timestamp, dims, chunk[half:])

    def render(self, boundary: float, since: float | None = None) -> tuple[str, int, int]:
        """(the JSON lines, records, metrics) for the interval that ended at `boundary`."""
        docs = self.documents(boundary, since)
        lines = "".join(json.dumps(d, separators=(",", ":"), allow_nan=False) + "\n" for d in docs)
        return lines, len(docs), sum(len(d["_aws"]["CloudWatchMetrics"][0]["Metrics"]) for d in docs)

    def write(self, lines: str, records: int, metrics: int) -> int:
        # sys.stdout is None when fd 1 was closed as the interpreter started (`1>&-` without the entry
        # point's /dev/null, `python -c`); any other failure of the stream is a broken stdout too: the
        # records are lost and counted, the sink goes on
        out = self.stream or sys.stdout
        try:
            if out is None:
                raise OSError("stdout is closed (sys.stdout is None)")
            out.write(lines)
            out.flush()
        except Exception as exc:  # a closed or broken stdout must not stop the sidecar
            self.metrics.inc("tasklens.exporter.points_dropped", metrics, exporter=NAME, reason="write_error")
            self._log.error("emf:write", "emf: cannot write to stdout: %r", exc)
            return 0
        self.metrics.inc("tasklens.exporter.points_sent", metrics, exporter=NAME)
        self.metrics.inc("tasklens.exporter.submissions", records, exporter=NAME, status="ok")
        return records

    def emit(self, boundary: float) -> int:
        """Render and write one interval's records; returns how many were written."""
        return self.write(*self.render(boundary))

    async def run(self, stop: asyncio.Event) -> None:
        due = next_tick(self.wall(), self.interval)
        last: float | None = None  # the boundary of the last regular record
        while True:
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, due - self.wall()))
            except TimeoutError:
                pass
            offset = min(1.0, self.interval / 10)
            # the boundary the values belong to: the tick less its offset (or now, for the final record,
            # which covers what came since the last one)
            if stop.is_set():
                rendered = self.render(self.wall(), since=last)
            else:
                last = due - offset
                rendered = self.render(last)
            await self._write_aside(*rendered)
            if stop.is_set():
                return
            now = self.wall()
            due = next_tick(max(now, due), self.interval)
            if stepped_back(due, now, self.interval):
                due = next_tick(now, self.interval)

    async def _write_aside(self, lines: str, records: int, metrics: int) -> None:
        """`write` on a daemon thread of its own. With the awslogs driver's default blocking mode a slow
        log stream blocks writes to stdout: that must never stall the event loop (StatsD, the other
        sinks), nor the exit on SIGTERM, which waits for the default executor's threads, never for a
        daemon thread."""
        loop = asyncio.get_running_loop()
        written: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            if not written.done():
                written.set_result(None)

        def target() -> None:
            try:
                self.write(lines, records, metrics)
            finally:
                try:
                    loop.call_soon_threadsafe(done)
                except RuntimeError:  # the loop closed while stdout was blocked
                    pass

        threading.Thread(target=target, name="tasklens-emf", daemon=True).start()
        await written

    def status(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "interval_seconds": self.interval, "metrics": list(self.patterns),
                "dimensions": list(self.dimensions),
                "records": self.metrics.get("tasklens.exporter.submissions", exporter=NAME, status="ok")}
