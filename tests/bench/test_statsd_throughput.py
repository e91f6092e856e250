"""The StatsD benchmark's own arithmetic: what it expects a lossless server to count, how it reads
each server's counts, and that its senders and drop counter work on real sockets."""

from __future__ import annotations

import random
import socket
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from statsd_peers import traffic  # noqa: E402
from statsd_peers.collectd import read_csv_dir  # noqa: E402
from statsd_peers.etsy import etsy_key  # noqa: E402
from statsd_peers.measure import send, udp_drops  # noqa: E402
from statsd_peers.netdata import parse_allmetrics  # noqa: E402
from statsd_peers.sidecar import parse_metrics  # noqa: E402

Context = traffic.Context


def brute_force(pools: list[traffic.Pool], windows: list[tuple[int, int]]) -> tuple[int, Counter, dict]:
    """Re-read the bytes that were sent, line by line: lines, sums by (name, tags), last gauges."""
    lines, sums, gauges = 0, Counter(), {}
    for pool, (start, count) in zip(pools, windows):
        for i in range(start, start + count):
            for line in pool.datagrams[i % len(pool.datagrams)].decode().split("\n"):
                lines += 1
                head, _, tag_text = line.partition("|#")
                name_value, _, kind = head.partition("|")
                name, _, value = name_value.partition(":")
                tags = tuple(tuple(t.split(":")) for t in tag_text.split(",")) if tag_text else ()
                if kind == "c":
                    sums[(name, tags)] += float(value)
                elif kind in ("ms", "h", "d"):
                    sums[(name, tags)] += 1
                elif kind == "g":
                    gauges[(name, tags)] = float(value)
    return lines, sums, gauges


@pytest.mark.parametrize("variant", ["tagged", "plain"])
def test_tally_matches_the_bytes_sent_across_cycles(variant: str) -> None:
    contexts = traffic.make_contexts(60, random.Random(3))
    pools = traffic.make_pools(contexts, variant, senders=2, datagrams=40, seed=3)
    assert [len(p.datagrams) for p in pools] == [20, 20]
    # sender 0 wraps around its pool twice and stops mid-cycle; sender 1 sends one datagram
    windows = [(7, 53), (19, 1)]
    key = lambda c: (c.name, c.tags) if c.kind in traffic.SUMMED else None  # noqa: E731
    gauge_key = lambda c: (c.name, c.tags) if c.kind == "g" else None  # noqa: E731
    got = traffic.tally(pools, windows, key, gauge_key)
    lines, sums, gauges = brute_force(pools, windows)
    assert got.lines == lines
    assert got.datagrams == 54
    assert got.sums == dict(sums)
    assert got.gauges == gauges


def test_tally_aggregates_by_the_servers_key() -> None:
    # a server that drops tags sums every context of a name into one key
    ctx = [Context("a.b.c", "c", (("queue", "orders"),)), Context("a.b.c", "c", (("queue", "emails"),))]
    pool = traffic.Pool([b"x", b"y"], [[(0, 2), (1, 5)], [(1, 1)]], ctx)
    got = traffic.tally([pool], [(1, 3)], lambda c: c.name, lambda c: None)  # y, x, y
    assert got.lines == 4
    assert got.sums == {"a.b.c": 1 + 2 + 5 + 1}
    assert got.gauges == {}


def test_datagrams_and_variants() -> None:
    contexts = traffic.make_contexts(500, random.Random(1))
    assert len(set(contexts)) == 500
    assert all(2 <= len(c.tags) <= 6 for c in contexts)
    for variant in ("tagged", "plain"):
        pools = traffic.make_pools(contexts, variant, senders=2, datagrams=200, seed=1)
        for pool in pools:
            for dgram, entries in zip(pool.datagrams, pool.entries):
                assert len(dgram) <= traffic.MAX_DATAGRAM
                assert dgram.count(b"\n") + 1 == len(entries)
        kinds = {c.kind for p in pools for c in p.contexts}
        assert kinds == ({"c", "g", "ms", "h", "d", "s"} if variant == "tagged" else {"c", "g", "ms", "s"})
    wire = Context("app.jobs.done", "h", (("queue", "orders"), ("tier", "pro"))).wire("plain")
    assert wire == Context("app.jobs.done.orders.pro", "ms", ())
    assert traffic.format_line(Context("a.b", "c", (("k", "v"), ("x", "y"))), 3) == b"a.b:3|c|#k:v,x:y"


def test_senders_send_exactly_the_pool_in_order() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        rx.bind(("127.0.0.1", 0))
        pools = [[b"a%d" % i for i in range(7)], [b"b%d" % i for i in range(5)]]
        sent = send(pools, [5, 0], datagrams_per_second=400, seconds=0.25, addr=rx.getsockname(), core=None)
        assert [s.datagrams for s in sent] == [50, 50]
        assert [s.errors for s in sent] == [0, 0]
        rx.settimeout(2)
        got = [rx.recv(100) for _ in range(100)]
    # each sender's own order is kept: sender 0 starts at its 6th datagram and wraps around
    assert [d for d in got if d[:1] == b"a"] == [pools[0][(5 + i) % 7] for i in range(50)]
    assert [d for d in got if d[:1] == b"b"] == [pools[1][i % 5] for i in range(50)]


