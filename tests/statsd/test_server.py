"""The StatsD server end to end: the real `datadog.DogStatsd` client (buffered and unbuffered, UDP and
Unix socket) and raw datagrams in, exact values out of the hub and of `/metrics` rendering."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from datadog.dogstatsd import DogStatsd
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import ConfigError, load
from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Event, Kind, ServiceCheck
from agent.selfmetrics import SelfMetrics
from agent.sinks.prometheus import PrometheusSink
from agent.statsd.server import StatsdServer, next_boundary
from tests.support import Recorder
from agent.sinks.datadog_series import histogram_aggregates

pytestmark = pytest.mark.usefixtures("every_receiver")  # the C thread, the C drain, all in Python

DOCKER_ID = "1e3b5c7d9f0a2b4c6d8e0f1a3b5c7d9f0a2b4c6d8e0f1a3b5c7d9f0a2b4c6d8e"
CONTAINER_TAGS = (("container_name", "worker"), ("image", "acme/worker"), ("image_tag", "1.2"))
TASK_TAGS = (("service", "orders"), ("env", "prod"), ("task_id", "t-1"))



@dataclass
class Running:
    server: StatsdServer
    hub: Hub
    recorder: Recorder
    prometheus: PrometheusSink
    stop: asyncio.Event
    task: asyncio.Task[None]
    sent_lines: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.server.udp_addresses[0][1]

    async def wait_lines(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.server.aggregator.stats.lines < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.server.aggregator.stats.lines} of {n} lines arrived")
            await asyncio.sleep(0.01)

    def scrape(self) -> dict[tuple[str, tuple], float]:
        out = {}
        for family in text_string_to_metric_families(generate_latest(self.prometheus.registry).decode()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out


def identity() -> Identity:
    return Identity(service="orders", env="prod", task_id="t-1", containers={DOCKER_ID: CONTAINER_TAGS})


@pytest.fixture
async def start(tmp_path) -> AsyncIterator[Callable[..., asyncio.Future]]:
    running: list[Running] = []

    async def starter(**env: str) -> Running:
        env.setdefault("TASKLENS_STATSD_ADDR", "127.0.0.1:0")
        # a test that sets no interval closes intervals with its own flush() only: a wall-clock boundary
        # between its sends and that flush would split them over two batches (a second, zero sample)
        frozen = time.time()
        wall = time.time if "TASKLENS_FLUSH_INTERVAL" in env else (lambda: frozen)
        config = load(env)
        hub = Hub(identity(), SelfMetrics())
        recorder = Recorder()
        prometheus = PrometheusSink(hub.metrics, pull=hub.pull, buckets=config.histogram_buckets)
        hub.add_sink(recorder)
        hub.add_sink(prometheus)
        server = StatsdServer(config, hub, wall=wall)
        await server.start()
        stop = asyncio.Event()
        r = Running(server, hub, recorder, prometheus, stop, asyncio.create_task(server.run(stop)))
        running.append(r)
        while server._thread is None:  # run() starts the receive thread at its first step
            await asyncio.sleep(0)
        return r

    yield starter  # type: ignore[misc]
    for r in running:
        r.stop.set()
        await asyncio.wait_for(r.task, 10)


def send(port: int, *datagrams: bytes, family: int = socket.AF_INET, host: str = "127.0.0.1") -> None:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, (host, port))


def without_task_tags(tags: tuple) -> tuple:
    return tuple(kv for kv in tags if kv not in TASK_TAGS)


@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize("transport", ["udp", "uds"])
async def test_datadog_client_values_arrive_exactly(start, tmp_path, monkeypatch, buffered: bool, transport: str) -> None:
    import datadog.dogstatsd.base

    monkeypatch.setattr(datadog.dogstatsd.base, "random", lambda: 0.0)  # the client keeps every sampled line
    env = {"TASKLENS_STATSD_SOCKET": str(tmp_path / "dsd.socket")} if transport == "uds" else {}
    r = await start(**env)
    if transport == "uds":
        # blocking sends: the kernel queues only net.unix.max_dgram_qlen (default 10) datagrams per Unix
        # socket, and a non-blocking client drops the rest of a burst on its side (docs/statsd.md)
        client = DogStatsd(socket_path=r.server.socket_path, disable_buffering=not buffered, disable_telemetry=True,
                           socket_timeout=None)
    else:
        client = DogStatsd(host="127.0.0.1", port=r.port, disable_buffering=not buffered, disable_telemetry=True)
    for v in range(1, 11):
        client.histogram("job.size", v, tags=["queue:orders"])
    for _ in range(3):
        client.increment("job.done", 1, sample_rate=0.5, tags=["queue:orders"])  # the client may drop some
    client.increment("job.started", 4)
    client.gauge("job.backlog", 10)
    client.gauge("job.backlog", 7)
    client.set("job.users", "alice")
    client.set("job.users", "bob")
    client.set("job.users", "alice")
    client.timing("job.latency", 250)
    client.distribution("job.bytes", 1500, sample_rate=1)
    client.event("Deployed", "version 2", alert_type="success", tags=["ver:2"])
    client.service_check("job.healthy", DogStatsd.WARNING, message="slow")
    client.flush()
    client.close_socket()
    await r.wait_lines(10 + 3 + 1 + 2 + 3 + 1 + 1 + 2)
    await r.server.flush()

    by = {(s.name, without_task_tags(s.tags)): s for s in r.recorder.samples() if s.timestamp is None}
    q = (("queue", "orders"),)
    size = by[("job.size", q)]
    assert size.kind is Kind.HISTOGRAM and sorted(size.value.values) == [float(v) for v in range(1, 11)]  # type: ignore[union-attr]
    assert by[("job.started", ())].value == 4.0 and by[("job.started", ())].kind is Kind.COUNT
    # the spec's worked example, as the Datadog sink computes it from these points
    aggregates = histogram_aggregates(size.value, size.interval, ("max", "median", "avg", "count"), (0.95,))  # type: ignore[arg-type]
    assert [(suffix, value) for suffix, value, _ in aggregates] == [
        (".max", 10.0), (".median", 5.0), (".avg", 5.5), (".count", 1.0), (".95percentile", 10.0)]
    assert by[("job.done", q)].value == 6.0  # the spec's example: 3 lines of 1 at rate 0.5 -> 0.6/s
    assert by[("job.backlog", ())].value == 7.0
    assert by[("job.users", ())].value == 2.0
    latency = by[("job.latency", ())].value
    assert list(latency.values) == [250.0] and latency.milliseconds  # type: ignore[union-attr]
    assert by[("job.bytes", ())].kind is Kind.DISTRIBUTION
    events = [e for b in r.recorder.batches for e in b.events]
    assert events == [Event("Deployed", "version 2", TASK_TAGS + (("ver", "2"),), alert_type="success")]
    checks = [c for b in r.recorder.batches for c in b.service_checks]
    assert checks == [ServiceCheck("job.healthy", 1, TASK_TAGS, message="slow")]
    # every sample carries the task's tags
    assert all(s.tags[:3] == TASK_TAGS for s in r.recorder.samples())
    assert r.hub.metrics.total("tasklens.statsd.parse_errors") == 0


async def test_tag_enrichment_client_tags_win_and_origin_detection(start) -> None:
    r = await start()
    client = DogStatsd(host="127.0.0.1", port=r.port, container_id=DOCKER_ID, disable_telemetry=True)
    client.increment("hits", 2, tags=["env:staging", "image_tag:canary"])
    client.close_socket()
    send(r.port, b"hits:5|c|#env:staging,image_tag:canary", b"other:1|g|c:not-in-this-task")
    await r.wait_lines(2)
    await r.server.flush()
    samples = {s.name + str(s.value): s.tags for s in r.recorder.samples()}
    assert samples["hits2.0"] == (("service", "orders"), ("task_id", "t-1"), ("container_name", "worker"),
                                  ("image", "acme/worker"), ("env", "staging"), ("image_tag", "canary"))
    assert samples["hits5.0"] == (("service", "orders"), ("task_id", "t-1"), ("env", "staging"), ("image_tag", "canary"))
    assert samples["other1.0"] == TASK_TAGS


async def test_origin_detection_of_the_real_client_reading_its_cgroup(start, tmp_path, monkeypatch) -> None:
    """`datadog.DogStatsd` finds its container id in /proc/self/cgroup and sends `c:ci-<id>`: the line
    gets its container's tags as a bare `c:<id>` does."""
    from datadog.dogstatsd import container

    cgroup = tmp_path / "cgroup"
    cgroup.write_text(f"9:memory:/docker/{DOCKER_ID}\n")
    monkeypatch.setattr(container.Cgroup, "CGROUP_PATH", str(cgroup))
    monkeypatch.setattr(container.Cgroup, "_is_host_cgroup_namespace", lambda self: True)
    r = await start()
    client = DogStatsd(host="127.0.0.1", port=r.port, origin_detection_enabled=True, disable_telemetry=True)
    assert client._container_id == f"ci-{DOCKER_ID}"
    client.increment("hits", 2)
    client.close_socket()
    await r.wait_lines(1)
    await r.server.flush()
    [sample] = [s for s in r.recorder.samples() if s.name == "hits"]
    assert sample.tags == TASK_TAGS + CONTAINER_TAGS


