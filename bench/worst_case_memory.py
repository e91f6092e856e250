"""Worst-case memory of the sidecar: the most a worker can make it hold within the StatsD limits.

Starts `tasklens run` (defaults, but a 10 s context TTL, 60 s with `--shared-tags`, so that the end state is reached quickly) and
sends, while sampling its RSS every 50 ms:

1. contexts at both tag limits (100 unique tags, ~3.7 KB of tags per line), until the context
   bytes budget refuses new ones (and 10% more, refused); with `--shared-tags` instead, counters with
   distinct names that all carry the same 100 tags (a 4,000-byte tag field, charged once in the tag
   pool): the context count is reached first (its last 64 are left for the sets and the rest, the
   10% more are sent every interval and refused), the Prometheus sink's label bytes fill, and
   `/metrics` is scraped once a second throughout, as Prometheus would (`--no-scrape`: not);
2. for `--intervals` flush intervals: events of 60 KB, three times the per-interval event bytes; set
   members past the per-interval count (32-byte members) and three times past its bytes (1 KB
   members); with `--flood`, distinct timer values 10% past the per-interval histogram values
   (8,800,000 by default, 6,000 to a line, the lines in two slots: sorted with their weights, the
   costlier way); with `--head-storm`, a head storm: one histogram context with a new sample rate
   in every line (`h:1|h|@0.<9 digits>`, the costliest head per byte charged), as many heads as the
   head cache takes beside the contexts' own (its entries or its bytes, whichever is reached first),
   the same heads in every interval so that the cache stays full through every flush; and the
   contexts of step 1 again (all live);
3. a control counter alongside everything, which must be exported exactly.

Then it stops sending and waits until the idle contexts and their series expired, and memory was given
back (the lowest RSS over 10 s). Prints RSS before / peak / after.

    .venv/bin/python bench/worst_case_memory.py [--intervals 3] [--flood] [--head-storm]
        [--shared-tags [--no-scrape]]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.statsd.interval import Limits  # noqa: E402
from agent.statsd.receive import HEAD_CACHE_BYTES, HEAD_COST, Aggregator  # noqa: E402
from tests.support import Sidecar, http_get, wait_until  # noqa: E402
from tests.reliability.support import (event_storm, histogram_flood, memory_sidecar, rss_bytes,  # noqa: E402
                                       send_paced, set_storm, shared_tag_storm, status, tag_storm)

MIB = 1024 * 1024
CONTROL = b"control.jobs:1|c|#ctl:yes"


@dataclass
class Result:
    rss_before: int
    rss_peak: int
    rss_after: int
    contexts_peak: int
    control_sent: int
    control_exported: float
    errors: dict[str, int]
    label_bytes_peak: float = 0.0  # tasklens_prometheus_label_bytes at the end of the storm
    scrapes: int = 0  # of /metrics during the storm (--shared-tags)


def statsd(sidecar: Sidecar) -> dict[str, Any]:
    out: dict[str, Any] = status(sidecar)["components"]["statsd"]
    return out


def metrics_text(sidecar: Sidecar) -> str:
    code, text = http_get(sidecar.url + "/metrics", 60.0)
    assert code == 200, text
    return text


def sample(text: str, name: str) -> float:
    """The sum of the samples of `name` in an exposition (a text search: parsing 64 MiB of labels takes
    the bench's process longer than a flush)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Scraper:
    """`/metrics` read once every `every` seconds on a thread (as Prometheus would), until `stop()`."""

    def __init__(self, sidecar: Sidecar, every: float = 1.0) -> None:
        self.sidecar, self.every, self.scrapes = sidecar, every, 0
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._halt.is_set():
            started = time.monotonic()
            metrics_text(self.sidecar)
            self.scrapes += 1
            self._halt.wait(max(0.0, self.every - (time.monotonic() - started)))

    def stop(self) -> int:
        self._halt.set()
        self._thread.join(120)
        return self.scrapes


def wait_for_flush(sidecar: Sidecar, flush: float) -> None:
    last = statsd(sidecar)["last_flush"]
    wait_until(lambda: statsd(sidecar)["last_flush"] != last, flush * 3, what="a flush")


def head_storm(live: int, head_bytes: int, limits: Limits) -> list[bytes]:
    """A head storm that fills the head cache to just below its bound beside `live` heads of `head_bytes`
    bytes each (their key text, as `Aggregator._remember` charges it): `h:1|h|@0.<9 digits>`, one histogram
    context, a new head per line, in datagrams of ~60 KB."""
    cache = Aggregator(limits=limits)  # the bounds as the sidecar computes them from the limits
    others = live + 16  # the sets', the flood's and the control counter's heads, with room to spare
    key = len(b"h") + len(b"h|@0.100000000")
    by_bytes = (HEAD_CACHE_BYTES - live * (head_bytes + HEAD_COST) - 16 * 256) // (key + HEAD_COST)
    n = min(cache._cache_limit - others, by_bytes) * 99 // 100  # never past it: that would empty the cache
    lines = [b"h:1|h|@0.%09d" % (100_000_000 + i) for i in range(n)]
    per = 60_000 // (len(lines[0]) + 1)
    return [b"\n".join(lines[k:k + per]) for k in range(0, len(lines), per)]


def run(tmp: Path, intervals: int = 3, flush: float = 10.0, flood: bool = False,
        heads: bool = False, shared: bool = False, scrapes: bool = True) -> Result:
    limits = Limits()
    ttl = 60 if shared else 10  # --shared-tags: every context live through an interval's ~30 s of sending
    sidecar, before, sampler = memory_sidecar(tmp, flush, ttl)
    scraper = Scraper(sidecar) if shared and scrapes else None
    try:
        control = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            def send_control() -> None:
                nonlocal control
                s.sendto(CONTROL, ("127.0.0.1", sidecar.statsd_port))
                control += 1

            def with_control(dgrams: list[bytes], every: int = 500) -> list[bytes]:
                """`dgrams` with the control counter among them every `every`: with --shared-tags the label bytes
                are full, and a control series that expired would not come back."""
                nonlocal control
                out = []
                for k in range(0, len(dgrams), every):
                    out += [*dgrams[k:k + every], CONTROL]
                    control += 1
                return out

            # 1. contexts until the bytes budget refuses them (each line charged ~10 KB: ~13,000 fit)
            per_line = 100 * (3 + 32 + 8 + 200) + 512 + 24  # see interval.Context.cost and pair_cost
            contexts = int(limits.context_bytes / per_line * 1.1)
            storm = tag_storm(contexts)
            datagrams = [b"\n".join(storm[k:k + 15]) for k in range(0, len(storm), 15)]
            send_control()
            if shared:  # 1'. the context count is reached first: the last 64 left for the sets and the rest
                wait_for_flush(sidecar, flush)  # the control series first: the label bytes will be full
                contexts = limits.max_contexts * 11 // 10
                storm = shared_tag_storm(contexts)
                datagrams = [b"\n".join(storm[k:k + 15]) for k in range(0, len(storm), 15)]
                first = limits.max_contexts - 64
                send_paced(sidecar, with_control(
                    [b"\n".join(storm[k:min(first, k + 15)]) for k in range(0, first, 15)]), step=20)
            else:
                send_paced(sidecar, datagrams, step=20)
            send_control()
            storm_heads: list[bytes] = []
            if heads:
                name, _, rest = storm[-1].partition(b":")
                storm_heads = head_storm(statsd(sidecar)["contexts"], len(name) + len(rest.partition(b"|")[2]),
                                         limits)
            # 2. every interval: the contexts again, events and set members past their limits
            # three times the event and set bytes: past them even when a flush splits the storm in two
            events = event_storm(3 * limits.event_bytes // 60_000)
            for n in range(intervals):
                members = set_storm(contexts=8, members=limits.set_members + 50_000, salt=n)  # the count
                members += set_storm(contexts=8, members=3 * limits.set_bytes // 1000, member_bytes=1000,
                                     salt=n)  # the bytes
                # the sets first: with --shared-tags the storm's last 10% is refused by the context count
                send_paced(sidecar, events + members + (with_control(datagrams) if shared else datagrams)
                           + storm_heads, step=20)
                if flood:  # 12 MB at a time (the socket and receive buffers hold them)
                    send_paced(sidecar, histogram_flood(limits.histogram_values * 11 // 10, salt=n, rates=2),
                               step=200)
                send_control()
                wait_for_flush(sidecar, flush)
        contexts_peak = statsd(sidecar)["contexts"]
        seen: list[str] = []  # each scrape, the last one is the result

        def exported_exactly() -> bool:
            seen.append(metrics_text(sidecar))
            del seen[:-1]
            return sample(seen[-1], "control_jobs_total") == control

        wait_until(exported_exactly, flush * 6, what="control")
        exported = sample(seen[-1], "control_jobs_total")
        label_bytes = sample(seen.pop(), "tasklens_prometheus_label_bytes")
        errors = statsd(sidecar)["parse_errors"]
        scraped = scraper.stop() if scraper is not None else 0
        peak = sampler.stop()
        # 3. idle: every storm context expires after its TTL (plus a flush), memory goes back
        wait_until(lambda: statsd(sidecar)["contexts"] <= 1, ttl + flush * 4, interval=0.5, what="expiry")
        wait_until(lambda: "\nhostile_" not in metrics_text(sidecar), ttl + 30, interval=0.5,
                   what="the storm's series gone from /metrics")
        # the freed memory goes back to the system in two trims, the second 2 s after a burst
        # (agent/memory.py): the lowest RSS within 10 s
        after = rss_bytes(sidecar.proc.pid)
        settle = time.monotonic() + 10
        while time.monotonic() < settle:
            after = min(after, rss_bytes(sidecar.proc.pid))
            time.sleep(0.5)
        return Result(before, max(peak, after), after, contexts_peak, control, exported, errors, label_bytes,
                      scraped)
    finally:
        if scraper is not None:
            scraper.stop()
        sidecar.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=int, default=3)
    parser.add_argument("--flush", type=float, default=10.0)
    parser.add_argument("--flood", action="store_true", help="a histogram flood in every interval too")
    parser.add_argument("--head-storm", action="store_true",
                        help="a head storm too, filling the head cache to its bound (the same heads every interval)")
    parser.add_argument("--shared-tags", action="store_true",
                        help="contexts sharing the same 100 tags up to the context count instead, /metrics "
                             "scraped once a second")
    parser.add_argument("--no-scrape", action="store_true", help="with --shared-tags: no scrapes during it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = run(Path(tmp), args.intervals, args.flush, args.flood, args.head_storm, args.shared_tags,
                not args.no_scrape)
    print(f"RSS before {r.rss_before / MIB:.0f} MiB, peak {r.rss_peak / MIB:.0f} MiB, after {r.rss_after / MIB:.0f} MiB")
    print(f"contexts at the peak {r.contexts_peak}; control counter sent {r.control_sent}, exported "
          f"{r.control_exported:g}; refused lines by reason: {r.errors}")
    print(f"tasklens_prometheus_label_bytes {r.label_bytes_peak:.0f}; /metrics scraped {r.scrapes} times")


if __name__ == "__main__":
    main()
