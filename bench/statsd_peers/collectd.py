"""collectd 5.12's statsd plugin (C, Debian `collectd-core`), counted from its csv files."""

from __future__ import annotations

import math
import shutil
from collections.abc import Hashable
from pathlib import Path

from statsd_peers.base import Reading, Server
from statsd_peers.debian import apt_install
from statsd_peers.traffic import Context

CONFIG = """\
Hostname "bench"
FQDNLookup false
Interval {interval}
BaseDir "{dir}"
PIDFile "{dir}/collectd.pid"
PluginDir "/usr/lib/collectd"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin logfile
<Plugin logfile>
  LogLevel "warning"
  File "{dir}/collectd.log"
</Plugin>
LoadPlugin statsd
<Plugin statsd>
  Host "127.0.0.1"
  Port "{port}"
  DeleteCounters false
  TimerCount true
</Plugin>
LoadPlugin csv
<Plugin csv>
  DataDir "{dir}/csv"
  StoreRates false
</Plugin>
"""


def install() -> None:
    apt_install("collectd-core")


def read_csv_dir(root: Path) -> dict[Hashable, float]:
    """`derive-<name>-<date>` holds the cumulative counter (StoreRates false): last row;
    `gauge-<name>-count-<date>` the number of timer values per interval: sum of rows;
    `gauge-<name>-<date>` a gauge: last row."""
    values: dict[Hashable, float] = {}
    for path in sorted(root.glob("*/statsd/*")):  # sorted: date suffixes in order
        kind, _, rest = path.name.partition("-")
        name = rest[: -len("-YYYY-MM-DD")]
        rows = []
        for line in path.read_text().splitlines()[1:]:
            try:
                rows.append(float(line.partition(",")[2]))
            except ValueError:  # a row being written
                continue
        rows = [r for r in rows if not math.isnan(r)]
        if not rows:
            continue
        if kind == "derive":
            values[("c", name)] = rows[-1]
        elif kind == "gauge" and name.endswith("-count"):
            key = ("ms", name.removesuffix("-count"))
            values[key] = values.get(key, 0.0) + sum(rows)
        elif kind == "gauge":
            values[("g", name)] = rows[-1]
    return values


class Collectd(Server):
    name = "collectd"
    accepts_tags = False
    note = ("collectd 5.12 statsd plugin (C); rejects |#tags and |h: plain traffic only; "
            "checked on counters and gauges (its timer count skips values of 0 and of 100 s or more)")

    def missing(self) -> str | None:
        if not shutil.which("collectd") or not Path("/usr/lib/collectd/statsd.so").exists():
            return "collectd-core is not installed (run with --install)"
        return None

    def command(self) -> tuple[list[str], dict[str, str | None], Path | None]:
        shutil.rmtree(self.workdir / "csv", ignore_errors=True)  # counts start from zero
        path = self.workdir / "collectd.conf"
        path.write_text(CONFIG.format(interval=self.flush_interval, dir=self.workdir, port=self.port))
        return ["collectd", "-f", "-C", str(path)], {}, None

    def read(self) -> Reading:
        return Reading(None, read_csv_dir(self.workdir / "csv"))

    def sum_key(self, ctx: Context) -> Hashable | None:
        return ("c", ctx.name) if ctx.kind == "c" else None

    def gauge_key(self, ctx: Context) -> Hashable | None:
        return ("g", ctx.name) if ctx.kind == "g" else None
