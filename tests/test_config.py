from __future__ import annotations

import json
import math
import os
import re
import unicodedata
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import (DEFAULT_RANGE, Config, ConfigError, closest, describe, env_name, known_variables, load,
                          number_text, parse_addr, parse_value, unknown_variables)
from agent.urlmask import mask_url, url_passwords


def test_defaults() -> None:
    config = load({})
    assert config.http_addr == ("127.0.0.1", 9102)
    assert config.poll_interval == 10.0
    assert config.statsd_addr == ("127.0.0.1", 8125)
    assert config.tags == ()
    assert not config.datadog_enabled and not config.profiling_enabled


def test_environment_values() -> None:
    config = load({
        "TASKLENS_SERVICE": "orders-worker",
        "TASKLENS_TAGS": "team:payments, tier:1",
        "TASKLENS_HTTP_ADDR": "[::1]:9200",
        "TASKLENS_POLL_INTERVAL": "2.5",
        "TASKLENS_STATSD_ADDR": "off",
        "TASKLENS_QUEUES": "sqs://orders?region=eu-west-1, redis://localhost:6379/0?list=jobs",
    })
    assert config.service == "orders-worker"
    assert config.tags == (("team", "payments"), ("tier", "1"))
    assert config.http_addr == ("::1", 9200)
    assert config.poll_interval == 2.5
    assert config.statsd_addr is None
    assert config.queues == ("sqs://orders?region=eu-west-1", "redis://localhost:6379/0?list=jobs")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("TASKLENS_HTTP_ADDR", "localhost", "host:port"),
        ("TASKLENS_HTTP_ADDR", "127.0.0.1:99999", "host:port"),
        ("TASKLENS_POLL_INTERVAL", "soon", "seconds"),
        ("TASKLENS_POLL_INTERVAL", "-1", "seconds"),
        ("TASKLENS_TAGS", "team", "key:value"),
        ("TASKLENS_STATSD_MAX_CONTEXTS", "0", "whole number"),
        ("TASKLENS_LOG_LEVEL", "loud", "one of"),
        ("TASKLENS_QUEUES", "orders", "URLs"),
        ("TASKLENS_QUEUE_BACKLOG_THRESHOLD", "lots", "expected a number"),
        ("TASKLENS_QUEUE_BACKLOG_THRESHOLD", "nan", "expected a number"),
    ],
)
def test_bad_value_names_variable_value_and_form(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({name: value})
    message = str(err.value)
    assert name in message and repr(value) in message and expected in message


def test_file_then_environment(tmp_path) -> None:
    path = tmp_path / "tasklens.toml"
    path.write_text(
        'service = "from-file"\npoll_interval = 5\ntags = ["a:1", "b:2"]\n'
        '[[mappings]]\nmatch = "jobs.*.processed"\nname = "jobs_processed"\nlabels = { queue = "$1" }\n'
    )
    config = load({"TASKLENS_CONFIG_FILE": str(path), "TASKLENS_SERVICE": "from-env"})
    assert config.service == "from-env"  # the environment wins
    assert config.poll_interval == 5.0
    assert config.tags == (("a", "1"), ("b", "2"))
    assert config.mappings[0]["match"] == "jobs.*.processed"


def test_file_errors(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("service = \n")
    with pytest.raises(ConfigError, match="TASKLENS_CONFIG_FILE"):
        load({"TASKLENS_CONFIG_FILE": str(bad)})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('srevice = "typo"\n')
    with pytest.raises(ConfigError, match="unknown key 'srevice'; did you mean 'service'"):
        load({"TASKLENS_CONFIG_FILE": str(unknown)})


@pytest.mark.parametrize("name", ["service", "env", "version"])
def test_the_datadog_fallbacks_are_no_file_keys_and_the_error_names_the_key_to_write(tmp_path, name) -> None:
    """DD_SERVICE, DD_ENV, DD_VERSION are read from the environment only (the README says so): in the
    file, `dd_<name>` is refused with the key that sets it."""
    path = tmp_path / "tasklens.toml"
    path.write_text(f'dd_{name} = "x"\n')
    with pytest.raises(ConfigError, match=f"unknown key 'dd_{name}'; did you mean '{name}'"):
        load({"TASKLENS_CONFIG_FILE": str(path)})
    path.write_text(f'{name} = "x"\n')
    assert getattr(load({"TASKLENS_CONFIG_FILE": str(path)}), name) == "x"


def test_file_takes_a_non_tasklens_variable_lowercased(tmp_path) -> None:
    # the README's rule: a setting's file key is its variable lowercased (without `TASKLENS_`)
    path = tmp_path / "tasklens.toml"
    path.write_text(
        'otel_exporter_otlp_endpoint = "http://collector:4318"\n'
        "otel_exporter_otlp_timeout = 2000\n"
        'otel_exporter_otlp_metrics_temporality_preference = "delta"\n'
        'dd_dd_url = "http://127.0.0.1:8126"\n'
        'dd_site = "datadoghq.eu"\n'
    )
    config = load({"TASKLENS_CONFIG_FILE": str(path)})
    assert config.otlp_endpoint == "http://collector:4318"
    assert config.otlp_timeout_ms == 2000.0
    assert config.otlp_temporality == "delta"
    assert config.dd_url == "http://127.0.0.1:8126"
    assert config.dd_site == "datadoghq.eu"
    # the environment still wins, and an error names the key as written
    config = load({"TASKLENS_CONFIG_FILE": str(path), "OTEL_EXPORTER_OTLP_TIMEOUT": "3000"})
    assert config.otlp_timeout_ms == 3000.0
    path.write_text("otel_exporter_otlp_timeout = 5\n")
    with pytest.raises(ConfigError, match="otel_exporter_otlp_timeout=.5. is invalid"):
        load({"TASKLENS_CONFIG_FILE": str(path)})
    path.write_text("otel_exporter_otlp_timeout = 2000\notlp_timeout_ms = 3000\n")
    with pytest.raises(ConfigError, match="'otel_exporter_otlp_timeout' and 'otlp_timeout_ms' are the same setting"):
        load({"TASKLENS_CONFIG_FILE": str(path)})


def test_secrets_are_masked() -> None:
    key = "0123456789abcdef0123456789abcdef"
    config = load({
        "DD_API_KEY": key,
        "TASKLENS_PYROSCOPE_URL": "https://user:hunter2@profiles.example.com",
        "TASKLENS_QUEUES": "rabbitmq://guest:s3cret@localhost:5672/%2F?queue=jobs",
        "TASKLENS_PYROSCOPE_PASSWORD": "correct-horse-battery",
    })
    text = repr(describe(config))
    assert key not in text and "hunter2" not in text and "s3cret" not in text
    shown = repr(config)
    assert key not in shown and "hunter2" not in shown and "s3cret" not in shown
    assert "***cdef" in text
    assert describe(config)["TASKLENS_PYROSCOPE_PASSWORD"] == "***"  # not even the end of a password
    assert mask_url("redis://:pw@[::1]:6379/0") == "redis://:***@[::1]:6379/0"
    assert mask_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_every_password_of_a_queue_url_is_masked_in_check_and_errors() -> None:
    # the management API's password is inside a parameter; `tasklens check` and errors must hide it too
    url = "amqp://app:s3cret@rabbit/?queue=jobs&management=http://guest:hunter2@rabbit:15672"
    shown = describe(load({"TASKLENS_QUEUES": url}))["TASKLENS_QUEUES"]
    assert shown == ["amqp://app:***@rabbit/?queue=jobs&management=http://guest:***@rabbit:15672"]
    with pytest.raises(ConfigError) as raised:
        load({"TASKLENS_QUEUES": url + ",not-a-url"})
    assert "s3cret" not in str(raised.value) and "hunter2" not in str(raised.value)
    assert mask_url("redis://:p@ss@cache:6379/0") == "redis://:***@cache:6379/0"  # as urlsplit reads it
    assert mask_url("postgresql://db/app?sslmode=require&Password=pw1") == "postgresql://db/app?sslmode=require&Password=***"
    assert url_passwords("postgresql://u:pw1@db/app?password=pw2") == ["pw1", "pw2"]  # for client error texts
    # a URL that urlsplit refuses (port out of range) is still shown, without its user info, not a traceback
    assert describe(load({"TASKLENS_QUEUES": "redis://:pw@h:99999/0?list=j"}))["TASKLENS_QUEUES"] == [
        "redis://***@h:99999/0?list=j"]


# --- every setting bounded, every error naming the variable (issue: hostile configuration) ----------

NUMERIC = [f for f in fields(Config) if f.metadata.get("bounds")]
SETTINGS_ALL = [f for f in fields(Config) if f.name != "mappings"]


def test_every_setting_has_a_parser_and_every_number_a_bound() -> None:
    for f in fields(Config):
        if f.name == "mappings":
            continue
        assert f.metadata["parse"] is not str, f"{f.name}: a raw str parser takes control characters"
        if f.metadata["parse"] in DEFAULT_RANGE or isinstance(f.default, (int, float)) and not isinstance(f.default, bool):
            assert f.metadata["bounds"] is not None, f"{f.name} has no range"
    for f in NUMERIC:  # every default inside its own range
        low, high, _ = f.metadata["bounds"]
        values = f.default if isinstance(f.default, tuple) else (f.default,)
        assert all(low <= v <= high for v in values), f.name


@pytest.mark.parametrize("f", NUMERIC, ids=lambda f: f.name)
def test_a_number_outside_its_range_names_the_variable_and_the_range(f) -> None:
    low, high, _ = f.metadata["bounds"]
    name = env_name(f)
    for value in (number_text(high * 2 + 1), number_text(low / 2 if low > 0 else low - abs(low) - 1)):
        with pytest.raises(ConfigError) as err:
            load({name: value})
        assert f"{name}={value!r} is invalid: expected" in str(err.value)
        assert number_text(high) in str(err.value).partition("expected")[2]
    assert parse_value(f, number_text(high)) is not None and parse_value(f, number_text(low)) is not None


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("TASKLENS_FLUSH_INTERVAL", "1e-300", "from 1 to 3600"),  # it killed the StatsD receive thread
        ("TASKLENS_FLUSH_INTERVAL", "inf", "seconds"),
        ("TASKLENS_HISTOGRAM_BUCKETS", "0.1,0.5,0.5,1", "(0.5 is repeated)"),
        ("TASKLENS_HISTOGRAM_BUCKETS", "1,0.5", "(0.5 is not above 1)"),
        ("TASKLENS_HISTOGRAM_BUCKETS", "0.1,nan", "finite"),
        ("TASKLENS_HISTOGRAM_BUCKETS", "0.1,inf", "finite"),
        ("TASKLENS_HISTOGRAM_BUCKETS", ",", "finite numbers"),
        ("TASKLENS_HISTOGRAM_PERCENTILES", "0.95,0.95", "without repeats"),
        ("TASKLENS_HISTOGRAM_PERCENTILES", "0.9999999", "from 1e-06 to 0.999999"),  # would be `100percentile`
        ("TASKLENS_HISTOGRAM_AGGREGATES", "max,p99", "from max, min, median, avg, sum, count ('p99' is not one)"),
        ("TASKLENS_HISTOGRAM_AGGREGATES", "max,max", "each once"),
        ("TASKLENS_SERVICE", "orders\nworker", "without control characters"),
        ("TASKLENS_SERVICE", "orders\udcffworker", "in UTF-8"),  # os.environ's decoding of a 0xff byte
        ("TASKLENS_SERVICE", "x" * 201, "at most 200 characters"),
        ("TASKLENS_TAGS", "team:pay\x1bments", "without control characters"),
        ("TASKLENS_STATSD_RCVBUF", "1e400", "size in bytes"),  # int(inf) raised OverflowError
        ("TASKLENS_STATSD_RCVBUF", "1K", "from 4096 to"),
        ("TASKLENS_STATSD_BUFFER_BYTES", "128K", "from 262144 to 1073741824"),  # under two 64 KiB slots
        ("TASKLENS_STATSD_BUFFER_BYTES", "2G", "from 262144 to 1073741824"),
        ("TASKLENS_STATSD_BUFFER_BYTES", "-1", "size in bytes"),
        ("TASKLENS_STATSD_RECEIVER", "kernel", "one of native, python"),
        ("TASKLENS_STATSD_SOCKET", "/tmp/" + "s" * 200, "at most 107 bytes"),
        ("TASKLENS_DOGSTATSD_FORWARD", "127.0.0.1:0", "port from 1 to 65535"),
        ("TASKLENS_HTTP_ADDR", "not a host:9102", "host:port"),
        ("TASKLENS_PROFILE_MATCH", "worker(", "regular expression"),
        ("DD_SITE", "datadoghq.com/evil path", "host name"),
        ("TASKLENS_DATADOG_BUFFER_POINTS", "20", "from 1000 to 100000000"),  # less than one flush of the sidecar's own
        # paths are appended to it: a query or fragment would send every request to the base path
        ("DD_DD_URL", "http://127.0.0.1:19510/#f", "without a query or fragment"),
        ("DD_DD_URL", "http://127.0.0.1:19510?x=1", "without a query or fragment"),
        ("DD_DD_URL", "http://127.0.0.1:19510/?", "without a query or fragment"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/?v=1", "without a query or fragment"),
        ("TASKLENS_PYROSCOPE_URL", "http://127.0.0.1:4040/#f", "without a query or fragment"),
        ("TASKLENS_QUEUES", "redis://h:6379/0?list=a b", "URLs"),
        # CloudWatch's rules (API reference: Dimension, PutMetricData), refused by `check` as by `run`
        ("TASKLENS_CLOUDWATCH_DIMENSIONS", "service,service", "'service' is repeated"),
        ("TASKLENS_CLOUDWATCH_DIMENSIONS", "_aws", "'_aws' is not one"),
        ("TASKLENS_CLOUDWATCH_DIMENSIONS", "a,b,c,d,e,f,g,h,i,j", "at most 9"),
        ("TASKLENS_CLOUDWATCH_DIMENSIONS", "queue,:x", "':x' is not one"),
        ("TASKLENS_CLOUDWATCH_DIMENSIONS", "caf\u00e9", "ASCII"),
        ("TASKLENS_CLOUDWATCH_NAMESPACE", "AWS/ECS", "'AWS/'"),
        ("TASKLENS_CLOUDWATCH_NAMESPACE", ":x", "not starting with ':'"),
        ("TASKLENS_CLOUDWATCH_NAMESPACE", "caf\u00e9", "ASCII"),
        ("TASKLENS_CLOUDWATCH_NAMESPACE", "n" * 256, "1-255"),
        ("TASKLENS_CLOUDWATCH_METRICS", "queue depth", "'queue depth' is not one"),
    ],
)
def test_hostile_values_are_refused_with_the_expected_form(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({name: value})
    message = str(err.value)
    shown = repr(value) if len(repr(value)) <= 120 else repr(value)[:120] + f"... ({len(repr(value))} characters)"
    assert message.startswith(f"{name}={shown} is invalid: expected") and expected in message


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("service = {a = 1}", "service", "not a table"),
        ("http_addr = ['127.0.0.1:1']", "http_addr", "not a list"),
        ("service = true", "service", "not true/false"),
        ("flush_interval = 1979-05-27", "flush_interval", "not a date or time"),
        ("tags = [{a = 1}]", "tags", "a list of strings or numbers"),
        ("tags = {team = [1]}", "tags", "a table of strings"),
        ("flush_interval = 1e-300", "flush_interval", "from 1 to 3600"),
        ("histogram_buckets = [0.5, 0.1]", "histogram_buckets", "increasing order"),
        ("flush_interval = nan", "flush_interval", "seconds"),
    ],
)
def test_a_toml_value_of_the_wrong_type_names_the_key(tmp_path, text: str, key: str, expected: str) -> None:
    path = tmp_path / "tasklens.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        load({"TASKLENS_CONFIG_FILE": str(path)})
    assert str(err.value).startswith(f"{path}: {key}=") and expected in str(err.value)


