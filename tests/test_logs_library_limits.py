"""Other libraries' log lines are rate-limited and kept to one line (agent/logs.py `LibraryLines`):
aiormq logs an ERROR and a WARNING with its traceback at every broken connection, which the sidecar
already reports once a minute per queue and reason."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from agent import logs


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(logs, "time", SimpleNamespace(monotonic=lambda: now[0], sleep=time.sleep))
    return now


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    stream = io.StringIO()
    yield stream
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


def set_up(level: str, stream: io.StringIO) -> None:
    handler = logs.setup(level)
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)


def broken_connection() -> None:
    """What aiormq logs when the broker closes its connection (CONNECTION_FORCED)."""
    aiormq = logging.getLogger("aiormq.connection")
    aiormq.error('Unexpected connection close from remote "amqp://guest:******@127.0.0.1:5672/", '
                 "Connection.Close(reply_code=320, reply_text='CONNECTION_FORCED')")
    try:
        raise ConnectionError("CONNECTION_FORCED - broker forced connection closure")
    except ConnectionError:
        aiormq.warning("Cancelling cause reader exited abnormally", exc_info=True)


def test_a_library_logging_every_failure_is_limited_per_logger_and_level(clock, out) -> None:
    set_up("info", out)
    for _ in range(300):
        broken_connection()
        clock[0] += 1.0  # a failure a second, for five minutes
    lines = out.getvalue().splitlines()
    errors = [line for line in lines if " ERROR aiormq.connection: " in line]
    warnings = [line for line in lines if " WARNING aiormq.connection: " in line]
    # five at once, then one a minute (at 60, 120, 180 and 240 s) saying how many were left out
    assert len(errors) == 5 + 4 and len(warnings) == len(errors), lines
    assert len(lines) == len(errors) + len(warnings), "no traceback below debug level"
    assert "Traceback" not in out.getvalue()
    assert warnings[0].endswith("Cancelling cause reader exited abnormally: "
                                "ConnectionError('CONNECTION_FORCED - broker forced connection closure')")
    assert errors[5].endswith("(55 similar messages suppressed)"), errors[5]
    assert sum(int(line.rsplit("(", 1)[1].split()[0]) for line in errors if "suppressed" in line) <= 300


def test_the_sidecars_own_lines_and_a_librarys_debug_lines_are_not_limited(clock, out) -> None:
    set_up("debug", out)
    for i in range(50):
        logging.getLogger("tasklens.queue").warning("own line %d", i)
        logging.getLogger("botocore.endpoint").debug("debug line %d", i)
    text = out.getvalue()
    assert text.count("own line") == 50 and text.count("debug line") == 50


def test_at_debug_level_a_librarys_traceback_is_shown(clock, out) -> None:
    set_up("debug", out)
    broken_connection()
    assert "Traceback (most recent call last)" in out.getvalue()
    assert "amqp://guest:***@127.0.0.1:5672/" in out.getvalue()
