"""One worker thread for the heavy Python work done off the event loop: building a flush's batch and
rendering `/metrics`. Side by side, on the default executor's threads, they would split the GIL three
ways with the event loop instead of two; queued on one thread, each waits for the other instead."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

# The thread's nice value (Linux: per thread). What it does can wait; the StatsD receive side cannot.
# At the same priority, the flush's sort of histogram values and the gzip of a scrape (C code that lets
# go of the GIL) took the core from the receive threads for as long as they ran, and near a full core
# the receive buffer filled and the kernel dropped datagrams (docs/statsd.md, "The export side yields the core").
# Within a container's cgroup only the sidecar's own threads compete with it.
NICE = 19


def _yield_to_receiving() -> None:
    if not sys.platform.startswith("linux"):  # elsewhere a thread id given as a process id is another's
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
    except OSError:  # not allowed here: the same work at the same priority
        pass


_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tasklens-heavy",
                               initializer=_yield_to_receiving)


async def run(fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` on the heavy-work thread."""
    return await asyncio.get_running_loop().run_in_executor(_executor, fn, *args)
