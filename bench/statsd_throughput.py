"""StatsD throughput across servers: the sidecar against every peer that can be installed here.

Sends the same deterministic traffic (datagrams of ~1.4 KB, 20-40 lines, a mix of all types, 2-6
tags per line) from sender processes pinned to one core, to each server pinned to the other, in
rate steps; for each step checks what the server counted against what was sent (lines, counter
sums, numbers of timer values, last gauge values) and reads the kernel's drop counter for the
server's socket. Reports per server the highest lossless rate, CPU seconds per million lines, % of a
core at 10k lines/s and RSS, then the sidecar's ratios to each peer.

    .venv/bin/python bench/statsd_throughput.py --quick            # smoke run, ~2 minutes
    .venv/bin/python bench/statsd_throughput.py --out statsd.json  # the full run, 10-15 minutes
    .venv/bin/python bench/statsd_throughput.py --install          # install the peers first
    .venv/bin/python bench/statsd_throughput.py --servers tasklens,tasklens-python --variants tagged \
        --busy --flush-interval 2 --steps 1M,1.5M,2M,2.5M,3M,3.5M --max-lossy-steps 3   # receive paths

`--busy` keeps the sidecar busy the way a task does while it receives: `/metrics` scraped every
0.5 s and ECS metadata polled every second (`tasklens emulate-ecs`), besides its flushes.

See bench/README.md ("StatsD throughput") for what the numbers mean.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # statsd_peers, when run from anywhere

from statsd_peers import collectd, etsy, netdata, traffic  # noqa: E402
from statsd_peers.base import Reading, Server, ServerError  # noqa: E402
from statsd_peers.measure import cpu_seconds, rss_bytes, send, udp_drops  # noqa: E402
from statsd_peers.measure import free_port  # noqa: E402
from statsd_peers.sidecar import Sidecar, SidecarPythonReceiver, baseline  # noqa: E402

SERVERS: dict[str, type[Server]] = {
    "tasklens": Sidecar, "tasklens-python": SidecarPythonReceiver, "netdata": netdata.Netdata,
    "collectd": collectd.Collectd, "etsy-statsd": etsy.Etsy,
}
INSTALLERS = {"netdata": netdata.install, "collectd": collectd.install, "etsy-statsd": etsy.install}
# 10k twice: the first step warms up (each server creates its contexts), the summary takes the second
FULL_STEPS = "10k,10k,100k,250k,500k,750k,1M,1.25M,1.5M,2M,2.5M,3M"
QUICK_STEPS = "10k,10k,100k,500k,1M"
DRAIN_SECONDS = 0.5  # after the senders stop, the server empties its socket buffer


Result = dict[str, Any]  # JSON-ready: one step, or one server's run


def parse_rate(text: str) -> int:
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


@dataclass
class Check:
    """A step's counts against the expected tally."""

    lines_counted: float | None
    sum_mismatches: int = 0
    gauge_mismatches: int = 0
    counter_shortfall: float = 0.0  # 1 - counted/expected over the summed keys
    examples: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not (self.sum_mismatches or self.gauge_mismatches)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def compare(before: Reading, after: Reading, expected: traffic.Tally) -> Check:
    counted = None if after.lines is None else after.lines - (before.lines or 0.0)
    check = Check(counted)
    got_total = want_total = 0.0
    for key, want in expected.sums.items():
        got = after.values.get(key, 0.0) - before.values.get(key, 0.0)
        got_total, want_total = got_total + got, want_total + want
        if not _close(got, want):
            check.sum_mismatches += 1
            if len(check.examples) < 3:
                check.examples.append(f"sum {key}: counted {got:g}, sent {want:g}")
    for key, want in expected.gauges.items():
        got = after.values.get(key, float("nan"))
        if not _close(got, want):
            check.gauge_mismatches += 1
            if len(check.examples) < 6:
                check.examples.append(f"gauge {key}: {got:g}, last sent {want:g}")
    if counted is not None and counted != expected.lines:
        check.examples.insert(0, f"lines: counted {counted:.0f}, sent {expected.lines}")
    check.counter_shortfall = 1 - got_total / want_total if want_total else 0.0
    return check


