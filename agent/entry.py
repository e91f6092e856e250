"""The `tasklens` command's entry point. For `run`, its first lines block the stop signals (agent/stopping.py
holds them from there): the imports of the command line take about 0.1 s, and a SIGTERM then (ECS stopping a
task as it starts) would have killed the process by signal, nothing flushed. They use the C module `_signal`:
`signal` imports enum and functools first (about 5 ms in an interpreter that has not loaded them). What is
left is the interpreter's own start before this module runs (site and the .pth files included): 20-70 ms
(README, Guarantees)."""

from __future__ import annotations

import sys


def main() -> int:
    if sys.argv[1:2] == ["run"]:
        import _signal  # the C module under signal: the same calls

        # stopping.STOP_SIGNALS: SIGTERM, SIGINT, SIGHUP (held pending across the exec too: stopping.block)
        _signal.pthread_sigmask(_signal.SIG_BLOCK, (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP))
    from agent.cli import main as cli

    return cli()
