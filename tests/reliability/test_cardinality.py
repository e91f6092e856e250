"""Cardinality storm: 1,000,000 one-off metric names against a cap of 20,000 contexts.

The cap holds, the contexts that existed before keep exact values, every refused name is counted,
the one-off contexts expire after the TTL (and new names are accepted again), and memory returns
near its baseline. The storm runs once for the module; each test checks one promise.
"""

from __future__ import annotations


import pytest

from tests.reliability.scenarios import KEEP, StormResult, run_storm

NAMES = 1_000_000
CAP = 20_000
TTL = 40.0  # longer than the storm takes to send (5-12 s on a quiet machine, 22-44 s seen under load)
MIB = 2**20


@pytest.fixture(scope="module")
def storm(tmp_path_factory: pytest.TempPathFactory) -> StormResult:
    r = run_storm(tmp_path_factory.mktemp("storm"), NAMES, CAP, TTL)
    print("storm:", {"seconds_sending": round(r.seconds_sending, 2), "rss_mib_baseline": round(r.rss_baseline / MIB, 1),
                     "rss_mib_peak": round(r.rss_peak / MIB, 1), "rss_mib_after_ttl": round(r.rss_after_ttl / MIB, 1),
                     "scrape_seconds": round(r.scrape_seconds, 2)})
    return r


@pytest.mark.slow
def test_a_million_one_off_names_hit_the_cap_and_are_counted(storm: StormResult) -> None:
    r = storm
    assert r.seconds_sending < TTL, "the storm outlasted the TTL: raise TTL for this machine"
    accepted = CAP - KEEP  # the storm names that found room under the cap
    assert r.lines_received == r.lines_sent
    # the cap held: exactly CAP contexts, the first `accepted` storm names among them
    assert r.contexts_after_storm == CAP
    assert r.storm_series_exported == accepted
    # every refused name counted, once as a refused context and once per refused line
    assert r.contexts_dropped == NAMES - accepted
    assert r.cardinality_errors == NAMES - accepted  # as cardinality_limit or, while behind, overload
    # the existing contexts kept exact values through the storm
    assert r.keep_exported == r.keep_expected


@pytest.mark.slow
def test_after_the_ttl_only_live_contexts_remain_and_new_names_are_accepted(storm: StormResult) -> None:
    assert (storm.contexts_after_ttl, storm.storm_series_after_ttl) == (KEEP + 1, 0)
    assert storm.new_context_after_ttl == 7.0


@pytest.mark.slow
def test_memory_returns_near_the_baseline_after_the_ttl(storm: StormResult) -> None:
    grown = storm.rss_peak - storm.rss_baseline
    left = storm.rss_after_ttl - storm.rss_baseline
    # "near": at most 16 MiB, or a fifth of what the storm took, whichever is more. Measured here (median
    # of 3, MiB): baseline 44.7, peak 86.9, after the TTL 49.1 (+4.4); with pymalloc it was 66.2 (+22.4),
    # and at a cap of 100,000: 44.7 -> 275 -> 48.0 (+3.4) against 183 (+140) (agent/memory.py says why)
    assert left < max(16 * MIB, grown / 5), (round(left / MIB, 1), round(grown / MIB, 1))