@dataclass
class Traffic:
    pools: list[traffic.Pool]
    lines_per_datagram: float
    shape: dict[str, float]


def build_traffic(args: argparse.Namespace, variant: str) -> Traffic:
    contexts = traffic.make_contexts(args.contexts, random.Random(args.seed))
    pools = traffic.make_pools(contexts, variant, args.senders, args.pool_datagrams, args.seed)
    shape = traffic.describe(pools)
    return Traffic(pools, shape["lines_per_datagram"], shape)


def core_ticks(core: int | None, proc: str = "/proc") -> tuple[int, int]:
    """(busy, total) clock ticks of one core from /proc/stat: what every process took of it."""
    if core is None:
        return 0, 0
    with open(f"{proc}/stat") as fh:
        for line in fh:
            if line.startswith(f"cpu{core} "):
                ticks = [int(v) for v in line.split()[1:]]
                idle = ticks[3] + ticks[4]  # idle, iowait
                return sum(ticks[:8]) - idle, sum(ticks[:8])
    return 0, 0


class Busy:
    """--busy: what keeps a sidecar busy besides StatsD: an ECS metadata endpoint it polls every second
    (`tasklens emulate-ecs`, pinned with the senders) and a `/metrics` scrape every 0.5 s."""

    def __init__(self, core: int | None) -> None:
        port = free_port()
        argv = [str(Path(sys.executable).with_name("tasklens")), "emulate-ecs", "--example", "fargate",
                "--addr", f"127.0.0.1:{port}"]
        self.emulator = subprocess.Popen((["taskset", "-c", str(core)] if core is not None else []) + argv,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.env = {"ECS_CONTAINER_METADATA_URI_V4": f"http://127.0.0.1:{port}/v4/local",
                    "TASKLENS_POLL_INTERVAL": "1"}
        self.url: str | None = None
        self.scrapes = self.scrape_errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scrape, daemon=True)
        self._thread.start()

    def _scrape(self) -> None:
        while not self._stop.wait(0.5):
            if self.url is None:
                continue
            try:
                with urllib.request.urlopen(self.url, timeout=10) as resp:
                    resp.read()
                self.scrapes += 1
            except OSError:
                self.scrape_errors += 1

    def close(self) -> None:
        self._stop.set()
        self.emulator.terminate()
        self.emulator.wait(timeout=10)


CGROUP_V1, CGROUP_V2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
def limit_cpu(server: Server, share: float, period_ms: float) -> Path:
    """--cpu-limit: the server's process in a cgroup of its own with a CPU quota of `share` of a core (an
    ECS container's `cpu`, or a Fargate task's, is such a quota); the cgroup's directory."""
    v1 = (CGROUP_V1 / "cpu.cfs_quota_us").exists()
    group = (CGROUP_V1 if v1 else CGROUP_V2) / f"statsd-bench-{server.pid}"
    group.mkdir()
    period = round(period_ms * 1000)  # a throttled server waits up to (1 - share) of it
    quota = round(share * period)
    if v1:
        (group / "cpu.cfs_period_us").write_text(str(period))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
    else:
        (group / "cpu.max").write_text(f"{quota} {period}")
    (group / "cgroup.procs").write_text(str(server.pid))  # the process, all of its threads
    return group


def release_cgroup(result: Result) -> None:
    if result.get("cgroup"):
        with contextlib.suppress(OSError):  # empty once the server exited
            Path(result["cgroup"]).rmdir()


