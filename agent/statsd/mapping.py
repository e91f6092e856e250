"""Mapping rules (statsd_exporter style): a dotted name from a tag-less client -> a name plus labels.

From the configuration file:

    [[mappings]]
    match = "jobs.*.processed"      # glob: `*` is one dot-free, non-empty part of the name
    name = "jobs_processed"         # may use $1, ${1} ... ($0: the whole name)
    labels = { queue = "$1" }       # optional
    # match_type = "regex"          # optional: `match` is then a Python regex (full match)

The first matching rule wins. Labels from a rule win over the client's tags of the same key (the rule
is explicit configuration for that name). Rules are validated at start: every error names the rule.
Their texts are held to the rule of every other text setting (`check_text`: UTF-8, no control
character, bounded length), and there are at most `MAX_RULES` of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.config import MAX_ITEMS, MAX_TAG, MAX_TEXT, ConfigError, check_text
from agent.model import Tags

KEYS = frozenset({"match", "name", "labels", "match_type"})
# a name no rule matches is tried against every rule (once: contexts are cached): a few dozen rules is
# a large configuration, thousands are a generated file gone wrong
MAX_RULES = 1000
MAX_REGEX = 65_536  # characters of a `regex` rule's match (a glob's: MAX_TEXT)
_REF = re.compile(r"\$(?:(\d+)|\{(\d+)\})")


@dataclass(frozen=True)
class Rule:
    match: str
    name: str
    labels: tuple[tuple[str, str], ...]
    pattern: re.Pattern[str]


def glob_to_regex(glob: str) -> str:
    return "".join("([^.]+)" if part == "*" else re.escape(part) for part in re.split(r"(\*)", glob))


def compile_rules(mappings: Sequence[Mapping[str, Any]]) -> tuple[Rule, ...]:
    """Validate and compile `config.mappings`; raises ConfigError naming the rule and the problem."""
    if len(mappings) > MAX_RULES:
        raise ConfigError(f"mappings: expected at most {MAX_RULES} rules ([[mappings]] tables), not {len(mappings)}")
    rules = []
    for i, m in enumerate(mappings):
        where = f"mappings[{i}]" + (f" (match {_shown(m.get('match'))})" if isinstance(m, Mapping) and "match" in m else "")
        if not isinstance(m, Mapping):
            raise ConfigError(f"{where}: expected a table with match, name and optional labels, match_type")
        unknown = set(m) - KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(KEYS))}")
        match, name, labels = m.get("match"), m.get("name"), m.get("labels", {})
        match_type = m.get("match_type", "glob")
        if not isinstance(match, str) or not match:
            raise ConfigError(f"{where}: match is required: a glob like \"jobs.*.processed\"")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: name is required, e.g. \"jobs_processed\"")
        if not isinstance(labels, Mapping) or not all(isinstance(k, str) and k and isinstance(v, str)
                                                      for k, v in labels.items()):
            raise ConfigError(f"{where}: labels must be a table of strings, e.g. {{ queue = \"$1\" }}")
        # as every other text setting: a NUL or a newline would reach /metrics and the sinks raw
        # a regex listing many names (statsd_exporter's style) is long; a glob needs no more than a name
        _check_text(where, "match", match, "a glob or regex", MAX_REGEX if match_type == "regex" else MAX_TEXT)
        _check_text(where, "name", name, "a metric name", MAX_TAG)
        if len(labels) > MAX_ITEMS:
            raise ConfigError(f"{where}: labels: expected at most {MAX_ITEMS} labels, not {len(labels)}")
        for key, value in labels.items():
            _check_text(where, "labels", key, "a label name", MAX_TAG)
            _check_text(where, f"labels[{_shown(key)}]", value, "a label value", MAX_TAG)
        if match_type == "glob":
            if "**" in match:  # two parts with no dot between them: ambiguous, and exponential to match
                raise ConfigError(f"{where}: `**` in a glob: each `*` is one dot-free part, write `*.*`")
            source = glob_to_regex(match)
        elif match_type == "regex":
            source = match
        else:
            raise ConfigError(f"{where}: match_type must be \"glob\" or \"regex\", not {match_type!r}")
        try:
            pattern = re.compile(source)
        except re.error as exc:
            raise ConfigError(f"{where}: invalid regex: {exc}") from None
        for template in (name, *labels.values()):
            for ref in _REF.finditer(template):
                digits = ref.group(1) or ref.group(2)
                if len(digits) > 4 or int(digits) > pattern.groups:  # `$999...9`: no int() of 5,000 digits
                    raise ConfigError(f"{where}: {template[:60]!r} uses ${digits[:8]}{'...' if len(digits) > 8 else ''} "
                                      f"but the match has {pattern.groups} group(s)")
        rules.append(Rule(match, name, tuple(labels.items()), pattern))
    return tuple(rules)


def _shown(value: Any) -> str:
    """`value` in an error message: escaped (repr), and short whatever its length."""
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _check_text(where: str, field: str, text: str, form: str, limit: int) -> None:
    try:
        check_text(text, form, limit)
    except ValueError as exc:
        raise ConfigError(f"{where}: {field}: expected {exc}") from None


def _expand(template: str, groups: Sequence[str]) -> str:
    """`groups`: the whole match, then each group ($0, $1, ...); a group that did not take part is ""."""
    return _REF.sub(lambda r: groups[int(r.group(1) or r.group(2))] or "", template)


def apply(rules: Sequence[Rule], name: str) -> tuple[str, Tags] | None:
    """(new name, labels) from the first rule that matches `name`, or None. A label whose value is empty
    (`""`, or a group that did not take part) is not given: an empty value is no label in Prometheus, and
    a bare tag's label reads `true`, which no one sent."""
    for rule in rules:
        found = rule.pattern.fullmatch(name)
        if found is not None:
            groups = (found.group(0), *found.groups())
            labels = ((k, _expand(v, groups)) for k, v in rule.labels)
            return _expand(rule.name, groups), tuple((k, v) for k, v in labels if v)
    return None
