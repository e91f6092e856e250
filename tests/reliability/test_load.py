"""Load: StatsD at a steady rate alongside ECS and queue polling and a scrape every second.

Nothing is lost (every counter sum exported equals what was sent), the kernel dropped nothing, the
flush stays well within its interval, the other sources keep working, and RSS stays flat after the
warm-up. The suite runs 20 s at 100,000 lines/s; `bench/soak.py` runs minutes at higher rates.
"""

from __future__ import annotations

import pytest

from tests.reliability.scenarios import DD_AGENT_WORKING_SET, QUEUE_DEPTH, run_load

SECONDS = 20.0
LINES_PER_SECOND = 100_000
WARMUP = 6.0


@pytest.mark.slow
def test_steady_load_loses_nothing_and_memory_stays_flat(tmp_path, record_property) -> None:
    r = run_load(tmp_path, SECONDS, LINES_PER_SECOND)
    slope = r.rss_slope(WARMUP)
    growth = r.rss_growth(WARMUP)
    numbers = {"lines_sent": r.lines_sent, "lines_received": r.lines_received, "datagrams_sent": r.datagrams_sent,
               "datagrams_received": r.packets_received, "kernel_drops": r.socket_drops,
               "series_exact": r.exported == r.expected, "lines_per_second": round(r.lines_sent / r.seconds),
               "rss_mib_start": round(r.rss[0][1] / 2**20, 1), "rss_mib_end": round(r.rss[-1][1] / 2**20, 1),
               "rss_slope_kib_per_s": round(slope / 1024, 2), "rss_growth_after_warmup_mib": round(growth / 2**20, 2),
               "max_flush_seconds": max(r.flush_durations), "max_scrape_seconds": max(r.extra["scrape_seconds"]),
               "cpu_seconds": round(r.extra["cpu_seconds"], 2)}
    for k, v in numbers.items():
        record_property(k, v)
    print("load:", numbers)

    # kept: every line, every counter sum, exactly
    assert r.lines_sent >= 0.9 * SECONDS * LINES_PER_SECOND
    assert (r.lines_received, r.socket_drops, r.parse_errors) == (r.lines_sent, 0, 0), numbers
    assert r.packets_received == r.datagrams_sent, numbers
    assert r.exported == r.expected, numbers
    assert sum(r.exported.values()) == sum(r.expected.values())
    # the other sources kept working alongside
    assert r.queue_depth == QUEUE_DEPTH and r.queue_poll_errors == 0
    assert r.working_set == DD_AGENT_WORKING_SET and r.ecs_poll_errors == 0
    assert r.extra["ecs_polls"] >= SECONDS / 2 and r.extra["queue_polls"] >= SECONDS / 2
    # the flush is a small fraction of its interval, every time it was looked at
    assert max(r.flush_durations) < r.flush_interval / 4
    # flat memory: under 2 MiB of growth after the warm-up (a leak of one small object per line
    # would be ~100 MiB here)
    assert growth < 2 * 2**20, numbers
    assert r.extra["exit_code"] == 0
