"""The `tasklens` command's entry point. For `run`, the stop signals are blocked (agent/stopping.py)
before anything else is imported: the imports of the command line take about 0.1 s, and a SIGTERM
then (ECS stopping a task as it starts) would have killed the process by signal, nothing flushed.
What is left is the interpreter's own start."""

from __future__ import annotations

import sys


def main() -> int:
    if sys.argv[1:2] == ["run"]:
        from agent import stopping

        stopping.block()
    from agent.cli import main as cli

    return cli()
