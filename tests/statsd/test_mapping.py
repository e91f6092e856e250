"""Mapping rules: statsd_exporter-style globs and regexes, validated at start with the rule named."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent.config import MAX_TAG, ConfigError, load
from agent.statsd.mapping import apply, compile_rules


def test_glob_star_is_one_dot_free_part() -> None:
    rules = compile_rules([{"match": "jobs.*.processed", "name": "jobs_processed", "labels": {"queue": "$1"}},
                           {"match": "http.*.*", "name": "http_${2}", "labels": {"route": "$1", "what": "${2}"}}])
    assert apply(rules, "jobs.orders.processed") == ("jobs_processed", (("queue", "orders"),))
    assert apply(rules, "jobs.a.b.processed") is None  # `*` does not cross dots
    assert apply(rules, "jobs..processed") is None  # nor match nothing
    assert apply(rules, "http.login.latency") == ("http_latency", (("route", "login"), ("what", "latency")))
    assert apply(rules, "xjobs.orders.processed") is None  # anchored


def test_regex_rules_and_first_match_wins() -> None:
    rules = compile_rules([{"match": r"db\.(\w+)\.query_(ms|count)", "match_type": "regex", "name": "db_query_$2",
                            "labels": {"table": "$1"}},
                           {"match": "db.*.*", "name": "db_other"}])
    assert apply(rules, "db.users.query_ms") == ("db_query_ms", (("table", "users"),))
    assert apply(rules, "db.users.rows") == ("db_other", ())


def test_a_label_whose_value_is_empty_is_not_given() -> None:
    """A group that did not take part, or a label given as `""`: no label (on /metrics a bare tag's label reads
    `true`, a value no one sent); the client's own tag of that key stays."""
    rules = compile_rules([{"match": r"req\.(\w+)(?:\.(\w+))?", "match_type": "regex", "name": "requests",
                            "labels": {"route": "$1", "status": "$2", "shard": ""}}])
    assert apply(rules, "req.home") == ("requests", (("route", "home"),))
    assert apply(rules, "req.api.500") == ("requests", (("route", "api"), ("status", "500")))


@pytest.mark.parametrize("rule, message", [
    ({"name": "x"}, "mappings[0]: match is required"),
    ({"match": "a.*"}, "mappings[0] (match 'a.*'): name is required"),
    ({"match": "a.*", "name": "a", "labels": {"q": 1}}, "labels must be a table of strings"),
    ({"match": "a.*", "name": "a_$2"}, "'a_$2' uses $2 but the match has 1 group(s)"),
    ({"match": "a.(", "name": "a", "match_type": "regex"}, "invalid regex"),
    ({"match": "a.*", "name": "a", "match_type": "fuzzy"}, "match_type must be \"glob\" or \"regex\""),
    ({"match": "a.*", "name": "a", "lables": {}}, "unknown key(s) lables"),
])
def test_validation_names_the_rule(rule: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_rules([rule])
    assert message in str(info.value)


@given(st.text(alphabet="0123456789", min_size=1, max_size=6000), st.booleans())
@example("9" * 5000, False)  # past int()'s 4,300 digits, which a random draw rarely reaches
def test_any_group_reference_is_taken_or_refused_naming_the_rule(digits: str, braced: bool) -> None:
    # `$999...9` of thousands of digits: a ConfigError, never int()'s ValueError (a traceback at start-up)
    ref = f"${{{digits}}}" if braced else f"${digits}"
    try:
        [rule] = compile_rules([{"match": "jobs.*.*", "name": f"jobs_{ref}"}])
    except ConfigError as exc:
        # a name past the text rule's length is refused as such, before its references are looked at
        why = "group(s)" if len(f"jobs_{ref}") <= MAX_TAG else "at most 200 characters"
        assert str(exc).startswith("mappings[0]") and why in str(exc) and len(str(exc)) < 300
        return
    assert int(digits) <= 2 and apply([rule], "jobs.a.b") == (f"jobs_{('jobs.a.b', 'a', 'b')[int(digits)]}", ())


def test_rules_from_the_configuration_file(tmp_path) -> None:
    path = tmp_path / "tasklens.toml"
    path.write_text('[[mappings]]\nmatch = "jobs.*.processed"\nname = "jobs_processed"\nlabels = { queue = "$1" }\n')
    config = load({"TASKLENS_CONFIG_FILE": str(path)})
    rules = compile_rules(config.mappings)
    assert apply(rules, "jobs.q1.processed") == ("jobs_processed", (("queue", "q1"),))