def run_step(server: Server, tr: Traffic, positions: list[int], rate: int, args: argparse.Namespace) -> Result:
    before = server.read()
    drops0 = udp_drops(server.port) or 0
    busy0, total0 = core_ticks(args.server_core)
    cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
    sent = send([p.datagrams for p in tr.pools], positions, rate / tr.lines_per_datagram, args.step_seconds,
                ("127.0.0.1", server.port), args.sender_core)
    time.sleep(DRAIN_SECONDS)
    cpu, wall = cpu_seconds(server.pid) - cpu0, time.monotonic() - t0
    busy1, total1 = core_ticks(args.server_core)
    expected = traffic.tally(tr.pools, [(pos, s.datagrams) for pos, s in zip(positions, sent)],
                             server.sum_key, server.gauge_key)
    for i, s in enumerate(sent):
        positions[i] += s.datagrams

    # counts appear at the server's next flush: wait for them to be complete, or for the deadline
    deadline = time.monotonic() + args.flush_interval + 5
    while True:
        after = server.read()
        check = compare(before, after, expected)
        complete = check.exact and check.lines_counted in (None, expected.lines)
        if complete or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    drops = (udp_drops(server.port) or 0) - drops0
    send_seconds = max(s.seconds for s in sent)
    errors = sum(s.errors for s in sent)
    if check.lines_counted is not None:
        loss = 1 - check.lines_counted / expected.lines
    else:
        loss = max(check.counter_shortfall, drops * tr.lines_per_datagram / expected.lines)
    achieved = expected.lines / send_seconds
    return {
        "target_lines_per_s": rate,
        "lines_per_s": round(achieved),
        "sender_limited": achieved < 0.97 * rate,
        "lines_sent": expected.lines,
        "datagrams_sent": expected.datagrams,
        "lines_counted": check.lines_counted,
        "kernel_drops": drops,
        "send_errors": errors,
        "loss": round(loss, 6),
        "sum_mismatches": check.sum_mismatches,
        "gauge_mismatches": check.gauge_mismatches,
        "keys_checked": len(expected.sums) + len(expected.gauges),
        "examples": check.examples,
        "lossless": complete and drops == 0 and errors == 0,
        "cpu_seconds": round(cpu, 3),
        "cpu_seconds_per_million_lines": round(cpu / expected.lines * 1e6, 3),
        "core_percent": round(100 * cpu / wall, 1),
        # of what the server may use: its core, or its quota with --cpu-limit
        "busy_percent": round(100 * cpu / wall / (args.cpu_limit or 1.0), 1),
        # the core's busy share, every process on it: near 100 with a lower core_percent, others took it
        "core_total_percent": round(100 * (busy1 - busy0) / (total1 - total0), 1) if total1 > total0 else None,
        "load": os.getloadavg()[0],
        "rss_mib": round(rss_bytes(server.pid) / 2**20, 1),
        # the server's own view: counters as deltas over the step, gauges (flush duration ...) as they are
        "server_metrics": {k: v - before.extra.get(k, 0.0) if "_total" in k else v for k, v in after.extra.items()},
    }


