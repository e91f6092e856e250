"""Prometheus remote-write 1.0 sink: every series of the task, pushed to a Prometheus-compatible store
(Amazon Managed Prometheus, Mimir, Thanos Receive, VictoriaMetrics, Prometheus itself).

Enabled by `TASKLENS_REMOTE_WRITE_URL`. Each flush sends the current cumulative value of every series
(cumulative.py) stamped with the flush time: a protobuf `WriteRequest`, snappy block format, in requests
of at most `TASKLENS_REMOTE_WRITE_BATCH_SAMPLES` samples. Names and labels follow `/metrics` exactly
(the Prometheus sink's functions): counters `<name>_total`, histograms `_bucket{le}`/`_sum`/`_count`.
The identity labels (`task_id`, ...) make each task's series unique in the store.

Delivery (queue, retry, drain) is push.py's. Ordering: one sender, FIFO, and each series' timestamp is
strictly greater than its last one, so the store never answers "out of order" or "duplicate sample".
Staleness: a series that ends (left out of a snapshot, expired, or every series on a clean stop) gets
the stale marker, so a stopped task's lines end at once on dashboards.

Auth: SigV4 (botocore's signer, credentials from the AWS chain, refreshed by botocore), basic auth,
a bearer token, extra headers. The reserved remote-write headers cannot be overridden.

Encoding: the four messages of the spec are protobuf classes built from the spec's schema on first use
(no official package ships them). Each series' labels are serialised by protobuf once and kept; a flush
appends only the sample (two fixed fields, written here: `_sample_tail`) and concatenates, by protobuf's
merge rule (concatenated encodings of a message are that message with its repeated fields appended).
bench/fleet.py `cost` measures this against building the whole message every flush.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agent import __version__
from agent.config import Config, ConfigError, parse_headers, refused_header
from agent.urlmask import mask_url
from agent.hub import Hub
from agent.logs import RateLimitedLog
from agent.model import Batch, Kind, Tags
from agent.redact import Redactor, basic_auth, config_secrets
from agent.sinks.cumulative import CumulativeState, Histogram, Series
from agent.sinks.names import counter_name, metric_name, shown_names
from agent.sinks.prometheus import labels_of
from agent.sinks.prometheus_text import go_float
from agent.sinks.push import Outcome, Payload, Pusher, post

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("tasklens.remote_write")

NAME = "remote_write"
# the one NaN that means "this series ended" (remote-write 1.0); no other value may use these bits
STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
# the remote-write headers the sink sets itself (`RemoteWriteSink._headers`): refused as extra headers
RESERVED_HEADERS = frozenset({"content-encoding", "content-type", "user-agent", "x-prometheus-remote-write-version"})
NEW_SERIES_PER_FLUSH = 10_000
MAX_AGE = 3000.0  # Prometheus refuses samples ~1 h behind its head ("out of bounds"): give up before
_AMP_HOST = re.compile(r"^aps-workspaces(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


# -- the remote-write 1.0 schema, as protobuf classes -------------------------------------------------

def _messages() -> dict[str, Any]:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="tasklens/remote_write_v1.proto", package="tasklens.prompb",
                                             syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, str]) -> None:
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, type_name in fields:
            label = f.LABEL_REPEATED if type_name else f.LABEL_OPTIONAL
            m.field.add(name=fname, number=number, type=ftype, label=label,
                        type_name=f".tasklens.prompb.{type_name}" if type_name else None)

    message("WriteRequest", ("timeseries", 1, f.TYPE_MESSAGE, "TimeSeries"))
    message("TimeSeries", ("labels", 1, f.TYPE_MESSAGE, "Label"), ("samples", 2, f.TYPE_MESSAGE, "Sample"))
    message("Label", ("name", 1, f.TYPE_STRING, ""), ("value", 2, f.TYPE_STRING, ""))
    message("Sample", ("value", 1, f.TYPE_DOUBLE, ""), ("timestamp", 2, f.TYPE_INT64, ""))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tasklens.prompb.{name}"))
            for name in ("WriteRequest", "TimeSeries", "Label", "Sample")}


_PB: dict[str, Any] = {}


def pb() -> dict[str, Any]:
    """The message classes (WriteRequest, TimeSeries, Label, Sample), built on first use."""
    if not _PB:
        _PB.update(_messages())
    return _PB


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_pack_double = struct.Struct("<d").pack


def _sample_tail(ts_ms: int) -> tuple[bytes, bytes]:
    """`TimeSeries.samples` = one `Sample{value, timestamp}`, as the bytes around the value's 8 bytes.

    The one piece encoded here rather than by protobuf: two fixed fields per sample, 20x cheaper than a
    message object per sample (bench/fleet.py cost); a property test checks it is byte-identical to
    protobuf's own encoding."""
    timestamp = b"\x10" + _varint(max(ts_ms, 0))
    body_len = 9 + len(timestamp)  # 0x09 + 8 bytes of double + the timestamp field: always < 128
    return b"\x12" + bytes((body_len,)) + b"\x09", timestamp


