"""Hostile configuration: the real `tasklens run` and `tasklens check` with bad values.

For every class of bad value (out of range, not a number, duplicate or non-finite histogram buckets,
unknown aggregates, control characters and bytes that are not UTF-8, a TOML table where a string
belongs, a file that is not TOML or not a file, a queue URL with a password, a forwarding loop, an
address that is not this host's, a regex `re` cannot compile in a mapping rule, a queue
URL's own `interval=1e-300`, an EMF namespace or dimension list CloudWatch would refuse), both
commands exit 2 with one line on stderr that names the variable (or the file's key), never a
traceback, never a password, and within a few seconds (a FIFO as the configuration file does not
hang start-up).
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from tests.support import TASKLENS, clean_env, free_port

PASSWORD = "hunter2-secret"


def cases(tmp: Path) -> list[tuple[str, str, dict[str, str | bytes]]]:
    """(id, what the error line must name, environment)."""
    files = {
        "table": "service = {a = 1}\n",
        "syntax": "service = \n",
        "unknown": 'srevice = "orders"\n',
        "list_port": "http_addr = [9102]\n",
        "buckets": "histogram_buckets = [0.5, 0.5]\n",
        "rule_overflow": '[[mappings]]\nmatch = "a{99999999999}"\nmatch_type = "regex"\nname = "x"\n',
        "rule_deep": '[[mappings]]\nmatch = "' + "(" * 1500 + ")" * 1500 + '"\nmatch_type = "regex"\nname = "x"\n',
    }
    for name, text in files.items():
        (tmp / f"{name}.toml").write_text(text)
    (tmp / "latin1.toml").write_bytes('service = "caf\xe9"\n'.encode("latin-1"))
    os.mkfifo(tmp / "fifo.toml")
    return [
        ("flush_tiny", "TASKLENS_FLUSH_INTERVAL", {"TASKLENS_FLUSH_INTERVAL": "1e-300"}),
        ("flush_nan", "TASKLENS_FLUSH_INTERVAL", {"TASKLENS_FLUSH_INTERVAL": "nan"}),
        ("poll_huge", "TASKLENS_POLL_INTERVAL", {"TASKLENS_POLL_INTERVAL": "1e308"}),
        ("contexts_zero", "TASKLENS_STATSD_MAX_CONTEXTS", {"TASKLENS_STATSD_MAX_CONTEXTS": "0"}),
        ("rcvbuf_inf", "TASKLENS_STATSD_RCVBUF", {"TASKLENS_STATSD_RCVBUF": "1e400"}),
        ("buffer_small", "TASKLENS_STATSD_BUFFER_BYTES", {"TASKLENS_STATSD_BUFFER_BYTES": "64K"}),
        ("buffer_huge", "TASKLENS_STATSD_BUFFER_BYTES", {"TASKLENS_STATSD_BUFFER_BYTES": "4G"}),
        ("buckets_dup", "TASKLENS_HISTOGRAM_BUCKETS", {"TASKLENS_HISTOGRAM_BUCKETS": "0.1,0.1,1"}),
        ("buckets_nan", "TASKLENS_HISTOGRAM_BUCKETS", {"TASKLENS_HISTOGRAM_BUCKETS": "0.1,nan"}),
        ("buckets_unsorted", "TASKLENS_HISTOGRAM_BUCKETS", {"TASKLENS_HISTOGRAM_BUCKETS": "1,0.1"}),
        ("aggregate", "TASKLENS_HISTOGRAM_AGGREGATES", {"TASKLENS_HISTOGRAM_AGGREGATES": "max,p99"}),
        ("percentile_dup", "TASKLENS_HISTOGRAM_PERCENTILES", {"TASKLENS_HISTOGRAM_PERCENTILES": "0.9,0.9"}),
        ("service_not_utf8", "TASKLENS_SERVICE", {"TASKLENS_SERVICE": b"orders\xff\xfe"}),
        ("service_escape", "TASKLENS_SERVICE", {"TASKLENS_SERVICE": "orders\x1b[2J"}),
        ("service_huge", "TASKLENS_SERVICE", {"TASKLENS_SERVICE": "s" * 100_000}),
        ("tags_newline", "TASKLENS_TAGS", {"TASKLENS_TAGS": "team:pay\nments"}),
        ("tags_one_label", "TASKLENS_TAGS", {"TASKLENS_TAGS": "team.name:a,team-name:b"}),
        ("header_name", "TASKLENS_REMOTE_WRITE_HEADERS",
         {"TASKLENS_REMOTE_WRITE_URL": "http://127.0.0.1:9/api/v1/write", "TASKLENS_REMOTE_WRITE_HEADERS": "X A=1"}),
        ("otlp_header_name", "OTEL_EXPORTER_OTLP_HEADERS", {"OTEL_EXPORTER_OTLP_HEADERS": "X(A)=1"}),
        ("sigv4_no_region", "TASKLENS_REMOTE_WRITE_SIGV4_REGION",
         {"TASKLENS_REMOTE_WRITE_URL": "http://127.0.0.1:9/api/v1/write", "TASKLENS_REMOTE_WRITE_SIGV4": "on"}),
        ("file_table", "service", {"TASKLENS_CONFIG_FILE": str(tmp / "table.toml")}),
        ("file_list", "http_addr", {"TASKLENS_CONFIG_FILE": str(tmp / "list_port.toml")}),
        ("file_buckets", "histogram_buckets", {"TASKLENS_CONFIG_FILE": str(tmp / "buckets.toml")}),
        ("file_syntax", "TASKLENS_CONFIG_FILE", {"TASKLENS_CONFIG_FILE": str(tmp / "syntax.toml")}),
        ("file_unknown_key", "did you mean 'service'", {"TASKLENS_CONFIG_FILE": str(tmp / "unknown.toml")}),
        ("file_latin1", "TASKLENS_CONFIG_FILE", {"TASKLENS_CONFIG_FILE": str(tmp / "latin1.toml")}),
        ("file_missing", "TASKLENS_CONFIG_FILE", {"TASKLENS_CONFIG_FILE": str(tmp / "missing.toml")}),
        ("file_directory", "TASKLENS_CONFIG_FILE", {"TASKLENS_CONFIG_FILE": str(tmp)}),
        ("file_endless", "TASKLENS_CONFIG_FILE", {"TASKLENS_CONFIG_FILE": "/dev/zero"}),
        ("file_fifo", "TASKLENS_CONFIG_FILE", {"TASKLENS_CONFIG_FILE": str(tmp / "fifo.toml")}),
        ("queue_param", "TASKLENS_QUEUES",
         {"TASKLENS_QUEUES": f"redis://:{PASSWORD}@127.0.0.1:6379/0?lsit=jobs"}),
        ("rule_overflow", "mappings[0]", {"TASKLENS_CONFIG_FILE": str(tmp / "rule_overflow.toml")}),
        ("rule_deep", "mappings[0]", {"TASKLENS_CONFIG_FILE": str(tmp / "rule_deep.toml")}),
        ("queue_interval", "TASKLENS_QUEUES", {"TASKLENS_QUEUES": "redis://127.0.0.1/0?list=a&interval=1e-300"}),
        ("queue_scheme", "TASKLENS_QUEUES", {"TASKLENS_QUEUES": f"kafka://u:{PASSWORD}@127.0.0.1/jobs"}),
        ("forward_loop", "TASKLENS_DOGSTATSD_FORWARD",
         {"TASKLENS_STATSD_ADDR": "127.0.0.1:18125", "TASKLENS_DOGSTATSD_FORWARD": "localhost:18125"}),
        ("http_not_here", "TASKLENS_HTTP_ADDR", {"TASKLENS_HTTP_ADDR": "192.0.2.1:9102"}),
        ("pyroscope_url", "TASKLENS_PYROSCOPE_URL", {"TASKLENS_PYROSCOPE_URL": f"ftp://u:{PASSWORD}@p"}),
        ("profile_regex", "TASKLENS_PROFILE_MATCH", {"TASKLENS_PROFILE_MATCH": "worker(["}),
        # CloudWatch EMF: `run` used to refuse the first only when building the sink, after StatsD was up
        ("emf_ten_dimensions", "TASKLENS_CLOUDWATCH_DIMENSIONS",
         {"TASKLENS_CLOUDWATCH": "emf", "TASKLENS_CLOUDWATCH_DIMENSIONS": "a,b,c,d,e,f,g,h,i,j"}),
        ("emf_repeated_dimension", "TASKLENS_CLOUDWATCH_DIMENSIONS",
         {"TASKLENS_CLOUDWATCH": "emf", "TASKLENS_CLOUDWATCH_DIMENSIONS": "service,service"}),
        ("emf_aws_dimension", "TASKLENS_CLOUDWATCH_DIMENSIONS",
         {"TASKLENS_CLOUDWATCH": "emf", "TASKLENS_CLOUDWATCH_DIMENSIONS": "_aws"}),
        ("emf_aws_namespace", "TASKLENS_CLOUDWATCH_NAMESPACE",
         {"TASKLENS_CLOUDWATCH": "emf", "TASKLENS_CLOUDWATCH_NAMESPACE": "AWS/ECS"}),
        ("emf_colon_namespace", "TASKLENS_CLOUDWATCH_NAMESPACE",
         {"TASKLENS_CLOUDWATCH": "emf", "TASKLENS_CLOUDWATCH_NAMESPACE": ":x"}),
        ("emf_metric_glob", "TASKLENS_CLOUDWATCH_METRICS",
         {"TASKLENS_CLOUDWATCH": "emf", "TASKLENS_CLOUDWATCH_METRICS": "queue depth"}),
    ]


def run(command: str, env: dict[str, str | bytes]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([TASKLENS, command], env={**clean_env(), **env}, capture_output=True, timeout=60)


def test_every_bad_value_stops_run_and_check_with_one_line_naming_it(tmp_path: Path) -> None:
    table = cases(tmp_path)
    jobs = [(case, command) for case in table for command in ("run", "check")]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda job: run(job[1], job[0][2]), jobs))
    failures = []
    for ((name, expected, _), command), result in zip(jobs, results):
        stderr = result.stderr.decode("utf-8", "replace")
        lines = stderr.splitlines()
        ok = (result.returncode == 2 and len(lines) == 1 and lines[0].startswith("tasklens: invalid configuration: ")
              and expected in lines[0] and "Traceback" not in stderr and PASSWORD not in stderr
              and not result.stdout and len(lines[0]) < 600)
        if not ok:
            failures.append(f"{name} ({command}): exit {result.returncode}: {stderr[:500]!r}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("value", ["1", "3600"])
def test_the_flush_interval_bounds_themselves_are_accepted(value: str) -> None:
    result = run("check", {"TASKLENS_FLUSH_INTERVAL": value})
    assert result.returncode == 0, result.stderr
    assert b'"TASKLENS_FLUSH_INTERVAL": ' + value.encode() in result.stdout


# An outside tester's three leaks: a percent-encoded `management=` URL (its password in the masked URL),
# `=` in a user name and `/` in a password (the whole URL, or part of the password in the error).
SPLIT = f"{PASSWORD[:7]}/{PASSWORD[7:]}"  # `hunter2/-secret`: urlsplit reads `hunter2` as the port
LEAKY_QUEUES = [
    ("management_encoded", 0, "amqp://guest:guest@127.0.0.1:5672/?queue=q1&management="
                              + quote(f"http://guest:{PASSWORD}@127.0.0.1:15672", safe=""), PASSWORD),
    ("user_with_equals", 0, f"redis://us=er:{PASSWORD}@127.0.0.1:6379/9?list=x", PASSWORD),
    ("slash_in_password", 2, f"amqp://u:{SPLIT}@127.0.0.1:5672/?queue=x", SPLIT),
]


@pytest.mark.parametrize(("code", "url", "password"), [case[1:] for case in LEAKY_QUEUES],
                         ids=[case[0] for case in LEAKY_QUEUES])
def test_check_shows_no_password_of_a_queue_url(code: int, url: str, password: str) -> None:
    result = run("check", {"TASKLENS_QUEUES": url, "TASKLENS_HTTP_ADDR": f"127.0.0.1:{free_port()}",
                           "TASKLENS_STATSD_ADDR": "off"})
    assert result.returncode == code, result.stderr
    shown = (result.stdout + result.stderr).decode()
    assert "***" in shown
    for form in {shown, unquote(shown), unquote(unquote(shown))}:
        for part in (password, quote(password, safe=""), *password.split("/")):
            assert part not in form, f"{part!r} in {shown}"


@pytest.mark.parametrize("url", ["http://127.0.0.1:19510/#f", "http://127.0.0.1:19510?x=1"])
def test_a_datadog_url_with_a_query_or_fragment_is_refused_by_run_and_check(url: str) -> None:
    env: dict[str, str | bytes] = {"DD_API_KEY": "0123456789abcdef0123456789abcdef", "DD_DD_URL": url}
    for command in ("run", "check"):
        result = run(command, env)
        lines = result.stderr.decode("utf-8", "replace").splitlines()
        assert result.returncode == 2 and len(lines) == 1, (command, result.stderr[:500])
        assert lines[0].startswith("tasklens: invalid configuration: DD_DD_URL=")
        assert "without a query or fragment" in lines[0]
