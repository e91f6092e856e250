"""Worker throughput with and without sidecar-mode profiling (py-spy at the default 100 Hz).

A CPU-bound stand-in worker (JSON decode, a little arithmetic, JSON encode per job) runs for a fixed
time and reports how many jobs it did, per wall second and per second of its own CPU time (the
second is immune to other load on a shared machine; the first also shows CPU contention with py-spy). Runs alternate: unprofiled, then profiled by the real
PySpyProfiler (default rate and window, pushing to a local /ingest endpoint), and so on. Prints each
run, the medians and the ratio; the target is under 2% slower.

    .venv/bin/python bench/profiling_overhead.py [--runs 5] [--seconds 12]

Needs ptrace (root, or SYS_PTRACE). On a shared machine the runs are noisy: read the median.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiohttp import web

from agent.config import Config
from agent.hub import Hub
from agent.identity import Identity
from integrations.profilers.pyspy import PySpyProfiler

WORKER = '''
import json, sys, time
def handle(raw):
    job = json.loads(raw)
    total = sum(i * job["factor"] % 97 for i in range(job["size"]))
    return json.dumps({"id": job["id"], "total": total})
def main():
    seconds = float(sys.argv[2])
    raw = json.dumps({"id": 1, "factor": 7, "size": 2000, "payload": "x" * 512})
    done = 0
    cpu0 = time.process_time()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        handle(raw)
        done += 1
    cpu = time.process_time() - cpu0
    print(done / seconds, done / cpu, cpu, flush=True)
main()
'''


async def ingest_server() -> tuple[web.AppRunner, str, list[int]]:
    received: list[int] = []

    async def ingest(request: web.Request) -> web.Response:
        received.append(len(await request.read()))
        return web.Response()

    app = web.Application()
    app.router.add_post("/ingest", ingest)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}", received


async def run_worker(script: str, seconds: float, profile_url: str | None) -> tuple[float, float, float, float]:
    """(jobs/s, jobs per worker CPU second, CPU seconds of py-spy, CPU seconds of this process)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = time.process_time()
    marker = f"bench-{uuid.uuid4().hex[:8]}"
    python = getattr(sys, "_base_executable", sys.executable)
    proc = await asyncio.create_subprocess_exec(python, script, marker, str(seconds), stdout=subprocess.PIPE)
    stop = asyncio.Event()
    task = None
    if profile_url:
        config = Config(pyroscope_url=profile_url, profile_match=marker)  # default 100 Hz, 10 s windows
        task = asyncio.create_task(PySpyProfiler(config, Hub(Identity(service="bench"))).run(stop))
    out, _ = await proc.communicate()
    stop.set()
    if task:
        await task
    wall_rate, cpu_rate, worker_cpu = (float(x) for x in out.decode().split())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    children_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    return wall_rate, cpu_rate, max(0.0, children_cpu - worker_cpu), time.process_time() - own


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="pairs of runs (default 5)")
    parser.add_argument("--seconds", type=float, default=12.0, help="seconds per run (default 12)")
    args = parser.parse_args()
    runner, url, received = await ingest_server()
    with tempfile.TemporaryDirectory() as tmp:
        script = str(Path(tmp) / "bench_worker.py")
        Path(script).write_text(WORKER)
        plain: list[tuple[float, float, float, float]] = []
        profiled: list[tuple[float, float, float, float]] = []
        for i in range(args.runs):
            plain.append(await run_worker(script, args.seconds, None))
            profiled.append(await run_worker(script, args.seconds, url))
            print(f"run {i + 1}: unprofiled {plain[-1][0]:8.1f} jobs/s {plain[-1][1]:8.1f} jobs/cpu-s   "
                  f"profiled {profiled[-1][0]:8.1f} jobs/s {profiled[-1][1]:8.1f} jobs/cpu-s   "
                  f"py-spy cpu {profiled[-1][2]:.2f} s, sidecar loop cpu {profiled[-1][3]:.2f} s", flush=True)
    await runner.cleanup()
    for what, column, unit in (("wall-clock throughput", 0, "jobs/s"), ("throughput per worker CPU second", 1,
                                                                         "jobs/cpu-s")):
        a = statistics.median(r[column] for r in plain)
        b = statistics.median(r[column] for r in profiled)
        print(f"{what}: median unprofiled {a:.1f} {unit}, profiled {b:.1f} {unit}, "
              f"ratio {b / a:.4f} (slowdown {100 * (1 - b / a):+.2f}%; target < 2%)")
    spy = statistics.median(r[2] for r in profiled)
    loop = statistics.median(r[3] for r in profiled)
    print(f"py-spy's own CPU (in the sidecar): median {spy:.2f} s per {args.seconds:g} s run "
          f"= {100 * spy / args.seconds:.1f}% of one core; the profiler's loop (scans, pushes; here also "
          f"the ingest endpoint): {100 * loop / args.seconds:.1f}%")
    print(f"profiles pushed: {len(received)}, {sum(received)} bytes of folded stacks")
    print(f"python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M:%S')}")


if __name__ == "__main__":
    asyncio.run(main())
