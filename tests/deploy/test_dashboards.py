"""Dashboards and alerts use only metric names the sidecar really exports.

The names the code emits are found by running the code where it is pure (the ECS derivations over
the shared fixtures, the queue sample builder) and by reading the self-metric names it counts
(`metrics.inc("tasklens....")`). deploy/dashboards/metrics.txt is the one list of names the
dashboards and alerts may use; every query is checked against it, and it against the code.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from agent.model import Kind
from agent.sinks.prometheus import metric_name
from tests.support import FIXTURES
from tests.deploy.deploy_checks import DEPLOY, ROOT, datadog_unparsed

METRICS_LIST = DEPLOY / "dashboards" / "metrics.txt"
GRAFANA = DEPLOY / "dashboards" / "grafana" / "tasklens-worker.json"
DATADOG_DASHBOARD = DEPLOY / "dashboards" / "datadog" / "tasklens-worker.json"
DATADOG_MONITORS = DEPLOY / "alerts" / "datadog" / "monitors.json"
PROMETHEUS_RULES = DEPLOY / "alerts" / "prometheus" / "tasklens.rules.yml"
# Series that Prometheus itself makes, not the sidecar.
PROMETHEUS_BUILTIN = {"up"}


def listed() -> set[str]:
    lines = (line.strip() for line in METRICS_LIST.read_text().splitlines())
    return {line for line in lines if line and not line.startswith("#")}


# --- what the code emits ---------------------------------------------------------------------------


def _exported(name: str, kind: Kind) -> str:
    """The Prometheus sink's name for a sample (counters get `_total`)."""
    base = metric_name(name)
    return base.removesuffix("_total") + "_total" if kind in (Kind.COUNTER, Kind.COUNT) else base


def _ecs_samples() -> dict[str, str]:
    from agent.sources.ecs_stats import derive

    out: dict[str, str] = {}
    for task_file in sorted(FIXTURES.glob("*.task.json")):
        stats_file = task_file.with_name(task_file.name.replace(".task.json", ".stats.json"))
        if not stats_file.exists():
            continue
        task, stats = json.loads(task_file.read_text()), json.loads(stats_file.read_text())
        # twice: the second poll has a previous one, so rates appear too
        for previous in (None, stats):
            for s in derive(task, stats, previous).samples:
                out[_exported(s.name, s.kind)] = s.name
    return out


def _health_samples() -> dict[str, str]:
    """agent/health.py over a leaking, saturated, restarting series derived from fargate-2023."""
    from agent.identity import container_tags
    from agent.model import Sample
    from tests.health_support import leaking_polls, monitor

    m = monitor(saturation_window=10)
    out: dict[str, str] = {}
    for task, stats in leaking_polls(polls=181, step=10, grow=2 * 1024 * 1024):
        derived = [Sample("ecs.task.cpu.utilization_percent", 99.0)]
        derived += [Sample("ecs.container.cpu.utilization_percent", 99.0, tags=container_tags(c))
                    for c in task["Containers"]]
        for s in m.observe(task, stats, derived, 0):
            out[_exported(s.name, s.kind)] = s.name
    return out


def _queue_samples() -> dict[str, str]:
    from integrations.queues.base import Reading
    from integrations.queues.source import samples_of
    from integrations.queues.trend import Trend

    reading = Reading(depth=5, in_flight=1, delayed=2, consumers=3, oldest_age_seconds=4)
    samples = samples_of(reading, Trend(growth_rate=-1.0, drain_seconds=5.0, backing_up=False), (), 0.0)
    return {_exported(s.name, s.kind): s.name for s in samples}


def _scaling_samples() -> dict[str, str]:
    """The heartbeat with its target and maximum, and a beanstalkd queue's backlog over a window's
    history (beanstalkd reports live consumers, so the per-task values appear too)."""
    from agent.scaling import BUSY, PROTECTED
    from agent.scaling.backlog import BacklogTracker
    from agent.scaling.heartbeat import Heartbeat

    samples = list(Heartbeat(hub=None, target=200.0, max_tasks=50).samples)  # type: ignore[arg-type]
    tracker = BacklogTracker("beanstalkd", window=60.0, hold=600.0)
    for t in range(0, 61, 15):
        samples += tracker.samples(10.0, 2.0, 3.0, float(t), (), 0.0)
    out = {_exported(s.name, s.kind): s.name for s in samples}
    # the protection component publishes these two gauges (agent/scaling/protection.py)
    return out | {_exported(n, Kind.GAUGE): n for n in (BUSY, PROTECTED)}


