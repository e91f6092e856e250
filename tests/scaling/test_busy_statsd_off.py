"""A setting that acts only on StatsD metrics, given with every StatsD listener off, stops `run` and
`check` alike, naming it and the listener settings: a busy rule's StatsD term (a gauge, or a pair of
counters) could never hold, and `[[mappings]]` could never apply.

An outside tester's finding: `TASKLENS_SCALE_IN_PROTECTION=jobs.in_progress>0` with
`TASKLENS_STATSD_ADDR=off` passed `check` (exit 0, no warning), and `run` started: the task could never
be protected, and nothing said so. The docs make no such case legitimate (a rule is "what busy means";
a CPU rule needs no StatsD), so it is refused rather than warned about."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli import validate
from agent.config import ConfigError
from tests.support import clean_env, refused_alike

OFF = {"TASKLENS_HTTP_ADDR": "127.0.0.1:0", "TASKLENS_STATSD_ADDR": "off"}
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,8}(\.[a-z][a-z0-9_]{0,8}){0,2}", fullmatch=True).filter(lambda n: n != "or")
gauge = st.builds(lambda n, t: f"{n}>{t}", NAMES, st.integers(0, 100))
counters = st.builds(lambda a, b, t: f"{a}-{b}>{t}", NAMES, NAMES, st.integers(0, 100))
cpu = st.builds(lambda t: f"cpu>{t}%", st.integers(1, 100))


@settings(max_examples=100, deadline=None)
@given(statsd_terms=st.lists(st.one_of(gauge, counters), min_size=1, max_size=3), cpu_terms=st.lists(cpu, max_size=2),
       order=st.randoms())
def test_a_rule_with_a_statsd_term_is_refused_with_statsd_off(statsd_terms: list[str], cpu_terms: list[str],
                                                              order) -> None:  # type: ignore[no-untyped-def]
    terms = statsd_terms + cpu_terms
    order.shuffle(terms)
    rule = " or ".join(terms)
    with pytest.raises(ConfigError) as err:
        validate({**OFF, "TASKLENS_SCALE_IN_PROTECTION": rule})  # what `run` and `check` both call first
    message = str(err.value)
    assert message.startswith("TASKLENS_SCALE_IN_PROTECTION=")
    assert "TASKLENS_STATSD_ADDR=off" in message and "TASKLENS_STATSD_SOCKET" in message
    # the same rule is accepted with a StatsD listener on (UDP, or the Unix socket alone)
    validate({**OFF, "TASKLENS_STATSD_ADDR": "127.0.0.1:0", "TASKLENS_SCALE_IN_PROTECTION": rule})


@settings(max_examples=30, deadline=None)
@given(cpu_terms=st.lists(cpu, min_size=1, max_size=3))
def test_a_cpu_rule_needs_no_statsd(cpu_terms: list[str]) -> None:
    validate({**OFF, "TASKLENS_SCALE_IN_PROTECTION": " or ".join(cpu_terms)})


def test_the_unix_socket_alone_is_statsd_on(tmp_path: Path) -> None:
    validate({**OFF, "TASKLENS_STATSD_SOCKET": str(tmp_path / "s.sock"), "TASKLENS_SCALE_IN_PROTECTION": "jobs>0"})


def test_mapping_rules_with_statsd_off_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[mappings]]\nmatch = "jobs.*.done"\nname = "jobs_done"\n')
    with pytest.raises(ConfigError, match=f"{path}: mappings: .*TASKLENS_STATSD_ADDR=off"):
        validate({**OFF, "TASKLENS_CONFIG_FILE": str(path)})
    validate({**OFF, "TASKLENS_CONFIG_FILE": str(path), "TASKLENS_STATSD_ADDR": "127.0.0.1:0"})


def test_statsd_off_in_the_file_is_named_as_the_file_gives_it(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('statsd_addr = "off"\n')
    with pytest.raises(ConfigError, match=f"{path}: statsd_addr=off"):
        validate({"TASKLENS_HTTP_ADDR": "127.0.0.1:0", "TASKLENS_CONFIG_FILE": str(path),
                  "TASKLENS_SCALE_IN_PROTECTION": "jobs.in_progress>0"})


@pytest.mark.parametrize("rule", ["jobs.in_progress>0", "jobs.a-jobs.b>0"])
def test_run_and_check_refuse_alike(rule: str) -> None:
    """The tester's two cases, with the real commands: the same line, exit 2."""
    env = clean_env(**OFF, TASKLENS_SCALE_IN_PROTECTION=rule)
    line = refused_alike(env)
    assert line.startswith("tasklens: invalid configuration: TASKLENS_SCALE_IN_PROTECTION=")
    assert "TASKLENS_STATSD_ADDR=off" in line
