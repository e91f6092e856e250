"""remote_write against a real Prometheus 2.42 (remote-write receiver on) and a real VictoriaMetrics,
both started here on loopback; values are read back through their query APIs and compared exactly.

The wire contract (headers, snappy block, sorted unique labels, stale markers) is also checked on the
raw requests, decoded with the protobuf classes built from the spec's schema; SigV4 is verified by an
independent implementation of AWS's signature algorithm, with credentials from a loopback ECS
credentials endpoint that rotates them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import re
import struct
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import Config, ConfigError, load
from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Kind, Points, Sample
from agent.sinks.remote_write import STALE_NAN, RemoteWriteSink, pb
from tests.support import serve_app
from tests.sinks.stores import Store, have, start_prometheus, start_victoria_metrics, until

pytest.importorskip("cramjam")

TASK = Identity(service="orders-worker", env="test", ecs_cluster="prod", task_family="orders", task_revision="7",
                task_id="4f1c2d3e", task_arn="arn:aws:ecs:eu-west-1:1:task/prod/4f1c2d3e", region="eu-west-1",
                launch_type="FARGATE")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def make(url: str, identity: Identity = TASK, **overrides: Any) -> tuple[RemoteWriteSink, Hub]:
    config = replace(Config(), **{"remote_write_url": url, "remote_write_interval": 0.3, "shutdown_timeout": 10.0,
                                  **overrides})
    hub = Hub(identity)
    sink = RemoteWriteSink(config, hub, drain_timeout=8.0)
    sink.pusher.backoff_base, sink.pusher.backoff_max = 0.05, 0.3
    hub.add_sink(sink)
    return sink, hub


def sent(sink: RemoteWriteSink, what: str = "points_sent", **labels: str) -> float:
    return sink.hub.metrics.get(f"tasklens.exporter.{what}", exporter="remote_write", **labels)


def publish_round(hub: Hub, count: float, depth: float) -> None:
    hub.publish(Batch("ecs", [
        Sample("ecs.task.memory.usage_bytes", 1024.0, Kind.GAUGE),
        Sample("ecs.container.cpu.usage_seconds_total", 12.5 + count, Kind.COUNTER, (("container_name", "app"),)),
    ], snapshot=True))
    hub.publish(Batch("statsd", [
        Sample("orders.processed", count, Kind.COUNT, (("queue", "orders"),), interval=10.0),
        Sample("orders.latency", Points((5.0, 50.0, 500.0), (1.0, 1.0, 2.0), milliseconds=True), Kind.HISTOGRAM,
               interval=10.0),
    ]))
    hub.publish(Batch("queue:orders", [Sample("queue.depth", depth, Kind.GAUGE, (("queue", "orders"),))],
                      snapshot=True))


def expected_round(counts_total: float, cpu: float, depth: float, rounds: int = 1) -> dict[str, float]:
    total = 0.0
    for _ in range(rounds):  # the same arithmetic as the sink's: each round's sum in ms, then in seconds
        total += (5.0 * 1.0 + 50.0 * 1.0 + 500.0 * 2.0) * 0.001
    buckets = {"0.005": 1, "0.01": 1, "0.025": 1, "0.05": 2, "0.1": 2, "0.25": 2, "0.5": 4, "1.0": 4, "2.5": 4,
               "5.0": 4, "10.0": 4, "+Inf": 4}
    out = {"ecs_task_memory_usage_bytes": 1024.0, "ecs_container_cpu_usage_seconds_total{container_name=app}": cpu,
           "orders_processed_total{queue=orders}": counts_total, "queue_depth{queue=orders}": depth,
           "ecs_task_info{task_arn=arn:aws:ecs:eu-west-1:1:task/prod/4f1c2d3e}": 1.0,
           "orders_latency_sum": total, "orders_latency_count": 4.0 * rounds}
    out.update({f"orders_latency_bucket{{le={le}}}": float(n * rounds) for le, n in buckets.items()})
    return out


IDENTITY_LABELS = dict(TASK.tags)


def flatten(values: dict[tuple[tuple[str, str], ...], float]) -> dict[str, float]:
    """{labels: value} -> {"name{extra=..}": value}, checking every series carries the task's identity."""
    out = {}
    for labels, value in values.items():
        d = dict(labels)
        name = d.pop("__name__")
        for k, v in IDENTITY_LABELS.items():
            assert d.pop(k) == v, (name, labels)
        extra = ",".join(f"{k}={v}" for k, v in sorted(d.items()))
        out[name + (f"{{{extra}}}" if extra else "")] = value
    return out