def snappy_block(data: bytes) -> bytes:
    import cramjam

    # the block format: cramjam.snappy.compress() writes the framed format, which receivers refuse
    return bytes(cramjam.snappy.compress_raw(data))


# -- series -> labels ------------------------------------------------------------------------------

@dataclass(slots=True)
class _Encoded:
    blocks: list[bytes]  # serialised `labels` of each wire series (histograms: buckets..., +Inf, sum, count)
    last_ms: int = 0  # the last timestamp sent: the next one must be greater


def label_sets(name: str, tags: Tags, series: Series, external: Tags,
               identity: dict[str, str] | None = None, max_labels: int = 30) -> list[list[tuple[str, str]]]:
    """The sorted label sets of the wire series of one series; ValueError when it cannot be sent.
    `identity`: the task's identity tags, for a worker's series (a worker's `task_id:x` is
    `exported_task_id`, as on /metrics: tasks never write into each other's series).
    `max_labels`: a wire series with more labels is refused (`too_many_labels`): a store that keeps only
    the first ones in sorted order (VictoriaMetrics) would drop identity labels and merge tasks' series."""
    pname = metric_name(name)
    found = labels_of(tags, identity if series.worker else None)
    if isinstance(found, str):  # the reason it cannot be sent (the same rules as /metrics)
        raise ValueError(found)
    labels = dict(found.items)
    for k, v in external:  # the series' own labels win, as Prometheus applies external labels
        labels.setdefault(k, v)
    if isinstance(series.value, Histogram):
        if "le" in labels:
            raise ValueError("reserved_label")  # would collide with the bucket label
        out = [sorted({**labels, "__name__": pname + "_bucket", "le": go_float(b)}.items()) for b in series.value.bounds]
        out.append(sorted({**labels, "__name__": pname + "_bucket", "le": "+Inf"}.items()))
        out.append(sorted({**labels, "__name__": pname + "_sum"}.items()))
        out.append(sorted({**labels, "__name__": pname + "_count"}.items()))
    else:
        wire = counter_name(pname) if series.kind is Kind.COUNTER else pname
        out = [sorted({**labels, "__name__": wire}.items())]
    if max(map(len, out)) > max_labels:
        raise ValueError("too_many_labels")
    return out


def values_of(series: Series) -> list[float]:
    v = series.value
    if isinstance(v, Histogram):
        return v.cumulative() + [v.total, v.count]
    return [v]


# -- the sink ----------------------------------------------------------------------------------------

def sigv4_region(config: Config) -> str | None:
    """The SigV4 region when signing is on, else None. ConfigError when it is on but no region is known."""
    host = urlsplit(config.remote_write_url).hostname or ""
    amp = _AMP_HOST.match(host)
    if config.remote_write_sigv4 == "off" or (config.remote_write_sigv4 == "auto" and not amp):
        return None
    region = config.remote_write_sigv4_region or (amp.group(1) if amp else "")
    if not region:
        raise ConfigError(f"{config.where('remote_write_sigv4_region')} is required: SigV4 is on and the region "
                          f"cannot be read from {config.where('remote_write_url')}="
                          f"{mask_url(config.remote_write_url)!r}")
    return region


