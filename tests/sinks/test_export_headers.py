"""Extra headers of the push sinks (`TASKLENS_REMOTE_WRITE_HEADERS`, `OTEL_EXPORTER_OTLP_HEADERS`,
`OTEL_EXPORTER_OTLP_METRICS_HEADERS`): a header the HTTP client writes itself (framing, target,
connection) or the sink sets is refused at start, by the validation `run` and `check` share, in any
case; any other is sent as written.

An outside tester's finding: `Content-Length=5` was accepted by `check` (exit 0) and sent by `run` on
every request; a real Prometheus refused every push (`snappy: corrupt input`) and a lenient receiver
read 5 bytes of each body."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli import validate
from agent.config import ConfigError, load
from agent.hub import Hub
from agent.identity import Identity
from agent.sinks.otlp import OtlpSink
from agent.sinks.remote_write import RemoteWriteSink
from tests.support import clean_env, refused_alike

pytest.importorskip("cramjam")

# the headers the HTTP client owns: framing, target, hop-by-hop
FRAMING = ["content-length", "transfer-encoding", "host", "connection", "keep-alive", "te", "trailer", "upgrade",
           "proxy-connection", "expect"]
RESERVED_HEADERS = ["content-encoding", "content-type", "user-agent", "x-prometheus-remote-write-version"]
OWN_HEADERS = ["content-type", "content-encoding", "user-agent"]  # OTLP's

BASE = {"TASKLENS_HTTP_ADDR": "127.0.0.1:0", "TASKLENS_STATSD_ADDR": "off"}
# the variable, the settings that turn its sink on, the sink
SETTINGS = [
    ("TASKLENS_REMOTE_WRITE_HEADERS", {"TASKLENS_REMOTE_WRITE_URL": "http://127.0.0.1:9/api/v1/write"}),
    ("OTEL_EXPORTER_OTLP_HEADERS", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}),
    ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://127.0.0.1:9/v1/metrics"}),
]


def any_case(name: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: "".join(c.upper() if u else c.lower() for c, u in zip(name, upper)))


FIELD_CHARS = "!#$%&'*+.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-"
OWNED = {*FRAMING, *RESERVED_HEADERS, "authorization"}
allowed_names = st.text(FIELD_CHARS, min_size=1, max_size=30).filter(lambda n: n.lower() not in OWNED)
values = st.text(st.characters(codec="ascii", categories=("L", "N", "P", "S", "Zs")), max_size=40).map(str.strip)


def header_list(headers: list[tuple[str, str]]) -> str:
    """As a user writes them: `Name=value,...`, percent-encoded (a value may hold `,` or `%`)."""
    return ",".join(f"{quote(n, safe=FIELD_CHARS.replace('%', ''))}={quote(v, safe='')}" for n, v in headers)


def sink_for(variable: str, env: dict[str, str]) -> RemoteWriteSink | OtlpSink:
    config = load(env)
    hub = Hub(Identity(service="s"))
    return RemoteWriteSink(config, hub) if variable.startswith("TASKLENS") else OtlpSink(config, hub)


@settings(max_examples=150, deadline=None)
@given(setting=st.sampled_from(SETTINGS), framing=st.sampled_from(FRAMING).flatmap(any_case),
       before=st.lists(st.tuples(allowed_names, values), max_size=3, unique_by=lambda kv: kv[0].lower()),
       value=values)
def test_a_header_the_client_writes_is_refused_in_any_case(setting, framing: str, before, value: str) -> None:
    variable, on = setting
    text = header_list([*before, (framing, value)])
    env = {**BASE, **on, variable: text}
    with pytest.raises(ConfigError) as err:
        validate(env)  # what `run` and `check` both call first
    message = str(err.value)
    assert message.startswith(f"{variable}='***' is invalid: {framing!r} is written by the HTTP client")
    with pytest.raises(ConfigError, match=variable):  # a sink built in code refuses it too
        sink_for(variable, env)


@pytest.mark.parametrize(("variable", "name"), [
    *[("TASKLENS_REMOTE_WRITE_HEADERS", n) for n in sorted(RESERVED_HEADERS)],
    *[(v, n) for v in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS") for n in OWN_HEADERS],
])
def test_a_header_the_sink_sets_is_refused_not_dropped(variable: str, name: str) -> None:
    on = dict(SETTINGS)[variable]
    with pytest.raises(ConfigError, match=f"{variable}='\\*\\*\\*' is invalid: '{name.upper()}' is set by tasklens"):
        validate({**BASE, **on, variable: f"{name.upper()}=x"})


@pytest.mark.parametrize(("variable", "on"), SETTINGS)
def test_one_name_twice_in_two_cases_is_refused(variable: str, on: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="given twice"):
        validate({**BASE, **on, variable: "X-Tenant=a,x-tenant=b"})


@settings(max_examples=150, deadline=None)
@given(setting=st.sampled_from(SETTINGS),
       headers=st.lists(st.tuples(allowed_names, values), min_size=1, max_size=4, unique_by=lambda kv: kv[0].lower()))
def test_any_other_header_is_sent_as_written(setting, headers) -> None:
    variable, on = setting
    env = {**BASE, **on, variable: header_list(headers)}
    validate(env)
    sent = sink_for(variable, env).headers  # what every request carries (push.post)
    for name, value in headers:
        assert sent[name] == value
    assert len({n.lower() for n in sent}) == len(sent)  # no name twice in two cases


def test_the_metrics_headers_replace_the_general_ones_in_any_case() -> None:
    env = {**BASE, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_HEADERS": "api-key=a,x=1",
           "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "Api-Key=b"}
    sent = sink_for("OTEL_EXPORTER_OTLP_HEADERS", env).headers
    assert sent["Api-Key"] == "b" and "api-key" not in sent and sent["x"] == "1"


def test_otlp_headers_are_not_checked_with_otlp_off() -> None:
    """The OTEL_* variables may be set for the application's own SDK: read only when OTLP is on."""
    validate({**BASE, "OTEL_EXPORTER_OTLP_HEADERS": "Host=collector"})


@pytest.mark.parametrize(("variable", "header"), [
    ("TASKLENS_REMOTE_WRITE_HEADERS", "Content-Length=5"),
    ("TASKLENS_REMOTE_WRITE_HEADERS", "transfer-encoding=chunked"),
    ("OTEL_EXPORTER_OTLP_HEADERS", "HOST=evil.example"),
    ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "Connection=close"),
])
def test_run_and_check_refuse_alike(variable: str, header: str) -> None:
    """The real commands, as the tester ran them: exit 2, one line naming the variable, no secret."""
    env = clean_env(**BASE, **dict(SETTINGS)[variable], **{variable: header + ",X-Api-Key=hdr-s3cr3t"})
    line = refused_alike(env)
    assert line.startswith(f"tasklens: invalid configuration: {variable}='***' is invalid: ")
    assert "hdr-s3cr3t" not in line
