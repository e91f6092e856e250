"""The scaling alert and recording rules (deploy/alerts/prometheus/scaling.rules.yml): valid for
promtool, their unit tests pass and are not vacuous, and they use only names the sidecar emits."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from agent import scaling
from agent.scaling import prometheus_name
from tests.deploy.deploy_checks import DEPLOY
from tests.deploy.test_dashboards import promql_metrics

RULES_DIR = DEPLOY / "alerts" / "prometheus"
RULES = RULES_DIR / "scaling.rules.yml"
RULE_TESTS = RULES_DIR / "scaling.rules.test.yml"


def run(promtool: str, *args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_rules_are_valid_and_their_tests_pass(promtool: str) -> None:
    result = run(promtool, "check", "rules", RULES.name)
    assert result.returncode == 0 and "SUCCESS: 7 rules found" in result.stdout, result.stdout + result.stderr
    result = run(promtool, "test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("change", [
    (">= on (ecs_cluster, service, env)\n", "< on (ecs_cluster, service, env)\n"),  # not at max: must not fire
    (">= 0", ">= -1000"),  # draining must not fire
    ("tasklens_scaling_busy == 0", "tasklens_scaling_busy >= 0"),  # busy tasks are not stuck
])
def test_the_unit_tests_catch_a_broken_rule(promtool: str, tmp_path: Path, change: tuple[str, str]) -> None:
    broken = RULES.read_text().replace(*change)
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    assert run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path).returncode != 0


def test_rules_use_only_names_the_sidecar_emits() -> None:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    recorded = {r["record"] for r in rules if "record" in r}
    emitted = {prometheus_name(v) for k, v in vars(scaling).items() if k.isupper() and isinstance(v, str)
               and "." in v}
    emitted.add("tasklens_scaling_protection_errors_total")  # a self-metric counter (protection.py)
    assert "tasklens.scaling.protection_errors" in (Path(scaling.__file__).parent / "protection.py").read_text()
    used = set().union(*(promql_metrics(r["expr"]) for r in rules))
    assert used - recorded <= emitted, sorted(used - recorded - emitted)
    assert {prometheus_name(scaling.BACKLOG_SMOOTHED), prometheus_name(scaling.HEARTBEAT),
            prometheus_name(scaling.TARGET), prometheus_name(scaling.MAX_TASKS)} <= used
    assert all(re.fullmatch(r"tasklens:[a-z_]+", r) for r in recorded)
