"""The fast `/metrics` renderer gives what prometheus_client's `generate_latest` gives for the same sink."""

from __future__ import annotations

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.hub import Hub
from agent.identity import Identity
from agent.model import Batch, Kind, Points, Sample
from agent.sinks.prometheus import PrometheusSink


def families(text: str) -> list[tuple[str, str, str, list[tuple[str, tuple[tuple[str, str], ...], float]]]]:
    return [(f.name, f.type, f.documentation,
             [(s.name, tuple(sorted(s.labels.items())), s.value) for s in f.samples])
            for f in text_string_to_metric_families(text)]


def make() -> tuple[Hub, PrometheusSink]:
    hub = Hub(Identity(service="orders", env="prod", task_id="abc"))
    sink = PrometheusSink(hub.metrics, pull=hub.pull, buckets=(0.01, 0.1, 1.0))
    hub.add_sink(sink)
    return hub, sink


def test_same_families_samples_and_text_as_generate_latest() -> None:
    hub, sink = make()
    hub.publish(Batch("ecs", [
        Sample("ecs.container.memory.working_set_bytes", 156966912, tags=(("container_name", "dd-agent"),)),
        Sample("ecs.container.io.read_bytes_total", 1e20, Kind.COUNTER, (("container_name", "app"),)),
    ], snapshot=True))
    hub.publish(Batch("statsd", [
        Sample("jobs.done", 3, Kind.COUNT, (("queue", "a"), ("canary", "")), interval=10),
        Sample("jobs.done", 4, Kind.COUNT, (("queue", "b"),), interval=10),
        Sample("lat", Points((5.0, 50.0, 5000.0), (1, 1, 2), milliseconds=True), Kind.HISTOGRAM),
        Sample("weird", 1.5, tags=(("path", 'C:\\dir "x"\nnext'), ("a-b", "c"))),
        Sample("tiny", 1e-7), Sample("nan", float("nan")), Sample("inf", float("-inf")),
    ]))
    fast = sink.render().decode()
    slow = generate_latest(sink.registry).decode()
    assert str(families(fast)) == str(families(slow))  # str: NaN != NaN
    assert fast == slow  # byte for byte, even
    assert "ecs_container_io_read_bytes_total{" in fast and "1e+20" in fast and "_total_total" not in fast


def test_type_conflicts_are_skipped_and_counted() -> None:
    hub, sink = make()
    hub.publish(Batch("statsd", [Sample("lat", Points((5.0,), (1,)), Kind.HISTOGRAM),
                                 Sample("lat", 2.0, Kind.GAUGE, (("other", "1"),))]))
    fast = sink.render().decode()
    assert "lat_count" in fast and 'other="1"' not in fast
    assert sink.metrics.get("tasklens.sink.points_rejected", sink="prometheus", reason="type_conflict") == 1


def test_openmetrics_is_the_same_data_in_its_own_rules() -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

    hub, sink = make()
    hub.publish(Batch("statsd", [
        Sample("jobs.done", 3, Kind.COUNT, (("queue", "a"),), interval=10),
        Sample("lat", Points((5.0, 50.0, 5000.0), (1, 1, 2.5), milliseconds=True), Kind.HISTOGRAM),  # @0.4
        Sample("neg", Points((-1.0,), (1.0,)), Kind.HISTOGRAM),
        Sample("help", 1.0, tags=(("q", 'say "hi"'),)),
    ]))
    text = sink.render(openmetrics=True).decode()
    assert text.endswith("# EOF\n") and "# TYPE jobs_done counter\n" in text
    got = {(f.name, s.name, tuple(sorted(s.labels.items()))): s.value
           for f in openmetrics_families(text) for s in f.samples}
    ident = (("env", "prod"), ("service", "orders"), ("task_id", "abc"))
    assert got[("jobs_done", "jobs_done_total", tuple(sorted(ident + (("queue", "a"),))))] == 3
    # integer counts in OpenMetrics (4.5 weighted observations -> 4 or 5, the same for +Inf and _count)
    inf = got[("lat", "lat_bucket", tuple(sorted(ident + (("le", "+Inf"),))))]
    assert inf == got[("lat", "lat_count", ident)] == round(4.5)
    assert abs(got[("lat", "lat_sum", ident)] - (0.005 + 0.05 + 12.5)) < 1e-9
    # a negative sum cannot be written in OpenMetrics: buckets only
    assert ("neg", "neg_sum", ident) not in got and got[("neg", "neg_bucket", tuple(sorted(ident + (("le", "+Inf"),))))] == 1
    assert "neg_sum" in sink.render().decode()  # the text format has it


