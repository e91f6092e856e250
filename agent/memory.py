"""Give freed memory back to the system after a burst (a cardinality storm, a long outage).

CPython frees the objects, but glibc keeps the freed pages in its heaps, so RSS stays at the peak.
`malloc_trim(0)` returns them. A no-op where the C library has no `malloc_trim` (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

# forgetting more than this many contexts or series at once is a burst worth trimming after
BURST = 1000


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Returns True when the C library released something (it takes a few ms after a large burst)."""
    trim = _libc()
    return bool(trim(0)) if trim is not None else False
