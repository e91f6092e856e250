"""`OTEL_EXPORTER_OTLP_PROTOCOL` and `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`: tasklens sends OTLP/HTTP
protobuf only. `grpc` was once ignored, and the sidecar posted OTLP/HTTP at a gRPC port on every push,
for as long as it ran; with OTLP on, a protocol it does not send now stops start-up (the README's rule
for a bad `OTEL_*` value), with a message naming the variable and what is supported. With OTLP off the
variables are not this sidecar's business: they are often set for the whole task, for the application's
own OpenTelemetry SDK. The metrics variable comes first, as the specification orders them."""

from __future__ import annotations

import subprocess

import pytest

from agent.cli import validate
from agent.config import ConfigError
from tests.support import TASKLENS, clean_env

GENERAL, METRICS = "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
ON = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "TASKLENS_HTTP_ADDR": "127.0.0.1:0",
      "TASKLENS_STATSD_ADDR": "off"}


@pytest.mark.parametrize("variables", [
    {GENERAL: "http/protobuf"}, {METRICS: "HTTP/Protobuf"}, {GENERAL: ""}, {},
    {GENERAL: "grpc", METRICS: "http/protobuf"},  # the metrics variable first
])
def test_http_protobuf_is_accepted(variables: dict[str, str]) -> None:
    validate({**ON, **variables})


@pytest.mark.parametrize("variable", [GENERAL, METRICS])
@pytest.mark.parametrize("value", ["grpc", "http/json", "GRPC", "http"])
def test_a_protocol_not_sent_stops_start_up_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate({**ON, variable: value})
    message = str(err.value)
    assert message.startswith(f"{variable}={value.lower()!r} is invalid") and "http/protobuf" in message
    assert "grpc and http/json are not supported" in message


def test_the_metrics_variable_is_read_first() -> None:
    with pytest.raises(ConfigError, match=f"^{METRICS}='grpc'"):
        validate({**ON, GENERAL: "http/protobuf", METRICS: "grpc"})


@pytest.mark.parametrize("variable", [GENERAL, METRICS])
def test_with_otlp_off_the_protocol_is_not_read(variable: str) -> None:
    """A task that sets grpc for its application's SDK: the sidecar, which exports no OTLP, starts."""
    validate({"TASKLENS_HTTP_ADDR": "127.0.0.1:0", "TASKLENS_STATSD_ADDR": "off", variable: "grpc"})


def test_the_file_key_is_checked_too(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "tasklens.toml"
    path.write_text('otel_exporter_otlp_protocol = "grpc"\n')
    with pytest.raises(ConfigError, match="otel_exporter_otlp_protocol='grpc' is invalid"):
        validate({**ON, "TASKLENS_CONFIG_FILE": str(path)})


@pytest.mark.parametrize("variable", [GENERAL, METRICS])
def test_tasklens_check_refuses_grpc(variable: str) -> None:
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4317", **{variable: "grpc"})
    check = subprocess.run([TASKLENS, "check"], env=env, capture_output=True, text=True, timeout=60)
    assert check.returncode == 2, check.stderr
    (line,) = check.stderr.splitlines()
    assert line.startswith(f"tasklens: invalid configuration: {variable}='grpc' is invalid"), line
    assert "http/protobuf" in line and "Traceback" not in check.stdout + check.stderr