@pytest.fixture(params=["prometheus", "victoria-metrics"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if not have(request.param):
        pytest.skip(f"{request.param} is not installed (scripts/system-deps.sh installs it)")
    s = start_prometheus(tmp_path) if request.param == "prometheus" else start_victoria_metrics(tmp_path)
    yield s
    s.stop()


async def task_values(store: Store, at: float | None = None) -> dict[str, float]:
    store.flush()
    return flatten(await store.avalues('{task_id="4f1c2d3e",__name__!~"tasklens_.*"}', at))


async def test_every_series_lands_with_exact_values_counters_grow_and_end_stale(store: Store) -> None:
    sink, hub = make(store.write_url)
    stop = asyncio.Event()
    runner = asyncio.create_task(sink.run(stop))
    publish_round(hub, 3.0, 17.0)
    first = expected_round(3.0, 15.5, 17.0)
    await until(lambda: _matches(store, first), 30, "the first round in the store")

    publish_round(hub, 4.0, 9.0)  # the counter adds 4 (cumulative 7), the CPU counter moves, a gauge drops
    second = expected_round(7.0, 16.5, 9.0, rounds=2)
    await until(lambda: _matches(store, second), 30, "the second round in the store")
    assert sent(sink, "points_failed", reason="http_400") == 0
    # the self-metrics travel too, with the task's labels
    store.flush()
    self_metrics = await store.aquery('tasklens_exporter_points_sent_total{task_id="4f1c2d3e"}')
    assert self_metrics and float(self_metrics[0]["value"][1]) > 0

    stop.set()
    await asyncio.wait_for(runner, 15)
    assert sink.pusher.pending == 0
    # a clean stop ends every series at once: the store shows nothing for the task any more
    await until(lambda: _empty(store), 20, "every series stale after the stop")
    assert sent(sink, "points_failed", reason="http_400") == 0
    assert "out of order" not in store.log and "duplicate sample" not in store.log


async def _matches(store: Store, expected: dict[str, float]) -> bool:
    got = await task_values(store)
    return got == expected


async def _empty(store: Store) -> bool:
    store.flush()
    return not await store.aquery('{task_id="4f1c2d3e"}', time.time() + 0.5)


async def test_an_outage_of_the_store_loses_nothing_and_counts_nothing_twice(tmp_path: Path) -> None:
    if not have("prometheus"):
        pytest.skip("prometheus is not installed")
    prom = start_prometheus(tmp_path)
    port = int(prom.base.rsplit(":", 1)[1])
    sink, hub = make(prom.write_url)
    stop = asyncio.Event()
    runner = asyncio.create_task(sink.run(stop))
    try:
        publish_round(hub, 1.0, 1.0)
        await until(lambda: sent(sink) > 0, 20, "a first delivery")
        prom.stop()
        for i in range(2, 6):  # four rounds while the store is down: each adds i to the counter
            publish_round(hub, float(i), float(i))
            before = sent(sink, "retries")
            await until(lambda before=before: sent(sink, "retries") > before, 20, "a retry during the outage")
        assert sink.pusher.pending > 0
        prom = start_prometheus(tmp_path, port)  # the same data directory, the same port
        await until(lambda: sink.pusher.pending == 0, 30, "the queue drained after the outage")
        expected = expected_round(15.0, 17.5, 5.0, rounds=5)
        assert await task_values(prom) == expected
        assert sent(sink, "points_failed", reason="http_400") == 0
        assert sent(sink, "points_dropped", reason="buffer_full") == 0
    finally:
        stop.set()
        await asyncio.wait_for(runner, 15)
        prom.stop()


async def test_tasks_have_one_set_of_series_each(tmp_path: Path) -> None:
    if not have("prometheus"):
        pytest.skip("prometheus is not installed")
    prom = start_prometheus(tmp_path)
    stop = asyncio.Event()
    sinks = []
    try:
        for n in range(3):
            ident = replace(TASK, task_id=f"task{n}", launch_type="EC2" if n % 2 else "FARGATE")
            sink, hub = make(prom.write_url, ident)
            publish_round(hub, float(n + 1), 1.0)
            sinks.append((sink, asyncio.create_task(sink.run(stop))))
        await until(lambda: all(s.pusher.pending == 0 and sent(s) > 0 for s, _ in sinks), 20, "three tasks delivered")
        counts = await prom.avalues('count by (task_id) ({__name__="orders_processed_total"})')
        assert counts == {(("task_id", f"task{n}"),): 1.0 for n in range(3)}
        sums = await prom.avalues('sum(orders_processed_total{task_id=~"task.*"})')
        assert list(sums.values()) == [6.0]
    finally:
        stop.set()
        await asyncio.gather(*(t for _, t in sinks))
        prom.stop()


# -- the wire contract, on raw requests ------------------------------------------------------------

class Receiver:
    """Records remote-write requests; answers with the statuses queued in `script` (then 204)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes, float]] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        self.verify: Any = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        self.requests.append((headers, body, time.monotonic()))
        if self.verify is not None:
            problem = self.verify(request.method, request.path_qs, headers, body)
            if problem:
                return web.Response(status=403, text=problem)
        if self.script:
            status, extra = self.script.pop(0)
            return web.Response(status=status, headers=extra, text="no")
        return web.Response(status=204)

    def decode(self, i: int) -> Any:
        import cramjam

        raw = bytes(cramjam.snappy.decompress_raw(self.requests[i][1]))
        req = pb()["WriteRequest"]()
        req.ParseFromString(raw)
        return req


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/api/v1/write", rec.handle)
    app.router.add_post("/workspaces/ws-1/api/v1/remote_write", rec.handle)
    runner, url = await serve_app(app)
    yield rec, url
    await runner.cleanup()


def check_request(headers: dict[str, str], req: Any) -> None:
    assert headers["Content-Encoding"] == "snappy"
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
    assert headers["User-Agent"].startswith("tasklens/")
    seen = set()
    for ts in req.timeseries:
        names = [label.name for label in ts.labels]
        assert names == sorted(names) and len(set(names)) == len(names), names
        assert all(LABEL_NAME.match(n) or n == "__name__" for n in names), names
        assert all(label.value for label in ts.labels), ts
        name = {label.name: label.value for label in ts.labels}["__name__"]
        assert METRIC_NAME.match(name), name
        key = tuple((label.name, label.value) for label in ts.labels)
        assert key not in seen, key  # one series once per request
        seen.add(key)
        stamps = [s.timestamp for s in ts.samples]
        assert stamps == sorted(stamps)


async def test_requests_follow_the_wire_contract_and_batches_are_bounded(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    sink, hub = make(url + "/api/v1/write", remote_write_batch_samples=7,
                     remote_write_labels=(("cluster", "eu"), ("service", "ignored")),
                     remote_write_headers="X-Scope-OrgID=team-a")
    publish_round(hub, 1.0, 2.0)
    payloads = sink.flush()
    total = sum(p.points for p in payloads)
    assert total > 14 and len(payloads) == math.ceil(total / 7) and all(p.points <= 7 for p in payloads)
    stop = asyncio.Event()
    runner = asyncio.create_task(sink.run(stop))
    sink.pusher.put(payloads)
    await until(lambda: len(rec.requests) >= len(payloads), 10, "the requests")
    stop.set()
    await asyncio.wait_for(runner, 10)
    series_last: dict[Any, int] = {}
    for i, (headers, _, _) in enumerate(rec.requests):
        assert headers["X-Scope-OrgID"] == "team-a"
        req = rec.decode(i)
        check_request(headers, req)  # the remote-write headers (a user's is refused: test_export_headers.py)
        for ts in req.timeseries:
            labels = {label.name: label.value for label in ts.labels}
            assert labels["cluster"] == "eu" and labels["service"] == "orders-worker"  # the series' own label wins
            key = tuple(sorted(labels.items()))
            for s in ts.samples:  # timestamp order per series across requests
                assert s.timestamp > series_last.get(key, 0)
                series_last[key] = s.timestamp
    # the last requests carry the stale marker, bit for bit, for every series
    stale_bits = struct.pack("<d", STALE_NAN)
    last = rec.decode(len(rec.requests) - 1)
    assert all(struct.pack("<d", s.value) == stale_bits for ts in last.timeseries for s in ts.samples)
    assert struct.unpack("<Q", stale_bits)[0] == 0x7FF0000000000002


async def test_retry_rules_5xx_and_429_with_retry_after_retried_other_4xx_dropped_once(
        receiver: tuple[Receiver, str], caplog: pytest.LogCaptureFixture) -> None:
    rec, url = receiver
    sink, hub = make(url + "/api/v1/write", remote_write_interval=30.0)
    rec.script = [(503, {}), (429, {"Retry-After": "1"}), (400, {})]
    stop = asyncio.Event()
    runner = asyncio.create_task(sink.run(stop))
    hub.publish(Batch("statsd", [Sample("a", 1.0, Kind.GAUGE)]))
    sink.pusher.put(sink.flush())
    await until(lambda: len(rec.requests) >= 3, 10, "503, 429, then a retry")
    gap = rec.requests[2][2] - rec.requests[1][2]
    assert gap >= 0.95  # Retry-After: 1 was honoured (the backoff alone is 0.3 s at most)
    assert sent(sink, "retries") == 2
    assert sent(sink, "points_failed", reason="http_400") > 0  # the third answer was 400: dropped
    n = len(rec.requests)
    hub.publish(Batch("statsd", [Sample("a", 2.0, Kind.GAUGE)]))
    with caplog.at_level(logging.ERROR, "tasklens.push"):
        rec.script = [(400, {}), (400, {})]
        sink.pusher.put(sink.flush())
        sink.pusher.put(sink.flush())
        await until(lambda: len(rec.requests) >= n + 2, 10, "two more refused requests")
    assert len(rec.requests) == n + 2  # never retried
    assert sum("refused" in r.message for r in caplog.records) == 1  # reported once
    stop.set()
    await asyncio.wait_for(runner, 10)


async def test_queue_bound_drops_the_oldest_and_counts(receiver: tuple[Receiver, str]) -> None:
    _, url = receiver
    sink, hub = make(url + "/api/v1/write", remote_write_buffer_points=40)
    for i in range(5):
        hub.publish(Batch("statsd", [Sample(f"m{j}", float(i), Kind.GAUGE) for j in range(10)]))
        sink.pusher.put(sink.flush())  # not running: nothing is sent
    assert sink.pusher.pending <= 40
    assert sent(sink, "points_dropped", reason="buffer_full") >= 5 * 10 - 40


async def test_queue_bound_in_bytes_holds_for_series_with_heavy_labels(receiver: tuple[Receiver, str]) -> None:
    """Labels of random text do not compress: 200 series with 3 KB of labels are about 600 KB a push, and
    a bound in samples alone (1,000,000) would let an outage hold gigabytes."""
    import random
    import string

    _, url = receiver
    limit = 2 * 1024**2
    sink, hub = make(url + "/api/v1/write", remote_write_buffer_bytes=limit)
    rnd = random.Random(7)
    tags = [tuple((f"t{k}", "".join(rnd.choices(string.ascii_lowercase, k=150))) for k in range(20)) for _ in range(200)]
    for i in range(12):  # not running: nothing is sent, as in an outage
        hub.publish(Batch("statsd", [Sample(f"heavy{j}", float(i), Kind.GAUGE, tags[j]) for j in range(200)]))
        sink.pusher.put(sink.flush())
        assert sink.pusher.status()["queued_bytes"] <= limit
    assert sent(sink, "points_dropped", reason="buffer_full") > 0
    # the newest flush is still there whole (the oldest went first)
    assert sink.pusher.pending >= 200


# -- bad input ------------------------------------------------------------------------------------

tag_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
surrogate_text = st.text(max_size=6)  # may hold lone surrogates, which UTF-8 cannot carry


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.text(max_size=15).filter(lambda n: not n.startswith(("tasklens", "ecs"))), st.lists(st.tuples(tag_text, surrogate_text), max_size=4),
                          st.one_of(st.floats(), st.integers(-10**6, 10**6))), min_size=1, max_size=25))
def test_any_input_gives_valid_requests_and_rejects_are_counted(samples: list[Any]) -> None:
    sink, hub = make("http://127.0.0.1:9/api/v1/write", remote_write_batch_samples=50)
    hub.publish(Batch("statsd", [Sample(n, v, Kind.GAUGE, tuple(t)) for n, t, v in samples]))
    payloads = sink.flush()
    import cramjam

    wire = 0
    for p in payloads:
        req = pb()["WriteRequest"]()
        req.ParseFromString(bytes(cramjam.snappy.decompress_raw(p.body)))
        check_request(sink.headers, req)
        assert all(not math.isnan(s.value) or struct.pack("<d", s.value) != struct.pack("<d", STALE_NAN)
                   for ts in req.timeseries for s in ts.samples)
        names = [next(label.value for label in ts.labels if label.name == "__name__") for ts in req.timeseries]
        wire += sum(not n.startswith(("tasklens_", "ecs_task_info")) for n in names)
    rejected = hub.metrics.total("tasklens.sink.points_rejected")
    # every distinct input series is on the wire or counted as rejected (a rejected sample may share a key)
    assert wire + rejected >= len({(n, tuple(t)) for n, t, _ in samples})
    assert wire <= len({(n, tuple(t)) for n, t, _ in samples})


def test_configuration_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="TASKLENS_REMOTE_WRITE_URL"):
        load({"TASKLENS_REMOTE_WRITE_URL": "prometheus:9090/api/v1/write"})
    with pytest.raises(ConfigError, match="TASKLENS_REMOTE_WRITE_HEADERS"):
        load({"TASKLENS_REMOTE_WRITE_HEADERS": "no-equals-sign"})
    config = load({"TASKLENS_REMOTE_WRITE_URL": "https://mimir.example/api/v1/push", "TASKLENS_REMOTE_WRITE_SIGV4": "on"})
    with pytest.raises(ConfigError, match="TASKLENS_REMOTE_WRITE_SIGV4_REGION"):
        RemoteWriteSink(config, Hub(TASK))


def test_credentials_never_show(caplog: pytest.LogCaptureFixture) -> None:
    from agent.config import describe

    # one way to authenticate each (two at once are refused: test_remote_write_auth.py)
    shown = ""
    for auth in ({"TASKLENS_REMOTE_WRITE_URL": "https://user:s3cr3t-pw@mimir.example/api/v1/push"},
                 {"TASKLENS_REMOTE_WRITE_BEARER_TOKEN": "tok-s3cr3t"},
                 {"TASKLENS_REMOTE_WRITE_USERNAME": "u", "TASKLENS_REMOTE_WRITE_PASSWORD": "pw-s3cr3t"}):
        config = load({"TASKLENS_REMOTE_WRITE_URL": "https://mimir.example/api/v1/push",
                       "TASKLENS_REMOTE_WRITE_HEADERS": "X-Api-Key=hdr-s3cr3t", **auth})
        sink = RemoteWriteSink(config, Hub(TASK))
        shown += repr(sink) + json.dumps(sink.status()) + repr(config) + json.dumps(describe(config))
    for secret in ("s3cr3t-pw", "tok-s3cr3t", "pw-s3cr3t", "hdr-s3cr3t"):
        assert secret not in shown
    assert sink.headers["Authorization"].startswith("Basic ")


# -- SigV4 -------------------------------------------------------------------------------------------

def verify_sigv4(secrets: dict[str, str], region: str, service: str):  # type: ignore[no-untyped-def]
    """An independent SigV4 check (AWS's published algorithm), as the AWS front door does it."""

    def check(method: str, path: str, headers: dict[str, str], body: bytes) -> str:
        auth = headers.get("Authorization", "")
        m = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                         r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})", auth)
        if not m:
            return f"malformed Authorization: {auth!r}"
        key_id, day, reg, svc, signed, signature = m.groups()
        if (reg, svc) != (region, service) or key_id not in secrets:
            return f"wrong scope {key_id} {reg} {svc}"
        lower = {k.lower(): v for k, v in headers.items()}
        amz_date = lower["x-amz-date"]
        if abs(datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
               - datetime.now(UTC)) > timedelta(minutes=5):
            return "stale signature"
        names = signed.split(";")
        if "host" not in names or "x-amz-date" not in names:
            return "host and x-amz-date must be signed"
        canonical_headers = "".join(f"{n}:{' '.join(lower[n].split())}\n" for n in names)
        canonical = "\n".join([method, path.split("?")[0], "", canonical_headers, signed,
                               hashlib.sha256(body).hexdigest()])
        scope = f"{day}/{region}/{service}/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + secrets[key_id]).encode()
        for part in (day, region, service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        good = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        return "" if hmac.compare_digest(good, signature) else "signature mismatch"

    return check


async def test_sigv4_signs_with_rotating_credentials_from_the_ecs_endpoint(
        receiver: tuple[Receiver, str], monkeypatch: pytest.MonkeyPatch) -> None:
    rec, url = receiver
    issued: list[str] = []

    async def credentials(request: web.Request) -> web.Response:
        key = f"AKIATASKROLE{len(issued):04d}"
        issued.append(key)
        expires = datetime.now(UTC) + timedelta(minutes=5)  # inside botocore's refresh window
        return web.json_response({"AccessKeyId": key, "SecretAccessKey": f"secret-{key}", "Token": f"token-{key}",
                                  "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")})

    app = web.Application()
    app.router.add_get("/creds", credentials)
    creds_runner, creds_url = await serve_app(app)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", creds_url + "/creds")
    try:
        # an AMP-shaped URL on loopback: SigV4 on, region and service from settings
        sink, hub = make(url + "/workspaces/ws-1/api/v1/remote_write", remote_write_sigv4="on",
                         remote_write_sigv4_region="eu-west-1")
        rec.verify = verify_sigv4({f"AKIATASKROLE{i:04d}": f"secret-AKIATASKROLE{i:04d}" for i in range(50)},
                                  "eu-west-1", "aps")
        stop = asyncio.Event()
        runner = asyncio.create_task(sink.run(stop))
        hub.publish(Batch("statsd", [Sample("a", 1.0, Kind.GAUGE)]))
        await until(lambda: sent(sink) > 0, 10, "a signed request accepted")
        hub.publish(Batch("statsd", [Sample("a", 2.0, Kind.GAUGE)]))
        first_keys = len(issued)
        await until(lambda: len(rec.requests) >= 2 and len(issued) > first_keys, 10, "a request with new credentials")
        stop.set()
        await asyncio.wait_for(runner, 10)
        assert sent(sink, "points_failed", reason="http_403") == 0, [r[1][:0] for r in rec.requests]
        tokens = [h["X-Amz-Security-Token"] for h, _, _ in rec.requests]
        assert len(set(tokens)) >= 2  # the credentials were refreshed between requests
        for h, _, _ in rec.requests:
            assert "secret-" not in json.dumps(h)
        h, body, _ = rec.requests[0]  # the checker is able to fail: a changed body breaks the signature
        assert rec.verify("POST", "/workspaces/ws-1/api/v1/remote_write", h, body) == ""
        assert rec.verify("POST", "/workspaces/ws-1/api/v1/remote_write", h, body + b"x") == "signature mismatch"
    finally:
        await creds_runner.cleanup()


def test_amp_urls_turn_sigv4_on_with_the_region_of_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.sinks.remote_write import sigv4_region

    amp = "https://aps-workspaces.eu-west-1.amazonaws.com/workspaces/ws-123/api/v1/remote_write"
    assert sigv4_region(load({"TASKLENS_REMOTE_WRITE_URL": amp})) == "eu-west-1"
    assert sigv4_region(load({"TASKLENS_REMOTE_WRITE_URL": amp, "TASKLENS_REMOTE_WRITE_SIGV4": "off"})) is None
    assert sigv4_region(load({"TASKLENS_REMOTE_WRITE_URL": "http://vm:8428/api/v1/write"})) is None


# -- a fleet ----------------------------------------------------------------------------------------

async def test_a_fleet_of_20_tasks_with_replacements_and_a_store_outage(store: Store, tmp_path: Path) -> None:
    """bench/fleet.py at CI size: 20 sidecars, a third replaced mid-run, the store down for 3 s; one set of
    series per task, every counter exact, nothing refused or dropped (the bench runs 100 and 60 s)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from fleet import run_fleet

    start = start_prometheus if store.kind == "prometheus" else start_victoria_metrics
    report = await run_fleet(store, tmp_path, tasks=20, rounds=8, interval=0.5, outage=3.0, restart=1 / 3,
                             start_store=start, log=lambda *_: None)
    assert report["problems"] == []
    assert report["tasks_run"] == 26 and report["series_per_task"] == 24
    assert report["retries"] > 0  # the outage was seen, and ridden out


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True), st.integers(0, 2**62))
def test_the_hand_written_sample_bytes_equal_protobufs_own(value: float, ts: int) -> None:
    from agent.sinks.remote_write import _pack_double, _sample_tail

    head, tail = _sample_tail(ts)
    ours = head + _pack_double(value) + tail
    decoded = pb()["TimeSeries"]()
    decoded.ParseFromString(ours)
    (sample,) = decoded.samples
    assert struct.pack("<d", sample.value) == struct.pack("<d", value) and sample.timestamp == ts
    if ts and struct.pack("<d", value) != bytes(8):  # proto3 leaves out zero fields; otherwise byte-identical
        expected = pb()["TimeSeries"](samples=[pb()["Sample"](value=value, timestamp=ts)]).SerializeToString()
        assert ours == expected


# -- the sidecar as users run it -----------------------------------------------------------------

def test_a_sidecar_pushes_to_prometheus_writes_emf_and_ends_its_series_on_sigterm(tmp_path: Path) -> None:
    """`tasklens run` on the ECS emulator with remote_write and EMF on: StatsD and ECS series land in a real
    Prometheus with the task's labels, EMF records come out on stdout, and SIGTERM ends every series."""
    import subprocess

    from datadog.dogstatsd import DogStatsd

    from tests.support import FIXTURES, TASKLENS, Sidecar, clean_env, free_port, http_get, wait_until
    from tests.sinks.test_emf import check_emf

    if not have("prometheus"):
        pytest.skip("prometheus is not installed")
    task_json = FIXTURES / "fargate-2023.task.json"
    port = free_port()
    with open(tmp_path / "emulator.log", "wb") as out:
        emulator = subprocess.Popen([TASKLENS, "emulate-ecs", "--task", str(task_json), "--stats",
                                     str(FIXTURES / "fargate-2023.stats.json"), "--addr", f"127.0.0.1:{port}"],
                                    stdout=out, stderr=subprocess.STDOUT, env=clean_env())
    prom = start_prometheus(tmp_path)
    sidecar = None
    try:
        docker_id = json.loads(task_json.read_text())["Containers"][0]["DockerId"]
        metadata = f"http://127.0.0.1:{port}/v4/{docker_id}"
        wait_until(lambda: http_get(metadata + "/task")[0] == 200, 20, what="the ECS emulator")
        sidecar = Sidecar(tmp_path, ECS_CONTAINER_METADATA_URI_V4=metadata, TASKLENS_FLUSH_INTERVAL="1",
                          TASKLENS_POLL_INTERVAL="1", TASKLENS_REMOTE_WRITE_URL=prom.write_url,
                          TASKLENS_REMOTE_WRITE_INTERVAL="1",
                          TASKLENS_CLOUDWATCH="emf", TASKLENS_CLOUDWATCH_INTERVAL="1",
                          TASKLENS_CLOUDWATCH_METRICS="jobs_done_total,ecs_task_*")
        sidecar.wait_ready()
        statsd = DogStatsd(host="127.0.0.1", port=sidecar.statsd_port, disable_telemetry=True,
                           disable_buffering=True)
        for _ in range(5):
            statsd.increment("jobs.done", tags=["queue:orders"])
        statsd.close_socket()
        task_id = "67cd8a22b533459696d4ccab5278e009"
        wait_until(lambda: prom.values(f'jobs_done_total{{task_id="{task_id}",queue="orders"}}')
                   and list(prom.values(f'jobs_done_total{{task_id="{task_id}"}}').values()) == [5.0],
                   30, interval=0.25, what="the StatsD counter in Prometheus")
        ecs = prom.values(f'ecs_container_memory_working_set_bytes{{task_id="{task_id}",container_name="dd-agent"}}')
        assert list(ecs.values()) == [156_966_912.0]
        labels = dict(next(iter(ecs)))
        assert labels["launch_type"] == "FARGATE" and labels["ecs_cluster"] == "akira-fargate-check-cluster"
        wait_until(lambda: '"jobs_done_total"' in sidecar.log, 20, what="an EMF record with the counter")

        assert sidecar.stop() == 0  # SIGTERM: final flush, drain, stale markers
        assert not prom.query(f'{{task_id="{task_id}"}}', time.time() + 1)  # every line ended at once
        emf = [check_emf(line) for line in sidecar.log.splitlines() if line.startswith('{"_aws"')]
        assert any(d.get("jobs_done_total") == 5.0 and d.get("queue") == "orders" for d in emf)
        assert "Traceback" not in sidecar.log
    finally:
        if sidecar is not None and sidecar.proc.poll() is None:
            sidecar.proc.kill()
        emulator.terminate()
        emulator.wait(10)
        prom.stop()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["hx", "hx_count", "hx.sum", "hx_bucket", "c", "c_total", "c.total"]),
                          st.sampled_from([Kind.GAUGE, Kind.COUNT, Kind.HISTOGRAM]),
                          st.sampled_from([(), (("le", "1"),), (("a", "b"),)])), min_size=1, max_size=12),
       st.integers(1, 30))
