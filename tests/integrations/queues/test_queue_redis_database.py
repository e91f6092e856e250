"""A Redis URL's path is its database: none, `/`, or `/<n>`. redis-py drops every `/` of the path and reads
the rest as a number, or reads database 0 when that fails, so `/0/1` polled database 1, `/1/0` database 10,
and `/abc`, `/-0`, `/0x1` database 0: another queue than the one written, read as empty. Any other path now
stops start-up (and `tasklens check`) with an error naming the variable, the URL and the path."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import parse_url

from agent.config import ConfigError
from integrations.queues import parse
from integrations.queues.redis import MAX_DATABASE, database
from integrations.queues.source import QueueSource

DATABASE = re.compile(r"/?|/[0-9]+")

# what a path may hold and still be a path (no ? or #): digits, slashes, signs, hex, spaces, percent escapes,
# a non-ASCII digit (int() takes it)
PATHS = st.one_of(
    st.text(st.sampled_from("0123456789/-+x ab%3٣_."), max_size=12).map(lambda t: "/" + t),
    st.integers(0, 2 * MAX_DATABASE).map(lambda n: f"/{n}"),
    st.just(""),
)


EXAMPLES = ["/0/1", "/1/0", "/abc", "/0x1", "/-0", "/%30", "/ 0", "/٣", f"/{MAX_DATABASE + 1}",
            "", "/", "/00", f"/{MAX_DATABASE}"]


def with_examples(test):
    for path in EXAMPLES:
        test = example(path=path)(test)
    return test


@given(path=PATHS)
@with_examples
@settings(max_examples=300, deadline=None)
def test_a_path_is_a_database_number_as_written_or_refused(path):
    url = f"redis://127.0.0.1:6379{path}?list=jobs"
    written = DATABASE.fullmatch(path) and int(path[1:] or 0) <= MAX_DATABASE
    if not written:
        with pytest.raises(ValueError):
            parse(url)
        return
    target = parse(url)
    assert database(target.url) == int(path[1:] or 0)
    # the client reads the database written, nothing else
    assert parse_url(target.url.client_url()).get("db", 0) == int(path[1:] or 0)


@pytest.mark.parametrize("path", ["/0/1", "/1/0", "/abc", "/0x1", "/-0"])
def test_start_up_names_the_variable_the_url_and_the_path(config, hub, path):
    with pytest.raises(ConfigError) as refused:
        QueueSource(config, hub, f"redis://:secret@127.0.0.1:6379{path}?list=jobs&name=emails")
    message = str(refused.value)
    assert "TASKLENS_QUEUES" in message and "list=jobs" in message and repr(path[1:]) in message, message
    assert "secret" not in message
