"""OTLP/HTTP metrics sink: everything the hub sees, as OTLP protobuf to an OpenTelemetry Collector or any
OTLP backend, with the ECS resource attributes of the OpenTelemetry semantic conventions.

Enabled by `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/metrics` is appended) or
`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (used as is); headers, compression (gzip by default), timeout
(milliseconds) and temporality preference follow the standard variables.

Mapping (the OpenTelemetry Prometheus compatibility rules, reversed):
- the task's identity and `TASKLENS_TAGS` are the *resource* (`service.name`, `cloud.platform=aws_ecs`,
  `aws.ecs.task.arn`, ..., `team`); a point's attributes are the rest of the labels `/metrics` shows
  (`container_name`, `queue`, StatsD tags, and an identity tag the resource does not carry as it is);
- gauges -> Gauge; source counters and StatsD counts -> monotonic Sum, cumulative (start time = when
  the stream started; a reset starts a new one) or delta on request: `delta` for every counter and
  histogram, `lowmemory` for the synchronous ones only (StatsD counts and histograms; a source's own
  cumulative counter, an asynchronous counter in OpenTelemetry's terms, stays cumulative);
- StatsD histograms, timers (seconds) and distributions -> explicit-bucket Histogram on the configured
  Prometheus buckets: the same layout as `/metrics` and remote_write, so every path agrees (an exponential
  histogram would need a second bucket scheme); StatsD sets arrive as gauges already.
A series that ends, and every series on a clean stop, gets a point flagged NO_RECORDED_VALUE (the OTLP
analogue of remote_write's stale marker). Retries follow the OTLP/HTTP specification: 429, 502, 503, 504 (honouring `Retry-After`), timeouts and
connection errors; anything else is dropped and counted. A partial success is logged and counted.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config import Config, ConfigError, parse_headers, refused_header
from agent.urlmask import mask_url
from agent.hub import Hub
from agent.identity import Identity
from agent.logs import RateLimitedLog
from agent.model import Batch, Kind, Tags
from agent.sinks.cumulative import CumulativeState, Histogram, Series
from agent.redact import Redactor, config_secrets
from agent.sinks.push import Outcome, Payload, Pusher, post

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("tasklens.otlp")

NAME = "otlp"
RETRYABLE = frozenset({429, 502, 503, 504})
_BAD_NAME = re.compile(r"[^A-Za-z0-9_.\-/]")
MAX_POINTS_PER_REQUEST = 10_000
# Collector-based receivers commonly cap a request body (20 MiB in Grafana Agent): requests are cut
# well below, by their serialised (uncompressed) size as well as by points
MAX_REQUEST_BYTES = 4 * 1024**2


def metrics_url(config: Config) -> str:
    if config.otlp_metrics_endpoint:
        return config.otlp_metrics_endpoint
    return config.otlp_endpoint.rstrip("/") + "/v1/metrics"


def instrument_name(name: str) -> str:
    """OTLP instrument names: ASCII letters first, then `[A-Za-z0-9_.-/]`, at most 255 characters."""
    out = _BAD_NAME.sub("_", name)[:255]
    return out if out[:1].isalpha() else ("m" + out)[:255] if out else ""


# The identity's tags under the names the semantic conventions for ECS give them; any other tag (the
# `TASKLENS_TAGS`) is a resource attribute of its own name, as is `ecs_cluster` when the task ARN gives no
# region and account to build `aws.ecs.cluster.arn` from.
SEMCONV = {"service": "service.name", "version": "service.version", "env": "deployment.environment.name",
           "region": "cloud.region", "availability_zone": "cloud.availability_zone", "task_arn": "aws.ecs.task.arn",
           "task_id": "aws.ecs.task.id", "task_family": "aws.ecs.task.family",
           "task_revision": "aws.ecs.task.revision", "launch_type": "aws.ecs.launchtype"}


@dataclass
class Resource:
    """The attributes sent once per request, and the rule that keeps each label of a series once: a point
    leaves off exactly the tags the resource `carries`."""

    attributes: dict[str, str]
    region: str = ""  # from the task ARN: what `aws.ecs.cluster.arn` is built with
    account: str = ""

    def attribute(self, key: str, value: str) -> tuple[str, str]:
        """A tag as a resource attribute: (name, value)."""
        if key == "ecs_cluster" and self.region and self.account:
            return "aws.ecs.cluster.arn", f"arn:aws:ecs:{self.region}:{self.account}:cluster/{value}"
        return SEMCONV.get(key, key), value.lower() if key == "launch_type" else value  # `fargate`, `ec2`

    def carries(self, key: str, value: str) -> bool:
        """It has the tag's attribute with the tag's value, whatever set it (the identity, the user's
        attributes): what it does not carry as it is stays on the point."""
        name, text = self.attribute(key, value)
        # `launch_type` is lower-cased on the resource (`fargate`), where /metrics shows ECS's `FARGATE`:
        # `fargate` or `Fargate` on a series is another label value, which the resource cannot tell apart
        if key == "launch_type" and text.upper() != value:
            return False
        return self.attributes.get(name) == text


def resource_of(identity: Identity, config: Config) -> Resource:
    """The task's identity and `TASKLENS_TAGS` as a resource (the ECS attributes are what the Collector's
    `ecs` detector derives); `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME` win, and a tag they replace
    (`service` for `OTEL_SERVICE_NAME`) is left on the points."""
    parts = identity.task_arn.split(":")
    region, account = (parts[3], parts[4]) if len(parts) > 5 else ("", "")
    resource = Resource({}, region, account)
    attrs = resource.attributes
    if len(parts) > 5:
        attrs.update({"cloud.provider": "aws", "cloud.platform": "aws_ecs"})
    if account:
        attrs["cloud.account.id"] = account
    attrs.update(resource.attribute(key, value or "true") for key, value in identity.info_tags)  # bare: `true`
    attrs["telemetry.sdk.name"] = "tasklens"
    attrs["telemetry.sdk.version"] = __version__
    attrs.update(dict(config.otel_resource_attributes))  # the user's word wins
    if config.otel_service_name:
        attrs["service.name"] = config.otel_service_name
    return resource


def check_protocol(config: Config) -> None:
    """ConfigError unless the protocol OTLP would use is `http/protobuf`, the one sent here: the metrics
    variable, else the general one, else that default (as the specification orders them). Posting
    OTLP/HTTP protobuf at a gRPC port fails on every push, for as long as the sidecar runs."""
    name = "otlp_metrics_protocol" if config.otlp_metrics_protocol else "otlp_protocol"
    protocol = getattr(config, name) or "http/protobuf"
    if protocol != "http/protobuf":
        raise ConfigError(f"{config.where(name)}={protocol!r} is invalid: expected http/protobuf (the only OTLP "
                          "protocol tasklens sends; grpc and http/json are not supported: point the endpoint at "
                          "the receiver's OTLP/HTTP port, usually 4318)")


# the headers the sink sets itself (`OtlpSink.__init__`): refused as extra headers
OWN_HEADERS = {"content-type": "the OTLP/HTTP protobuf body's", "content-encoding": "OTEL_EXPORTER_OTLP_COMPRESSION",
               "user-agent": "tasklens's"}


def check_headers(config: Config) -> None:
    """ConfigError for an extra header OTLP cannot send as written (checked only with OTLP on: the
    variables may be set for the application's own SDK): one the HTTP client writes itself
    (`Content-Length`, `Host`, ...), one the sink sets, or one name given twice in two cases."""
    for name in ("otlp_headers", "otlp_metrics_headers"):
        why = refused_header(parse_headers(getattr(config, name)), OWN_HEADERS)
        if why:
            raise ConfigError(f"{config.where(name)}='***' is invalid: {why}")


def merged_headers(config: Config) -> dict[str, str]:
    """`OTEL_EXPORTER_OTLP_HEADERS`, then `..._METRICS_HEADERS` over it (the specification's order),
    a name replacing the same name in any case (HTTP's names are case-insensitive: both would be sent)."""
    out: dict[str, tuple[str, str]] = {}
    for text in (config.otlp_headers, config.otlp_metrics_headers):
        out.update({name.lower(): (name, value) for name, value in parse_headers(text)})
    return dict(out.values())


class OtlpSink:
    name = NAME

    def __init__(self, config: Config, hub: Hub, *, wall: Callable[[], float] = time.time,
                 drain_timeout: float | None = None) -> None:
        check_protocol(config)
        check_headers(config)
        self.config = config
        self.hub = hub
        self.url = metrics_url(config)
        self.wall = wall
        self.temporality = config.otlp_temporality
        self.gzip = config.otlp_compression == "gzip"
        self.state = CumulativeState(NAME, hub.metrics, config.histogram_buckets, config.series_ttl, wall=wall,
                                     log=RateLimitedLog(log, interval=60.0))
        self._last: dict[tuple[str, Any], tuple[int, Any]] = {}  # delta mode: previous (time, value) per stream
        self._log = RateLimitedLog(log, interval=60.0)
        self._redact = Redactor(config_secrets(config))  # a receiver's text, before it is kept or logged
        self.max_points_per_request = MAX_POINTS_PER_REQUEST
        self.max_request_bytes = MAX_REQUEST_BYTES
        self._made_for: Tags | None = None  # the identity the resource and the attribute templates were made for
        self._resource = Resource({})
        self._task_tags: dict[str, str] = {}  # the identity's tags, which a worker's tags cannot replace
        headers = merged_headers(config)
        headers.update({"Content-Type": "application/x-protobuf", "User-Agent": f"tasklens/{__version__}"})
        if self.gzip:
            headers["Content-Encoding"] = "gzip"
        self.headers = headers
        self.pusher = Pusher(NAME, hub.metrics, flush=self.flush, send=self._send, on_stop=self.stop_series,
                             interval=config.otlp_interval_ms / 1000,
                             max_points=config.otlp_buffer_points, max_bytes=config.otlp_buffer_bytes,
                             timeout=config.otlp_timeout_ms / 1000, wall=wall, mask=self._redact.remote_text,
                             drain_timeout=config.shutdown_timeout * 0.75 if drain_timeout is None else drain_timeout)

    def __repr__(self) -> str:
        return f"OtlpSink(url={mask_url(self.url)!r})"

    def accept(self, batch: Batch) -> None:
        self.state.accept(batch)

    # -- encoding ---------------------------------------------------------------------------------

    def flush(self) -> list[Payload]:
        self.state.accept(Batch("tasklens:pull", self.hub.pull(), snapshot=True))
        self.state.expire()
        return self._encode(list(self.state.items()), self.state.take_ended())

    def stop_series(self) -> list[Payload]:
        """On a clean stop: every series ends with a point flagged `NO_RECORDED_VALUE` (OTLP's stale marker)."""
        return self._encode([], self.state.end_all())

    def _encode(self, items: list[tuple[tuple[str, Any], Series]],
                ended: list[tuple[tuple[str, Any], Series]]) -> list[Payload]:
        # a series of that name and tags that comes back is a new stream from 0; a delta stream's last
        # point (its end, flagged) starts where its previous point ended
        delta_end = {key: self._last.pop(key)[0] for key, _ in ended if key in self._last}
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
        from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
        from opentelemetry.proto.metrics.v1 import metrics_pb2 as m

        now = self.wall()
        now_ns = int(now * 1e9)
        identity = self.hub.identity
        if identity.info_tags != self._made_for:  # the identity changed (the first ECS poll): attributes rebuilt
            self._made_for = identity.info_tags
            self._resource = resource_of(identity, self.config)
            self._task_tags = dict(identity.tags)
        made_for = self._made_for
        streams: set[tuple[str, tuple[tuple[str, str], ...]]] = set()  # (instrument, attributes) in this flush
        metrics: dict[str, Any] = {}
        kinds: dict[str, tuple[Kind, bool | None]] = {}
        temporalities: dict[str, int] = {}
        points = 0
        no_value = m.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
        # the ended series that were sent: a flagged point each, so the line ends (a gap, not a flat line)
        last = [(kv, True) for kv in ended if isinstance(kv[1].cache, tuple)]
        for (key, series), stale in [(kv, False) for kv in items] + last:
            name, tags = key
            iname = instrument_name(name)
            if not iname:
                self.state.reject("invalid_name", name=name)
                continue
            kind, value = series.kind, series.value
            unit = value.milliseconds if isinstance(value, Histogram) else None  # a timer's are seconds
            if kinds.setdefault(iname, (kind, unit)) != (kind, unit):
                self.state.reject("type_conflict", name=name)  # one instrument has one type (and unit)
                continue
            # the point's attributes are built once per series, into a template copied each flush (5x cheaper)
            cached = series.cache
            if not isinstance(cached, tuple) or cached[0] is not made_for:
                attributes = point_attributes(tags, self._resource, self._task_tags if series.worker else None)
                if attributes is None:
                    self.state.reject("label_conflict", name=name)
                    continue
                try:
                    template = (m.HistogramDataPoint if isinstance(value, Histogram) else m.NumberDataPoint)(
                        attributes=[KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attributes])
                except ValueError:  # text protobuf cannot encode (a lone surrogate): this series alone
                    self.state.reject("invalid_utf8", name=name)
                    continue
                if isinstance(value, Histogram):
                    template.explicit_bounds.extend(value.bounds)
                cached = series.cache = (made_for, template, attributes)
            if (iname, cached[2]) in streams:  # `a b` and `a_b` with the same tags: one stream, the first keeps it
                self.state.reject("duplicate_series", name=name)
                continue
            streams.add((iname, cached[2]))
            metric = metrics.get(iname)
            if metric is None:
                metric = metrics[iname] = m.Metric(name=iname)
            # delta: every counter and histogram; lowmemory: the synchronous ones (StatsD counts, histograms)
            delta = self.temporality == "delta" or (self.temporality == "lowmemory"
                                                    and (series.summed or isinstance(value, Histogram)))
            temporality = m.AGGREGATION_TEMPORALITY_DELTA if delta else m.AGGREGATION_TEMPORALITY_CUMULATIVE
            if kind is not Kind.GAUGE and temporalities.setdefault(iname, temporality) != temporality:
                self.state.reject("type_conflict", name=name)  # one metric has one temporality
                continue
            if stale:
                field = "histogram" if isinstance(value, Histogram) else "sum" if kind is Kind.COUNTER else "gauge"
                if field != "gauge":
                    getattr(metric, field).aggregation_temporality = temporality
                if field == "sum":
                    metric.sum.is_monotonic = True
                p = getattr(metric, field).data_points.add()
                p.CopyFrom(cached[1])
                if field == "histogram":
                    del p.explicit_bounds[:]  # no buckets at all: the layout rule allows both empty
                if field != "gauge":
                    start = int(series.start * 1e9)
                    if delta:  # not the stream's first start: intervals sent already would be counted twice
                        start = delta_end.get(key, start)
                    p.start_time_unix_nano = min(start, now_ns)
                p.time_unix_nano, p.flags = now_ns, no_value
            elif isinstance(value, Histogram):
                counts, total, count = list(value.counts or [0.0] * (len(value.bounds) + 1)), value.total, value.count
                start = int(series.start * 1e9)
                if delta:
                    start, (counts, total, count) = self._delta(name, tags, now_ns, start, (counts, total, count))
                buckets = [round(c) for c in counts]  # uint64: weighted (sampled) counts are rounded per bucket,
                if sum(buckets) >= 2**64:  # and the count is their sum, so the two always agree
                    self.state.reject("count_overflow", name=name)  # (`x:1|h|@1e-20` weighs 1e20): this series alone
                    continue
                metric.histogram.aggregation_temporality = temporality
                hp = metric.histogram.data_points.add()
                hp.CopyFrom(cached[1])
                hp.start_time_unix_nano, hp.time_unix_nano = min(start, now_ns), now_ns
                hp.count = sum(buckets)
                if not value.negative:  # the proto: no sum once negative values are recorded (it is optional)
                    hp.sum = total
                hp.bucket_counts.extend(buckets)
            elif kind is Kind.COUNTER:
                start, v = int(series.start * 1e9), float(value)
                if delta:
                    start, v = self._delta(name, tags, now_ns, start, v, summed=series.summed)
                metric.sum.aggregation_temporality = temporality
                metric.sum.is_monotonic = True
                dp = metric.sum.data_points.add()
                dp.CopyFrom(cached[1])
                dp.start_time_unix_nano, dp.time_unix_nano, dp.as_double = min(start, now_ns), now_ns, v
            else:
                dp = metric.gauge.data_points.add()
                dp.CopyFrom(cached[1])
                dp.time_unix_nano, dp.as_double = now_ns, float(value)
            points += 1
        if not metrics:
            return []
        resource = [KeyValue(key=k, value=AnyValue(string_value=v))
                    for k, v in self._resource.attributes.items()]
        return [self._payload(ExportMetricsServiceRequest, resource, chunk, n, now)
                for chunk, n in self._requests(ExportMetricsServiceRequest, resource, list(metrics.values()))]

    def _requests(self, request_cls: Any, resource: Any, metrics: list[Any]) -> list[tuple[list[Any], int]]:
        """The metrics cut into requests of at most `max_points_per_request` points and
        `max_request_bytes` bytes serialised, each point in exactly one: a metric too big for what is left
        of a request is split, each piece the same metric (name, type, temporality) with some of its points.
        Sizes are counted from each part's own `ByteSize()`, with room for the length prefixes."""
        out: list[tuple[list[Any], int]] = []
        empty = len(self._request(request_cls, resource, []).SerializeToString()) + 10  # + the prefixes' growth
        chunk: list[Any] = []
        points, size = 0, empty
        for metric in metrics:
            data = _points_of(metric)
            if not data:  # each of its points was refused: a metric without data is invalid
                continue
            cost = metric.ByteSize() + 6  # its tag and length
            if points + len(data) <= self.max_points_per_request and size + cost <= self.max_request_bytes:
                chunk.append(metric)  # the usual case: the whole metric, not copied
                points, size = points + len(data), size + cost
                continue
            field = metric.WhichOneof("data")
            header = type(metric)()
            header.CopyFrom(metric)
            getattr(header, field).ClearField("data_points")
            header_cost = header.ByteSize() + 12  # + the length prefixes of the metric and of its data
            piece = None
            for p in data:
                cost = p.ByteSize() + 6
                if empty + header_cost + cost > self.max_request_bytes:  # fits in no request at all
                    self.state.reject("too_large", name=metric.name,
                                      detail=f"one point is over {self.max_request_bytes} bytes")
                    continue
                if points >= self.max_points_per_request or size + cost + (header_cost if piece is None else 0) > \
                        self.max_request_bytes:
                    out.append((chunk, points))
                    chunk, points, size, piece = [], 0, empty, None
                if piece is None:
                    piece = type(metric)()
                    piece.CopyFrom(header)
                    chunk.append(piece)
                    size += header_cost
                getattr(piece, field).data_points.add().CopyFrom(p)
                points, size = points + 1, size + cost
        if chunk:
            out.append((chunk, points))
        return [(c, n) for c, n in out if n]

    def _delta(self, name: str, tags: Any, now_ns: int, start: int, value: Any,
               summed: bool = False) -> tuple[int, Any]:
        """Delta temporality: the change since the previous export; start = the previous export's time."""
        key = (name, tags)
        previous = self._last.get(key)
        self._last[key] = (now_ns, value)
        if isinstance(value, tuple):  # a histogram: (counts, total, count)
            if previous is None or previous[1][2] > value[2]:
                return start, value
            pc, pt, pn = previous[1]
            return previous[0], ([a - b for a, b in zip(value[0], pc)], value[1] - pt, value[2] - pn)
        if previous is None or previous[1] > value:
            return (start, value) if summed or previous is not None else (now_ns, 0.0)
        return previous[0], value - previous[1]

    @staticmethod
    def _request(request_cls: Any, resource: Any, metrics: list[Any]) -> Any:
        from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
        from opentelemetry.proto.metrics.v1.metrics_pb2 import ResourceMetrics, ScopeMetrics
        from opentelemetry.proto.resource.v1.resource_pb2 import Resource

        return request_cls(resource_metrics=[ResourceMetrics(
            resource=Resource(attributes=resource),
            scope_metrics=[ScopeMetrics(scope=InstrumentationScope(name="tasklens", version=__version__),
                                        metrics=metrics)],
        )])

    def _payload(self, request_cls: Any, resource: Any, metrics: list[Any], points: int, now: float) -> Payload:
        body = self._request(request_cls, resource, metrics).SerializeToString()
        return Payload(gzip.compress(body, 6) if self.gzip else body, points, now + 3600)

    # -- delivery ---------------------------------------------------------------------------------

    def _partial(self, body: bytes, points: int) -> None:
        """Count and log a partial success of an accepted request of `points` points. A rejected count
        outside 0..points is an impossible answer: how many were refused is unknown, so the whole request
        is counted as failed (never a negative or inflated counter). The receiver's message is shown as
        every remote text is (`Redactor.remote_text`: secrets masked, no line break or escape)."""
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

        response = ExportMetricsServiceResponse()
        try:
            response.ParseFromString(body)
        except DecodeError:  # the spec asks receivers for a protobuf body; a bad one is not our loss
            return
        rejected = response.partial_success.rejected_data_points
        message = response.partial_success.error_message
        if not rejected and not message:
            return
        text = self._redact.remote_text(message, limit=300)
        if 0 <= rejected <= points:
            failed = rejected
            self._log.warning("partial", "otlp: the receiver rejected %d of %d points: %s", rejected, points, text)
        else:
            failed = points
            self._log.warning("partial:impossible", "otlp: the receiver rejected %d points of a request of %d; "
                              "counting all %d as failed: %s", rejected, points, points, text)
        self.hub.metrics.inc("tasklens.exporter.points_failed", failed, exporter=NAME, reason="partial_success")

    async def _send(self, session: aiohttp.ClientSession, payload: Payload, timeout: float) -> Outcome:
        return await post(session, self.url, payload, timeout, self.headers, retryable=RETRYABLE,
                          on_ok=lambda body: self._partial(body, payload.points))

    async def run(self, stop: asyncio.Event) -> None:
        import aiohttp

        async with aiohttp.ClientSession(trust_env=True) as session:
            await self.pusher.run(stop, session)

    def status(self) -> dict[str, Any]:
        return {"url": mask_url(self.url), "temporality": self.temporality,
                "series": len(self.state), **self.pusher.status()}


def point_attributes(tags: Tags, resource: Resource,
                     identity: Mapping[str, str] | None) -> tuple[tuple[str, str], ...] | None:
    """A point's attributes: the labels `/metrics` shows for the series, but those the resource carries
    (`Resource.carries`: the task's identity, sent once per request). For a worker's series
    (`identity`, the task's tags), a tag that gives an identity key another value (`service:a`) is
    `exported_service`, the key keeping the task's value, as on `/metrics`: dropped, two series would be
    one stream. The sidecar's own series (`identity` None) keep their own tags (a queue's `queue`), as on
    `/metrics`. None when two attributes would have one key (`service:a,exported_service:b`): a point's
    attribute keys are unique, and `/metrics` refuses it too (`label_conflict`)."""
    shown: dict[str, str] = {}
    for key, value in tags:
        theirs = identity.get(key, value) if identity is not None else value
        if theirs != value:
            if shown.setdefault(key, theirs or "true") != (theirs or "true"):
                return None
            key = "exported_" + key
        if key in shown:
            return None
        shown[key] = value or "true"
    return tuple((key, value) for key, value in shown.items() if not resource.carries(key, value))


def _points_of(metric: Any) -> Any:
    field = metric.WhichOneof("data")
    return getattr(metric, field).data_points if field else []