def test_no_label_set_goes_out_twice_in_a_flush(samples: list[Any], batch: int) -> None:
    """A gauge `hx_count` beside a histogram `hx`, `c.total` beside the counter `c`: one wire series each
    per flush, in whatever requests they are cut into (a second one, at the same timestamp, makes the
    store refuse its whole request: `duplicate sample for timestamp`). The other is counted."""
    import cramjam

    sink, hub = make("http://127.0.0.1:9/api/v1/write", remote_write_batch_samples=batch)
    batch_of = Batch("statsd", [Sample(n, Points((1.0,), (1.0,)) if k is Kind.HISTOGRAM else 1.0, k, t, interval=10)
                                for n, k, t in samples])
    for _ in range(2):
        hub.publish(batch_of)
        label_sets = []
        for p in sink.flush():
            req = pb()["WriteRequest"]()
            req.ParseFromString(bytes(cramjam.snappy.decompress_raw(p.body)))
            label_sets += [tuple((label.name, label.value) for label in ts.labels) for ts in req.timeseries]
        assert len(label_sets) == len(set(label_sets))


def test_a_burst_of_new_series_is_spread_over_flushes_and_nothing_is_lost() -> None:
    sink, hub = make("http://127.0.0.1:9/api/v1/write")
    sink.new_series_per_flush = 40
    hub.publish(Batch("statsd", [Sample(f"burst.m{i}", float(i), Kind.GAUGE) for i in range(100)]))
    import cramjam

    seen: set[str] = set()
    for _ in range(4):
        for p in sink.flush():
            req = pb()["WriteRequest"]()
            req.ParseFromString(bytes(cramjam.snappy.decompress_raw(p.body)))
            seen |= {label.value for ts in req.timeseries for label in ts.labels if label.name == "__name__"}
    assert {f"burst_m{i}" for i in range(100)} <= seen
    assert hub.metrics.get("tasklens.exporter.series_deferred", exporter="remote_write") == 0


