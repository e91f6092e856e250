"""The log handler of `tasklens run` (agent/logs.py): a blocked stderr never holds up the caller."""

from __future__ import annotations

import logging
import os
import re
import time
from types import SimpleNamespace

from agent.logs import AsideHandler
from tests.support import serve_app, wait_until


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


async def test_malformed_http_requests_log_one_line_a_minute_not_a_traceback_each(caplog) -> None:
    # a header over aiohttp's 8,190 bytes: aiohttp answers 400 and logs "Error handling request" with
    # its traceback, per request; `setup` makes that one line per minute, whatever a client sends
    import asyncio

    from aiohttp import web

    from agent import logs

    level = logging.getLogger().level
    handler = logs.setup()
    app = web.Application()

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/health", health)
    runner, url = await serve_app(app)
    port = int(url.rsplit(":", 1)[1])
    try:
        with caplog.at_level(logging.INFO):
            for size in (9_000, 20_000, 60_000):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /health?token=Tok3n123&pad=" + b"a" * size + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                await writer.drain()
                assert (await reader.read(12)).startswith(b"HTTP/1.")
                writer.close()
    finally:
        await runner.cleanup()
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(records) == 1, [r.getMessage()[:80] for r in records]
    [record] = records
    assert record.exc_info is None and record.exc_text is None
    assert "\n" not in record.getMessage() and len(record.getMessage()) < 300
    assert "Tok3n123" not in record.getMessage() and "token=***" in record.getMessage()  # the request line


def test_a_suppressed_message_is_counted_on_its_next_line(monkeypatch) -> None:
    from agent import logs
    from agent.logs import OneLinePerInterval

    # the gate's clock is the test's: on a loaded machine, 0.05 s of real time could pass between the first
    # message and the next two, which would then pass the gate instead of being suppressed
    now = [1000.0]
    monkeypatch.setattr(logs, "time", SimpleNamespace(monotonic=lambda: now[0], sleep=time.sleep))
    gate = OneLinePerInterval(interval=0.05)
    record = lambda: logging.LogRecord("aiohttp.server", logging.ERROR, "", 0, "Error from %s", ("a\nb",), None)  # noqa: E731
    assert gate.filter(first := record()) and first.getMessage() == "Error from a\\nb"  # one line
    now[0] += 0.04
    assert not gate.filter(record()) and not gate.filter(record())
    now[0] += 0.02  # 0.06 s after the first: past the interval
    assert gate.filter(again := record()) and again.getMessage().endswith("(2 similar messages suppressed)")
