"""Prometheus alert rules: `promtool check rules` and the `promtool test rules` unit tests
(deploy/alerts/prometheus/tasklens.rules.test.yml: "queue backing up" fires on a growing backlog,
not on a draining one)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.deploy_checks import DEPLOY

RULES_DIR = DEPLOY / "alerts" / "prometheus"
RULES = RULES_DIR / "tasklens.rules.yml"
RULE_TESTS = RULES_DIR / "tasklens.rules.test.yml"


def run(promtool: str, *args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_rules_are_valid(promtool: str) -> None:
    result = run(promtool, "check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 13 rules found" in result.stdout


def test_rule_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_catch_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    """With the backlog threshold dropped to 0 the small growing queue would alert too: the unit
    tests must notice (they are not vacuous)."""
    broken = RULES.read_text().replace("queue_depth > 100", "queue_depth > 0")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "tiny-worker" in result.stdout + result.stderr


@pytest.mark.parametrize("rule,broken,culprit", [
    ("TasklensMemoryLeakTimeToLimit", ") < 3600", ") < 90000"),  # the far countdown (1 day) would page
    ("TasklensContainerRestarted", "[15m])) > 0", "[15m])) >= 0"),  # a steady restart count would alert
])
def test_unit_tests_catch_a_broken_health_rule(promtool: str, tmp_path: Path, rule: str, broken: str,
                                               culprit: str) -> None:
    text = RULES.read_text()
    assert text.count(broken) == 1, broken
    (tmp_path / RULES.name).write_text(text.replace(broken, culprit))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert rule in result.stdout + result.stderr