def test_a_refused_series_is_counted_per_point_without_being_encoded_again() -> None:
    # `a-b` and `a_b` give the same label name: refused, as on /metrics
    sink, hub = make("http://127.0.0.1:9/api/v1/write")
    hub.publish(Batch("statsd", [Sample("h", Points((1.0,), (1.0,)), Kind.HISTOGRAM, (("a-b", "x"), ("a_b", "y")))]))
    sink.flush()
    sink.flush()
    assert hub.metrics.get("tasklens.sink.points_rejected", sink="remote_write", reason="label_conflict") == 2


def test_a_worker_tag_named_le_is_renamed_as_on_metrics() -> None:
    import cramjam

    sink, hub = make("http://127.0.0.1:9/api/v1/write")
    hub.publish(Batch("statsd", [Sample("h", Points((1.0,), (1.0,)), Kind.HISTOGRAM, (("le", "x"),))]))
    [payload] = sink.flush()
    req = pb()["WriteRequest"]()
    req.ParseFromString(bytes(cramjam.snappy.decompress_raw(payload.body)))
    labels = [{label.name: label.value for label in ts.labels} for ts in req.timeseries]
    ours = [ls for ls in labels if ls["__name__"] in ("h_bucket", "h_sum", "h_count")]
    assert len(ours) == len(Config().histogram_buckets) + 3 and {ls["exported_le"] for ls in ours} == {"x"}
    assert all("le" in ls for ls in ours if ls["__name__"] == "h_bucket")


