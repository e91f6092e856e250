"""Give freed memory back to the system after a burst (a cardinality storm, a long outage).

CPython frees the objects of a burst, but by default two allocators keep the memory:

- pymalloc, CPython's small-object allocator, returns a 1 MiB arena only once every block in it is
  free. After a storm a few long-lived objects pin most arenas: measured after 1,000,000 one-off
  names, 37 arenas holding the live bytes of the 16 at the baseline, the other 19 MiB free but kept.
  So `tasklens run` runs with PYTHONMALLOC=malloc (`use_system_allocator`): objects live in glibc's
  heaps, where `malloc_trim` hands back every free page wherever it is.
- glibc keeps freed pages until `malloc_trim(0)`, which never shrinks the top of the extra arenas it
  gives threads (the StatsD receive thread, `to_thread` workers); and after a large block is freed,
  glibc raises its thresholds, so that later large blocks stay in the heaps. `configure` fixes the
  thresholds and allows two arenas: the receive thread's burst lands away from the main thread's
  long-lived objects, and the arena count does not grow with the host's cores.

`release_freed_memory()` trims at once and again `SETTLE` seconds later (the runtime's memory task
does the second one): what is freed right after a burst (a scrape that was rendering the old series,
the renderer's caches) is handed back too. The C library calls are no-ops where it lacks them (musl,
macOS). Measured, 1,000,000 one-off names at a cap of 100,000 (tests/reliability, median of 3): RSS
44 -> 277 -> 183 MiB after the TTL with pymalloc, 45 -> 275 -> 48 MiB with all of this. The cost: +0.8
MiB idle, 0.1 s more to start (the exec), no change in StatsD lines/s (bench/statsd_parse.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

# forgetting more than this many contexts or series at once is a burst worth trimming after
BURST = 1000
SETTLE = 2.0  # seconds after a burst's trim, a second trim for what was freed right after it

# mallopt parameters (malloc.h) and the values `configure` sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
ARENA_MAX = 2
MMAP_THRESHOLD = 256 * 1024  # larger blocks (a rendered /metrics, a big dict) are mapped and unmapped whole
TRIM_THRESHOLD = 4 * 2**20  # free space at the top of a heap that free() keeps rather than hand back
# glibc scatters objects where pymalloc packs them, so each garbage collection walks more cache lines
# (a storm's CPU: x1.7); collecting the youngest objects every 10,000 allocations, not 700, pays it back
GC_THRESHOLD = (10_000, 10, 10)

_second_trim_at = 0.0  # monotonic time of the pending second trim; 0: none


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _function(name: str) -> Any:
    return getattr(_libc(), name, None)


def use_system_allocator(environ: Mapping[str, str] = os.environ) -> None:
    """Start this process again with PYTHONMALLOC=malloc, unless it is set (any value: the operator's
    choice, e.g. `pymalloc` to opt out). The allocator is fixed when the interpreter starts, so this is
    the one place that covers every way the sidecar is started (image, `make run`, `tasklens run`,
    `python -m agent run`). exec keeps the process id. Returns when the exec is not possible."""
    if "PYTHONMALLOC" in environ or sys.flags.ignore_environment or not sys.executable or _function("malloc_trim") is None:
        return
    env = dict(environ, PYTHONMALLOC="malloc")
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        pass  # runs on with pymalloc: works, returns less memory after a storm


def configure() -> bool:
    """Fix glibc's thresholds and arena count (before the threads start) and the collector's threshold;
    True when the C library took them."""
    gc.set_threshold(*GC_THRESHOLD)
    mallopt = _function("mallopt")
    if mallopt is None:
        return False
    return all([mallopt(M_ARENA_MAX, ARENA_MAX), mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)])


def trim() -> bool:
    """`malloc_trim(0)`: True when the C library released something (a few ms after a large burst)."""
    malloc_trim = _function("malloc_trim")
    return bool(malloc_trim(0)) if malloc_trim is not None else False


def release_freed_memory() -> bool:
    """After a burst of frees: trim now, and once more `SETTLE` seconds later (`second_trim_due`)."""
    global _second_trim_at
    _second_trim_at = time.monotonic() + SETTLE
    return trim()


def second_trim_due(now: float | None = None) -> bool:
    """True once the second trim of a burst is due (and forgets it: the caller trims)."""
    global _second_trim_at
    due = _second_trim_at
    if not due or (time.monotonic() if now is None else now) < due:
        return False
    _second_trim_at = 0.0
    return True