async def test_keys_datadog_stores_alike_give_one_winner_whatever_their_order(start) -> None:
    """docs/datadog.md: a line's tags are a set; of `service` and `Service` (one key in Datadog) the key
    that sorts last as written wins, in either order on the line."""
    from agent.sinks.datadog_series import tag_list

    r = await start()
    send(r.port, b"a:1|c|#service:zzz,Service:aaa", b"b:1|c|#Service:aaa,service:zzz")
    await r.wait_lines(2)
    await r.server.flush()
    tags = {s.name: s.tags for s in r.recorder.samples()}
    assert tags["a"] == tags["b"]
    assert [t for t in tag_list(tags["a"], frozenset({"service"})) if t.startswith("service:")] == ["service:zzz"]


async def test_prometheus_exposition_of_statsd_metrics(start) -> None:
    r = await start(TASKLENS_HISTOGRAM_BUCKETS="0.1,0.5,1")
    send(r.port, b"api.req-count:3|c|#route:/login,canary\napi.req-count:1|c|@0.5|#route:/login,canary\n"
                 b"api.lat:100|ms\napi.lat:600|ms\napi.lat:2000|ms\nq.depth:12|g\n5xx.rate:1|h")
    await r.wait_lines(7)
    await r.server.flush()
    send(r.port, b"api.req-count:1|c|#route:/login,canary")
    await r.wait_lines(8)
    await r.server.flush()
    got = r.scrape()
    base = (("env", "prod"), ("service", "orders"), ("task_id", "t-1"))
    labels = tuple(sorted(base + (("canary", "true"), ("route", "/login"))))
    assert got[("api_req_count_total", labels)] == 6.0  # 3 + 1/0.5, then 1
    assert got[("api_lat_bucket", tuple(sorted(base + (("le", "0.1"),))))] == 1.0  # 100 ms = 0.1 s
    assert got[("api_lat_bucket", tuple(sorted(base + (("le", "1.0"),))))] == 2.0
    assert got[("api_lat_count", base)] == 3.0
    assert got[("api_lat_sum", base)] == pytest.approx(2.7)
    assert got[("q_depth", base)] == 12.0
    assert got[("_5xx_rate_count", base)] == 1.0
    r.server._publish_stats()  # self-metrics are copied once a second; now, for the test
    got = r.scrape()
    assert got[("tasklens_statsd_lines_total", base)] == 8.0
    assert got[("tasklens_statsd_samples_total", base)] == 8.0
    assert got[("tasklens_statsd_packets_total", base)] == 2.0
    # a histogram under the timer's name is another type: raw 500 is never added to the 2.7 s
    send(r.port, b"api.lat:500|h\napi.lat:300|ms")
    await r.wait_lines(10)
    await r.server.flush()
    got = r.scrape()
    assert (got[("api_lat_count", base)], got[("api_lat_sum", base)]) == (4.0, pytest.approx(3.0))
    rejected = (("reason", "type_conflict"), ("sink", "prometheus"))
    assert got[("tasklens_sink_points_rejected_total", tuple(sorted(base + rejected)))] == 1.0


