"""Memory bounded by bytes and an event loop that never stalls, against the real process.

- The worst input within every StatsD limit (contexts at both tag limits until the context bytes budget
  refuses them, 60 KB events past the interval's event bytes, set members past their count and bytes)
  keeps the sidecar's RSS under the documented ceiling, a control counter sent alongside is exported
  exactly, every refusal is counted by reason, and the memory goes back after the TTL.
- A histogram flood past the per-interval histogram values is refused by line and counted, every value
  accepted is exported, and the memory stays bounded and goes back.
- With 100,000 live contexts and a 1 s flush, `/health` answers within 100 ms while the flushes run.
"""

from __future__ import annotations

import statistics
import time

import pytest

from bench.worst_case_memory import run as worst_case
from tests.support import Sidecar, wait_until
from agent.statsd.interval import Limits
from tests.reliability.support import (SteadyLoad, context_datagrams, histogram_flood, latency, memory_sidecar,
                                       rss_bytes, scrape, send_paced, status)

MIB = 1024 * 1024
# docs/guarantees.md and the README's Guarantees (bench/worst_case_memory.py): measured peak 392-404 MiB
# without the histogram flood; with a flood in two slots at TASKLENS_STATSD_MAX_HISTOGRAM_VALUES, up
# to 36 bytes a value come on top (the interval flushed: values, weights, running weights, sort index;
# the interval received: values), 275 MiB at 8,000,000: measured 536 MiB
RSS_CEILING = 512 * MIB
RSS_CEILING_FLOOD = 768 * MIB
# with a head storm on top (`--head-storm`: ~324,000 heads of one histogram context, as many as the first
# heads' bounds would take): the extra heads are bounded apart, charged what they hold (32 MiB: each key
# twice + 1,024 bytes), and forgotten alone when full: measured 386 MiB (776 MiB before, when they filled
# the head cache charged 128 bytes an entry). Within RSS_CEILING
RSS_CEILING_HEAD_STORM = RSS_CEILING
# with contexts sharing the same 100 tags instead (`--shared-tags`: 100,000 contexts, the Prometheus label bytes
# full at 64 MiB, /metrics scraped once a second): measured 397 MiB in the bench, 400 in this test (569-586
# MiB before a /metrics rendering was built as bytes a piece at a time, the last one let go first: 98700c6).
# Within RSS_CEILING
RSS_CEILING_SHARED_TAGS = RSS_CEILING


@pytest.mark.slow
@pytest.mark.parametrize("flood, heads, shared", [(False, False, False), (True, False, False),
                                                  (False, True, False), (False, False, True)],
                         ids=["without_flood", "with_histogram_flood", "with_head_storm", "with_shared_tags"])
def test_the_worst_input_within_the_limits_stays_under_the_rss_ceiling(tmp_path, flood: bool, heads: bool,
                                                                       shared: bool) -> None:
    result = worst_case(tmp_path, intervals=2, flush=5.0, flood=flood, heads=heads, shared=shared)
    print(f"RSS before {result.rss_before / MIB:.0f} MiB, peak {result.rss_peak / MIB:.0f} MiB, "
          f"after {result.rss_after / MIB:.0f} MiB; refused: {result.errors}; label bytes "
          f"{result.label_bytes_peak:.0f}, {result.scrapes} scrapes")
    assert result.rss_peak < (RSS_CEILING_FLOOD if flood else RSS_CEILING_HEAD_STORM if heads
                              else RSS_CEILING_SHARED_TAGS if shared else RSS_CEILING)
    if shared:  # every context live and the Prometheus sink's label bytes full, scraped throughout
        assert result.contexts_peak >= Limits().max_contexts - 64
        assert result.label_bytes_peak > 0.99 * 64 * MIB
        assert result.scrapes > 0
    assert result.control_exported == result.control_sent  # the control counter, exactly
    # every limit was reached, and each refusal counted under its reason
    assert result.errors.get("cardinality_limit", 0) > 0
    assert result.errors.get("event_limit", 0) > 0
    assert result.errors.get("set_limit", 0) > 0
    # and the memory goes back after the TTL: +12-14 MiB without the flood, +31-60 MiB with it (the
    # flood alone: +2-3 MiB; what the two together leave is not found yet); +67-89 MiB with shared tags
    # (not found yet either)
    assert result.rss_after < result.rss_before + (72 if flood else 112 if shared else 48) * MIB


