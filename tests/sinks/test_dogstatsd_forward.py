"""DogStatsD forwarding: exact lines, datagrams of at most 1432 bytes, received on a real UDP socket."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Event, Kind, Points, Sample, ServiceCheck
from agent.sinks.deltas import CounterDeltas
from agent.sinks.dogstatsd_forward import (
    LOOP_CHECK, DogStatsdForwarder, check_line, event_line, is_own_address, loop_reason, number, pack, sample_lines,
    value_lines,
)
from agent.statsd.parser import parse

IDENTITY = Identity(service="orders-worker", env="test", task_id="4f1c2d3e")
TASK = "service:orders-worker,env:test,task_id:4f1c2d3e"


def lines_of(sample: Sample, deltas: CounterDeltas | None = None) -> list[str]:
    return sample_lines(sample, CounterDeltas() if deltas is None else deltas, now=1.0)


def test_numbers_are_short_and_exact() -> None:
    assert [number(v) for v in (3.0, -2.0, 0.1, 1e-05, 156966912.0, 2.5e20)] == [
        "3", "-2", "0.1", "1e-05", "156966912", "2.5e+20"]


def test_gauges_counts_and_timestamps() -> None:
    tags = (("service", "orders"), ("canary", ""))
    assert lines_of(Sample("queue.depth", 42.0, Kind.GAUGE, tags)) == ["queue.depth:42|g|#service:orders,canary"]
    assert lines_of(Sample("jobs", 6.0, Kind.COUNT, interval=10.0)) == ["jobs:6|c"]
    assert lines_of(Sample("late", 1.5, Kind.GAUGE, timestamp=1700000000.7)) == ["late:1.5|g|T1700000000"]
    assert lines_of(Sample("bad name!", 1.0)) == ["bad_name_:1|g"]
    assert lines_of(Sample("123", 1.0)) == [] and lines_of(Sample("nan", float("nan"))) == []
    assert lines_of(Sample("t", 1.0, tags=(("k", "a,b|c"),))) == ["t:1|g|#k:a_b_c"]  # cannot break the line


def test_cumulative_counters_become_deltas() -> None:
    d = CounterDeltas()
    seq = [lines_of(Sample("io.read_bytes_total", v, Kind.COUNTER), d) for v in (1000.0, 1750.0, 100.0, 160.0)]
    assert seq == [[], ["io.read_bytes_total:750|c"], [], ["io.read_bytes_total:60|c"]]


def test_histograms_timers_and_distributions_keep_values_and_rates() -> None:
    h = Sample("job.seconds", Points((1.0, 2.0, 3.0), (1.0, 2.0, 1.0)), Kind.HISTOGRAM, interval=10.0)
    assert lines_of(h) == ["job.seconds:1:3|h", "job.seconds:2|h|@0.5"]
    t = Sample("req", Points((5.0, 7.5), (4.0, 4.0), milliseconds=True), Kind.HISTOGRAM, (("a", "b"),))
    assert lines_of(t) == ["req:5:7.5|ms|@0.25|#a:b"]
    d = Sample("size", Points((10.0, float("nan")), (1.0, 1.0)), Kind.DISTRIBUTION)
    assert lines_of(d) == ["size:10|d"]  # a NaN would make the agent drop the line


def test_many_values_are_split_into_lines_that_fit() -> None:
    values = [float(i) for i in range(1000)]
    lines = list(value_lines("x", values, "h", "|#service:orders", 200))
    assert all(len(line.encode()) <= 200 for line in lines) and len(lines) > 5
    got = [float(v) for line in lines for v in line.split("|")[0].removeprefix("x:").split(":")]
    assert got == values


def test_events_and_service_checks() -> None:
    e = Event("héllo", "line1\nline2", (("team", "pay"),), timestamp=1700000000, priority="low", alert_type="info",
              aggregation_key="deploy")
    # lengths are UTF-8 bytes of the escaped texts: "héllo" is 6 bytes, "line1\\nline2" 12
    assert event_line(e) == "_e{6,12}:héllo|line1\\nline2|d:1700000000|k:deploy|p:low|t:info|#team:pay"
    c = ServiceCheck("orders.db", 2, (("db", "main"),), timestamp=1700000000, message="refused | retry\nlater")
    # a message is one `|` field for the Datadog agent: `|` is sent as `¦` (test_dogstatsd_forward_fields.py)
    assert check_line(c) == "_sc|orders.db|2|d:1700000000|#db:main|m:refused \u00a6 retry\\nlater"


def test_lines_round_trip_through_a_dogstatsd_parser() -> None:
    lines = [
        *lines_of(Sample("a.b", 1.25, Kind.GAUGE, (("k", "v"), ("bare", "")))),
        *lines_of(Sample("h", Points((1.0, 2.0), (2.0, 2.0)), Kind.HISTOGRAM)),
        event_line(Event("t", "x\ny", (("k", "v"),), alert_type="error")),
        check_line(ServiceCheck("c", 1, (("k", "v"),), message="m|n")),
    ]
    parsed = parse("\n".join(lines).encode())
    assert not parsed.errors
    (g, h) = parsed.metrics
    assert (g.head.name, g.head.type, g.head.tags, g.values) == ("a.b", "g", (("k", "v"), ("bare", "")), (1.25,))
    assert (h.head.name, h.head.type, h.head.rate, h.values) == ("h", "h", 0.5, (1.0, 2.0))
    ((event, _),) = parsed.events
    assert (event.title, event.text, event.alert_type) == ("t", "x\ny", "error")
    ((check, _),) = parsed.service_checks
    assert (check.name, check.status, check.message) == ("c", 1, "m\u00a6n")



@pytest.mark.parametrize("size", [1433, 4000, 8192])
def test_a_line_longer_than_a_datagram_goes_alone_in_its_own_in_order(size: int) -> None:
    """An event's text or a check's message of up to 8,192 bytes, which the agent reads (clients send
    such a line alone): forwarded in a datagram of its own, between the others, never cut."""
    before, after = [f"a.{i}:1|c" for i in range(100)], [f"b.{i}:1|c" for i in range(100)]
    long = "_sc|c|2|m:" + "x" * (size - 10)  # a check whose message is a stack trace: `size` bytes
    assert len(long.encode()) == size
    datagrams, too_long = pack(before + [long] + after)
    assert too_long == 0 and long.encode() in datagrams
    assert b"\n".join(datagrams).split(b"\n") == [line.encode() for line in before + [long] + after]
    assert all(len(d) <= 1432 for d in datagrams if d != long.encode())

def test_pack_fills_datagrams_up_to_the_limit() -> None:
    lines = [f"metric.{i}:1|c|#service:orders-worker" for i in range(200)]
    datagrams, too_long = pack(lines + ["x" * 8193])
    assert too_long == 1
    assert all(len(d) <= 1432 for d in datagrams)
    assert b"\n".join(datagrams).split(b"\n") == [line.encode() for line in lines]  # all, in order
    # greedy: each datagram is full (the next line would not have fitted)
    for d, nxt in zip(datagrams, datagrams[1:]):
        assert len(d) + 1 + len(nxt.split(b"\n")[0]) > 1432


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


async def receive(sock: socket.socket, until_line: str, timeout: float = 5.0) -> list[bytes]:
    datagrams: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            datagrams.append(sock.recv(65536))
        except BlockingIOError:
            if any(until_line.encode() in d for d in datagrams):
                return datagrams
            await asyncio.sleep(0.01)
    raise AssertionError(f"{until_line!r} never arrived; got {datagrams[:3]}...")


async def test_forwarder_sends_enriched_lines_in_small_datagrams(receiver: socket.socket) -> None:
    port = receiver.getsockname()[1]
    config = replace(Config(), dogstatsd_forward=("127.0.0.1", port), flush_interval=0.1)
    hub = Hub(IDENTITY)
    forwarder = DogStatsdForwarder(config, hub)
    hub.add_sink(forwarder)
    stop = asyncio.Event()
    task = asyncio.create_task(forwarder.run(stop))
    hub.publish(Batch("statsd", [
        Sample(f"jobs.{i}", 1.0, Kind.COUNT, (("queue", "orders"),), interval=10.0) for i in range(300)
    ] + [Sample("queue.depth", 7.0, Kind.GAUGE)], events=[Event("deploy", "v2")],
        service_checks=[ServiceCheck("orders.ok", 0)]))
    datagrams = await receive(receiver, "_sc|orders.ok|0")
    lines = [line.decode() for d in datagrams for line in d.split(b"\n")]
    assert all(len(d) <= 1432 for d in datagrams)
    assert 300 * 70 // 1432 <= len(datagrams) < 40  # packed (~75-byte lines), not one line per datagram
    assert [line for line in lines if line.startswith("jobs.")] == [
        f"jobs.{i}:1|c|#{TASK},queue:orders" for i in range(300)]
    assert f"queue.depth:7|g|#{TASK}" in lines
    assert f"_e{{6,2}}:deploy|v2|#{TASK}" in lines and f"_sc|orders.ok|0|#{TASK}" in lines
    # the task info series arrives once per interval; at stop, once more
    await receive(receiver, "ecs.task.info:1|g")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert forwarder.status()["lines_sent"] >= 303 and forwarder.status()["lines_dropped"] == 0


async def test_agent_not_listening_never_blocks_and_counts_drops() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = replace(Config(), dogstatsd_forward=("127.0.0.1", port), flush_interval=0.05)
    hub = Hub(IDENTITY)
    forwarder = DogStatsdForwarder(config, hub)
    hub.add_sink(forwarder)
    stop = asyncio.Event()
    task = asyncio.create_task(forwarder.run(stop))
    for i in range(5):
        hub.publish(Batch("s", [Sample("m", float(i))]))
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)
    # loopback reports ICMP port unreachable: the next send fails with ECONNREFUSED, counted
    assert hub.metrics.get("tasklens.exporter.points_dropped", exporter="dogstatsd_forward", reason="refused") >= 1
    assert "ConnectionRefusedError" in forwarder.status()["last_error"]


async def test_the_sidecar_forwards_aggregated_statsd_with_its_tags(
        receiver: socket.socket, sidecar_factory) -> None:  # type: ignore[no-untyped-def]
    from datadog.dogstatsd import DogStatsd

    port = receiver.getsockname()[1]
    sidecar = sidecar_factory(TASKLENS_DOGSTATSD_FORWARD=f"127.0.0.1:{port}", TASKLENS_FLUSH_INTERVAL="1",
                              TASKLENS_SERVICE="billing", TASKLENS_ENV="staging")
    await asyncio.to_thread(sidecar.wait_ready)
    statsd = DogStatsd(host="127.0.0.1", port=sidecar.statsd_port, disable_telemetry=True, disable_buffering=True)
    for _ in range(4):
        statsd.increment("invoices.sent", tags=["region:eu"])
    statsd.close_socket()
    sent: list[str] = []  # the 4 may straddle a flush boundary: sum what arrives
    deadline = time.monotonic() + 15
    while sum(float(x.split(":")[1].split("|")[0]) for x in sent) < 4:
        assert time.monotonic() < deadline, sent
        try:
            datagram = receiver.recv(65536)
        except BlockingIOError:
            await asyncio.sleep(0.02)
            continue
        sent += [x for x in datagram.decode().split("\n") if x.startswith("invoices.sent:")]
    assert sum(float(x.split(":")[1].split("|")[0]) for x in sent) == 4.0
    for line in sent:
        assert line.split("|")[1] == "c"
        assert {"service:billing", "env:staging", "region:eu"} <= set(line.split("|#")[1].split(","))
    assert await asyncio.to_thread(sidecar.stop) == 0


# --- loops: refused by the configuration, stopped at run time when the configuration cannot see them --

def test_a_target_that_is_the_own_listener_is_a_loop() -> None:
    assert loop_reason(("127.0.0.1", 8125), ("127.0.0.1", 8125))
    assert loop_reason(("localhost", 8125), ("127.0.0.1", 8125))  # resolves to 127.0.0.1 (and ::1)
    assert loop_reason(("0.0.0.0", 8125), ("127.0.0.1", 8125))  # sending to 0.0.0.0 reaches this host
    assert loop_reason(("127.0.0.2", 8125), ("0.0.0.0", 8125))  # the listener takes every local address
    assert loop_reason(("::ffff:127.0.0.1", 8125), ("0.0.0.0", 8125))  # a v4-mapped loopback too
    # not a loop: another port, another host, a listener on one address and a target on another
    assert loop_reason(("127.0.0.1", 8126), ("127.0.0.1", 8125)) is None
    assert loop_reason(("192.0.2.1", 8125), ("0.0.0.0", 8125)) is None  # TEST-NET: not this host
    assert loop_reason(("127.0.0.2", 8125), ("127.0.0.1", 8125)) is None
    assert loop_reason(("127.0.0.1", 8125), None) is None  # no UDP listener
    with pytest.raises(OSError):
        loop_reason(("no-such-host.invalid", 8125), ("0.0.0.0", 8125))


def test_own_addresses() -> None:
    assert is_own_address("127.0.0.1") and is_own_address("::1") and is_own_address("0.0.0.0")
    assert not is_own_address("192.0.2.1")


async def test_an_echo_of_the_probe_pauses_forwarding_and_only_the_probe_goes_on(receiver: socket.socket) -> None:
    port = receiver.getsockname()[1]
    config = replace(Config(), dogstatsd_forward=("127.0.0.1", port), flush_interval=0.05)
    hub = Hub(IDENTITY)
    forwarder = DogStatsdForwarder(config, hub)
    hub.add_sink(forwarder)
    stop = asyncio.Event()
    task = asyncio.create_task(forwarder.run(stop))
    datagrams = await receive(receiver, LOOP_CHECK)
    (probe,) = [line for d in datagrams for line in d.decode().split("\n") if line.startswith(f"_sc|{LOOP_CHECK}|")]
    parsed = parse(probe.encode())
    ((check, _),) = parsed.service_checks
    # another sidecar's probe (another token) is not an echo
    hub.publish(Batch("statsd", [], service_checks=[replace(check, message="tasklens loop probe 0123")]))
    assert not forwarder.looping
    hub.publish(Batch("statsd", [Sample("jobs", 1.0, Kind.COUNT)], service_checks=[check]))  # our own: a loop
    assert forwarder.looping and forwarder.status()["loop_detected"]
    assert "loop" in forwarder.status()["last_error"]
    assert hub.metrics.get("tasklens.exporter.loops_detected", exporter="dogstatsd_forward") == 1
    hub.publish(Batch("statsd", [Sample("jobs", 1.0, Kind.COUNT)]))
    assert hub.metrics.get("tasklens.exporter.points_dropped", exporter="dogstatsd_forward", reason="loop") >= 3
    # from now on each datagram holds the probe alone
    while True:
        try:
            receiver.recv(65536)
        except BlockingIOError:
            break
    later = [d for _ in range(3) for d in await receive(receiver, LOOP_CHECK)]
    assert later and all(d.decode().startswith(f"_sc|{LOOP_CHECK}|0|") and b"\n" not in d for d in later)
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_no_probe_without_a_statsd_listener(receiver: socket.socket) -> None:
    port = receiver.getsockname()[1]
    config = replace(Config(), dogstatsd_forward=("127.0.0.1", port), flush_interval=0.05, statsd_addr=None)
    hub = Hub(IDENTITY)
    forwarder = DogStatsdForwarder(config, hub)
    hub.add_sink(forwarder)
    stop = asyncio.Event()
    task = asyncio.create_task(forwarder.run(stop))
    datagrams = await receive(receiver, "ecs.task.info")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert not any(LOOP_CHECK.encode() in d for d in datagrams)


class Relay:
    """A UDP port that sends every datagram on to another: a NAT or port mapping back to the sidecar,
    which the configuration cannot see as a loop."""

    def __init__(self, to_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.to = ("127.0.0.1", to_port)
        self.datagrams: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            while not self._stop.is_set():
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    continue
                self.datagrams.append(data)
                out.sendto(data, self.to)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_a_loop_the_configuration_cannot_see_is_stopped_by_the_probe(sidecar_factory) -> None:  # type: ignore[no-untyped-def]
    from tests.support import free_port, wait_until

    statsd_port = free_port(socket.SOCK_DGRAM)
    relay = Relay(statsd_port)
    try:
        sidecar = sidecar_factory(TASKLENS_STATSD_ADDR=f"127.0.0.1:{statsd_port}", TASKLENS_FLUSH_INTERVAL="1",
                                  TASKLENS_DOGSTATSD_FORWARD=f"127.0.0.1:{relay.port}")
        sidecar.wait_ready()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as worker:
            for i in range(50):
                worker.sendto(f"jobs.{i}:1|c|#queue:orders".encode(), ("127.0.0.1", statsd_port))

        def forwarder() -> dict:  # type: ignore[type-arg]
            return json.loads(sidecar.get("/status")[1])["components"]["dogstatsd_forward"]

        wait_until(lambda: forwarder()["loop_detected"], 20, what="the loop to be detected")
        assert "loop" in forwarder()["last_error"]
        # from then on the loop carries the probe alone: one line per interval, not every line forever
        seen = len(relay.datagrams)
        # the worker's lines went round, or (when the probe came back first, on a busy machine) were
        # counted as dropped for the loop: never lost silently
        dropped = sum(float(line.rsplit(" ", 1)[1]) for line in sidecar.get("/metrics")[1].splitlines()
                      if line.startswith("tasklens_exporter_points_dropped_total{") and 'reason="loop"' in line)
        assert any(b"jobs.7:1|c|#" in d for d in relay.datagrams[:seen]) or dropped >= 1, dropped
        wait_until(lambda: len(relay.datagrams) >= seen + 10, 20, what="ten more intervals")
        later = relay.datagrams[seen + 2:]  # one or two may have been sent just before the pause
        assert later and all(d.startswith(f"_sc|{LOOP_CHECK}|0|".encode()) and b"\n" not in d for d in later)
        assert forwarder()["loop_detected"]  # the echo keeps renewing the pause
        assert sidecar.stop() == 0
        assert "loop: lines sent to 127.0.0.1" in sidecar.log
    finally:
        relay.close()