async def test_self_metrics_count_every_error_reason(start) -> None:
    r = await start(TASKLENS_STATSD_MAX_CONTEXTS="3")
    datagrams = (b"a:1|c\nb:x|c\nc:1|q\nd:1|c|@x\ne:1|c|Tx\n_e{9,9}:x|y\n_sc|a|7\n" + b"n" * 201 + b":1|c\nno",
                 b"f:1|g\ng:1|g\nh:1|g\nh:1|g")
    send(r.port, *datagrams)
    await r.wait_lines(13)
    r.server._publish_stats()
    m = r.hub.metrics
    assert {reason: m.get("tasklens.statsd.parse_errors", reason=reason) for reason in
            ("malformed_line", "bad_value", "bad_type", "bad_rate", "bad_timestamp", "bad_event", "bad_service_check",
             "too_long", "cardinality_limit")} == {
        "malformed_line": 1, "bad_value": 1, "bad_type": 1, "bad_rate": 1, "bad_timestamp": 1, "bad_event": 1,
        "bad_service_check": 1, "too_long": 1, "cardinality_limit": 2}
    assert m.get("tasklens.statsd.lines") == 13 and m.get("tasklens.statsd.samples") == 3
    assert m.get("tasklens.statsd.contexts_dropped") == 1 and m.get("tasklens.statsd.contexts") == 3
    assert m.get("tasklens.statsd.packets") == 2
    assert m.get("tasklens.statsd.bytes") == sum(map(len, datagrams)) == 287
    assert m.get("tasklens.statsd.socket_drops", listener=f"udp:127.0.0.1:{r.port}") == 0


