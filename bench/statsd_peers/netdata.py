"""netdata 1.37's statsd plugin (C, Debian `netdata-core`), every other plugin off, counted from
its `allmetrics` API."""

from __future__ import annotations

import shutil
from collections.abc import Hashable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from statsd_peers.base import Reading, Server, http_get
from statsd_peers.debian import apt_install
from statsd_peers.measure import free_port, udp_drops
from statsd_peers.traffic import Context

OFF_PLUGINS = ("proc", "diskspace", "cgroups", "tc", "idlejitter", "timex", "checks", "apps", "python.d",
               "charts.d", "go.d", "ebpf", "perf", "slabinfo", "fping", "ioping", "nfacct", "freeipmi",
               "cups", "node.d")

CONFIG = """\
[global]
    run as user = root
    hostname = bench
[directories]
    config = {dir}
    stock config = /usr/lib/netdata/conf.d
    log = {dir}
    cache = {dir}
    lib = {dir}
    home = {dir}
    health config = {dir}
[logs]
    debug log = none
    error log = {dir}/error.log
    access log = none
[db]
    mode = ram
[web]
    bind to = 127.0.0.1:{web_port}
[registry]
    enabled = no
[health]
    enabled = no
[ml]
    enabled = no
[plugins]
    enable running new plugins = no
{off}
    netdata monitoring = yes
    statsd = yes
[statsd]
    enabled = yes
    bind to = udp:127.0.0.1:{port}
    update every (flushInterval) = {interval}
    # one chart per metric, so each can be counted (the default stops at 1,000); a short history
    # since only the last value is read
    max private charts hard limit = 100000
    private charts history = 60
"""

# netdata keeps gauges as integers scaled by `decimal detail`
DECIMAL_DETAIL = 1000


def install() -> None:
    apt_install("netdata-core")


def parse_allmetrics(text: str) -> Reading:
    lines = 0.0
    values: dict[Hashable, float] = {}
    extra: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            chart = s.labels.get("chart", "")
            if s.name == "netdata_netdata_statsd_events_total":
                lines += s.value  # every line is one event of its type, "unknown" or "errors"
                if s.labels.get("dimension") in ("unknown", "errors"):
                    extra[s.labels["dimension"]] = s.value
            elif chart.startswith("statsd_") and chart.endswith("_counter"):
                values[("c", chart[len("statsd_"):-len("_counter")])] = s.value
            elif chart.startswith("statsd_") and chart.endswith("_gauge"):
                values[("g", chart[len("statsd_"):-len("_gauge")])] = s.value / DECIMAL_DETAIL
    return Reading(lines, values, extra)


class Netdata(Server):
    name = "netdata"
    note = "netdata 1.37 statsd plugin (C); drops tags: tagged contexts collapse into their names"

    def __init__(self, workdir: Path, flush_interval: float, core: int | None) -> None:
        super().__init__(workdir, flush_interval, core)
        self.web_port = free_port()
        self._reads = 0

    def missing(self) -> str | None:
        return None if shutil.which("netdata") else "netdata-core is not installed (run with --install)"

    def command(self) -> tuple[list[str], dict[str, str | None], Path | None]:
        path = self.workdir / "netdata.conf"
        off = "\n".join(f"    {p} = no" for p in OFF_PLUGINS)
        path.write_text(CONFIG.format(dir=self.workdir, web_port=self.web_port, port=self.port,
                                      interval=max(1, round(self.flush_interval)), off=off))
        return ["netdata", "-D", "-c", str(path)], {"DO_NOT_TRACK": "1"}, None

    def ready(self) -> bool:
        # its statsd charts (the counts) appear only after the plugin's first flush
        return udp_drops(self.port) is not None and "netdata_netdata_statsd_events_total" in http_get(
            self._allmetrics(), timeout=2)

    def _allmetrics(self) -> str:
        # netdata answers each Prometheus `server` only with what changed since that server's last
        # scrape: a new name per read gets every series
        self._reads += 1
        return (f"http://127.0.0.1:{self.web_port}/api/v1/allmetrics?format=prometheus&source=as-collected"
                f"&server=bench-{self._reads}")

    def read(self) -> Reading:
        return parse_allmetrics(http_get(self._allmetrics()))

    def sum_key(self, ctx: Context) -> Hashable | None:
        return ("c", ctx.name) if ctx.kind == "c" else None

    def gauge_key(self, ctx: Context) -> Hashable | None:
        # with tags dropped, several contexts share one gauge: its last value depends on the order
        # the two senders interleave, so only plain gauges are checked
        return ("g", ctx.name) if ctx.kind == "g" and not ctx.tags else None