def test_a_toml_table_for_tags_and_lists_for_lists_are_taken(tmp_path) -> None:
    path = tmp_path / "tasklens.toml"
    path.write_text('tags = {team = "pay", tier = 1}\nhistogram_buckets = [1, 2.5]\nstatsd_gauge_deltas = true\n')
    config = load({"TASKLENS_CONFIG_FILE": str(path)})
    assert config.tags == (("team", "pay"), ("tier", "1")) and config.histogram_buckets == (1.0, 2.5)
    assert config.statsd_gauge_deltas is True


def load_or_refuse(tmp_path: Path, key: str, value: object) -> Config | None:
    """The configuration of a file setting `key` to `value`, or None when it is refused naming the key."""
    path = tmp_path / "tasklens.toml"
    path.write_text(f"{key} = {toml_value(value)}\n", encoding="utf-8")
    try:
        return load({"TASKLENS_CONFIG_FILE": str(path)})
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: {key}="), str(exc)
        return None


SEPARATED = st.text(alphabet="ab,:_", max_size=5)  # tag text with the separators the file's text is split at


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(SEPARATED, SEPARATED, max_size=3))
def test_a_toml_table_of_tags_is_taken_as_written_or_refused(tmp_path, table: dict[str, str]) -> None:
    """Never re-split: `{team = "pay,tier:1"}` is not two tags, `{"owner:x" = "y"}` not `owner:x:y`."""
    config = load_or_refuse(tmp_path, "tags", table)
    assert config is None or config.tags == tuple(table.items())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["0.1", "0.5", "1", "2.5", "0.1,0.5", ",", "1,"]), min_size=1, max_size=4))
