"""Ranges of the export intervals and timeouts.

README: "every number has a range ... (each setting's `low`/`high` in `agent/config.py`)"; the queue
overrides are bounded because "`?interval=1e-300` would poll in a tight loop" (agent/cli.py). The OTLP
settings are in milliseconds (docs/export.md) and were checked as a number of seconds (0.001 to
604800): a 15-minute interval was refused, with a message in seconds, and a 1-microsecond interval
accepted (the OTLP sink then flushed ~600 times a second: 352,258 points queued within 10 s against
an unreachable collector).
"""

from __future__ import annotations

import pytest

from agent.config import ConfigError, load


def test_a_fifteen_minute_otlp_export_interval_is_accepted() -> None:
    # 900000 ms = 15 min; the OpenTelemetry default is 60000 ms, and TASKLENS_FLUSH_INTERVAL goes to 3600 s
    config = load({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_METRIC_EXPORT_INTERVAL": "900000"})
    assert config.otlp_interval_ms == 900000.0


@pytest.mark.parametrize(("name", "value"), [
    ("OTEL_METRIC_EXPORT_INTERVAL", "0.001"),  # 1 microsecond
    ("OTEL_METRIC_EXPORT_INTERVAL", "1"),  # 1 millisecond
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "0.01"),  # 10 microseconds per request
])
def test_an_otlp_interval_or_timeout_of_microseconds_is_refused_in_milliseconds(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name) as caught:
        load({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", name: value})
    assert "millisecond" in str(caught.value)


@pytest.mark.parametrize("name", ["TASKLENS_REMOTE_WRITE_INTERVAL", "TASKLENS_CLOUDWATCH_INTERVAL"])
def test_a_push_interval_below_a_second_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load({name: "0.001"})