_SELF_NAME = re.compile(r"""["'](tasklens\.[a-z0-9_]+\.[a-z0-9_.]+)["']""")
_SELF_GAUGE = re.compile(r"""\.set\(\s*["'](tasklens\.[a-z0-9_.]+)["']""")


def _self_metrics() -> dict[str, str]:
    """Self-metric names are literals (some collected in a table before `metrics.inc(name, ...)`):
    a name ever passed to `.set(` is a gauge, any other a counter."""
    names: set[str] = set()
    gauges: set[str] = set()
    for path in list((ROOT / "agent").rglob("*.py")) + list((ROOT / "integrations").rglob("*.py")):
        text = path.read_text()
        names.update(_SELF_NAME.findall(text))
        gauges.update(_SELF_GAUGE.findall(text))
    return {_exported(n, Kind.GAUGE if n in gauges else Kind.COUNTER): n for n in names}


@cache
def emitted() -> dict[str, str]:
    """Prometheus name -> dotted (Datadog) name, for everything the code emits."""
    return {**_ecs_samples(), **_health_samples(), **_queue_samples(), **_scaling_samples(),
            **_self_metrics(),
            "ecs_task_info": "ecs.task.info"}


# --- what the dashboards and alerts use --------------------------------------------------------------

_PROMQL_DROP = [
    re.compile(r'"(?:[^"\\]|\\.)*"'),  # strings
    re.compile(r"\{[^}]*\}"),  # label matchers
    re.compile(r"\[[^\]]*\]"),  # ranges
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"),  # label lists
]
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
                 "and", "or", "unless", "inf", "nan"}


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (identifiers that are not functions or keywords)."""
    expr = re.sub(r"label_values\((.*),\s*\w+\s*\)", r"\1", expr)  # Grafana: the label is not a metric
    for pattern in _PROMQL_DROP:
        expr = pattern.sub(" ", expr)
    names = re.findall(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr)
    return {n for n in names if n.lower() not in _PROMQL_WORDS}


def grafana_exprs(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def rule_exprs(rules: dict) -> list[str]:
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


_DD_METRIC = re.compile(r"\b(?:avg|sum|min|max|count):([a-zA-Z][\w.]*)\{")


def datadog_queries(obj: object) -> list[str]:
    """Every `q`/`query` string in a Datadog dashboard or monitor list."""
    if isinstance(obj, dict):
        found = [v for k, v in obj.items() if k in ("q", "query") and isinstance(v, str)]
        return found + [q for v in obj.values() for q in datadog_queries(v)]
    if isinstance(obj, list):
        return [q for v in obj for q in datadog_queries(v)]
    return []


def used_prometheus() -> dict[str, set[str]]:
    """File name -> Prometheus metric names its queries use."""
    grafana = json.loads(GRAFANA.read_text())
    rules = yaml.safe_load(PROMETHEUS_RULES.read_text())
    return {
        GRAFANA.name: set().union(*map(promql_metrics, grafana_exprs(grafana))),
        PROMETHEUS_RULES.name: set().union(*map(promql_metrics, rule_exprs(rules))),
    }


def used_datadog() -> dict[str, set[str]]:
    out = {}
    for path in (DATADOG_DASHBOARD, DATADOG_MONITORS):
        queries = datadog_queries(json.loads(path.read_text()))
        out[path.name] = {m for q in queries for m in _DD_METRIC.findall(q)}
    return out


# --- tests ---------------------------------------------------------------------------------------------


def test_promql_extraction() -> None:
    expr = ('time() - max by (service, task_id) (tasklens_ecs_last_success_timestamp{service=~"$service"}) > 300 '
            'and on (task_id) deriv(queue_depth[10m]) > 0 or topk(10, sum by (__name__) (rate({__name__=~".+"}[5m])))')
    assert promql_metrics(expr) == {"tasklens_ecs_last_success_timestamp", "queue_depth"}
    assert promql_metrics('label_values(ecs_task_info{service=~"$service"}, env)') == {"ecs_task_info"}


def test_datadog_extraction() -> None:
    q = "max(next_4h):forecast(max:ecs.task.memory.utilization_percent{*} by {task_id}, 'linear', 1) >= 100"
    assert _DD_METRIC.findall(q) == ["ecs.task.memory.utilization_percent"]


def test_dashboards_and_alerts_use_only_listed_names() -> None:
    allowed = listed() | PROMETHEUS_BUILTIN
    for source, names in used_prometheus().items():
        assert names, f"{source}: no metric found (extraction broken?)"
        assert names <= allowed, f"{source} uses metrics not in {METRICS_LIST.name}: {sorted(names - allowed)}"
    for source, names in used_datadog().items():
        assert names, f"{source}: no metric found (extraction broken?)"
        unknown = {n for n in names if metric_name(n) not in listed() and metric_name(n) + "_total" not in listed()}
        assert not unknown, f"{source} uses metrics not in {METRICS_LIST.name}: {sorted(unknown)}"


def test_every_listed_name_is_used() -> None:
    used = set().union(*used_prometheus().values())
    for names in used_datadog().values():
        used |= {metric_name(n) for n in names} | {metric_name(n) + "_total" for n in names}
    assert listed() - used == set(), "listed but unused (remove from metrics.txt)"


def test_code_emits_every_listed_prometheus_name() -> None:
    missing = sorted(listed() - set(emitted()))
    assert not missing, (f"the sidecar does not emit {missing} (used by deploy/dashboards and deploy/alerts); "
                         f"it emits: {sorted(emitted())}")


def test_datadog_files_use_the_exact_dotted_names_the_code_emits() -> None:
    emitted_dotted = set(emitted().values())
    for source, names in used_datadog().items():
        missing = sorted(names - emitted_dotted)
        assert not missing, f"{source} uses Datadog names the sidecar does not emit: {missing}"


def test_grafana_dashboard_shape() -> None:
    dashboard = json.loads(GRAFANA.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "tasklens-worker"
    refs = {t["refId"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert refs <= set("ABCDEFGH")
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "service", "env"}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            # every query is scoped to the chosen worker
            assert 'service=~"$service"' in target["expr"], (panel["title"], target["expr"])


def test_datadog_monitors_shape() -> None:
    monitors = json.loads(DATADOG_MONITORS.read_text())
    names = [m["name"] for m in monitors]
    assert len(monitors) == 10 and len(set(names)) == 10
    for m in monitors:
        assert m["type"] == "query alert" and "{*}" in m["query"] and "by {service,env" in m["query"]
        assert m["options"]["thresholds"]["critical"] is not None
    assert any("queue.backing_up" in m["query"] for m in monitors)
    assert any(m["options"].get("notify_no_data") for m in monitors)  # sidecar not reporting


def test_datadog_files_parse_with_the_datadog_api_client() -> None:
    pytest.importorskip("datadog_api_client", reason="pip install datadog-api-client")
    dashboard = json.loads(DATADOG_DASHBOARD.read_text())
    assert not datadog_unparsed(dashboard, "dashboard")
    for monitor in json.loads(DATADOG_MONITORS.read_text()):
        assert not datadog_unparsed(monitor, "monitor"), monitor["name"]
    # and the check is not vacuous
    broken = copy.deepcopy(dashboard)
    broken["widgets"][0]["definition"]["widgets"][0]["definition"]["type"] = "timeserie"
    assert datadog_unparsed(broken, "dashboard")
    assert datadog_unparsed(dict(json.loads(DATADOG_MONITORS.read_text())[0], type="query-alert"), "monitor")


def test_metric_names_doc_is_one_place() -> None:
    # the list is the Prometheus form; a dotted or duplicate entry would be a mistake
    lines = [l.strip() for l in METRICS_LIST.read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert len(lines) == len(set(lines)) and all(re.fullmatch(r"[a-z_]+", l) for l in lines)
    assert Path(METRICS_LIST).is_file()


def test_grafana_queries_parse_with_promtool(tmp_path: Path) -> None:
    """Every Grafana query (template variables filled in) is valid PromQL to promtool itself."""
    import shutil
    import subprocess

    tool = shutil.which("promtool")
    if not tool:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    dashboard = json.loads(GRAFANA.read_text())
    exprs = [t["expr"].replace("$__rate_interval", "5m").replace("$service", ".*").replace("$env", ".*")
             for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = {"groups": [{"name": "grafana", "rules": [{"record": f"grafana:q{i}", "expr": e}
                                                      for i, e in enumerate(exprs)]}]}
    path = tmp_path / "grafana.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # and the check is not vacuous
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "r", "expr": "max by (x"}]}]}))
    assert subprocess.run([tool, "check", "rules", str(path)], capture_output=True, timeout=60).returncode != 0
