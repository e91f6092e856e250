"""Another commit's `agent/`, runnable beside this checkout: for the `--baseline REV` of the benches
that compare old and new code in one run (bench/health_under_load.py, bench/storm.py, ...)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def worker(root: Path, argv: list[str]) -> dict[str, Any]:
    """A bench's worker process (`python <argv>`) run with `root`'s `agent/`: in that tree, first on the
    path, with the allocator of `tasklens run`; what it printed last, as JSON."""
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONMALLOC="malloc")
    out = subprocess.run([sys.executable, *argv], cwd=root, env=env, check=True, capture_output=True,
                         text=True).stdout
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


def loaded_c_loops(pid: int) -> set[str]:
    """The files of the StatsD C loop (`agent/statsd/_fast`) process `pid` loaded: which tree it runs."""
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split()[-1] for line in maps if "/agent/statsd/_fast" in line}


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