def test_the_worker_part_is_rendered_once_per_change() -> None:
    hub, sink = make()
    hub.publish(Batch("statsd", [Sample("g", 1.0)]))
    first = sink.render()
    cached = sink._cache[False][1]
    assert sink.render() == first and sink._cache[False][1] is cached  # nothing changed: reused
    hub.publish(Batch("statsd", [Sample("g", 2.0)]))
    assert b"\ng{" in sink.render() and sink._cache[False][1] is not cached
    assert b'g{env="prod",service="orders",task_id="abc"} 2.0' in sink.render()


async def test_metrics_endpoint_negotiation_and_gzip() -> None:
    import gzip

    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from agent.http import make_app

    hub, sink = make()
    hub.publish(Batch("statsd", [Sample("jobs.done", 3, Kind.COUNT, (("queue", "a"),), interval=10)]))
    server = TestServer(make_app(hub, sink, lambda: True, dict))
    await server.start_server()
    try:
        async with ClientSession(auto_decompress=False) as session:
            prometheus_accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                                 "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
            async with session.get(server.make_url("/metrics"),
                                   headers={"Accept": prometheus_accept, "Accept-Encoding": "gzip"}) as r:
                assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                assert r.headers["Content-Encoding"] == "gzip"
                text = gzip.decompress(await r.read()).decode()
            assert 'jobs_done_total{queue="a",service="orders",task_id="abc",env="prod"}' not in text  # sorted
            assert 'jobs_done_total{env="prod",queue="a",service="orders",task_id="abc"} 3.0' in text
            async with session.get(server.make_url("/metrics"), headers={"Accept-Encoding": "identity"}) as r:
                assert "Content-Encoding" not in r.headers and "jobs_done_total" in (await r.text())
            async with session.get(server.make_url("/metrics"),
                                   headers={"Accept": "application/openmetrics-text; version=1.0.0",
                                            "Accept-Encoding": "identity"}) as r:
                assert r.headers["Content-Type"].startswith("application/openmetrics-text")
                assert (await r.text()).rstrip().endswith("# EOF")
    finally:
        await server.close()


@pytest.mark.parametrize("accept, openmetrics", [
    ("", False),
    ("*/*", False),
    ("text/plain", False),
    ("application/openmetrics-text", True),
    ("APPLICATION/OpenMetrics-Text; Version=1.0.0", True),  # media types are case-insensitive
    ("text/plain;q=0, application/openmetrics-text", True),  # q=0: "not acceptable"
    ("text/plain; q=0.0, */*", True),
    ("text/*;q=0, application/openmetrics-text;q=0.2", True),
    ("text/*;q=0, text/plain;q=0.1, application/openmetrics-text", False),  # the most specific range wins
    ("application/openmetrics-text;q=0, text/plain;q=0", False),  # neither: the text format anyway
    ("application/openmetrics-text;q=0", False),
    ("application/openmetrics-text;q=nan", False),
    ("application/openmetrics-text;q=2", False),
    ("application/json", False),
])
def test_negotiation_reads_media_ranges_and_their_q(accept: str, openmetrics: bool) -> None:
    from agent.http import negotiate

    assert negotiate(accept) is openmetrics


@pytest.mark.parametrize("accept_encoding, gzip", [
    ("", False), ("identity", False), ("gzip", True), ("GZIP", True), ("deflate, gzip;q=0.5", True),
    ("gzip;q=0, identity", False), ("*", True), ("*;q=0", False), ("gzip;q=0, *", False), ("x-gzip", False),
])
def test_gzip_only_when_the_scraper_takes_it(accept_encoding: str, gzip: bool) -> None:
    from agent.http import quality

    assert (quality(accept_encoding, "gzip") > 0) is gzip