@pytest.mark.parametrize("rates", [1, 2], ids=["one_rate", "two_rates"])
def test_a_histogram_flood_past_the_limit_is_refused_counted_and_its_memory_bounded(tmp_path, rates: int) -> None:
    per_line = 6_000
    sent = -(-2 * Limits().histogram_values // per_line) * per_line  # twice the limit, in full lines
    flood = histogram_flood(sent, per_line, rates=rates)  # distinct values: nothing to merge
    sidecar, before, sampler = memory_sidecar(tmp_path, flush=30.0)
    try:
        send_paced(sidecar, flood, step=200)  # within two 30 s intervals: one of them past the limit
        refused = status(sidecar)["components"]["statsd"]["parse_errors"].get("value_limit", 0)
        assert refused > 0  # whole lines, counted
        accepted = sent - refused * per_line
        wait_until(lambda: scrape(sidecar).value("flood_latency_count", flood="yes") == accepted, 70,
                   what="every accepted value in /metrics, exactly")
        peak = sampler.stop()
        print(f"RSS before {before / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB; {sent:,} values sent, "
              f"{refused * per_line:,} refused")
        # 8,000,000 values are 61 MiB: two intervals' of them, and at several rates their weights,
        # running weights and a sort index (28 bytes a value) at the flush
        # One rate: 8 bytes a value flushed, 8 for the next interval and 8 while a harvest is copied:
        # 183 MiB at most. Two slots: 8 + 8 + 4 + 8 flushed, 8 next: 275 MiB. Measured +104-172 MiB
        # and +213-270 MiB.
        assert peak < before + (256 if rates == 1 else 320) * MIB
        # the series TTL in effect is two 30 s flushes, looked at every 30 s
        wait_until(lambda: not any(n.startswith("flood_") for n, _, _ in scrape(sidecar).samples), 120,
                   interval=0.5, what="the flood's series gone after the TTL")
        after = min(rss_bytes(sidecar.proc.pid) for _ in range(20) if time.sleep(0.5) is None)
        print(f"RSS after the TTL {after / MIB:.0f} MiB")
        assert after < before + 24 * MIB
    finally:
        sidecar.stop()


@pytest.mark.slow
def test_health_answers_within_100_ms_during_flushes_of_100k_contexts(tmp_path) -> None:
    sidecar = Sidecar(tmp_path, TASKLENS_FLUSH_INTERVAL="1")
    load = None
    try:
        sidecar.wait_ready()
        datagrams = context_datagrams("storm", 100_000)
        send_paced(sidecar, datagrams)
        assert status(sidecar)["components"]["statsd"]["contexts"] == 100_000
        # the first flush makes 100,000 series: seconds of CPU on a loaded machine, before the measure
        wait_until(lambda: status(sidecar)["components"]["statsd"]["last_flush"] is not None, 120)
        load = SteadyLoad(sidecar.statsd_port, datagrams).start()  # every context live in every interval
        flushes, last = 0, status(sidecar)["components"]["statsd"]["last_flush"]
        took = []
        started = looked = time.monotonic()
        # at least ten seconds and five flushes of 100,000 contexts each (1 s intervals), however long
        # the flushes take on a loaded machine: /health is measured while they run
        while time.monotonic() - started < 10 or (flushes < 5 and time.monotonic() - started < 120):
            took.append(latency(sidecar.url + "/health"))
            if time.monotonic() - looked > 0.5:
                looked = time.monotonic()
                flushed = status(sidecar)["components"]["statsd"]["last_flush"]
                flushes, last = flushes + (flushed != last), flushed
        took.sort()
        p95 = took[int(len(took) * 0.95)]
        print(f"/health over {len(took)} requests and {flushes} flushes: median "
              f"{statistics.median(took) * 1000:.0f} ms, 95th percentile {p95 * 1000:.0f} ms, "
              f"slowest {took[-1] * 1000:.0f} ms")
        assert flushes >= 5
        assert load.rounds >= 5
        assert p95 < 0.1
        assert took[-1] < 5.0  # and never a stall like the one before (over 10 s): margin for a loaded machine
    finally:
        if load is not None:
            load.stop()
        sidecar.stop()


async def test_an_uncompressed_scrape_writes_the_rendering_without_a_copy_of_it(monkeypatch) -> None:
    """`/metrics` without gzip writes the sink's cached rendering as it is: joined with the sidecar's
    part, each scrape held a copy of it (~70 MB with the label bytes full: bench --shared-tags)."""
    import tracemalloc

    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from agent.http import make_app
    from agent.hub import Hub
    from agent.identity import Identity
    from agent.sinks.prometheus import PrometheusSink

    hub = Hub(Identity(service="orders"))
    sink = PrometheusSink(hub.metrics, pull=hub.pull)
    worker = b"big_total 1\n" * 2_000_000  # 24 MB, the worker's part as the sink keeps it between changes
    monkeypatch.setattr(sink, "render_parts", lambda openmetrics=False: [worker, b"tail 1\n"])
    server = TestServer(make_app(hub, sink, lambda: True, dict))
    await server.start_server()
    try:
        async with ClientSession() as session:
            tracemalloc.start()
            try:
                body = []
                async with session.get(server.make_url("/metrics"), headers={"Accept-Encoding": "identity"}) as response:
                    async for chunk in response.content.iter_chunked(1 << 16):
                        body.append(hash(chunk))  # read, not kept
                        if len(body) == 1:
                            first = chunk
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    finally:
        await server.close()
    assert response.content_length == len(worker) + len(b"tail 1\n")
    assert first == worker[:len(first)]
    assert peak < len(worker) // 4  # before: the body joined, 24 MB
