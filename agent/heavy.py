"""One worker thread for the heavy Python work done off the event loop: building a flush's batch and
rendering `/metrics`. Side by side, on the default executor's threads, they would split the GIL three
ways with the event loop instead of two; queued on one thread, each waits for the other instead."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tasklens-heavy")


async def run(fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` on the heavy-work thread."""
    return await asyncio.get_running_loop().run_in_executor(_executor, fn, *args)
