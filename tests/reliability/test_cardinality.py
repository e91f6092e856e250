"""Cardinality storm: 1,000,000 one-off metric names against a cap of 1,000 contexts.

The cap holds, the contexts that existed before keep exact values, every refused name is counted,
the one-off contexts expire after the TTL (and new names are accepted again), and memory returns
near its baseline.
"""

from __future__ import annotations

import pytest

from tests.reliability.scenarios import KEEP, run_storm

NAMES = 1_000_000
CAP = 1_000
TTL = 20.0  # longer than the storm takes to send (5-12 s here), shorter than a CI budget


@pytest.mark.slow
def test_a_million_one_off_names_hit_the_cap_and_are_counted(tmp_path, record_property) -> None:
    r = run_storm(tmp_path, NAMES, CAP, TTL)
    numbers = {"seconds_sending": round(r.seconds_sending, 2), "rss_mib_baseline": round(r.rss_baseline / 2**20, 1),
               "rss_mib_peak": round(r.rss_peak / 2**20, 1), "rss_mib_after_ttl": round(r.rss_after_ttl / 2**20, 1)}
    for k, v in numbers.items():
        record_property(k, v)
    print("storm:", numbers)

    assert r.seconds_sending < TTL, "the storm outlasted the TTL: raise TTL for this machine"
    accepted = CAP - KEEP  # the storm names that found room under the cap
    assert r.lines_received == r.lines_sent
    # the cap held: exactly CAP contexts, the first `accepted` storm names among them
    assert r.contexts_after_storm == CAP
    assert r.storm_series_exported == accepted
    # every refused name counted, once as a refused context and once per refused line
    assert r.contexts_dropped == NAMES - accepted
    assert r.cardinality_errors == NAMES - accepted
    # the existing contexts kept exact values through the storm
    assert r.keep_exported == r.keep_expected
    # after the TTL: only the long-lived contexts are left, and new names are accepted again
    assert (r.contexts_after_ttl, r.storm_series_after_ttl) == (KEEP + 1, 0)
    assert r.new_context_after_ttl == 7.0
    # memory back near the baseline (the peak is shown for the record)
    assert r.rss_after_ttl - r.rss_baseline < 8 * 2**20, numbers