def test_a_toml_list_item_is_one_value(tmp_path, items: list[str]) -> None:
    config = load_or_refuse(tmp_path, "histogram_buckets", items)
    assert config is None or config.histogram_buckets == tuple(float(item) for item in items)


@given(st.text(alphabet="[]:.019af ", max_size=10), st.integers(0, 65535))
def test_a_listen_address_is_every_interface_only_when_it_says_so(host: str, port: int) -> None:
    """`:port` (or 0.0.0.0) binds every interface; `[]:port`, `]:port` and the like are errors."""
    try:
        got = parse_addr(f"{host}:{port}")
    except ValueError:
        return
    assert got[1] == port
    if got[0] == "0.0.0.0":
        assert host.strip() in ("", "0.0.0.0", "[0.0.0.0]"), host


def test_a_secret_in_a_toml_value_of_the_wrong_type_is_not_shown(tmp_path) -> None:
    path = tmp_path / "tasklens.toml"
    path.write_text('queues = ["redis://:hunter2@h:6379/0?list=a", {x = 1}]\n'
                    'pyroscope_password = ["correct-horse"]\n')
    with pytest.raises(ConfigError) as err:
        load({"TASKLENS_CONFIG_FILE": str(path)})
    assert "queues='***' is invalid" in str(err.value) and "hunter2" not in str(err.value)
    path.write_text('queues = ["redis://:hunter2@h:6379/0?list=a", "no-scheme"]\n')
    with pytest.raises(ConfigError) as err:
        load({"TASKLENS_CONFIG_FILE": str(path)})
    assert "redis://:***@h" in str(err.value) and "hunter2" not in str(err.value)


