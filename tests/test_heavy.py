"""The heavy-work thread (flush batches, `/metrics` renderings) yields the CPU to the threads that
receive StatsD: it runs at a lower priority than the rest of the process (agent/heavy.py)."""

from __future__ import annotations

import asyncio
import os
import threading

from agent import heavy


def nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_the_heavy_thread_runs_at_a_lower_priority_than_its_caller() -> None:
    here = nice()
    assert asyncio.run(heavy.run(nice)) == heavy.NICE > here
    assert nice() == here  # the thread's own, not the process's