async def test_oversized_unix_datagram_is_too_long(start, tmp_path) -> None:
    r = await start(TASKLENS_STATSD_SOCKET=str(tmp_path / "s"), TASKLENS_STATSD_ADDR="off")
    assert r.server.udp_addresses == []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.sendto(b"x:1|c\n" * 12000, r.server.socket_path)
        s.sendto(b"x:1|c\n" * 10, r.server.socket_path)
    await r.wait_lines(11)
    assert dict(r.server.aggregator.stats.errors) == {"too_long": 1}
    await r.server.flush()
    assert [s.value for s in r.recorder.samples()] == [10.0]


async def test_final_flush_on_stop_and_socket_removed(start, tmp_path) -> None:
    path = tmp_path / "dsd.socket"
    r = await start(TASKLENS_STATSD_SOCKET=str(path))
    send(r.port, b"last:3|c")
    await r.wait_lines(1)
    r.stop.set()
    await asyncio.wait_for(r.task, 10)
    # the line reached a sink although no interval ended before the stop; should the clock have
    # crossed an interval boundary meanwhile (10 s apart), that flush sent it and the last one a zero
    assert [(s.name, s.value) for s in r.recorder.samples() if s.value] == [("last", 3.0)]
    assert not path.exists()
    assert r.hub.metrics.get("tasklens.statsd.flushes") in (1, 2)


async def test_ipv6_loopback_is_served_too(start) -> None:
    r = await start()
    assert ("::1", r.port) in r.server.udp_addresses
    send(r.port, b"v6:1|c", family=socket.AF_INET6, host="::1")
    await r.wait_lines(1)


async def test_intervals_are_aligned_to_the_clock(start) -> None:
    assert next_boundary(1000.0, 10.0) == 1010.0 and next_boundary(1009.99, 10.0) == 1010.0
    r = await start(TASKLENS_FLUSH_INTERVAL="1")
    send(r.port, b"tick:1|c")
    await r.wait_lines(1)
    deadline = time.monotonic() + 10
    while r.hub.metrics.get("tasklens.statsd.flushes") < 2:
        assert time.monotonic() < deadline, "no periodic flush"
        await asyncio.sleep(0.01)
    assert r.server.last_flush is not None
    start = r.server.aggregator.interval.start  # the current interval began on a boundary of the clock
    assert abs(start - round(start)) < 1e-6
    assert sum(s.value for s in r.recorder.samples() if s.name == "tick") == 1.0


async def test_receiving_continues_while_the_event_loop_is_blocked(start) -> None:
    r = await start()
    seen: list[tuple[int, bool]] = []
    blocked = threading.Event()

    def sender() -> None:
        for _ in range(50):
            send(r.port, b"busy:1|c")
            time.sleep(0.004)
        deadline = time.monotonic() + 0.3
        while r.server.aggregator.stats.lines < 50 and time.monotonic() < deadline:
            time.sleep(0.005)
        seen.append((r.server.aggregator.stats.lines, blocked.is_set()))  # while the loop is still blocked

    thread = threading.Thread(target=sender)
    blocked.set()
    thread.start()
    time.sleep(0.8)  # block the event loop (a slow flush, a huge /metrics render)
    blocked.clear()
    thread.join()
    assert seen == [(50, True)]


async def test_flush_never_waits_for_a_slow_sink(start) -> None:
    r = await start()

    class Slow:
        name = "slow"

        def accept(self, batch: Batch) -> None:
            time.sleep(0.3)

    r.hub.add_sink(Slow())  # type: ignore[arg-type]
    send(r.port, b"a:1|c")
    await r.wait_lines(1)
    flushing = asyncio.create_task(r.server.flush())
    await asyncio.sleep(0)
    sender = threading.Thread(target=lambda: [send(r.port, b"b:1|c") for _ in range(100)])
    started = time.monotonic()
    sender.start()
    while r.server.aggregator.stats.lines < 101:
        await asyncio.sleep(0)  # the loop is mostly inside the slow sink meanwhile
        assert time.monotonic() - started < 5
    sender.join()
    await flushing


async def test_bad_mapping_rule_fails_at_construction() -> None:
    config = load({"TASKLENS_STATSD_ADDR": "127.0.0.1:0"})
    object.__setattr__(config, "mappings", ({"match": "a.*"},))
    with pytest.raises(ConfigError, match=r"mappings\[0\] \(match 'a.\*'\): name is required"):
        StatsdServer(config, Hub(identity()))


