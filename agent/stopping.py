"""Stop signals from the first moment of `tasklens run`: remembered, never fatal, until the event
loop handles them (`Runtime.serve`).

`tasklens run` starts itself again with the system allocator (`memory.use_system_allocator`, an exec),
then imports, validates and builds for a fraction of a second before `serve` listens for SIGTERM. A
stop signal in that window killed the process by signal, nothing flushed (ECS stops a task that way
when it is stopped right after starting). Now the signals are blocked before the exec (a pending
signal survives it, and so does the mask), and from the start of the new process a handler remembers
them; `serve` then stops at once, the usual way. The first process blocks them before it imports the
command line (`agent/entry.py`): what is left is the interpreter's own start (20-70 ms here, README)."""

from __future__ import annotations

import signal
from types import FrameType

from agent.entry import STOP_SIGNAL_NAMES

STOP_SIGNALS = tuple(getattr(signal, name) for name in STOP_SIGNAL_NAMES)
_requested = False


def block() -> None:
    """Hold the stop signals pending (across an exec too) until `hold`."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def hold() -> None:
    """Remember a stop signal instead of dying of it, one already pending included."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _remember)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _remember(signum: int, frame: FrameType | None) -> None:
    global _requested
    _requested = True


def requested() -> bool:
    """Whether a stop signal came before the event loop handled them."""
    return _requested