def test_udp_drops_counts_what_the_kernel_dropped() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
         socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel's minimum: fills at once
        rx.bind(("127.0.0.1", 0))
        port = rx.getsockname()[1]
        assert udp_drops(port) == 0
        for _ in range(200):
            tx.sendto(b"x" * 1400, ("127.0.0.1", port))
        rx.setblocking(False)
        received = 0
        while True:
            try:
                rx.recv(2000)
            except BlockingIOError:
                break
            received += 1
        assert 0 < received < 200
        assert udp_drops(port) == 200 - received
    assert udp_drops(port) is None  # closed: no socket on that port


def test_sidecar_metrics_keyed_by_our_tags_only() -> None:
    text = """\
# TYPE app_jobs_done counter
app_jobs_done_total{queue="orders",service="bench",env=""} 5.0
# TYPE app_jobs_wait histogram
app_jobs_wait_bucket{queue="orders",service="bench",le="+Inf"} 3.0
app_jobs_wait_count{queue="orders",service="bench"} 3.0
app_jobs_wait_sum{queue="orders",service="bench"} 0.5
# TYPE app_depth gauge
app_depth{shard="s1",tier="pro",service="bench"} 42.0
# TYPE tasklens_statsd_lines counter
tasklens_statsd_lines_total{listener="udp",service="bench"} 7.0
tasklens_statsd_lines_total{listener="uds",service="bench"} 4.0
# TYPE tasklens_statsd_parse_errors counter
tasklens_statsd_parse_errors_total{reason="bad_type",service="bench"} 2.0
"""
    reading = parse_metrics(text)
    assert reading.lines == 11.0
    assert reading.values[("app_jobs_done_total", frozenset({("queue", "orders")}))] == 5.0
    assert reading.values[("app_jobs_wait_count", frozenset({("queue", "orders")}))] == 3.0
    assert reading.values[("app_depth", frozenset({("shard", "s1"), ("tier", "pro")}))] == 42.0
    assert reading.extra["tasklens_statsd_parse_errors_total{bad_type}"] == 2.0


def test_netdata_allmetrics() -> None:
    # as netdata 1.37 prints it (`source=as-collected`), trimmed
    text = """\
netdata_netdata_statsd_events_total{chart="netdata.statsd_events",family="statsd",dimension="gauges"} 5 1795675800440
netdata_netdata_statsd_events_total{chart="netdata.statsd_events",family="statsd",dimension="counters"} 10 1795675800440
netdata_netdata_statsd_events_total{chart="netdata.statsd_events",family="statsd",dimension="errors"} 1 1795675800440
netdata_statsd_g_x_gauge{chart="statsd_g.x_gauge",family="gauges",dimension="gauge"} 7000 1795675820406
netdata_statsd_jobs_done_counter_total{chart="statsd_jobs.done_counter",family="counters",dimension="counter"} 15 1795675820406
netdata_statsd_lat_x_timer{chart="statsd_lat.x_timer",family="timers",dimension="min"} 3500 1795675820406
"""
    reading = parse_allmetrics(text)
    assert reading.lines == 16
    assert reading.values == {("c", "jobs.done"): 15, ("g", "g.x"): 7.0}
    assert reading.extra == {"errors": 1}


def test_collectd_csv(tmp_path: Path) -> None:
    d = tmp_path / "bench" / "statsd"
    d.mkdir(parents=True)
    (d / "derive-app.jobs.done-2026-11-25").write_text("epoch,value\n1.0,5\n")
    (d / "derive-app.jobs.done-2026-11-26").write_text("epoch,value\n2.0,9\n3.0,12\n")
    (d / "gauge-app.depth-2026-11-26").write_text("epoch,value\n2.0,3.000000\n3.0,4.500000\n")
    (d / "gauge-app.wait-count-2026-11-26").write_text("epoch,value\n2.0,4.000000\n3.0,nan\n4.0,2.000000\n")
    (d / "latency-app.wait-average-2026-11-26").write_text("epoch,value\n2.0,0.003\n")
    assert read_csv_dir(tmp_path) == {("c", "app.jobs.done"): 12, ("g", "app.depth"): 4.5, ("ms", "app.wait"): 6}


def test_etsy_key() -> None:
    assert etsy_key(Context("app.jobs.done", "c", (("queue", "orders"), ("tier", "pro")))) == \
        "app.jobs.done;queue=orders;tier=pro"
    assert etsy_key(Context("a/b c", "c", ())) == "a-b_c"