async def test_address_in_use_fails_at_start(start) -> None:
    r = await start()
    config = load({"TASKLENS_STATSD_ADDR": f"127.0.0.1:{r.port}"})
    with pytest.raises(OSError, match="TASKLENS_STATSD_ADDR"):
        await StatsdServer(config, Hub(identity())).start()


async def test_status_reports_listeners_and_counts(start, every_receiver: str) -> None:
    r = await start(TASKLENS_STATSD_BUFFER_BYTES="1M")
    send(r.port, b"a:1|c\nbad")
    await r.wait_lines(2)
    status = r.server.status()
    if every_receiver == "c_thread":
        assert (status["receiver"], status["buffer_bytes"]) == ("native", 1024 * 1024)
        await asyncio.sleep(1.2)  # the receive thread's counters reach the self-metrics once a second
        exported = {s.name: s.value for s in r.hub.metrics.samples()}
        assert exported["tasklens.statsd.buffer_full"] == 0  # there from the start, at 0
        assert 0 <= exported["tasklens.statsd.buffer_peak_bytes"] <= 1024 * 1024
    else:
        assert (status["receiver"], status["buffer_bytes"]) == ("python", None)
    assert status["listeners"][0]["name"] == f"udp:127.0.0.1:{r.port}"
    assert status["listeners"][0]["rcvbuf_bytes"] >= 8 * 1024 * 1024 or status["listeners"][0]["rcvbuf_bytes"] > 0
    assert (status["lines"], status["samples"], status["parse_errors"], status["contexts"]) == (2, 1, {"malformed_line": 1}, 1)


class SlowSink(Recorder):
    """A sink whose `accept` takes `seconds` (on the event loop): an export side slower than the interval."""

    name = "slow"

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def accept(self, batch) -> None:
        super().accept(batch)
        time.sleep(self.seconds)


async def test_a_slow_export_side_extends_the_interval_instead_of_queueing_them(start) -> None:
    r = await start(TASKLENS_FLUSH_INTERVAL="1")
    slow = SlowSink(2.5)
    r.hub.add_sink(slow)
    sent = 0
    started = time.monotonic()
    while time.monotonic() - started < 5:  # five intervals, while each export takes 2.5 s
        send(r.port, b"slow.jobs:1|c")
        sent += 1
        await asyncio.sleep(0.05)
    await r.wait_lines(sent)
    await r.server.flush()
    counts = [s for b in slow.batches for s in b.samples if s.name == "slow.jobs" and s.value]
    assert sum(s.value for s in counts) == sent  # nothing lost, nothing counted twice
    # at most one interval waited for the export side: the others were extended, and say so
    assert max(s.interval for s in counts) >= 2.0


async def test_a_refusal_by_a_limit_is_counted_and_logged_once_a_minute(start, caplog) -> None:
    r = await start()
    many_tags = b"m:1|c|#" + b",".join(b"t%d" % i for i in range(101))

    async def refused(n: int) -> None:
        deadline = time.monotonic() + 10
        while r.hub.metrics.get("tasklens.statsd.parse_errors", reason="too_many_tags") < n:
            assert time.monotonic() < deadline, "the refusals were not counted"
            await asyncio.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="tasklens"):
        send(r.port, many_tags + b"\nok:1|c")
        await refused(1)
        send(r.port, many_tags, many_tags)
        await refused(3)
    logged = [m for m in caplog.messages if "refused (too_many_tags)" in m]
    assert len(logged) == 1, caplog.messages
    assert "docs/statsd.md" in logged[0]
    await r.server.flush()
    assert sum(s.value for s in r.recorder.samples() if s.name == "ok") == 1.0  # (an idle counter's zeros too)


async def test_a_storms_contexts_get_their_objects_between_datagrams_not_at_the_swap(start, every_receiver: str) -> None:
    """The contexts the C loop makes wait for their Python objects; the receive thread makes them when it
    has nothing to read, so the swap that ends the interval has none left to make."""
    r = await start(TASKLENS_FLUSH_INTERVAL="3600")
    names = 5_000
    for k in range(0, names, 25):
        send(r.port, b"\n".join(b"storm.req:1|c|#request_id:%d" % i for i in range(k, k + 25)))
    agg = r.server.aggregator
    deadline = time.monotonic() + 10
    while (agg.waiting or len(agg.contexts) < names) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert agg.waiting == 0 and len(agg.contexts) == agg.context_count == names, agg.stats.errors
    await r.server.flush()
    storm = [s for b in r.recorder.batches for s in b.samples if s.name == "storm.req"]
    assert len(storm) == names and {s.value for s in storm} == {1.0}
