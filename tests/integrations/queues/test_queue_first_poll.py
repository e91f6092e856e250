"""The first poll imports no client inside its timeout. A broker's client is imported when its queue is
first polled, and that takes up to a second on a busy machine (nats-py 0.5 s, aiobotocore 1 s seen on a
shared 2-core machine): a first poll with a short timeout spent it importing, and a refused port was
counted `timeout` instead of `connection`.

Each case runs in a fresh interpreter (nothing imported yet) whose client import is made slower than the
poll's timeout, so that the check does not depend on the machine's speed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[3]
TIMEOUT = 1.0  # the poll's
IMPORT_SECONDS = 1.5  # the client's import, slowed down: longer than the poll's timeout

URLS = {  # a refused port; the top module of the client, made slow
    "redis": ("redis://127.0.0.1:{port}/0?list=jobs", "redis"),
    "nats": ("nats://127.0.0.1:{port}?stream=JOBS&consumer=worker", "nats"),
    "rabbitmq": ("amqp://guest:guest@127.0.0.1:{port}/?queue=jobs", "aio_pika"),
}

FIRST_POLL = textwrap.dedent("""
    import asyncio, importlib.machinery, sys, time

    url, slow, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])

    class SlowLoader:
        def __init__(self, loader):
            self.loader = loader
        def __getattr__(self, name):
            return getattr(self.loader, name)
        def create_module(self, spec):
            return self.loader.create_module(spec)
        def exec_module(self, module):
            time.sleep(seconds)
            self.loader.exec_module(module)

    class SlowFinder:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name != slow:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None:
                spec.loader = SlowLoader(spec.loader)
            return spec

    sys.meta_path.insert(0, SlowFinder)

    from agent.config import Config
    from agent.hub import Hub
    from agent.identity import Identity
    from integrations.queues.source import POLL_ERRORS, QueueSource

    async def main():
        hub = Hub(Identity(service="test"))
        source = QueueSource(Config(), hub, url)
        assert slow not in sys.modules, "imported before the first poll"
        assert not await source.poll()
        await source._close()
        print(*[r for r in POLL_ERRORS if hub.metrics.get("tasklens.queue.poll_errors", queue=source.queue, reason=r)])

    asyncio.run(main())
""")


@pytest.mark.parametrize("kind", list(URLS))
def test_first_poll_of_a_refused_port_is_connection_however_slow_the_import(kind):
    url, slow = URLS[kind]
    url = url.format(port=free_port()) + f"&timeout={TIMEOUT:g}"
    done = subprocess.run([sys.executable, "-c", FIRST_POLL, url, slow, str(IMPORT_SECONDS)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["connection"], done.stdout + done.stderr[-2000:]
