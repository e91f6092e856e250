"""Coverage-guided fuzzing in the suite: `bench/fuzz.py` (atheris, libFuzzer) run for a bounded time
on the StatsD parser/aggregator and on the ECS derivations; run it for minutes from `bench/`.

Each bug the fuzzer found has a deterministic test here, so it stays pinned whatever the fuzzer
happens to explore in a short run.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from agent.sources.ecs_stats import derive
from agent.statsd.receive import Aggregator
from agent.statsd.parser import parse
from tests.support import FIXTURES, ROOT

FUZZ = ROOT / "bench" / "fuzz.py"
SECONDS = 15


@pytest.mark.slow
@pytest.mark.parametrize("target", ["statsd", "ecs"])
def test_bounded_fuzz_run_finds_nothing_new(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris (pip install atheris) runs the coverage-guided fuzzer")
    result = subprocess.run([sys.executable, str(FUZZ), target, f"-max_total_time={SECONDS}",
                             f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"],
                            capture_output=True, text=True, timeout=SECONDS + 60, cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    runs = int(out.split("stat::number_of_executed_units:")[1].split()[0])
    assert runs > 1000, out[-2000:]  # it really ran
    assert list(tmp_path.glob("crash-*")) == []


def lines_and_errors(data: bytes, passes: int = 1) -> tuple[int, dict[str, int]]:
    agg = Aggregator()
    for _ in range(passes):
        agg.ingest(data)
    return agg.stats.lines, dict(+agg.stats.errors)


@pytest.mark.parametrize("data", [b":x|\n\nok:1|c", b"c:5|\nc"])
def test_head_cache_does_not_change_what_a_line_counts_as(data: bytes) -> None:
    """A line without `:` or `|` must count the same whether or not an earlier line with the same
    (name, tail) was cached: as the pure parser counts it, twice for two passes."""
    parsed = parse(data)
    expected = (2 * parsed.lines, {k: 2 * v for k, v in parsed.errors.items() if v})
    assert lines_and_errors(data, passes=2) == expected


def test_extreme_numbers_in_metadata_never_become_infinite() -> None:
    task = json.loads((FIXTURES / "fargate-2023.task.json").read_text())
    stats = json.loads((FIXTURES / "fargate-2023.stats.json").read_text())
    for memory in (1e308, 1e-320):
        task["Limits"]["Memory"] = memory
        samples = derive(task, stats).samples
        assert [s.name for s in samples if not math.isfinite(s.value)] == [], memory
        # the rest of the task is still there
        assert any(s.name == "ecs.task.memory.working_set_bytes" for s in samples)
