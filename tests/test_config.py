from __future__ import annotations

import pytest

from agent.config import ConfigError, describe, load, mask_url, url_passwords


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
    with pytest.raises(ConfigError, match="unknown key 'srevice'"):
        load({"TASKLENS_CONFIG_FILE": str(unknown)})


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
    # a URL that urlsplit refuses (port out of range) is still shown, masked, not a traceback
    assert describe(load({"TASKLENS_QUEUES": "redis://:pw@h:99999/0?list=j"}))["TASKLENS_QUEUES"] == [
        "redis://:***@h:99999/0?list=j"]