def check(config: Config) -> None:
    """ConfigError for settings of an enabled remote_write that `run` could not use as written (`tasklens
    check` and the sink both call it): SigV4 on without a region; an extra header the HTTP client or the
    sink writes itself (`Content-Length=5` broke every request); two ways to authenticate at once (the
    store gets one `Authorization` header: basic auth given with a bearer token was silently dropped)."""
    region = sigv4_region(config)
    headers = parse_headers(config.remote_write_headers)
    why = refused_header(headers, {h: "the remote-write protocol's" for h in RESERVED_HEADERS})
    if why:
        raise ConfigError(f"{config.where('remote_write_headers')}='***' is invalid: {why}")
    methods = auth_methods(config, region, headers)
    if len(methods) > 1:
        named = " and ".join(f"{where} ({what})" for where, what in methods)
        count = "two" if len(methods) == 2 else str(len(methods))
        raise ConfigError(f"{named} are {count} ways to authenticate to the store, which takes one Authorization "
                          "header: give one of them")


def auth_methods(config: Config, region: str | None, headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """The ways of authenticating the settings give, each as (what names it, what it is)."""
    out = []
    if region is not None:
        sigv4 = config.where("remote_write_sigv4")
        out.append((sigv4 if config.remote_write_sigv4 == "on" else f"{sigv4}=auto with an AMP URL", "SigV4"))
    if config.remote_write_username or config.remote_write_password:
        given = [config.where(n) for n in ("remote_write_username", "remote_write_password") if getattr(config, n)]
        out.append(("/".join(given), "basic auth"))
    parts = urlsplit(config.remote_write_url)
    if parts.username or parts.password:
        out.append((config.where("remote_write_url"), "basic auth from the URL's user:password@"))
    if config.remote_write_bearer_token:
        out.append((config.where("remote_write_bearer_token"), "a bearer token"))
    if any(name.lower() == "authorization" for name, _ in headers):
        out.append((config.where("remote_write_headers"), "an Authorization header"))
    return out


class SigV4Signer:
    """botocore's SigV4 over the standard credential chain (env, web identity, ECS task role, ...).

    botocore's refreshable credentials renew themselves before they expire; the lookup may do I/O (the
    ECS credentials endpoint), so it runs in a thread."""

    def __init__(self, region: str, service: str) -> None:
        import botocore.session

        self.region = region
        self.service = service
        self._session = botocore.session.Session()
        self._credentials: Any = None  # resolved on first use, in the signing thread (it may do I/O)

    def _sign(self, url: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        if self._credentials is None:
            self._credentials = self._session.get_credentials()
        if self._credentials is None:
            raise RuntimeError("no AWS credentials found for SigV4 (task role, AWS_* variables, ...)")
        request = AWSRequest(method="POST", url=url, data=body, headers=headers)
        SigV4Auth(self._credentials.get_frozen_credentials(), self.service, self.region).add_auth(request)
        return dict(request.headers.items())

    async def sign(self, url: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
        return await asyncio.to_thread(self._sign, url, body, headers)


class RemoteWriteSink:
    name = NAME

    def __init__(self, config: Config, hub: Hub, *, wall: Callable[[], float] = time.time,
                 drain_timeout: float | None = None) -> None:
        self.config = config
        self.hub = hub
        self.url = config.remote_write_url
        # credentials in the URL go into the Authorization header (aiohttp refuses both at once)
        parts = urlsplit(self.url)
        self.post_url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        self.wall = wall
        external = labels_of(config.remote_write_labels)
        if isinstance(external, str):
            raise ConfigError(f"{config.where('remote_write_labels')}: {external} (two keys give the same label name)")
        self.external = external.items
        self.batch_samples = config.remote_write_batch_samples
        self.max_labels = config.remote_write_max_labels
        # a new series costs ~80 us to encode (its labels, once): a burst of them is spread over flushes so
        # that one flush never holds the event loop (and StatsD reading) for more than ~1 s
        self.new_series_per_flush = NEW_SERIES_PER_FLUSH
        self.patterns = config.remote_write_metrics
        self.select_all = "*" in self.patterns
        self._selected: dict[tuple[str, Kind], bool] = {}
        self.state = CumulativeState(NAME, hub.metrics, config.histogram_buckets, config.series_ttl, wall=wall,
                                     log=RateLimitedLog(log, interval=60.0))
        check(config)
        region = sigv4_region(config)
        self.signer = SigV4Signer(region, config.remote_write_sigv4_service) if region else None
        self.headers = self._headers(config)
        self.pusher = Pusher(NAME, hub.metrics, flush=self.flush, send=self._send, on_stop=self.stop_series,
                             interval=config.remote_write_interval, max_points=config.remote_write_buffer_points,
                             max_bytes=config.remote_write_buffer_bytes,
                             timeout=config.remote_write_timeout, wall=wall, mask=Redactor(config_secrets(config)).remote_text,
                             drain_timeout=config.shutdown_timeout * 0.75 if drain_timeout is None else drain_timeout)

    def __repr__(self) -> str:
        return f"RemoteWriteSink(url={mask_url(self.url)!r})"

    @staticmethod
    def _headers(config: Config) -> dict[str, str]:
        out = {k: v for k, v in parse_headers(config.remote_write_headers) if k.lower() not in RESERVED_HEADERS}
        parts = urlsplit(config.remote_write_url)
        user = config.remote_write_username or (parts.username or "")
        password = config.remote_write_password or (parts.password or "")
        if config.remote_write_bearer_token:
            out["Authorization"] = f"Bearer {config.remote_write_bearer_token}"
        elif user or password:
            out["Authorization"] = basic_auth(user, password)
        out.update({
            "Content-Encoding": "snappy",
            "Content-Type": "application/x-protobuf",
            "User-Agent": f"tasklens/{__version__}",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
        })
        return out

    def accept(self, batch: Batch) -> None:
        self.state.accept(batch)

    # -- encoding ---------------------------------------------------------------------------------

    def _encoded(self, key: tuple[str, Tags], series: Series) -> _Encoded | None:
        enc = series.cache
        if isinstance(enc, _Encoded):
            return enc
        if isinstance(enc, str):  # refused before: each of its points is refused, without encoding again
            self.state.reject(enc, name=key[0])
            return None
        TimeSeries, Label = pb()["TimeSeries"], pb()["Label"]
        try:
            sets = label_sets(key[0], key[1], series, self.external, dict(self.hub.identity.tags), self.max_labels)
            blocks = [TimeSeries(labels=[Label(name=k, value=v) for k, v in s]).SerializeToString() for s in sets]
        except ValueError as exc:  # a bad label, or text protobuf cannot encode (a lone surrogate)
            known = ("bad_label", "label_conflict", "reserved_label", "too_many_labels")  # label_sets' reasons
            reason = exc.args[0] if exc.args and exc.args[0] in known else "invalid_utf8"
            series.cache = reason
            detail = f"over {self.max_labels} labels (TASKLENS_REMOTE_WRITE_MAX_LABELS)" \
                if reason == "too_many_labels" else ""
            self.state.reject(reason, name=key[0], detail=detail)
            return None
        series.cache = enc = _Encoded(blocks)
        return enc

    def _frames(self, items: list[tuple[tuple[str, Tags], Series]], now_ms: int, stale: bool = False,
                seen: set[bytes] | None = None) -> list[bytes]:
        """The `WriteRequest.timeseries` entries (one sample each) of some series at `now_ms`.

        `seen`: the label sets already in this push; a label set goes out once per push (a second sample
        of it could carry the same timestamp and a different value, which Prometheus refuses along with
        the whole request)."""
        out: list[bytes] = []
        seen = set() if seen is None else seen
        tails: dict[int, tuple[bytes, bytes]] = {}
        budget = self.new_series_per_flush
        deferred = 0
        for key, series in items:
            if series.cache is None:  # a series never sent
                if stale:
                    continue  # nothing to end
                if budget <= 0:
                    deferred += 1  # its labels are encoded in a later flush: a delay, never a loss
                    continue
                budget -= 1
            enc = self._encoded(key, series)
            if enc is None:
                continue
            # two tag sets that sanitise to one label set, or a gauge named as a histogram's `_count`: each
            # wire series once (a histogram has several), or the store refuses the whole request
            if not seen.isdisjoint(enc.blocks):
                if not stale:  # an ended series whose labels live on needs no stale marker
                    self.state.reject("duplicate_series", name=key[0])
                continue
            seen.update(enc.blocks)
            ts = max(now_ms, enc.last_ms + 1)
            enc.last_ms = ts
            tail = tails.get(ts)
            if tail is None:
                tail = tails[ts] = _sample_tail(ts)
            values = [STALE_NAN] * len(enc.blocks) if stale else values_of(series)
            for block, value in zip(enc.blocks, values):  # one wire series each (a histogram has several)
                msg = block + tail[0] + _pack_double(value) + tail[1]
                out.append(b"\x0a" + _varint(len(msg)) + msg)
        if not stale:
            self.hub.metrics.set("tasklens.exporter.series_deferred", deferred, exporter=NAME)
        return out

    def _payloads(self, frames: list[bytes], now: float) -> list[Payload]:
        n = self.batch_samples
        return [Payload(snappy_block(b"".join(frames[i:i + n])), len(frames[i:i + n]), now + MAX_AGE)
                for i in range(0, len(frames), n)]

    def flush(self) -> list[Payload]:
        now = self.wall()
        now_ms = int(now * 1000)
        # the task info series and the self-metrics, current at export time, as one more snapshot
        self.state.accept(Batch("tasklens:pull", self.hub.pull(), snapshot=True))
        self.state.expire()
        ended = self.state.take_ended()
        items = list(self.state.items()) if self.select_all else [kv for kv in self.state.items() if self.selected(kv)]
        seen: set[bytes] = set()
        frames = self._frames(items, now_ms, seen=seen) + self._frames(ended, now_ms, stale=True, seen=seen)
        self.hub.metrics.set("tasklens.exporter.series", len(self.state), exporter=NAME)
        return self._payloads(frames, now)

    def selected(self, item: tuple[tuple[str, Tags], Series]) -> bool:
        """Is this series pushed (`TASKLENS_REMOTE_WRITE_METRICS`)? When a selector matches any name it
        shows on `/metrics` (`shown_names`); a histogram is pushed whole, as /metrics shows it."""
        (name, _), series = item
        hit = self._selected.get((name, series.kind))
        if hit is None:
            names = shown_names(metric_name(name), series.kind)
            if len(self._selected) > 100_000:
                self._selected.clear()
            hit = self._selected[(name, series.kind)] = any(
                fnmatch.fnmatchcase(n, p) for p in self.patterns for n in names)
        return hit

    def stop_series(self) -> list[Payload]:
        """On a clean stop (after the final flush): a stale marker for every series."""
        now = self.wall()
        return self._payloads(self._frames(self.state.end_all(), int(now * 1000), stale=True), now)

    # -- delivery ---------------------------------------------------------------------------------

    async def _send(self, session: aiohttp.ClientSession, payload: Payload, timeout: float) -> Outcome:
        headers = self.headers
        if self.signer is not None:
            headers = await self.signer.sign(self.post_url, payload.body, dict(headers))
        return await post(session, self.post_url, payload, timeout, headers)

    async def run(self, stop: asyncio.Event) -> None:
        import aiohttp

        async with aiohttp.ClientSession(trust_env=True) as session:
            await self.pusher.run(stop, session)

    def status(self) -> dict[str, Any]:
        return {"url": mask_url(self.url), "series": len(self.state), "sigv4": self.signer is not None,
                **self.pusher.status()}
