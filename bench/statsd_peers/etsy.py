"""Etsy StatsD 0.9.0 (Node.js, from npm), counted by a small backend that writes flushed totals."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Hashable
from pathlib import Path

from statsd_peers.base import Reading, Server
from statsd_peers.measure import free_port
from statsd_peers.traffic import Context

VERSION = "0.9.0"
HERE = Path(__file__).resolve().parent
INSTALL_DIR = HERE.parent / ".peers" / "etsy"  # git-ignored
STATS_JS = INSTALL_DIR / "node_modules" / "statsd" / "stats.js"


def install() -> None:
    INSTALL_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(INSTALL_DIR),
                    f"statsd@{VERSION}"], check=True)


def etsy_key(ctx: Context) -> str:
    """Etsy's key for a line: tags appended as `;k=v`, then its key sanitizer."""
    key = ctx.name + "".join(f";{k}={v}" for k, v in ctx.tags)
    return re.sub(r"[^a-zA-Z_\-0-9.;=]", "", key.replace("/", "-").replace(" ", "_"))


class Etsy(Server):
    name = "etsy-statsd"
    note = f"Etsy StatsD {VERSION} (Node.js); tags become part of the key; |h and |d count as counters"

    def __init__(self, workdir: Path, flush_interval: float, core: int | None) -> None:
        super().__init__(workdir, flush_interval, core)
        self.out = self.workdir / "totals.json"

    def missing(self) -> str | None:
        if not shutil.which("node"):
            return "node is not installed"
        if not STATS_JS.exists():
            return f"Etsy StatsD is not installed in {INSTALL_DIR} (run with --install)"
        return None

    def command(self) -> tuple[list[str], dict[str, str | None], Path | None]:
        self.out.unlink(missing_ok=True)
        config = {
            "port": self.port,
            "address": "127.0.0.1",
            "mgmt_address": "127.0.0.1",
            "mgmt_port": free_port(),
            "flushInterval": int(self.flush_interval * 1000),
            "backends": [str(HERE / "etsy_backend.js")],
            "benchOut": str(self.out),
        }
        path = self.workdir / "config.js"
        path.write_text(json.dumps(config, indent=2))  # Etsy evals its config: JSON is valid JS
        return ["node", str(STATS_JS), str(path)], {}, STATS_JS.parent

    def read(self) -> Reading:
        try:
            totals = json.loads(self.out.read_text())
        except (OSError, ValueError):  # before the first flush
            return Reading(0.0)
        values: dict[Hashable, float] = {}
        for kind, section in (("c", "counters"), ("ms", "timer_counters"), ("g", "gauges")):
            values.update(((kind, k), float(v)) for k, v in totals[section].items())
        counters = totals["counters"]
        return Reading(counters.get("statsd.metrics_received", 0.0), values,
                       {"bad_lines_seen": counters.get("statsd.bad_lines_seen", 0.0)})

    def sum_key(self, ctx: Context) -> Hashable | None:
        return (ctx.kind, etsy_key(ctx)) if ctx.kind in ("c", "ms") else None

    def gauge_key(self, ctx: Context) -> Hashable | None:
        return ("g", etsy_key(ctx)) if ctx.kind == "g" else None
