"""A cardinality storm mixed into steady traffic, end to end: does the storm take the steady metrics down?

Starts `tasklens run` (local mode) and, once `--known` counters exist, sends for `--seconds` a mix of
known lines (value 1, one of `--known` contexts in turn) at `--known-rate` lines/s and storm lines
(`storm.requests:1|c|#env:prod,request_id:<n>`, every one a new context) at `--storm-rate` lines/s,
both in the same datagrams of ~1.35 KB (20 known + 4 storm lines) as a buffering client (`datadog.DogStatsd`) packs them. The
datagrams are built beforehand and sent by `--senders` processes, paced every ~1 ms. Then checks:

- every known counter's exported total (`/metrics`, `<name>_total`) went up by exactly what was sent;
- storm lines exported (the storm's series in `/metrics`) + refused (`/status` parse errors, by
  reason) == storm lines sent;
- kernel drops of the sidecar's socket (`/proc/net/udp`) == 0, how often the C receive thread's
  buffer was full (`tasklens_statsd_buffer_full_total`), and how far the parsing fell behind the
  senders (`lag`: seconds of traffic sent and not yet parsed, from `/status` every 100 ms);
- catching up: when, after the last line was sent, the receive side had parsed every line (`/status`
  lines), and whether the first flush after the last line exported everything (at most one flush
  interval after the last line, plus the flush's own time).

    .venv/bin/python bench/storm_mix.py                                    # 10 s, 500k + 100k lines/s
    .venv/bin/python bench/storm_mix.py --rounds 3 --baseline b785568      # and agent/ of that commit, in turn
    .venv/bin/python bench/storm_mix.py --storm-rate 0                     # the steady traffic alone
    .venv/bin/python bench/storm_mix.py --hogs 2 --baseline b785568 --rounds 2   # beside two busy processes
    .venv/bin/python bench/storm_mix.py --set TASKLENS_STATSD_BUFFER_BYTES=96M  # any setting of the sidecar

`--baseline REV` runs `agent/` of that commit (`bench/baseline.py`) first on PYTHONPATH, alternating with
this checkout for `--rounds` rounds; the table shows every round and the medians.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psutil  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench.baseline import export, loaded_c_loops  # noqa: E402
from statsd_peers.measure import udp_drops  # noqa: E402
from tests.support import Sidecar, http_get, wait_until  # noqa: E402

DATAGRAM_BYTES = 1432  # DogStatsd's UDP buffer
STORM_NAME = "storm.requests"


def known_line(i: int) -> bytes:
    return b"worker.op%d.count:1|c|#env:prod,queue:q%d,status:ok,op:k%d" % (i % 50, i % 7, i)


def storm_line(n: int) -> bytes:
    return b"%s:1|c|#env:prod,request_id:%d" % (STORM_NAME.encode(), n)


@dataclass
class Plan:
    """The datagrams of a run: datagram j holds the known lines `known_chunks[j % len(known_chunks)]`
    and `storm_per` storm lines numbered from `j * storm_per`."""

    known: int
    known_per: int
    storm_per: int
    datagrams: list[bytes]

    @property
    def chunks(self) -> int:
        return math.ceil(self.known / self.known_per) if self.known_per else 1


def plan(args: argparse.Namespace) -> Plan:
    total = args.known_rate + args.storm_rate
    sample = len(known_line(args.known - 1)) + 1 if args.known_rate else len(storm_line(10**7)) + 1
    per = max(1, DATAGRAM_BYTES // max(sample, len(storm_line(10**7)) + 1))
    storm_per = round(per * args.storm_rate / total)
    known_per = per - storm_per
    count = int(total * args.seconds / per)
    lines = [known_line(i) for i in range(args.known)]
    chunks = [b"\n".join(lines[k:k + known_per]) for k in range(0, args.known, known_per)] if known_per else [b""]
    datagrams = []
    for j in range(count):
        storm = b"\n".join(storm_line(n) for n in range(j * storm_per, (j + 1) * storm_per))
        datagrams.append(b"\n".join(p for p in (chunks[j % len(chunks)], storm) if p))
    assert max(map(len, datagrams)) <= DATAGRAM_BYTES
    return Plan(args.known, known_per, storm_per, datagrams)


def expected(p: Plan, sent: list[int], senders: int) -> tuple[list[int], int]:
    """Known lines per context and storm lines, for sender i having sent the first sent[i] of
    datagrams[i::senders]."""
    per_chunk = [0] * p.chunks
    storm = 0
    for i, n in enumerate(sent):
        for j in range(i, i + n * senders, senders):
            per_chunk[j % p.chunks] += 1
        storm += n * p.storm_per
    known = [per_chunk[c // p.known_per] if p.known_per else 0 for c in range(p.known)]
    return known, storm


# -- senders ---------------------------------------------------------------------------------------


def _send(datagrams: list[bytes], port: int, start_at: float, seconds: float, out: Any, progress: Any,
          me: int) -> None:
    """Send `datagrams` evenly over `seconds` from `start_at` (time.time): every ~1 ms what is due,
    never more than 2 ms worth at once; stops 1 s past the end if it cannot keep up. `progress[me]`:
    the datagrams sent so far."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    send, total = sock.send, len(datagrams)
    rate = total / seconds
    burst = max(1, int(rate * 0.002))
    sent = errors = 0
    while time.time() < start_at:
        time.sleep(0.0005)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    while sent < total:
        now = time.perf_counter()
        if now >= t0 + seconds + 1.0:
            break
        due = min(total, int((now - t0) * rate) + 1, sent + burst)
        while sent < due:
            try:
                send(datagrams[sent])
            except OSError:  # ENOBUFS: counted, the datagram is not sent again
                errors += 1
            sent += 1
        progress[me] = sent
        time.sleep(0.001)
    out.put((sent, time.perf_counter() - t0, time.process_time() - cpu0, errors, time.time()))
    sock.close()


