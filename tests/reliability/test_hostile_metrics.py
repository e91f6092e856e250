"""Hostile names and tags against the real sidecar: `/metrics` stays valid and truthful in both formats.

`tasklens run` as a process, StatsD from the `datadog` package's `DogStatsd`: names that collide after
sanitising, a worker's names under the sidecar's own prefixes, family suffixes, reserved and identity
labels, control characters in tag values, and the README's type-conflict example, beside a control
counter. Both renderings (text 0.0.4, and OpenMetrics when only that is accepted) must pass
`promtool check metrics` and prometheus_client's strict OpenMetrics parser, have one family per name
and one series per label set; the control must be exact, and every refusal counted by reason.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
from datadog.dogstatsd import DogStatsd
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families as text_families

from tests.support import Sidecar, wait_until

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
CONTROL = 7  # increments of the control counter


def get(sidecar: Sidecar, accept: str) -> tuple[str, str]:
    request = urllib.request.Request(sidecar.url + "/metrics", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as r:
        return r.headers["Content-Type"], r.read().decode()


def series(families: object) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Sample -> value, asserting one family per name and one sample per label set."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    names: set[str] = set()
    for family in families:  # type: ignore[attr-defined]
        assert family.name not in names, family.name
        names.add(family.name)
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, key
            out[key] = s.value
    return out


def promtool(text: str) -> None:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("needs Debian's `prometheus` package for promtool")
    out = subprocess.run([tool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30, check=False)
    report = (out.stdout + out.stderr).decode(errors="replace")
    assert out.returncode in (0, 3) and "error while linting" not in report, report  # 3: lint advice only


def rejected(text: str) -> dict[str, float]:
    return {s.labels["reason"]: s.value for f in text_families(text) for s in f.samples
            if s.name == "tasklens_sink_points_rejected_total" and s.labels.get("sink") == "prometheus"}


def values(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for f in text_families(text) for s in f.samples if s.name == name]


@pytest.mark.slow
def test_hostile_names_and_tags_keep_metrics_valid_and_the_control_exact(tmp_path: Path) -> None:
    sidecar = Sidecar(tmp_path, TASKLENS_FLUSH_INTERVAL="1", TASKLENS_SERVICE="hostile-test")
    try:
        sidecar.wait_ready()
        client = DogStatsd(host="127.0.0.1", port=sidecar.statsd_port, disable_telemetry=True)
        # phase 1: the names that come first and keep their family
        client.increment("q")  # the README's example: q:1|c, then q:5|g
        client.increment("x")  # x_total: x's counter sample
        client.histogram("y", 0.5)  # y_count, y_bucket, y_sum: y's samples
        client.gauge("a.b", 1)
        for _ in range(CONTROL):
            client.increment("control.jobs", tags=["queue:orders"])
        wait_until(lambda: {"q_total", "x_total", "y_count", "a_b"} <= {
            s.name for f in text_families(get(sidecar, "text/plain")[1]) for s in f.samples}, 15, what="phase 1")
        # phase 2: everything that must not take a name, a series or a label from what is there
        client.gauge("q", 5)
        client.gauge("x_total", 3)
        client.gauge("y_count", 4)
        client.gauge("y_bucket", 4)
        client.gauge("a-b", 2)  # the same name and labels as a.b after sanitising
        client.gauge("a_b", 3)
        client.gauge("tasklens.http.scrapes", 12345)  # the sidecar's own names
        client.gauge("ecs.task.info", 12345)
        client.gauge("queue.depth", 12345)
        # raw bytes: the client would replace the control characters and quotes in tag values
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.sendto(b'labels:1|g|#le:1,quantile:0.5,__name__:evil,service:evil,1st:x,ctl:a\x01b\tc\x7fd\re,'
                       b'q:say "hi" \\o/', ("127.0.0.1", sidecar.statsd_port))
        client.gauge("dup.labels", 1, tags=["a-b:1", "a_b:2"])
        client.gauge("9lives", 9)
        wait_until(lambda: {"type_conflict", "name_conflict", "duplicate_series", "reserved_name",
                            "label_conflict"} <= set(rejected(get(sidecar, "text/plain")[1])), 15, what="refusals")
        client.close_socket()

        content_type, text = get(sidecar, "text/plain;version=0.0.4")
        om_type, om = get(sidecar, OPENMETRICS)
        assert content_type.startswith("text/plain; version=0.0.4")
        assert om_type.startswith("application/openmetrics-text") and om.endswith("# EOF\n")
        promtool(text)
        promtool(om)
        in_text = series(text_families(text))
        in_om = series(openmetrics_families(om))  # strict: raises on any invalid line
        assert {k for k in in_text if not k[0].startswith("tasklens_")} == {
            k for k in in_om if not k[0].startswith("tasklens_")}

        control = ("control_jobs_total", frozenset({("queue", "orders"), ("service", "hostile-test")}))
        assert in_text[control] == CONTROL and in_om[control] == CONTROL
        # the first type and name keep their family; nothing else appears under them
        assert [v for _, v in values(text, "q_total")] == [1.0] and not values(text, "q")
        assert [v for _, v in values(text, "x_total")] == [1.0]
        assert [v for _, v in values(text, "y_count")] == [1.0] and len(values(text, "y_bucket")) == 12
        assert [v for _, v in values(text, "a_b")] == [1.0]
        assert all(v != 12345 for v in in_text.values()) and [v for _, v in values(text, "ecs_task_info")] == [1.0]
        ((labels, _),) = values(text, "labels")
        assert labels == {"exported_le": "1", "exported_quantile": "0.5", "exported_name__": "evil",
                          "exported_service": "evil", "service": "hostile-test", "_1st": "x",
                          "ctl": "a\x01b\tc\x7fd\re", "q": 'say "hi" \\o/'}
        assert not values(text, "dup_labels") and [v for _, v in values(text, "_9lives")] == [9.0]
        counts = rejected(text)
        for reason in ("type_conflict", "name_conflict", "duplicate_series", "reserved_name", "label_conflict"):
            assert counts[reason] >= 1, counts
        assert counts["reserved_name"] >= 3 and counts["name_conflict"] >= 3
        assert "prometheus: " in sidecar.log and "refused: reserved_name" in sidecar.log
        assert sidecar.proc.poll() is None
    finally:
        if sidecar.proc.poll() is None:
            sidecar.stop()