def test_only_the_selected_metrics_are_pushed() -> None:
    sink, hub = make("http://127.0.0.1:9/api/v1/write", remote_write_metrics=("queue_*", "jobs_done_total"))
    hub.publish(Batch("statsd", [Sample("jobs.done", 1.0, Kind.COUNT), Sample("jobs.other", 1.0, Kind.COUNT)]))
    hub.publish(Batch("queue:orders", [Sample("queue.depth", 3.0)], snapshot=True))
    import cramjam

    names = set()
    for p in sink.flush():
        req = pb()["WriteRequest"]()
        req.ParseFromString(bytes(cramjam.snappy.decompress_raw(p.body)))
        names |= {label.value for ts in req.timeseries for label in ts.labels if label.name == "__name__"}
    assert names == {"jobs_done_total", "queue_depth"}


async def test_no_export_credential_in_any_endpoint_the_debug_log_or_check(
        receiver: tuple[Receiver, str], tmp_path: Path) -> None:
    """Like tests/reliability/test_security.py, for the export sinks: each credential is in use (the
    receiver demands it), and none shows in an endpoint, the debug log or `tasklens check`."""
    import base64
    import subprocess

    from tests.support import TASKLENS, Sidecar, clean_env

    rec, url = receiver
    password, token, header = "rw-pw-9f3a-secret", "otlp-token-77c1", "hdr-key-5521"
    expected = "Basic " + base64.b64encode(f"tl:{password}".encode()).decode()
    rec.verify = lambda m, p, h, b: "" if h.get("Authorization") == expected and h.get("X-Api-Key") == header \
        else "bad credentials"
    host = url.removeprefix("http://")
    env = {"TASKLENS_REMOTE_WRITE_URL": f"http://tl:{password}@{host}/api/v1/write",
           "TASKLENS_REMOTE_WRITE_HEADERS": f"X-Api-Key={header}", "TASKLENS_REMOTE_WRITE_INTERVAL": "1",
           "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_HEADERS": f"api-key={token}",
           "TASKLENS_LOG_LEVEL": "debug", "TASKLENS_SHUTDOWN_TIMEOUT": "4"}  # the OTLP collector is down
    sidecar = Sidecar(tmp_path, **env)
    try:
        await until(lambda: sidecar.get("/health")[0] == 200, 30, "sidecar up")
        await until(lambda: any(h.get("Authorization") == expected for h, _, _ in rec.requests), 20,
                    "an accepted push (the password is in use)")
        shown = {path: sidecar.get(path)[1] for path in ("/metrics", "/status")}
        assert "***" in shown["/status"]
    finally:
        assert await asyncio.to_thread(sidecar.stop) == 0
    check = await asyncio.to_thread(subprocess.run, [TASKLENS, "check"], env=clean_env(**env), capture_output=True,
                                    text=True, timeout=60, check=False)
    shown["log"], shown["check"] = sidecar.log, check.stdout + check.stderr
    assert "otlp: delivery failed" in shown["log"]  # a failure was logged, without its header
    assert {where: [s for s in (password, token, header) if s in text] for where, text in shown.items()
            if any(s in text for s in (password, token, header))} == {}


