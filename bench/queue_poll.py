"""Cost of watching a queue: the trend computation, one poll per broker, and each client's memory.

1. Microseconds per `trend()` over a 5-minute window polled every 15 s (20 points), 1 s (300) and
   0.1 s (3,000).
2. Milliseconds (wall, median and p95) and CPU milliseconds per `QueueSource.poll()` against the
   brokers on this machine, publishing to the Prometheus sink; beanstalkd and moto's SQS server are
   started here on free ports. A broker that is not running is skipped. At the default 15 s
   interval, CPU ms / 15,000 ms is the share of one core.
3. Resident memory of a fresh interpreter after importing the queue source alone, then after
   importing each broker's client (what configuring one URL of that scheme costs).

    .venv/bin/python bench/queue_poll.py [--polls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.config import Config  # noqa: E402
from agent.hub import Hub  # noqa: E402
from agent.identity import Identity  # noqa: E402
from agent.sinks.prometheus import PrometheusSink  # noqa: E402
from integrations.queues.source import QueueSource  # noqa: E402
from integrations.queues.trend import trend  # noqa: E402

CLIENTS = {"sqs": "aiobotocore.session", "rabbitmq": "aio_pika", "redis": "redis.asyncio", "nats": "nats",
           "beanstalkd": "greenstalk", "postgres": "asyncpg"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {port}")
        time.sleep(0.05)


def bench_trend() -> None:
    print("trend() over a 300 s window")
    for step in (15.0, 1.0, 0.1):
        points = [(i * step, 1000 + 3 * i * step + (i % 7)) for i in range(int(300 / step) + 1)]
        n = max(50, int(20_000 / len(points)))
        started = time.perf_counter()
        for _ in range(n):
            trend(points, window=300, threshold=100)
        us = (time.perf_counter() - started) / n * 1e6
        print(f"  poll every {step:>4} s: {len(points):>5} points  {us:9.1f} us per call")


async def bench_poll(label: str, url: str, polls: int) -> None:
    hub = Hub(Identity(service="bench"))
    hub.add_sink(PrometheusSink(hub.metrics, hub.pull))
    source = QueueSource(Config(), hub, url)
    deadline = time.monotonic() + 15  # a new RabbitMQ queue has no management statistics for a moment
    while not await source.poll():  # connect once; the steady state is what a sidecar pays
        if time.monotonic() > deadline:
            print(f"  {label:<22} skipped: {source.last_error}")
            await source.probe.close()
            return
        await asyncio.sleep(0.5)
    walls, cpu_started = [], time.process_time()
    for _ in range(polls):
        started = time.perf_counter()
        await source.poll()
        walls.append((time.perf_counter() - started) * 1000)
    cpu = (time.process_time() - cpu_started) / polls * 1000
    await source.probe.close()
    walls.sort()
    print(f"  {label:<22} wall median {statistics.median(walls):6.2f} ms  p95 {walls[int(len(walls) * .95)]:6.2f} ms"
          f"  cpu {cpu:5.2f} ms  ({cpu / 15_000 * 100:.4f} % of a core at 15 s)")


async def polls(polls: int) -> None:
    import asyncpg
    import greenstalk
    import redis

    print(f"one poll, {polls} polls per broker (Python {sys.version.split()[0]}, load {os.getloadavg()[0]:.2f})")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if port_open(6379):
            r = redis.Redis()
            r.delete("bench-list", "bench-stream")
            r.rpush("bench-list", *range(1000))
            r.xgroup_create("bench-stream", "g", id="0", mkstream=True)
            for i in range(100):
                r.xadd("bench-stream", {"i": i})
            await bench_poll("redis list", "redis://127.0.0.1:6379/0?list=bench-list", polls)
            await bench_poll("redis rq", "redis://127.0.0.1:6379/0?rq=bench", polls)
            await bench_poll("redis stream+group", "redis://127.0.0.1:6379/0?stream=bench-stream&group=g", polls)
            r.delete("bench-list", "bench-stream")
        if port_open(5672):
            import aio_pika

            conn = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
            await (await conn.channel()).declare_queue("bench-q", auto_delete=False)
            await bench_poll("rabbitmq amqp", "amqp://guest:guest@127.0.0.1:5672/?queue=bench-q", polls)
            if port_open(15672):
                await bench_poll("rabbitmq management", "amqp://guest:guest@127.0.0.1:5672/?queue=bench-q"
                                 "&management=http://127.0.0.1:15672", polls)
            await (await conn.channel()).queue_delete("bench-q")
            await conn.close()
        if port_open(4222):
            import nats

            nc = await nats.connect("nats://127.0.0.1:4222")
            js = nc.jetstream()
            await js.add_stream(name="BENCH", subjects=["BENCH.>"])
            await js.add_consumer("BENCH", durable_name="w")
            for _ in range(100):
                await js.publish("BENCH.x", b"x")
            await bench_poll("nats jetstream", "nats://127.0.0.1:4222?stream=BENCH&consumer=w", polls)
            await js.delete_stream("BENCH")
            await nc.close()
        if port_open(5432):
            conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
            await conn.execute("CREATE TABLE IF NOT EXISTS bench_jobs "
                               "(id serial, created_at timestamptz DEFAULT now())")
            await conn.execute("INSERT INTO bench_jobs (created_at) SELECT now() FROM generate_series(1, 1000)")
            await bench_poll("postgres", "postgresql://postgres@127.0.0.1:5432/test?name=jobs&query=SELECT+count(*)"
                             "+AS+depth,+now()-min(created_at)+AS+oldest_age_seconds+FROM+bench_jobs", polls)
            await conn.execute("DROP TABLE bench_jobs")
            await conn.close()
        if shutil.which("beanstalkd"):
            port = free_port()
            procs.append(subprocess.Popen(["beanstalkd", "-l", "127.0.0.1", "-p", str(port)]))
            wait_port(port)
            with greenstalk.Client(("127.0.0.1", port), use="bench") as c:
                for _ in range(100):
                    c.put("x")
            await bench_poll("beanstalkd", f"beanstalk://127.0.0.1:{port}/bench", polls)
        moto = Path(sys.executable).with_name("moto_server")
        if moto.exists():
            import boto3

            port = free_port()
            procs.append(subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(port)
            os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
            boto3.client("sqs", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}").create_queue(
                QueueName="bench")
            await bench_poll("sqs (moto)", f"sqs://bench?region=us-east-1&endpoint=http://127.0.0.1:{port}", polls)
    finally:
        for p in procs:
            p.terminate()
            p.wait()


def rss_after(imports: str) -> float:
    code = f"import {imports}\nprint(open('/proc/self/statm').read().split()[1])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return int(out.stdout) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_memory() -> None:
    base = rss_after("integrations.queues.source")
    print(f"resident memory: queue source alone {base:.1f} MiB; each client adds")
    for broker, module in CLIENTS.items():
        print(f"  {broker:<11} {rss_after('integrations.queues.source, ' + module) - base:5.1f} MiB  ({module})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--polls", type=int, default=200)
    args = parser.parse_args()
    bench_trend()
    asyncio.run(polls(args.polls))
    bench_memory()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
