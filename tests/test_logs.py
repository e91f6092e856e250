"""The log handler of `tasklens run` (agent/logs.py): a blocked stderr never holds up the caller."""

from __future__ import annotations

import logging
import os
import re
import time

from agent.logs import AsideHandler
from tests.support import wait_until


def test_a_blocked_stream_never_holds_up_a_log_call_and_every_line_is_written_or_counted() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    filled = 0
    try:
        while True:
            filled += os.write(write_end, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(write_end, True)
    handler = AsideHandler(fd=write_end, capacity=3)
    logger = logging.getLogger("tasklens.test.aside")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        started = time.monotonic()
        for i in range(10):
            logger.warning("line %d", i)
        assert time.monotonic() - started < 0.5  # nothing waited for the pipe
        wait_until(lambda: handler.dropped == 6 or handler.dropped == 7, 5, what="the lines past the capacity")
        out = b""
        while len(out) < filled:  # the pipe's old content, then what the writer thread had waiting
            out += os.read(read_end, filled - len(out))
        os.set_blocking(read_end, False)

        def read_more() -> bool:
            nonlocal out
            try:
                out += os.read(read_end, 65536)
            except BlockingIOError:
                pass
            return handler.waiting == 0
        wait_until(read_more, 5, what="the queued lines written")
        read_more()
        text = out[filled:].decode()
        written = re.findall(r"line \d", text)
        note = re.search(r"(\d+) log lines dropped while stderr was blocked", text)
        assert note, text
        assert len(written) + int(note.group(1)) == 10, text
        assert written == sorted(written)
    finally:
        logger.removeHandler(handler)
        os.close(read_end)
        os.close(write_end)