@pytest.mark.parametrize("fault", ["hang", "reset", "413"])
async def test_a_failing_store_never_holds_up_the_other_sinks(fault: str) -> None:
    import io

    from agent.sinks.emf import EmfSink

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        if fault == "hang":
            await asyncio.sleep(60)
        elif fault == "reset":
            assert request.transport is not None
            request.transport.abort()
        return web.Response(status=413, text="too large")

    app = web.Application()
    app.router.add_post("/api/v1/write", handle)
    runner, url = await serve_app(app, shutdown_timeout=0.1)
    try:
        sink, hub = make(url + "/api/v1/write", remote_write_timeout=0.3, cloudwatch_interval=0.2,
                         cloudwatch_metrics=("queue_depth",))
        sink.pusher.drain_timeout = 1.0  # the store never recovers: give up soon
        out = io.StringIO()
        emf = EmfSink(sink.config, hub, stream=out)
        hub.add_sink(emf)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(sink.run(stop)), asyncio.create_task(emf.run(stop))]
        for i in range(5):
            started = time.monotonic()
            hub.publish(Batch("queue:q", [Sample("queue.depth", float(i), tags=(("queue", "q"),))], snapshot=True))
            assert time.monotonic() - started < 0.05  # publishing never waits for a store
            await until(lambda i=i: f'"queue_depth":{float(i)}' in out.getvalue(), 5, "the EMF record")
        reason = {"hang": "timeout", "reset": "connection", "413": "413"}[fault]
        await until(lambda: hub.metrics.get("tasklens.exporter.submissions", exporter="remote_write",
                                            status=reason) > 0, 10, f"a counted {reason}")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        if fault == "413":  # refused for good: counted, not retried
            assert sent(sink, "points_failed", reason="http_413") > 0 and sent(sink, "retries") == 0
    finally:
        await runner.cleanup()