def test_an_unusable_file_names_the_variable(tmp_path) -> None:
    def error(path: object) -> str:
        with pytest.raises(ConfigError) as err:
            load({"TASKLENS_CONFIG_FILE": str(path)})
        assert str(err.value).startswith(f"TASKLENS_CONFIG_FILE={str(path)!r} is invalid: ")
        return str(err.value)

    assert "cannot read it: No such file" in error(tmp_path / "missing.toml")
    assert "regular file" in error(tmp_path)  # a directory
    assert "regular file" in error("/dev/zero")  # would never end
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "regular file" in error(fifo)  # would block start-up forever
    big = tmp_path / "big.toml"
    big.write_text("# padding\n" * 200_000)
    assert "at most 1024 KiB" in error(big)
    latin = tmp_path / "latin1.toml"
    latin.write_bytes('service = "caf\xe9"\n'.encode("latin-1"))
    assert "UTF-8" in error(latin)
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert "expected a TOML file" in error(deep)
    syntax = tmp_path / "syntax.toml"
    syntax.write_text("service = \n")
    assert "expected a TOML file (" in error(syntax)


def test_a_long_config_file_path_is_named_cut_short() -> None:
    with pytest.raises(ConfigError) as err:
        load({"TASKLENS_CONFIG_FILE": "/x" * 50_000})  # refused by its length: one short line, like any value
    assert str(err.value).startswith("TASKLENS_CONFIG_FILE='/x/x") and len(str(err.value)) < 400