def _spin(until: float) -> None:
    while time.time() < until:
        pass


def send_all(p: Plan, senders: int, port: int, seconds: float, start_at: float, hogs: int,
             progress: Any) -> dict[str, Any]:
    ctx = mp.get_context("fork")  # the datagrams are shared copy-on-write, not pickled
    out = [ctx.Queue() for _ in range(senders)]
    for _ in range(hogs):  # a busy neighbour (the worker itself, on a task's vCPUs): until 5 s after the end
        ctx.Process(target=_spin, args=(start_at + seconds + 5.0,), daemon=True).start()
    procs = [ctx.Process(target=_send, args=(p.datagrams[i::senders], port, start_at, seconds, out[i], progress, i),
                         daemon=True)
             for i in range(senders)]
    for proc in procs:
        proc.start()
    results = [q.get(timeout=seconds + 60) for q in out]
    for proc in procs:
        proc.join(timeout=5)
    return {"sent": [r[0] for r in results], "seconds": max(r[1] for r in results),
            "sender_cpu": sum(r[2] for r in results), "send_errors": sum(r[3] for r in results),
            "started": start_at, "ended": max(r[4] for r in results)}


# -- reading the sidecar ---------------------------------------------------------------------------


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of the process so far."""
    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def status(sidecar: Sidecar) -> dict[str, Any]:
    code, text = sidecar.get("/status")
    assert code == 200, text
    return json.loads(text)["components"]["statsd"]  # type: ignore[no-any-return]


def exported(sidecar: Sidecar, known: int) -> tuple[list[float], float, dict[str, float]]:
    """From `/metrics`: each known counter's total, the storm's total, and the self-metrics."""
    from agent.sinks.prometheus import metric_name
    code, text = http_get(sidecar.url + "/metrics", timeout=60)  # 100,000 series take seconds
    assert code == 200, text
    totals = [0.0] * known
    storm = 0.0
    own: dict[str, float] = {}
    storm_name = metric_name(STORM_NAME) + "_total"
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == storm_name:
                storm += s.value
            elif s.name.startswith("worker_op") and s.name.endswith("_count_total"):
                totals[int(s.labels["op"][1:])] = s.value
            elif s.name.startswith("tasklens_statsd_"):
                key = s.name + "".join(f"{{{v}}}" for k, v in s.labels.items() if k in ("reason",))
                own[key] = own.get(key, 0.0) + s.value
    return totals, storm, own


class Lag:
    """/status's line count every 100 ms while sending, against the senders' progress: how far the
    parsing fell behind."""

    def __init__(self, sidecar: Sidecar, senders: int, lines_per_datagram: int) -> None:
        self.sidecar, self.lines_per_datagram = sidecar, lines_per_datagram
        self.progress = mp.get_context("fork").Array("q", senders, lock=False)  # datagrams sent, by sender
        self.seen: list[tuple[int, int]] = []  # (lines sent, lines parsed)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._halt.wait(0.1):
            sent = sum(self.progress) * self.lines_per_datagram
            self.seen.append((sent, status(self.sidecar)["lines"]))

    def stop(self) -> None:
        self._halt.set()
        self._thread.join()

    def worst(self, rate: float, lines0: int) -> float:
        """The most seconds of sending (at `rate` lines/s) the parsed count was behind."""
        return max(((sent - (parsed - lines0)) / rate for sent, parsed in self.seen), default=0.0)


def run(args: argparse.Namespace, p: Plan, env: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = dict(TASKLENS_FLUSH_INTERVAL=str(args.flush_interval), TASKLENS_SHUTDOWN_TIMEOUT="30")
        settings.update(item.split("=", 1) for item in args.set)
        sidecar = Sidecar(Path(tmp), **settings, **env)
        try:
            return measure(args, p, sidecar)
        finally:
            sidecar.stop()


def measure(args: argparse.Namespace, p: Plan, sidecar: Sidecar) -> dict[str, Any]:
    sidecar.wait_ready()
    port = sidecar.statsd_port
    # which tree's C loop runs: this one, or --baseline's
    tree = next(iter(loaded_c_loops(sidecar.proc.pid)), "no _fast")
    # the known contexts first, as a worker that has run for a while has them
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for k in range(0, args.known, 20):
            s.sendto(b"\n".join(known_line(i) for i in range(k, min(args.known, k + 20))), ("127.0.0.1", port))
            time.sleep(0.001)
    wait_until(lambda: status(sidecar)["lines"] >= args.known, 30, what="the known contexts")
    first = status(sidecar)["last_flush"]
    wait_until(lambda: status(sidecar)["last_flush"] != first, args.flush_interval + 30, what="a flush")
    before, _, own0 = exported(sidecar, args.known)
    st0 = status(sidecar)
    drops0 = udp_drops(port) or 0
    threads0 = thread_cpu(sidecar.proc.pid)
    # at a fixed point of the flush interval: with the default, the storm's contexts are all made in
    # its first second and the flush that exports them (~100,000 new series) runs under full traffic
    start_at = (math.floor(time.time() / args.flush_interval) + 1) * args.flush_interval + args.phase
    if start_at - time.time() > args.flush_interval:
        start_at -= args.flush_interval
    lag = Lag(sidecar, args.senders, p.known_per + p.storm_per)
    sent = send_all(p, args.senders, port, args.seconds, start_at, args.hogs, lag.progress)
    lag.stop()
    last_sent = sent["ended"]
    threads = thread_cpu(sidecar.proc.pid)
    busiest = sorted((cpu - threads0.get(tid, 0.0) for tid, cpu in threads.items()), reverse=True)
    known_sent, storm_sent = expected(p, sent["sent"], args.senders)
    lines_sent = sum(known_sent) + storm_sent
    # the receive side caught up: every line sent parsed (counted, good or refused); or, when lines were
    # lost, its count stood still for a second
    deadline = last_sent + 3 * args.flush_interval + 30
    parsed_at = None
    counted, still = -1, time.time()
    while time.time() < deadline and time.time() - still < 1.0:
        lines = status(sidecar)["lines"] - st0["lines"]
        if lines >= lines_sent:
            parsed_at = time.time()
            break
        if lines != counted:
            counted, still = lines, time.time()
        time.sleep(0.02)
    # exported: the first flush that ended after the receive side caught up, then each next one
    boundary = (math.floor(last_sent / args.flush_interval) + 1) * args.flush_interval
    flushes, exact_at = 0, None
    check: dict[str, Any] | None = None
    seen = status(sidecar)["last_flush"]
    deadline = time.time() + 3 * args.flush_interval + 30
    while time.time() < deadline and flushes < (4 if parsed_at else 2):
        st = status(sidecar)
        if st["last_flush"] == seen or st["last_flush"] < boundary:
            time.sleep(0.02)
            continue
        seen, flushes = st["last_flush"], flushes + 1
        after, storm, counters = exported(sidecar, args.known)
        st = status(sidecar)
        errors = {k: v - st0["parse_errors"].get(k, 0) for k, v in st["parse_errors"].items()
                  if v - st0["parse_errors"].get(k, 0)}
        wrong = sum(1 for b, a, w in zip(before, after, known_sent) if a - b != w)
        check = {"known_wrong": wrong, "known_shortfall": sum(known_sent) - sum(a - b for a, b in zip(after, before)),
                 "storm_exported": storm, "refused": errors, "own": counters}
        if not wrong and storm + sum(errors.values()) == storm_sent:
            exact_at = seen
            break
    drops = (udp_drops(port) or 0) - drops0
    if check is None:  # not one flush in all that time: say so, with what /status shows
        st = status(sidecar)
        print(f"no flush after the storm within {deadline - last_sent:.0f} s; /status: {st}", flush=True)
        check = {"known_wrong": args.known, "known_shortfall": sum(known_sent), "storm_exported": 0.0,
                 "refused": {}, "own": {}}
    own: dict[str, float] = check.pop("own")
    full = own.get("tasklens_statsd_buffer_full_total", 0.0) - own0.get("tasklens_statsd_buffer_full_total", 0.0)
    return {"known_rate": sum(known_sent) / sent["seconds"], "storm_rate": storm_sent / sent["seconds"],
            "known_sent": sum(known_sent), "storm_sent": storm_sent, "send_seconds": sent["seconds"],
            "sender_cpu": sent["sender_cpu"], "send_errors": sent["send_errors"], **check,
            "kernel_drops": drops, "buffer_full": full, "lag": lag.worst(lines_sent / args.seconds, st0["lines"]),
            "parsed_after": None if parsed_at is None else parsed_at - last_sent,
            "exported_after": None if exact_at is None else exact_at - last_sent,
            "first_boundary_after": boundary - last_sent,
            "flushes_needed": flushes if exact_at is not None else None,
            "flush_seconds": own.get("tasklens_statsd_flush_duration_seconds"),
            "contexts": st["contexts"], "load": os.getloadavg()[0], "tree": tree,
            "sidecar_cpu": sum(busiest) / sent["seconds"], "threads_cpu": [c / sent["seconds"] for c in busiest[:3]]}


# -- report ----------------------------------------------------------------------------------------


def opt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def verdict(r: dict[str, Any]) -> str:
    ok = (not r["known_wrong"] and r["flushes_needed"] == 1 and not r["kernel_drops"] and not r["send_errors"])
    return "PASS" if ok else "FAIL"


def _median_or_none(values: Any) -> float | None:
    """The median, or None when any round did not get there."""
    values = list(values)
    return None if None in values else statistics.median(values)


def row(label: str, r: dict[str, Any]) -> str:
    refused = sum(r["refused"].values())
    return (f"{label:<22} {r['known_rate'] / 1e3:>7.0f}k {r['storm_rate'] / 1e3:>6.0f}k {r['known_wrong']:>6} "
            f"{r['known_shortfall']:>9,.0f} {r['storm_exported']:>9,.0f} {refused:>9,.0f} "
            f"{r['storm_exported'] + refused - r['storm_sent']:>+6,.0f} {r['kernel_drops']:>6} {r['buffer_full']:>5.0f} {r['lag']:>5.2f} "
            f"{opt(r['parsed_after']):>7} {opt(r['exported_after']):>7} {opt(r['first_boundary_after']):>7} "
            f"{str(r['flushes_needed'] or '-'):>4} {opt(r['flush_seconds']):>6} {r['load']:>5.2f}  {verdict(r)}")


HEADER = (f"{'':<22} {'known/s':>8} {'storm/s':>7} {'wrong':>6} {'shortfall':>9} {'exported':>9} {'refused':>9} "
          f"{'unacc':>6} {'drops':>6} {'full':>5} {'lag':>5} {'parsed':>7} {'export':>7} {'bound':>7} {'fl':>4} {'flush':>6} "
          f"{'load':>5}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--known", type=int, default=1000, help="known counters (contexts)")
    ap.add_argument("--known-rate", type=int, default=500_000, help="known lines per second")
    ap.add_argument("--storm-rate", type=int, default=100_000, help="storm lines (each a new context) per second")
    ap.add_argument("--senders", type=int, default=2, help="sender processes")
    ap.add_argument("--hogs", type=int, default=0,
                    help="processes spinning on the CPU while sending (a busy neighbour on the same cores)")
    ap.add_argument("--flush-interval", type=float, default=10.0)
    ap.add_argument("--phase", type=float, default=0.5,
                    help="seconds after a flush boundary when sending starts (see `measure`)")
    ap.add_argument("--set", action="append", default=[], metavar="VAR=VALUE",
                    help="a setting of the sidecar, e.g. TASKLENS_STATSD_BUFFER_BYTES=64MiB (repeatable)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--baseline", help="also run agent/ of this git revision, in turn with this checkout")
    args = ap.parse_args()
    t = time.perf_counter()
    p = plan(args)
    print(f"{os.cpu_count()} cores, load {os.getloadavg()}; {len(p.datagrams):,} datagrams of {p.known_per} known + "
          f"{p.storm_per} storm lines (~{statistics.mean(map(len, p.datagrams[:1000])):.0f} bytes), built in "
          f"{time.perf_counter() - t:.1f} s; {args.senders} senders, {args.hogs} CPU hogs; flush every {args.flush_interval:g} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        variants: dict[str, dict[str, str]] = {"this checkout": {}}
        if args.baseline:
            variants = {f"baseline {args.baseline}": {"PYTHONPATH": str(export(args.baseline, Path(tmp)))},
                        **variants}
        results: dict[str, list[dict[str, Any]]] = {label: [] for label in variants}
        print(HEADER, flush=True)
        for i in range(args.rounds):
            for label, env in variants.items():
                r = run(args, p, env)
                results[label].append(r)
                print(row(f"{label} #{i + 1}", r), flush=True)
                if i == 0:
                    print(f"{'':<22} runs {r['tree']}", flush=True)
                if r["refused"]:
                    print(f"{'':<22} refused by reason: {r['refused']}; sender CPU {r['sender_cpu']:.1f} s over "
                          f"{r['send_seconds']:.1f} s; send errors {r['send_errors']}; the sidecar while sending: "
                          f"{100 * r['sidecar_cpu']:.0f}% of a core, busiest threads "
                          + ", ".join(f"{100 * c:.0f}%" for c in r["threads_cpu"]), flush=True)
    if args.rounds > 1:
        print("medians (parsed, export, fl: '-' when a round never got there):")
        for label, rs in results.items():
            med: dict[str, Any] = {k: statistics.median(r[k] for r in rs) for k in rs[0]
                                   if all(isinstance(r[k], (int, float)) for r in rs)}
            med.update(refused={"all": statistics.median(sum(r["refused"].values()) for r in rs)},
                       parsed_after=_median_or_none(r["parsed_after"] for r in rs),
                       exported_after=_median_or_none(r["exported_after"] for r in rs),
                       flushes_needed=None if any(r["flushes_needed"] is None for r in rs)
                       else max(r["flushes_needed"] for r in rs))
            passed = sum(verdict(r) == "PASS" for r in rs)
            print(row(label, med)[:-4] + f"{passed}/{len(rs)} passed")
    print("wrong: known counters whose total is not what was sent; shortfall: known lines missing; exported/refused: "
          "storm lines in /metrics / refused (any reason); unacc: storm lines neither (negative: lost); drops: "
          "kernel drops; full: receive buffer full; lag: most s of traffic sent and not yet parsed; parsed/export: s after the last line until every line was "
          "parsed / exported; bound: s from the last line to the next flush boundary; fl: flushes after the last "
          "line until all was exported (1 = caught up within one flush interval); flush: the last flush's seconds")


if __name__ == "__main__":
    main()