def test_a_series_that_ends_while_its_labels_live_on_gets_no_stale_marker_in_the_same_push() -> None:
    """A source's gauge `jobs.x_total` that ends as a worker's counter `jobs.x` (`jobs_x_total` too)
    starts: one label set; a stale marker beside the live sample could share its timestamp, and
    Prometheus would refuse the whole request."""
    sink, hub = make("http://127.0.0.1:9/api/v1/write")
    hub.publish(Batch("ecs", [Sample("jobs.x_total", 1.0, Kind.GAUGE)], snapshot=True))
    sink.flush()
    hub.publish(Batch("ecs", [], snapshot=True))
    hub.publish(Batch("statsd", [Sample("jobs.x", 5.0, Kind.COUNT, interval=10)]))
    import cramjam

    samples = []
    for p in sink.flush():
        req = pb()["WriteRequest"]()
        req.ParseFromString(bytes(cramjam.snappy.decompress_raw(p.body)))
        samples += [s.value for ts in req.timeseries for s in ts.samples
                    if any(label.value == "jobs_x_total" for label in ts.labels)]
    assert samples == [5.0]


@pytest.mark.parametrize("overrides, secret", [
    ({"remote_write_headers": "Authorization=Bearer%20s3cr3t-T0ken-42"}, "s3cr3t-T0ken-42"),
    ({"remote_write_username": "team", "remote_write_password": "pa55-W0rd-42"}, "pa55-W0rd-42"),
])
async def test_a_receiver_echoing_the_credentials_never_gets_them_logged(
        receiver: tuple[Receiver, str], caplog: pytest.LogCaptureFixture, overrides: dict[str, str], secret: str) -> None:
    """A refusal whose text echoes the Authorization header (a bearer token, basic auth's base64) is
    kept and logged masked, as the Datadog sink's and the profiler's are."""
    import base64

    rec, url = receiver
    rec.verify = lambda method, path, headers, body: f"refused: Authorization was {headers.get('Authorization')}"
    sink, hub = make(url + "/api/v1/write", **overrides)
    hub.publish(Batch("statsd", [Sample("a", 1.0, Kind.GAUGE)]))
    with caplog.at_level(logging.ERROR, "tasklens.push"):
        stop = asyncio.Event()
        runner = asyncio.create_task(sink.run(stop))
        sink.pusher.put(sink.flush())
        await until(lambda: sink.pusher.last_error, 10, "the refusal")
        stop.set()
        await asyncio.wait_for(runner, 10)
    shown = sink.pusher.last_error + caplog.text
    assert "refused: Authorization was" in shown
    encoded = base64.b64encode(f"team:{secret}".encode()).decode()
    assert secret not in shown and encoded not in shown and encoded.rstrip("=") not in shown


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, allow_infinity=False),
                min_size=1, max_size=6, unique=True))