def test_an_unknown_file_key_suggests_the_closest() -> None:
    assert closest("srevice", {f.name for f in fields(Config)}) == "; did you mean 'service'?"


def test_unknown_variables_are_warned_with_the_closest_name() -> None:
    warnings = unknown_variables({"TASKLENS_FLUSH_INTERVL": "1", "TASKLENS_QUEUE": "x", "TASKLENS_XYZZY": "1",
                                  "TASKLENS_SERVICE": "ok", "DD_TRACE_ENABLED": "true", "PATH": "/bin"})
    assert warnings == [
        "'TASKLENS_FLUSH_INTERVL' is not a tasklens setting and is ignored; did you mean 'TASKLENS_FLUSH_INTERVAL'?",
        "'TASKLENS_QUEUE' is not a tasklens setting and is ignored; did you mean 'TASKLENS_QUEUES'?",
        "'TASKLENS_XYZZY' is not a tasklens setting and is ignored",
    ]
    assert unknown_variables({env_name(f): "" for f in SETTINGS_ALL}) == []


def test_every_tasklens_variable_the_code_reads_is_known() -> None:
    """A `TASKLENS_*` name read anywhere (the profiler bootstrap reads the environment itself) is a
    setting or listed in OTHER_VARIABLES, so that it is never warned about as unknown."""
    root = Path(__file__).resolve().parents[1]
    names: set[str] = set()
    for directory in ("agent", "integrations", "deploy"):
        for path in (root / directory).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".tf", ".json", ".yaml", ".yml", ".sh", ""):
                names |= set(re.findall(r"\bTASKLENS_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(errors="replace")))
    # the bootstrap builds names: `ENV_PREFIX + "SERVICE"`, `number("PROFILE_RATE", 100)`
    names |= {"TASKLENS_" + n for n in re.findall(r'(?:ENV_PREFIX \+ |number\()"([A-Z_]+)"',
                                                 (root / "integrations/profilers/sitecustomize.py").read_text())}
    assert "TASKLENS_PYROSCOPE_URL" in names and "TASKLENS_PROFILE_RATE" in names  # the scan sees them
    assert names - known_variables() == set()


# --- property: any value into any setting loads within its bound, or fails naming it ----------------

SETTINGS = [f for f in fields(Config) if f.name not in ("mappings", "config_file")]


def within_bound(f, value) -> None:  # type: ignore[no-untyped-def]
    """What every loaded value satisfies: its range, and text without control characters."""
    bounds = f.metadata.get("bounds")
    flat: list = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, tuple):
            stack.extend(v)
        else:
            flat.append(v)
    for v in flat:
        if isinstance(v, float):
            assert math.isfinite(v), (f.name, value)
        if bounds is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
            assert bounds[0] <= v <= bounds[1], (f.name, value)
        if isinstance(v, str):
            assert len(v) <= 4096 and not any(unicodedata.category(c) in ("Cc", "Cs") for c in v), (f.name, value)
    if f.name in ("http_addr", "statsd_addr", "dogstatsd_forward") and value is not None:
        assert 0 <= value[1] <= 65535 and (value[1] > 0 or f.name != "dogstatsd_forward")


numbers_as_text = st.one_of(
    st.integers(-2**70, 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e-300", "1e400", "-0", "0x10", "1_000", "8M", "1.5G", "nan", "-inf", "", " ", "off"]),
)
any_text = st.one_of(st.text(max_size=300), numbers_as_text,
                     st.lists(numbers_as_text, max_size=5).map(",".join),
                     st.text(alphabet="a:,.1-[]/@?=&%\x00\n\udcff", max_size=40))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(f=st.sampled_from(SETTINGS), text=any_text)
def test_any_text_in_any_variable_loads_within_bound_or_names_it(f, text: str) -> None:  # type: ignore[no-untyped-def]
    name = env_name(f)
    try:
        config = load({name: text})
    except ConfigError as exc:
        assert str(exc).startswith(f"{name}="), str(exc)
        assert "\n" not in str(exc).replace("\\n", "")  # one line: the value is shown as repr
        return
    within_bound(f, getattr(config, f.name))


def toml_value(value) -> str:  # type: ignore[no-untyped-def]
    """A Python value (str, int, float, bool, list, dict) as TOML (enough for the test's values)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # TOML also refuses a raw DEL, which JSON leaves as it is
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)  # a date


toml_scalars = st.one_of(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=60), st.booleans(),
                         st.integers(-2**63, 2**63 - 1), st.floats(), st.sampled_from(["1979-05-27", "07:32:00"]).map(
                             lambda s: type("Date", (), {"__str__": lambda self: s})()))
toml_values = st.recursive(toml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text("abcdef", min_size=1, max_size=3), inner, max_size=3)),
    max_leaves=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(f=st.sampled_from(SETTINGS), value=toml_values)
def test_any_toml_value_for_any_key_loads_within_bound_or_names_it(tmp_path, f, value) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "tasklens.toml"
    path.write_text(f"{f.name} = {toml_value(value)}\n", encoding="utf-8")
    try:
        config = load({"TASKLENS_CONFIG_FILE": str(path)})
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: {f.name}="), str(exc)
        return
    within_bound(f, getattr(config, f.name))


def test_a_raw_comma_in_a_password_is_refused_without_showing_it() -> None:
    # split at the comma, the second URL would read `ss` as a user name: the list is refused instead
    with pytest.raises(ConfigError) as err:
        load({"TASKLENS_QUEUES": "redis://:Pw4,x://Tail7@127.0.0.1:6379/0?list=jobs"})
    assert "%2C" in str(err.value) and "Pw4" not in str(err.value) and "Tail7" not in str(err.value)
    # a list whose first URL has a port and whose second has a user name is a list
    config = load({"TASKLENS_QUEUES": "redis://h:6379/0?list=a,redis://u:pw@h2:6379/0?list=b"})
    assert len(config.queues) == 2


@settings(max_examples=200, deadline=None)
@given(f=st.sampled_from(SETTINGS), blank=st.text(alphabet=" \t", max_size=3), from_file=st.booleans())
def test_an_empty_variable_is_unset(tmp_path_factory, f, blank: str, from_file: bool) -> None:  # type: ignore[no-untyped-def]
    """An empty (or blank) variable is as if it were not set: the file's value, else the default. Compose
    writes `${VAR}` of an unset variable as an empty one; `TASKLENS_STATSD_ADDR=` once turned StatsD off
    without a word, and `TASKLENS_SERVICE=` threw away the file's service."""
    environ = {env_name(f): blank}
    expected = load({})
    if from_file:
        path = tmp_path_factory.mktemp("cfg") / "tasklens.toml"
        path.write_text('service = "from-file"\n')
        environ["TASKLENS_CONFIG_FILE"] = str(path)
        expected = load({"TASKLENS_CONFIG_FILE": str(path)})
    if f.name == "config_file":
        return  # the file's own variable: blank is no file, as before
    assert getattr(load(environ), f.name) == getattr(expected, f.name)


@pytest.mark.parametrize("name", ["TASKLENS_REMOTE_WRITE_METRICS", "TASKLENS_CLOUDWATCH_METRICS"])
@pytest.mark.parametrize("value", [",", " , ", ",,,"])
def test_a_selection_of_no_metric_is_refused(name: str, value: str) -> None:
    """An exporter whose selection names nothing sent nothing, silently, while it looked configured."""
    with pytest.raises(ConfigError) as err:
        load({name: value})
    assert str(err.value).startswith(f"{name}=") and "at least one" in str(err.value)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.from_regex(r"\A[+-]?[0-9]{1,4}(\.[0-9]{0,3})?([eE][+-]?[0-9])?\Z"),
                      st.text(alphabet="0123456789_.eE+-x \uff11\u0663\u0966nafity", min_size=1, max_size=8)))
