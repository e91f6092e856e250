"""`OTEL_EXPORTER_OTLP_PROTOCOL` and `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`: tasklens sends OTLP/HTTP
protobuf only. `grpc` was once ignored, and the sidecar posted OTLP/HTTP at a gRPC port on every push,
for as long as it ran; a protocol it does not send now stops start-up (the README's rule for a bad
`OTEL_*` value), with a message naming the variable and what is supported."""

from __future__ import annotations

import subprocess

import pytest

from agent.config import ConfigError, load
from tests.support import TASKLENS, clean_env

VARIABLES = ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")


@pytest.mark.parametrize("variable", VARIABLES)
@pytest.mark.parametrize("value", ["http/protobuf", "HTTP/Protobuf", ""])
def test_http_protobuf_is_accepted(variable: str, value: str) -> None:
    config = load({variable: value, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert config.otlp_protocol == config.otlp_metrics_protocol == "http/protobuf"


@pytest.mark.parametrize("variable", VARIABLES)
@pytest.mark.parametrize("value", ["grpc", "http/json", "GRPC", "http"])
def test_a_protocol_not_sent_stops_start_up_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({variable: value, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    message = str(err.value)
    assert message.startswith(f"{variable}={value!r} is invalid") and "http/protobuf" in message
    assert "grpc and http/json are not supported" in message


def test_the_file_key_is_checked_too(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "tasklens.toml"
    path.write_text('otel_exporter_otlp_protocol = "grpc"\n')
    with pytest.raises(ConfigError, match="otel_exporter_otlp_protocol='grpc' is invalid"):
        load({"TASKLENS_CONFIG_FILE": str(path)})


@pytest.mark.parametrize("variable", VARIABLES)
def test_tasklens_check_refuses_grpc(variable: str) -> None:
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4317", **{variable: "grpc"})
    check = subprocess.run([TASKLENS, "check"], env=env, capture_output=True, text=True, timeout=60)
    assert check.returncode == 2, check.stderr
    (line,) = check.stderr.splitlines()
    assert line.startswith(f"tasklens: invalid configuration: {variable}='grpc' is invalid"), line
    assert "http/protobuf" in line and "Traceback" not in check.stdout + check.stderr
