"""Logging with rate limiting: a failing endpoint logs once per interval, not once per attempt."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from agent.urlmask import mask_text

log = logging.getLogger("tasklens")


class Gate:
    """Per key, `burst` lines in `interval` seconds, then none until `interval` has passed since the
    first of them; while lines keep being left out, one line an interval (a burst again after a quiet
    interval). `admit(key)` is None for a line to leave out, else how many were left out before it.
    Past `keys` keys all are forgotten at once: a bound for keys that come from elsewhere."""

    def __init__(self, interval: float = 60.0, burst: int = 1, keys: int | None = None) -> None:
        self.interval, self.burst, self.keys = interval, burst, keys
        self._seen: dict[Hashable, tuple[float, int, int]] = {}  # key -> window start, lines let through, left out

    def admit(self, key: Hashable) -> int | None:
        now = time.monotonic()
        start, passed, skipped = self._seen.get(key, (-float("inf"), 0, 0))
        if now - start >= self.interval:
            if self.keys is not None and len(self._seen) >= self.keys and key not in self._seen:
                self._seen.clear()
            self._seen[key] = (now, self.burst if skipped else 1, 0)
            return skipped
        if passed < self.burst:
            self._seen[key] = (start, passed + 1, skipped)
            return 0
        self._seen[key] = (start, passed, skipped + 1)
        return None


def suppressed(skipped: int) -> str:
    return f" ({skipped} similar messages suppressed)" if skipped else ""


class RateLimitedLog:
    """Logs a message at most once per `interval` seconds per key, and says how many were skipped."""

    def __init__(self, logger: logging.Logger = log, interval: float = 60.0) -> None:
        self.logger = logger
        self._gate = Gate(interval)

    def __call__(self, level: int, key: str, msg: str, *args: object) -> bool:
        skipped = self._gate.admit(key)
        if skipped is None:
            return False
        self.logger.log(level, msg + suppressed(skipped), *args)
        return True

    def info(self, key: str, msg: str, *args: object) -> bool:
        return self(logging.INFO, key, msg, *args)

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> bool:
        return self(logging.ERROR, key, msg, *args)


def one_line(record: logging.LogRecord, suffix: str = "", secrets: Iterable[str] = ()) -> None:
    """The record's message as one line, masked as the handler masks (`mask_text`), with its exception's
    first 200 characters instead of its traceback: cut after masking, so that no cut leaves part of a
    secret (a quoted token without its closing quote, a known secret's start) unmasked."""
    text = shown(mask_text(record.getMessage(), secrets))
    if record.exc_info and record.exc_info[1] is not None:
        text += ": " + shown(mask_text(repr(record.exc_info[1]), secrets))[:200]
    record.exc_info = record.exc_text = None
    record.msg, record.args = text + suffix, None


class OneLinePerInterval(logging.Filter):
    """For a library logger that logs a traceback per bad request (aiohttp's "Error handling request"
    for a header over 8 KiB): each message at most once per `interval` seconds, as one line with the
    exception's first 200 characters instead of its traceback, saying how many were left out. A
    client cannot flood the log."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        # a library's messages are few format strings: a bound all the same
        self._gate = Gate(interval, keys=100)

    def filter(self, record: logging.LogRecord) -> bool:
        skipped = self._gate.admit(str(record.msg)[:200])
        if skipped is None:
            return False
        one_line(record, suppressed(skipped))
        return True


class LibraryLines(logging.Filter):
    """On the handler, for the records of every other library's loggers (aiormq, botocore, nats, ...),
    which log per failed attempt what the sidecar already logs once a minute: at INFO and above, per
    logger and level, `burst` lines in `interval` seconds, then none until it has passed, the next line
    saying how many were left out; below debug level, an exception as one line, not its traceback."""

    def __init__(self, tracebacks: bool = False, burst: int = 5, interval: float = 60.0,
                 secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.tracebacks = tracebacks
        self.secrets = tuple(secrets)
        self._gate = Gate(interval, burst, keys=1000)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == log.name or record.name.startswith(log.name + "."):
            return True
        skipped = self._gate.admit((record.name, record.levelno)) if record.levelno >= logging.INFO else 0
        if skipped is None:
            return False
        if record.exc_info and not self.tracebacks:
            one_line(record, suppressed(skipped), self.secrets)
        elif skipped:
            record.msg, record.args = record.getMessage() + suppressed(skipped), None
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


def known_secrets(secrets: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The secrets every log line is masked with besides what reads as one (`setup`): `secrets` (the
    configuration's, `redact.log_secrets`) and the AWS credentials of the environment. What the sidecar
    shows elsewhere (`/status`, `/status/history`: `masked`) is masked with the same."""
    environ = os.environ if environ is None else environ
    return tuple(s for s in (*secrets, *(environ.get(v, "") for v in AWS_SECRET_VARIABLES)) if s)


def masked(value: Any, secrets: Iterable[str] = ()) -> Any:
    """`value` (a component's status: dicts, lists, strings, numbers) with every string in it, a key too,
    masked as a log line is (`mask_text` with `secrets`: `known_secrets`): a component's last error quotes
    its peer's answer (an endpoint's error body echoing a credential), and `/status` shows it as kept."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return mask_text(value, secrets)
    if isinstance(value, Mapping):
        return {masked(k, secrets): masked(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [masked(v, secrets) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return mask_text(str(value), secrets)  # what the JSON would show of it (`http.json_text`: default=str)


def setup(level: str = "info", *, aside: bool = False, secrets: Iterable[str] = ()) -> logging.Handler:
    """The log on stderr; `aside`: written by a thread of its own (`tasklens run`, see AsideHandler).
    Every record that reaches it, whatever logged it, is masked (`Masked`: `secrets`, the configuration's,
    and the AWS credentials of the environment, besides what reads as one) and, from another library,
    rate-limited (`LibraryLines`)."""
    number = getattr(logging, level.upper(), logging.INFO)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "tasklens", False)]:  # set up again (tests): replaced
        root.removeHandler(old)
        old.close()
    handler: logging.Handler = AsideHandler() if aside else logging.StreamHandler()
    handler.tasklens = True  # type: ignore[attr-defined]
    known = known_secrets(secrets)
    handler.setFormatter(Masked(FORMAT, known))
    handler.addFilter(LibraryLines(tracebacks=number <= logging.DEBUG, secrets=known))
    root.addHandler(handler)
    root.setLevel(number)
    server = logging.getLogger("aiohttp.server")  # a traceback per malformed HTTP request
    if not any(isinstance(f, OneLinePerInterval) for f in server.filters):
        server.addFilter(OneLinePerInterval())
    return handler