async def test_concurrent_scrapes_share_one_rendering_off_the_event_loop() -> None:
    import asyncio
    import threading
    from typing import Any

    from aiohttp import ClientSession, web
    from aiohttp.test_utils import TestServer

    from agent.http import make_app

    hub, sink = make()
    hub.publish(Batch("statsd", [Sample("g", float(i), tags=(("i", str(i)),)) for i in range(2000)]))
    calls: list[str] = []
    gate = threading.Event()
    render_parts = sink.render_parts

    def slow_render(openmetrics: bool = False) -> list[bytes]:
        calls.append(threading.current_thread().name)
        gate.wait(10)  # hold the rendering until every scrape has arrived
        return render_parts(openmetrics)

    sink.render_parts = slow_render  # type: ignore[method-assign]
    worker_families = sink._worker_families
    worker_renderings: list[bool] = []

    def counted(*args: Any) -> Any:
        worker_renderings.append(True)
        return worker_families(*args)

    sink._worker_families = counted  # type: ignore[method-assign]
    app = make_app(hub, sink, lambda: True, dict)
    arrived: list[str] = []

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        arrived.append(request.path)
        return await handler(request)

    app.middlewares.append(count)
    server = TestServer(app)
    await server.start_server()
    try:
        async with ClientSession() as session:
            async def scrape() -> str:
                async with session.get(server.make_url("/metrics")) as r:
                    return await r.text()

            scrapes = [asyncio.create_task(scrape()) for _ in range(20)]
            while arrived.count("/metrics") < 20:  # every scrape is in the handler, waiting
                await asyncio.sleep(0.01)
            async with session.get(server.make_url("/health")) as r:  # the loop answers meanwhile
                assert r.status == 200
            gate.set()
            bodies = await asyncio.gather(*scrapes)
    finally:
        await server.close()
    # one rendering at a time, off the event loop; the worker's series rendered once for all
    assert calls and threading.main_thread().name not in calls
    assert worker_renderings == [True]
    def worker_part(body: str) -> list[str]:  # the sidecar's own series differ (the scrape count)
        return [line for line in body.splitlines() if "tasklens_" not in line]

    assert all(worker_part(body) == worker_part(bodies[0]) and 'g{env="prod",i="1999"' in body for body in bodies)
    assert hub.metrics.get("tasklens.http.scrapes") == 20


def test_rendering_in_a_thread_while_batches_arrive_and_expire() -> None:
    """accept/expire under the sink's lock on one side, render (no lock) on the other: every rendering
    parses, with one series per label set, while series come and go."""
    import threading

    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

    from agent.sinks.prometheus import PrometheusSink

    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    hub = Hub(Identity(service="orders"))
    sink = PrometheusSink(hub.metrics, pull=hub.pull, ttl=5, clock=clock, identity=lambda: hub.identity.tags)
    hub.add_sink(sink)
    done = threading.Event()
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            for round_ in range(200):
                clock.now += 1
                hub.publish(Batch("statsd", [Sample(f"m{(round_ + i) % 300}", 1.0, Kind.COUNT, (("i", str(i % 7)),))
                                             for i in range(50)] + [Sample("lat", Points((0.5,), (1.0,)), Kind.HISTOGRAM)]))
                sink.expire()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            done.set()

    feeder = threading.Thread(target=feed)
    feeder.start()
    renderings = 0
    while not done.is_set() or renderings < 5:
        for openmetrics in (False, True):
            text = sink.render(openmetrics).decode()
            parse = openmetrics_families if openmetrics else text_string_to_metric_families
            seen = [(s.name, tuple(sorted(s.labels.items()))) for f in parse(text) for s in f.samples]
            assert len(seen) == len(set(seen))
            renderings += 1
    feeder.join()
    assert not errors and renderings >= 5
    assert sink.metrics.get("tasklens.sink.errors", sink="prometheus") == 0


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_a_new_rendering_takes_little_memory_beyond_the_body_it_replaces(openmetrics: bool, gzip: bool,
                                                                         monkeypatch) -> None:
    """The worker's part is built as bytes a piece at a time, and the last rendering (and a gzip state
    kept for it) is let go before the next one is made. The memory traced while the data changed and
    was rendered again (with gzip: and compressed), above what was held before, stays under a fifth of
    the body: it was 2.08x (the lines, their join, its encoding, beside the last rendering: with the
    label bytes full, ~145 MB above the 70 MB held; bench/worst_case_memory.py --shared-tags)."""
    import gc
    import tracemalloc

    from agent.http import GzipCache
    from agent.sinks import prometheus

    monkeypatch.setattr(prometheus, "RENDER_SPACING", 0.0)  # however slow it was, rendered again
    hub, sink = make()
    tags = tuple((f"k{j:02d}", "v" * 34) for j in range(100))  # contexts sharing the same 100 tags
    gzipped = GzipCache()

    def scrape() -> int:
        parts = sink.render_parts(openmetrics)
        if gzip:
            gzipped.compress(openmetrics, parts)
        return sum(map(len, parts))

    tracemalloc.start()  # from the start: the last rendering, freed during the next, counts as freed
    try:
        hub.publish(Batch("statsd", [Sample(f"shared.{i}", 1.0, Kind.COUNT, tags, interval=10) for i in range(2000)]))
        size = scrape()
        hub.publish(Batch("statsd", [Sample("shared.0", 1.0, Kind.COUNT, tags, interval=10)]))  # the data changed
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        assert scrape() == size
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size > 8_000_000 and sink._cache[openmetrics][0] == sink.version  # rendered again, for the new data
    assert peak - before < size / 5, f"{(peak - before) / size:.2f}x the body"
