"""Mapping rules are text settings too: UTF-8 without control characters, of bounded length, and a
bounded number of rules, as the README says of every text. A newline in `name`, a NUL in a label
value, a 100 kB name and 5,000 rules once passed `check`, and the NUL reached /metrics raw."""

from __future__ import annotations

import subprocess
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import MAX_TAG, MAX_TEXT, ConfigError
from agent.statsd.mapping import MAX_RULES, compile_rules
from tests.support import TASKLENS, clean_env

# letters and dots (any of them a valid glob and name), with what the text rule refuses mixed in:
# control characters (C0, DEL, C1), lone surrogates (bytes that were not UTF-8), and lengths past the limits
PLAIN = "abc._-é☃"
REFUSED = "\x00\n\t\x1b\x7f\x85\ud800\udfff"


def texts(limit: int) -> st.SearchStrategy[str]:
    short = st.text(alphabet=PLAIN + REFUSED, min_size=1, max_size=12)
    around_the_limit = st.builds(lambda t, n: (t * n)[:n], st.text(alphabet=PLAIN, min_size=1, max_size=5),
                                 st.integers(limit - 2, limit + 2))
    return st.one_of(short, around_the_limit)


def passes(text: str, limit: int) -> bool:
    """The README's rule, written out: no surrogate, no control character, at most `limit` characters."""
    return (len(text) <= limit and not any("\ud800" <= c <= "\udfff" for c in text)
            and not any(unicodedata.category(c) == "Cc" for c in text))


@settings(max_examples=300, deadline=None)
@given(match=texts(MAX_TEXT), name=texts(MAX_TAG),
       labels=st.dictionaries(texts(MAX_TAG), texts(MAX_TAG), max_size=3))
def test_a_rule_is_accepted_iff_every_text_passes_the_text_rule(match: str, name: str, labels: dict[str, str]) -> None:
    rule = {"match": match, "name": name, "labels": labels}
    expected = passes(match, MAX_TEXT) and passes(name, MAX_TAG) and all(
        passes(k, MAX_TAG) and passes(v, MAX_TAG) for k, v in labels.items())
    try:
        compile_rules([{"match": "ok.*", "name": "ok"}, rule])
    except ConfigError as exc:
        assert not expected, str(exc)
        said = str(exc)
        assert said.startswith("mappings[1] ") and said.isprintable() and len(said) < 400, said
    else:
        assert expected, rule


def test_at_most_max_rules() -> None:
    rules = [{"match": f"j{i}.*", "name": f"n{i}"} for i in range(MAX_RULES + 1)]
    assert len(compile_rules(rules[:MAX_RULES])) == MAX_RULES
    with pytest.raises(ConfigError, match=f"mappings: expected at most {MAX_RULES} rules"):
        compile_rules(rules)


@pytest.mark.parametrize("toml, said", [
    ('[[mappings]]\nmatch = "jobs.*"\nname = "jobs\\nprocessed"\n',
     "mappings[0] (match 'jobs.*'): name: expected a metric name, without control characters"),
    ('[[mappings]]\nmatch = "jobs.*"\nname = "jobs"\nlabels = { queue = "a\\u0000b\\nc" }\n',
     "mappings[0] (match 'jobs.*'): labels['queue']: expected a label value, without control characters"),
    ('[[mappings]]\nmatch = "jobs.*"\nname = "' + "x" * 100_000 + '"\n',
     f"mappings[0] (match 'jobs.*'): name: expected a metric name, at most {MAX_TAG} characters"),
    ("".join(f'[[mappings]]\nmatch = "j{i}.*"\nname = "n{i}"\n' for i in range(5000)),
     f"mappings: expected at most {MAX_RULES} rules ([[mappings]] tables), not 5000"),
])
def test_check_refuses_them_in_one_line(tmp_path, toml: str, said: str) -> None:
    path = tmp_path / "tasklens.toml"
    path.write_text(toml)
    check = subprocess.run([TASKLENS, "check"], env=clean_env(TASKLENS_CONFIG_FILE=str(path)),
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 2, check.stderr
    (line,) = check.stderr.splitlines()
    assert line.startswith("tasklens: invalid configuration: " + said), line


def test_a_regex_listing_many_names_is_taken() -> None:
    """A statsd_exporter-style regex of many queue names runs past a glob's 1,024 characters: taken,
    up to MAX_REGEX; a glob stays within MAX_TEXT."""
    from agent.statsd.mapping import MAX_REGEX

    names = "|".join(f"queue_{i:03d}_orders_priority" for i in range(60))
    regex = rf"^jobs\.({names})\.processed$"
    assert MAX_TEXT < len(regex) <= MAX_REGEX
    assert compile_rules([{"match": regex, "match_type": "regex", "name": "jobs_processed", "labels": {"q": "$1"}}])
    with pytest.raises(ConfigError, match=f"at most {MAX_REGEX} characters"):
        compile_rules([{"match": "a" * (MAX_REGEX + 1), "match_type": "regex", "name": "n"}])
    with pytest.raises(ConfigError, match=f"at most {MAX_TEXT} characters"):
        compile_rules([{"match": "a." * MAX_TEXT, "name": "n"}])
