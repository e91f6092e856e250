"""Another commit's `agent/`, runnable beside this checkout: for the `--baseline REV` of the benches
that compare old and new code in one run (bench/health_under_load.py, bench/storm.py, ...)."""

from __future__ import annotations

import subprocess
import sysconfig
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def export(rev: str, into: Path) -> Path:
    """`git archive` of `rev`'s `agent/` into `into`, its C extensions compiled in place with gcc (as
    `pip install` builds them); put `into` first on PYTHONPATH to run it."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "agent"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    include, suffix = sysconfig.get_paths()["include"], sysconfig.get_config_var("EXT_SUFFIX")
    for source in (into / "agent" / "statsd").glob("*.c"):
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-pthread", f"-I{include}", str(source), "-o",
                        str(source.with_suffix("")) + suffix], check=True)
    return into


def side_by_side(baseline: str | None, rounds: int, run: Callable[[Path], dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """`run(root)` for this checkout and, with `baseline`, for that commit's `agent/`, alternating for
    `rounds` rounds (the machine's other work then weighs on both alike): label -> results."""
    with tempfile.TemporaryDirectory() as tmp:
        roots = {"this tree": ROOT}
        if baseline:
            roots[f"baseline {baseline}"] = export(baseline, Path(tmp))
        results: dict[str, list[dict[str, Any]]] = {label: [] for label in roots}
        for _ in range(rounds):
            for label, root in roots.items():
                results[label].append(run(root))
    return results
