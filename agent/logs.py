"""Logging with rate limiting: a failing endpoint logs once per interval, not once per attempt."""

from __future__ import annotations

import logging
import time

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

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> bool:
        return self(logging.ERROR, key, msg, *args)


def shown(text: str) -> str:
    """`text` for a log line: control and other unprintable characters escaped as in a Python literal
    (`\\n`, `\\x1b`), so that a name from elsewhere (a script file name, a command line) can neither
    split a log line nor forge one."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def setup(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
