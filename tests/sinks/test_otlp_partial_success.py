"""An OTLP receiver's partial success is its own word on what it refused, and is checked like any remote
answer: `rejected_data_points` outside 0..the points of the request is impossible (the whole request is
counted as failed, never a negative or inflated counter), and `error_message` is shown as every remote
text (secrets masked, no line break or escape that could forge a log line)."""

from __future__ import annotations

import logging
from dataclasses import replace

from hypothesis import example, given
from hypothesis import strategies as st

from agent.config import Config
from agent.hub import Hub
from agent.sinks.otlp import OtlpSink
from tests.sinks.test_otlp import TASK, one_line, partial_reply


SECRET = "s3cr3t-t0ken-4f1c"  # sent as `Authorization: Bearer <it>`: that value is what is masked
INT64 = st.integers(-(2**63), 2**63 - 1)


@given(points=st.integers(1, 10_000), rejected=st.one_of(INT64, st.integers(-2, 10_002)),
       message=st.one_of(st.text(), st.text().map(lambda t: t + "Bearer " + SECRET + "\n2026-01-01 ERROR forged\x1b[2J")))
@example(points=10, rejected=-1_000_000, message="")
@example(points=10, rejected=2**62, message="x\ny")
def test_rejected_points_are_counted_within_the_request_and_the_message_shown_safely(
        points: int, rejected: int, message: str) -> None:
    config = replace(Config(), otlp_endpoint="http://127.0.0.1:9", otlp_headers=f"Authorization=Bearer {SECRET}")
    hub = Hub(TASK)
    sink = OtlpSink(config, hub)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("tasklens")
    logger.addHandler(handler)
    try:
        sink._partial(partial_reply(rejected, message), points)
    finally:
        logger.removeHandler(handler)
    failed = hub.metrics.get("tasklens.exporter.points_failed", exporter="otlp", reason="partial_success")
    assert failed == (rejected if 0 <= rejected <= points else points if rejected or message else 0)
    assert 0 <= failed <= points
    assert len(records) == (1 if rejected or message else 0)
    for record in records:
        text = record.getMessage()
        assert one_line(text) and f"Bearer {SECRET}" not in text, text