def run_server(cls: type[Server], variant: str, tr: Traffic, steps: Sequence[int], args: argparse.Namespace,
               workdir: Path) -> Result:
    server = cls(workdir / variant, args.flush_interval, args.server_core)
    result: Result = {"server": server.name, "variant": variant, "note": server.note}
    why = server.missing()
    if why:
        return {**result, "skipped": why}
    if variant == "tagged" and not server.accepts_tags:
        return {**result, "skipped": "rejects tagged lines"}
    try:
        server.start()
        if args.cpu_limit:
            result["cgroup"] = str(limit_cpu(server, args.cpu_limit, args.cpu_period_ms))
    except (ServerError, OSError) as exc:
        return {**result, "skipped": f"could not start: {exc}"}
    busy: Busy | None = args.busy_load
    if busy is not None and isinstance(server, Sidecar):
        busy.url, scrapes0 = f"http://127.0.0.1:{server.http_port}/metrics", busy.scrapes
    try:
        idle0 = cpu_seconds(server.pid)
        time.sleep(2.0)  # past start-up work; also shows what the server costs when idle
        result["idle_core_percent"] = round(100 * (cpu_seconds(server.pid) - idle0) / 2.0, 1)
        result["load_before"] = os.getloadavg()
        positions = [0] * len(tr.pools)
        result["steps"] = []
        lossy = 0
        for rate in steps:
            try:
                step = run_step(server, tr, positions, rate, args)
            except (ServerError, OSError) as exc:  # a peer that stops answering ends its own run only
                result["failed"] = f"at {rate:,} lines/s: {exc}"
                print(f"  {server.name:12} {variant:6} failed {result['failed']}", flush=True)
                break
            result["steps"].append(step)
            print(f"  {server.name:12} {variant:6} {format_step(step)}", flush=True)
            lossy += not step["lossless"]
            if lossy >= args.max_lossy_steps and rate >= 100_000:
                break
            if server.proc is not None and server.proc.poll() is not None:
                result["died"] = f"exit {server.proc.returncode}: {server.log_tail()}"
                break
        result["load_after"] = os.getloadavg()
        if busy is not None and busy.url is not None:
            result["busy_scrapes"] = busy.scrapes - scrapes0
            result["busy_ecs_polls"] = result["steps"][-1]["server_metrics"].get("tasklens_ecs_polls_total") \
                if result["steps"] else None
    finally:
        if busy is not None:
            busy.url = None
        server.stop()
        release_cgroup(result)
    result["summary"] = summarize(result["steps"])
    return result


def run_interleaved(classes: Sequence[type[Server]], variant: str, tr: Traffic, steps: Sequence[int],
                    args: argparse.Namespace, workdir: Path) -> list[Result]:
    """--interleave: every server started at once (each on the server core), and each rate sent to one
    after the other, so that what else runs on the machine weighs on all of them alike. The servers not
    under test are idle (and not scraped) meanwhile."""
    servers = [cls(workdir / variant, args.flush_interval, args.server_core) for cls in classes]
    results: list[Result] = [{"server": s.name, "variant": variant, "note": s.note, "steps": []} for s in servers]
    busy: Busy | None = args.busy_load
    try:
        for server, result in zip(servers, results):
            server.start()
            if args.cpu_limit:
                result["cgroup"] = str(limit_cpu(server, args.cpu_limit, args.cpu_period_ms))
        time.sleep(2.0)
        positions = [[0] * len(tr.pools) for _ in servers]
        lossy = [0] * len(servers)
        for rate in steps:
            for i, server in enumerate(servers):
                if lossy[i] >= args.max_lossy_steps and rate >= 100_000:
                    continue
                if busy is not None:
                    busy.url = f"http://127.0.0.1:{server.http_port}/metrics"  # type: ignore[attr-defined]
                step = run_step(server, tr, positions[i], rate, args)
                results[i]["steps"].append(step)
                print(f"  {server.name:15} {variant:6} {format_step(step)}", flush=True)
                lossy[i] += not step["lossless"]
                time.sleep(1.0)  # the next server's step starts after this one's flush
    finally:
        if busy is not None:
            busy.url = None
        for server, result in zip(servers, results):
            server.stop()
            release_cgroup(result)
    for result in results:
        result["summary"] = summarize(result["steps"])
    return results


def format_step(step: Result) -> str:
    counted = "n/a" if step["lines_counted"] is None else f"{step['lines_counted']:.0f}"
    flag = "ok  " if step["lossless"] else "LOSS"
    limited = " (sender-limited)" if step["sender_limited"] else ""
    full = step["server_metrics"].get("tasklens_statsd_buffer_full_total")
    return (f"{flag} {step['lines_per_s']:>9,} lines/s{limited}: sent {step['lines_sent']}, counted {counted}, "
            f"kernel drops {step['kernel_drops']}" + ("" if full is None else f", buffer full {full:.0f}x")
            + f", mismatches {step['sum_mismatches']}+{step['gauge_mismatches']}, "
            f"{step['cpu_seconds_per_million_lines']:.3f} CPU-s/M, {step['core_percent']}% core "
            f"({step['core_total_percent']}% all processes), load {step['load']:.1f}, "
            f"{step['rss_mib']} MiB" + ("" if step["lossless"] else f"; {'; '.join(step['examples'][:2])}"))


