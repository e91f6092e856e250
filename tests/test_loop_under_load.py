"""What keeps the event loop free under the worst load, each checked for what it must not change:
the gzip of `/metrics` continued from a kept state, reused slow renderings, gradual series expiry,
flushes handed to the sinks in slices, and the GC freeze after a large flush."""

from __future__ import annotations

import asyncio
import gc
import time
import zlib

from hypothesis import given, settings, strategies as st

from agent.config import load
from agent.http import GzipCache
from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Kind, Sample
from agent.selfmetrics import SelfMetrics
from agent.sinks import prometheus
from agent.sinks.prometheus import PrometheusSink
from agent.statsd import server
from agent.statsd.server import StatsdServer, paused_gc
from tests.support import Recorder


def gunzip(body: bytes) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(body) + d.flush()
    assert d.eof and not d.unused_data  # one complete gzip member, nothing after it
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.lists(st.binary(max_size=3000), min_size=1, max_size=4)),
                min_size=1, max_size=8))
def test_gzip_continued_from_a_kept_state_is_the_whole_body(scrapes: list[tuple[int, list[bytes]]]) -> None:
    """Whatever the parts and however the first part is kept or replaced between scrapes, each body
    is one gzip member of exactly the parts joined."""
    cache, firsts = GzipCache(), [b"", b"a" * 70_000, bytes(range(256)) * 50]
    for which, rest in scrapes:
        parts = [firsts[which]] + rest
        assert gunzip(cache.compress("key", parts)) == b"".join(parts)


def test_gzip_compresses_the_first_part_once_per_object() -> None:
    cache, first = GzipCache(), b"worker series\n" * 10_000
    a = cache.compress(False, [first, b"sidecar 1\n"])
    kept = cache._kept[False]
    b = cache.compress(False, [first, b"sidecar 2\n"])
    assert cache._kept[False] is kept  # the same object: continued, not compressed again
    assert gunzip(a).endswith(b"sidecar 1\n") and gunzip(b).endswith(b"sidecar 2\n")
    changed = b"worker series\n" * 9_999  # equal bytes or not, another object is compressed anew
    assert gunzip(cache.compress(False, [changed, b"x"])) == changed + b"x"
    assert cache._kept[False] is not kept


def test_gzip_keeps_a_memoryview_first_part_weakly() -> None:
    """The sink's rendering (a memoryview) is not kept alive by the gzip state kept for it: once the
    sink and the scrapes let it go, the state and output go too; compressed anew for the next."""
    import weakref

    cache = GzipCache()
    first = memoryview(b"worker series\n" * 10_000)
    gone = weakref.ref(first)
    assert gunzip(cache.compress(True, [first, b"x"])) == bytes(first) + b"x"
    kept = cache._kept[True]
    assert gunzip(cache.compress(True, [first, b"y"])).endswith(b"y") and cache._kept[True] is kept
    del first, kept
    gc.collect()
    assert gone() is None and True not in cache._kept
    again = memoryview(b"worker series\n" * 9_999)
    assert gunzip(cache.compress(True, [again, b"z"])) == bytes(again) + b"z"

def make() -> tuple[Hub, PrometheusSink, list[float]]:
    clock = [1000.0]
    hub = Hub(Identity(service="orders"), SelfMetrics())
    sink = PrometheusSink(hub.metrics, pull=hub.pull, ttl=60, clock=lambda: clock[0])
    hub.add_sink(sink)
    return hub, sink, clock


def test_a_slow_rendering_is_reused_until_twice_its_time_has_passed(monkeypatch) -> None:
    hub, sink, _ = make()
    hub.publish(Batch("statsd", [Sample("g", 1.0)]))
    first = sink.render()
    hub.publish(Batch("statsd", [Sample("g", 2.0)]))
    assert b"g{" in first and sink.render() != first  # fast renderings: new data, new rendering
    monkeypatch.setattr(prometheus, "SLOW_RENDER", -1.0)  # every rendering counts as slow
    monkeypatch.setattr(prometheus, "RENDER_SPACING", 1e6)
    hub.publish(Batch("statsd", [Sample("g", 3.0)]))
    slow = sink.render()  # rendered (the data changed), and this rendering counts as slow
    hub.publish(Batch("statsd", [Sample("g", 4.0)]))
    assert b"} 3.0\n" in slow and sink.render() == slow  # reused although the data changed
    monkeypatch.setattr(prometheus, "RENDER_SPACING", 0.0)
    assert b"} 4.0\n" in sink.render()  # once the spacing has passed: the new data


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 120)), min_size=1, max_size=300),
       st.integers(1, 50))
