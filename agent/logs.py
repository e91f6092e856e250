"""Logging with rate limiting: a failing endpoint logs once per interval, not once per attempt."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterable
from typing import Any

from agent.urlmask import mask_query_secrets, mask_text

log = logging.getLogger("tasklens")


class RateLimitedLog:
    """Logs a message at most once per `interval` seconds per key, and says how many were skipped."""

    def __init__(self, logger: logging.Logger = log, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, level: int, key: str, msg: str, *args: object) -> bool:
        now = time.monotonic()
        last, skipped = self._last.get(key, (-float("inf"), 0))
        if now - last < self.interval:
            self._last[key] = (last, skipped + 1)
            return False
        self._last[key] = (now, 0)
        if skipped:
            msg += f" ({skipped} similar messages suppressed)"
        self.logger.log(level, msg, *args)
        return True

    def info(self, key: str, msg: str, *args: object) -> bool:
        return self(logging.INFO, key, msg, *args)

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> bool:
        return self(logging.ERROR, key, msg, *args)


class OneLinePerInterval(logging.Filter):
    """For a library logger that logs a traceback per bad request (aiohttp's "Error handling request"
    for a header over 8 KiB): each message at most once per `interval` seconds, as one line with the
    exception's first 200 characters instead of its traceback, saying how many were left out. A
    client cannot flood the log."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now, key = time.monotonic(), str(record.msg)[:200]
        last, skipped = self._last.get(key, (-float("inf"), 0))
        if now - last < self.interval:
            self._last[key] = (last, skipped + 1)
            return False
        if len(self._last) >= 100:  # a library's messages are few format strings: a bound all the same
            self._last.clear()
        self._last[key] = (now, 0)
        text = shown(mask_query_secrets(record.getMessage()))  # a client's request line may hold a token
        if record.exc_info and record.exc_info[1] is not None:
            text += ": " + shown(mask_query_secrets(repr(record.exc_info[1])))[:200]
            record.exc_info = record.exc_text = None
        record.msg, record.args = text + (f" ({skipped} similar messages suppressed)" if skipped else ""), None
        return True


class Masked(logging.Formatter):
    """Every message, traceback and stack as written, with what reads as a secret as `***`
    (`urlmask.mask_text`): the configuration's secrets and whatever a library prints (botocore's request
    headers at debug level, a client's URL with its password). The time, level and logger name are not
    read (`aiobotocore.credentials: Found ...` is no header)."""

    def __init__(self, fmt: str, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        self.secrets = tuple(secrets)

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_text:  # a traceback another handler formatted first (not by formatException below)
            record.exc_text = mask_text(record.exc_text, self.secrets)
        return super().format(record)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = mask_text(record.message, self.secrets)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return mask_text(super().formatException(ei), self.secrets)

    def formatStack(self, stack_info: str) -> str:
        return mask_text(super().formatStack(stack_info), self.secrets)


def shown(text: str) -> str:
    """`text` for a log line: control and other unprintable characters escaped as in a Python literal
    (`\\n`, `\\x1b`), so that a name from elsewhere (a script file name, a command line) can neither
    split a log line nor forge one."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class AsideHandler(logging.Handler):
    """Formats a record on the caller's thread and writes it to stderr on a daemon thread of its own.

    Under the awslogs driver in its default blocking mode, a write to stderr blocks while CloudWatch
    Logs does not take the stream: on the event loop it would stop everything (StatsD flushes, `/health`,
    the SIGTERM flush), and the exit would wait for it. Here a log line never waits: past `capacity`
    lines waiting, new ones are dropped and counted, and a line says how many once stderr moves again.
    The writer uses `os.write`, not `sys.stderr`, so it holds no lock the interpreter needs at exit."""

    def __init__(self, fd: int = 2, capacity: int = 1000) -> None:
        super().__init__()
        self.fd = fd
        self.dropped = 0
        self._lines: queue.Queue[bytes] = queue.Queue(maxsize=capacity)
        threading.Thread(target=self._write_all, name="tasklens-log", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        try:
            self._lines.put_nowait(line.encode(errors="backslashreplace"))
        except queue.Full:
            self.dropped += 1

    @property
    def waiting(self) -> int:
        """Lines not written yet."""
        return self._lines.unfinished_tasks

    def flush(self, timeout: float = 0.5) -> None:
        """Wait, a little, for the lines queued (at exit: the last ones say what could not be delivered)."""
        deadline = time.monotonic() + timeout
        while self.waiting and time.monotonic() < deadline:
            time.sleep(0.01)

    def _write_all(self) -> None:
        written_dropped = 0
        while True:
            data = self._lines.get()
            if self.dropped > written_dropped:
                now = self.dropped
                data = f"{now - written_dropped} log lines dropped while stderr was blocked\n".encode() + data
                written_dropped = now
            try:
                while data:
                    data = data[os.write(self.fd, data):]
            except OSError:  # stderr closed: nothing else to do with a log line
                pass
            finally:
                self._lines.task_done()


# the AWS SDK's credentials from the environment: botocore prints what it signs with at debug level
AWS_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(level: str = "info", *, aside: bool = False, secrets: Iterable[str] = ()) -> logging.Handler:
    """The log on stderr; `aside`: written by a thread of its own (`tasklens run`, see AsideHandler).
    Every record that reaches it, whatever logged it, is masked (`Masked`: `secrets`, the configuration's,
    and the AWS credentials of the environment, besides what reads as one)."""
    number = getattr(logging, level.upper(), logging.INFO)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "tasklens", False)]:  # set up again (tests): replaced
        root.removeHandler(old)
        old.close()
    handler: logging.Handler = AsideHandler() if aside else logging.StreamHandler()
    handler.tasklens = True  # type: ignore[attr-defined]
    handler.setFormatter(Masked(FORMAT, [*secrets, *(os.environ.get(v, "") for v in AWS_SECRET_VARIABLES)]))
    root.addHandler(handler)
    root.setLevel(number)
    server = logging.getLogger("aiohttp.server")  # a traceback per malformed HTTP request
    if not any(isinstance(f, OneLinePerInterval) for f in server.filters):
        server.addFilter(OneLinePerInterval())
    return handler