def summarize(steps: list[Result]) -> Result:
    best = None
    for step in steps:  # the highest rate below the first lossy step
        if not step["lossless"]:
            break
        if best is None or step["lines_per_s"] >= best["lines_per_s"]:  # sender-limited steps may fall back
            best = step
    by_target = {s["target_lines_per_s"]: s for s in steps}  # the last step of each rate (past the warm-up)
    at_100k, at_10k = by_target.get(100_000), by_target.get(10_000)
    first_lossy = next((s for s in steps if not s["lossless"]), None)
    # the rate that saturates the core: the server's busy share against the rate over the steps that
    # counted every line (least squares: a fixed cost, the scrapes and polls, plus a cost per line),
    # extended to 100%
    fit = [(s["lines_per_s"], s["busy_percent"]) for s in steps if s["lines_counted"] == s["lines_sent"]]
    saturation = None
    if len(fit) >= 3:
        mean_x, mean_y = sum(x for x, _ in fit) / len(fit), sum(y for _, y in fit) / len(fit)
        sxx = sum((x - mean_x) ** 2 for x, _ in fit)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in fit) / sxx if sxx else 0.0
        if slope > 0:
            saturation = (100 - (mean_y - slope * mean_x)) / slope
    return {
        "saturation_lines_per_s": round(saturation) if saturation else None,
        "max_lossless_of_saturation": round(best["lines_per_s"] / saturation, 3) if best and saturation else None,
        "max_lossless_lines_per_s": best["lines_per_s"] if best else 0,
        "max_lossless_sender_limited": bool(best and best["sender_limited"]),
        "cpu_seconds_per_million_at_max": best["cpu_seconds_per_million_lines"] if best else None,
        "cpu_seconds_per_million_at_100k": at_100k["cpu_seconds_per_million_lines"] if at_100k else None,
        "core_percent_at_10k": at_10k["core_percent"] if at_10k else None,
        "rss_mib_max": max((s["rss_mib"] for s in steps), default=None),
        "first_lossy": (f"{first_lossy['lines_per_s']:,} lines/s, {100 * first_lossy['loss']:.2f}% lost"
                        if first_lossy else None),
    }


def print_report(results: list[Result]) -> None:
    print("\n== StatsD throughput (server pinned to one core, senders on the other) ==")
    head = f"{'server':12} {'traffic':7} {'max lossless':>14} {'CPU-s/M there':>13} {'CPU-s/M 100k':>12} " \
           f"{'core @10k':>9} {'RSS MiB':>8}  first lossy step"
    print(head)
    print("-" * len(head))
    for r in results:
        if "skipped" in r:
            print(f"{r['server']:12} {r['variant']:7} skipped: {r['skipped']}")
            continue
        s = r["summary"]
        rate = f"{s['max_lossless_lines_per_s']:,}" + ("*" if s["max_lossless_sender_limited"] else "")
        print(f"{r['server']:12} {r['variant']:7} {rate:>14} {_num(s['cpu_seconds_per_million_at_max']):>13} "
              f"{_num(s['cpu_seconds_per_million_at_100k']):>12} {_num(s['core_percent_at_10k'], '%'):>9} "
              f"{_num(s['rss_mib_max']):>8}  {s['first_lossy'] or ('none up to the last step' if r['steps'] else '-')}"
              + (f"; FAILED {r['failed']}" if "failed" in r else ""))
    print("(* the senders could not reach the target rate: the server did not lose anything up to there)")
    for r in results:
        s = r.get("summary") or {}
        if s.get("saturation_lines_per_s"):
            print(f"{r['server']} ({r['variant']}): its core{' quota' if r.get('cgroup') else ''} would be full "
                  f"at ~{s['saturation_lines_per_s']:,} lines/s "
                  f"(busy share against rate, extended); highest lossless rate {s['max_lossless_lines_per_s']:,} = "
                  f"{100 * s['max_lossless_of_saturation']:.0f}% of that")
    for line in ratios(results):
        print(line)


