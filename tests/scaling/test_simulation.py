"""The scaling simulation (bench/scaling_simulation.py, pure and fast) with the sidecar's real
smoothing: on the default workload the smoothed backlog changes scaling direction less often than
the raw backlog, and reacts to a ramp at most one smoothing window later."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from scaling_simulation import Workload, first_scale_out, flips, plot, simulate, summary


def test_smoothing_flaps_less_and_follows_a_ramp() -> None:
    started = time.monotonic()
    workload = Workload()
    raw, smoothed = simulate(False), simulate(True)
    assert time.monotonic() - started < 5.0
    assert flips(smoothed) < flips(raw), (flips(smoothed), flips(raw))
    assert first_scale_out(smoothed, workload.ramp_from) <= first_scale_out(raw, workload.ramp_from) + 60 + 60
    ramp = summary(smoothed, workload, since=workload.ramp_from)
    assert ramp["max_tasks"] >= workload.ramp_to / workload.per_task  # it reached the capacity the ramp needs
    assert "#" in plot(smoothed)


def test_scale_in_needs_fifteen_calm_minutes_and_stays_within_bounds() -> None:
    run = simulate(True)
    assert min(run.tasks) >= 2 and max(run.tasks) <= 40
    for t in run.scale_ins:
        assert t >= 15 * 60


def test_the_numbers_in_the_docs_are_the_simulations() -> None:
    """README and docs/scaling.md quote `python bench/scaling_simulation.py`: keep them true."""
    root = Path(__file__).resolve().parents[2]
    workload = Workload()
    raw, smoothed = simulate(False), simulate(True)
    lag = first_scale_out(smoothed, workload.ramp_from) - first_scale_out(raw, workload.ramp_from)
    readme = (root / "README.md").read_text()
    assert (f"changes scaling direction {flips(smoothed)} times where the raw backlog does {flips(raw)}, and "
            f"starts scaling\nout {lag:.0f} s later on the ramp") in readme
    doc = (root / "docs" / "scaling.md").read_text()
    row = (f"| **max of mins (60 s, 600 s hold; the default)** | **{flips(smoothed)}** | "
           f"**{first_scale_out(smoothed, workload.ramp_from):.0f} s** |")
    assert row in doc
    assert f"| raw backlog | {flips(raw)} | {first_scale_out(raw, workload.ramp_from):.0f} s |" in doc
