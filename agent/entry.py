"""The `tasklens` command's entry point. For `run`, its first lines block the stop signals (agent/stopping.py
holds them from there): the imports of the command line take about 0.1 s, and a SIGTERM then (ECS stopping a
task as it starts) would have killed the process by signal, nothing flushed. They use the C module `_signal`:
`signal` imports enum and functools first (about 5 ms in an interpreter that has not loaded them). What is
left is the interpreter's own start before this module runs (site and the .pth files included): 20-70 ms
(README, Guarantees).

Next, file descriptors 0, 1 and 2 are made sure to be open (`open_standard_fds`), before anything else opens a
file: started with one of them closed (`2>&-`), the next file or socket opened would take its number. uvloop's
epoll descriptor did, and libuv refuses to close a descriptor below 3: every exit was an abort (134)."""

from __future__ import annotations

import os
import sys

# stop with the final flush (agent/stopping.py); SIGHUP too (a closed terminal, `kill -HUP`): there is no
# reload to do, and Python's default for it would end the process at once, losing the open interval.
# Named here, where `signal` is not loaded yet; stopping.py makes its signals from these names.
STOP_SIGNAL_NAMES = ("SIGTERM", "SIGINT", "SIGHUP")


def open_standard_fds() -> None:
    """Open /dev/null onto each of fds 0, 1, 2 that is closed (inheritable, so the exec with the system
    allocator keeps it). `os` is loaded by the interpreter's start: no import cost here."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: `fd` itself, the lower ones are open
            if null != fd:
                os.dup2(null, fd)  # inheritable by default
                os.close(null)
            else:
                os.set_inheritable(fd, True)


def main() -> int:
    if sys.argv[1:2] == ["run"]:
        import _signal  # the C module under signal: the same calls

        # held pending across the exec too (stopping.block)
        _signal.pthread_sigmask(_signal.SIG_BLOCK, tuple(getattr(_signal, name) for name in STOP_SIGNAL_NAMES))
    open_standard_fds()
    from agent.cli import main as cli

    return cli()