def _num(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{unit}" if value < 100 else f"{value:.0f}{unit}"


def ratios(results: list[Result]) -> list[str]:
    """The sidecar against each peer on the same traffic: lossless rates, and CPU per line at the
    same load (100k lines/s, and the highest step both passed without loss), then each at its best."""
    ours = {r["variant"]: r for r in results if r["server"] == Sidecar.name and "summary" in r}
    out = ["\n== tasklens vs each peer (same traffic; CPU-s per million lines, tasklens vs peer) =="]
    for r in results:
        if r["server"] == Sidecar.name or "summary" not in r or r["variant"] not in ours:
            continue
        us, them = ours[r["variant"]], r
        parts = []
        rate_us, rate_them = us["summary"]["max_lossless_lines_per_s"], them["summary"]["max_lossless_lines_per_s"]
        if rate_them:
            parts.append(f"lossless rate {rate_us / rate_them:.2f}x ({rate_us:,} vs {rate_them:,} lines/s)")
        both = _lossless_targets(us) & _lossless_targets(them)
        for label, target in (("at 100k/s", 100_000), (f"at {max(both, default=0):,}/s", max(both, default=0))):
            a, b = _step_cost(us, target), _step_cost(them, target)
            if a and b:
                parts.append(f"{label}: {a:.3f} vs {b:.3f} = {_verdict(a, b)}")
        a, b = us["summary"]["cpu_seconds_per_million_at_max"], them["summary"]["cpu_seconds_per_million_at_max"]
        if a and b:
            parts.append(f"each at its max: {a:.3f} vs {b:.3f} = {_verdict(a, b)}")
        out.append(f"  {r['server']} ({r['variant']}): " + "; ".join(parts or ["nothing to compare"]))
    return out


def _lossless_targets(result: Result) -> set[int]:
    return {s["target_lines_per_s"] for s in result.get("steps", []) if s["lossless"]}


def _step_cost(result: Result, target: int) -> float | None:
    # the last step at that rate: past the warm-up when a rate is run twice
    step = next((s for s in reversed(result.get("steps", [])) if s["target_lines_per_s"] == target), None)
    return step["cpu_seconds_per_million_lines"] if step else None


def _verdict(ours: float, theirs: float) -> str:
    return f"{theirs / ours:.2f}x cheaper" if ours < theirs else f"{ours / theirs:.2f}x MORE EXPENSIVE"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default=",".join(SERVERS), help="comma-separated: " + ", ".join(SERVERS))
    ap.add_argument("--variants", default="tagged,plain", help="tagged, plain or both")
    ap.add_argument("--steps", default=FULL_STEPS, help="lines/s per step, e.g. 10k,100k,1.5M")
    ap.add_argument("--step-seconds", type=float, default=10.0)
    ap.add_argument("--flush-interval", type=float, default=10.0, help="every server's flush interval (s)")
    ap.add_argument("--contexts", type=int, default=2000, help="distinct name+tags (1,000-10,000 is realistic)")
    ap.add_argument("--senders", type=int, default=2, help="sender processes")
    ap.add_argument("--pool-datagrams", type=int, default=20000, help="pre-built datagrams, sent in a cycle")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--sender-core", type=int, default=1)
    ap.add_argument("--nice", type=int, default=0,
                    help="scheduling priority for the run, inherited by servers and senders (e.g. -10 as root "
                         "on a shared machine, so that other work disturbs the servers less)")
    ap.add_argument("--max-lossy-steps", type=int, default=1, help="stop a server after this many lossy steps")
    ap.add_argument("--interleave", action="store_true",
                    help="run every server at once and send each rate to one after the other (tasklens variants)")
    ap.add_argument("--busy", action="store_true",
                    help="scrape the sidecar's /metrics every 0.5 s and have it poll an ECS emulator every 1 s")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: steps {QUICK_STEPS}, 2 s each, 2 s flush, 1,000 contexts")
    ap.add_argument("--install", action="store_true", help="install missing peers (npm, apt) first")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--cpu-limit", type=float, metavar="SHARE",
                    help="run each server with a CPU quota of this share of a core (cgroup, as root), e.g. 0.5: "
                         "the rate that fills it is then within the senders' reach")
    ap.add_argument("--cpu-period-ms", type=float, default=10.0,
                    help="with --cpu-limit: the period the quota is given per (Docker and ECS: 100)")
    ap.add_argument("--baseline", metavar="REV",
                    help="also run the sidecar of this git revision (server tasklens@REV), e.g. with --interleave")
    args = ap.parse_args(argv)
    if args.quick:  # smaller defaults; what is given explicitly stays
        quick = {"steps": QUICK_STEPS, "step_seconds": 2.0, "flush_interval": 2.0, "pool_datagrams": 4000,
                 "contexts": 1000}
        for key, value in quick.items():
            if getattr(args, key) == ap.get_default(key):
                setattr(args, key, value)
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if args.baseline:
        from baseline import export  # bench/baseline.py

        tree = Path(tempfile.mkdtemp(prefix="statsd-baseline-"))
        server = SERVERS[f"tasklens@{args.baseline}"] = baseline(export(args.baseline, tree), args.baseline)
        names.append(server.name)
    unknown = set(names) - set(SERVERS)
    if unknown:
        ap.error(f"unknown servers: {', '.join(sorted(unknown))}")
    steps = [parse_rate(s) for s in args.steps.split(",") if s.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]

    if args.install:
        for name in names:
            server = SERVERS[name](Path(tempfile.gettempdir()), 1.0, None)
            if server.missing() and name in INSTALLERS:
                print(f"installing {name} ...", flush=True)
                INSTALLERS[name]()

    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        try:  # the senders' too: with autogroups a nice value counts only within its session
            with open("/proc/self/autogroup", "w") as fh:
                fh.write(str(args.nice))
        except OSError:
            pass
    print(f"{platform.node()}: {os.cpu_count()} cores, load {os.getloadavg()}, "
          f"nice {os.getpriority(os.PRIO_PROCESS, 0)}, "
          f"servers on core {args.server_core}, "
          f"{args.senders} senders on core {args.sender_core}; {args.step_seconds:g} s per step, "
          f"flush every {args.flush_interval:g} s", flush=True)
    results = []
    args.busy_load = Busy(args.sender_core) if args.busy else None
    if args.busy_load is not None:
        Sidecar.extra_env = args.busy_load.env
    with tempfile.TemporaryDirectory(prefix="statsd-bench-") as tmp:
        for variant in variants:
            tr = build_traffic(args, variant)
            print(f"{variant} traffic: " + ", ".join(f"{k} {v:.3g}" for k, v in tr.shape.items()), flush=True)
            if args.interleave:
                for result in run_interleaved([SERVERS[n] for n in names], variant, tr, steps, args, Path(tmp)):
                    result["traffic"] = tr.shape
                    results.append(result)
                continue
            for name in names:
                result = run_server(SERVERS[name], variant, tr, steps, args, Path(tmp))
                result["traffic"] = tr.shape
                if "skipped" in result:
                    print(f"  {name:12} {variant:6} skipped: {result['skipped']}", flush=True)
                results.append(result)
    if args.busy_load is not None:
        args.busy_load.close()
        args.busy_load = None
    print_report(results)
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                        "load_end": os.getloadavg(), "results": results}, indent=2))
        print(f"\nresults written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