def test_gradual_expiry_forgets_exactly_what_expire_forgets(series: list[tuple[int, int]], chunk: int) -> None:
    """Any mix of series ages and any chunk size: the same series are left, the same count returned."""
    monkey = prometheus.EXPIRE_CHUNK
    prometheus.EXPIRE_CHUNK = chunk
    try:
        results = []
        for gradual in (False, True):
            hub, sink, clock = make()
            for i, age in series:  # several names per tag set, several tag sets
                clock[0] = 1000.0 - age
                hub.publish(Batch("statsd", [Sample(f"m{i % 7}", 1.0, Kind.GAUGE, (("t", str(i // 7)),))]))
            clock[0] = 1000.0
            n = asyncio.run(sink.expire_gradually()) if gradual else sink.expire()
            results.append((n, sink.live, sink.label_bytes, sink.render()))
        assert results[0] == results[1]
    finally:
        prometheus.EXPIRE_CHUNK = monkey


def test_a_flush_reaches_the_sinks_in_slices_each_sample_once_in_order(monkeypatch) -> None:
    monkeypatch.setattr(server, "PUBLISH_TURN", 1e-7)  # every slice "took too long": the smallest ones
    hub = Hub(Identity(service="orders"), SelfMetrics())
    recorder = Recorder()
    hub.add_sink(recorder)
    statsd = StatsdServer(load({}), hub)
    n = 25_000
    data = b"\n".join(b"c%d:1|c" % i for i in range(n)) + b"\n_e{2,2}:ti|tx"
    statsd.aggregator.ingest_joined(data, 1, len(data))

    async def publish() -> None:
        await statsd._publish(statsd.aggregator.swap())

    asyncio.run(publish())
    names = [s.name for b in recorder.batches for s in b.samples]
    assert sorted(names) == sorted(f"c{i}" for i in range(n)) and len(names) == n
    assert len(recorder.batches) > 10 and all(len(b.samples) <= 1000 for b in recorder.batches)
    assert [len(b.events) for b in recorder.batches if b.events] == [1] and recorder.batches[0].events
    assert all(s.tags[0] == ("service", "orders") for b in recorder.batches for s in b.samples)


def test_a_flush_that_leaves_many_objects_freezes_them_out_of_the_gc() -> None:
    frozen = gc.get_freeze_count()
    with paused_gc():
        kept = [[i] for i in range(server.FREEZE_ABOVE * 2)]  # lists: tracked by the GC
    assert gc.get_freeze_count() >= frozen + len(kept)
    assert gc.isenabled()
    gc.unfreeze()  # leave the test process as it was
    with paused_gc():
        few = [[i] for i in range(10)]
    assert gc.get_freeze_count() == 0 and few


def test_metrics_written_in_pieces_keep_head_bodiless_and_the_connection_usable(sidecar_factory) -> None:
    """`/metrics` is written a piece at a time; a HEAD request still gets no body, so the next response
    on the same keep-alive connection is read as itself, and a GET gets all of the exposition."""
    import http.client
    import socket

    from agent.http import WRITE_CHUNK
    from tests.support import wait_until

    sidecar = sidecar_factory(TASKLENS_FLUSH_INTERVAL="1")
    sidecar.wait_ready()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # an exposition of several pieces
        for i in range(0, 6000, 20):
            s.sendto(b"\n".join(b"pieces.m%d:1|c|#k:%s" % (j, b"v" * 150) for j in range(i, i + 20)),
                     ("127.0.0.1", sidecar.statsd_port))
            time.sleep(0.001)
    wait_until(lambda: sidecar.get("/metrics")[1].count("\npieces_m") == 6000, 30, what="every series")
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.http_port, timeout=30)
    try:
        conn.request("HEAD", "/metrics")
        head = conn.getresponse()
        assert head.status == 200 and head.read() == b""
        conn.request("GET", "/health")
        health = conn.getresponse()
        assert health.status == 200 and b'"ok"' in health.read()
        conn.request("GET", "/metrics")
        body = conn.getresponse()
        text = body.read()
        assert body.status == 200 and len(text) == int(body.getheader("Content-Length", "-1"))
        assert len(text) > WRITE_CHUNK and text.count(b"\npieces_m") == 6000 and text.endswith(b"\n")
    finally:
        conn.close()