def test_numbers_are_ascii_decimals(text: str) -> None:
    """A number setting takes ASCII digits with an optional sign, point and exponent, nothing else that
    float() takes: `1_0` (a typo read as ten), `１０` and other scripts' digits, `0x10`, `nan`, `inf`."""
    import re

    decimal = re.fullmatch(r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*", text)
    try:
        load({"TASKLENS_POLL_INTERVAL": text})
        taken = True
    except ConfigError:
        taken = False
    if not text.strip():  # blank: unset (the default), as an empty variable is
        assert taken and load({"TASKLENS_POLL_INTERVAL": text}).poll_interval == Config().poll_interval
        return
    assert not taken or decimal, text
    if decimal and 0.5 <= float(text) <= 3600:
        assert taken, text


@pytest.mark.parametrize("name", ["TASKLENS_HISTOGRAM_AGGREGATES", "TASKLENS_CLOUDWATCH_DIMENSIONS", "TASKLENS_TAGS",
                                  "TASKLENS_REMOTE_WRITE_LABELS"])
@pytest.mark.parametrize("none", ["none", " NONE "])
def test_none_empties_a_list_over_the_file_and_the_default(tmp_path, name: str, none: str) -> None:
    """An empty variable is unset, so a list is emptied with `none` (over the file's value too)."""
    key = name.removeprefix("TASKLENS_").lower()
    path = tmp_path / "tasklens.toml"
    path.write_text(f'{key} = "team:a"\n' if "TAGS" in name or "LABELS" in name else f'{key} = "max"\n')
    field = {"TASKLENS_TAGS": "tags"}.get(name, key)
    assert getattr(load({"TASKLENS_CONFIG_FILE": str(path)}), field) != ()
    assert getattr(load({"TASKLENS_CONFIG_FILE": str(path), name: none}), field) == ()


def test_none_selects_no_metric_and_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        load({"TASKLENS_REMOTE_WRITE_METRICS": "none"})


def test_chosen_tells_a_setting_set_to_its_default_from_one_left_unset(tmp_path) -> None:
    path = tmp_path / "tasklens.toml"
    path.write_text("poll_interval = 10\n")
    config = load({"TASKLENS_CONFIG_FILE": str(path), "TASKLENS_FLUSH_INTERVAL": "10"})
    assert config.poll_interval == Config().poll_interval and config.chosen("poll_interval")
    assert config.flush_interval == Config().flush_interval and config.chosen("flush_interval")
    assert not config.chosen("queue_poll_interval")
    assert Config(queue_poll_interval=5.0).chosen("queue_poll_interval")  # a Config made in code
    assert not load({"TASKLENS_POLL_INTERVAL": ""}).chosen("poll_interval")  # empty: unset