def test_bucket_labels_are_those_of_metrics_for_any_bounds(bounds: list[float]) -> None:
    """The `le` of every bucket as /metrics writes it (`1e+06`, not remote_write's own `1000000.0`): a
    query written against the scrape finds the pushed series too."""
    from prometheus_client.parser import text_string_to_metric_families

    from agent.selfmetrics import SelfMetrics
    from agent.sinks.cumulative import Histogram as CumulativeHistogram
    from agent.sinks.cumulative import Series
    from agent.sinks.prometheus import PrometheusSink
    from agent.sinks.remote_write import label_sets

    bounds = sorted(bounds)
    prometheus = PrometheusSink(SelfMetrics(), buckets=bounds)
    prometheus.accept(Batch("statsd", [Sample("size", Points((1.0,), (1.0,)), Kind.HISTOGRAM)]))
    scraped = {s.labels["le"] for f in text_string_to_metric_families(prometheus.render().decode())
               for s in f.samples if s.name == "size_bucket"}
    histogram = CumulativeHistogram(tuple(bounds))
    series = Series(Kind.HISTOGRAM, histogram, 0.0, 0.0, worker=True)
    pushed = {dict(labels)["le"] for labels in label_sets("size", (), series, ()) if "le" in dict(labels)}
    assert pushed == scraped
