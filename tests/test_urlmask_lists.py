"""A list of queue URLs is split at its commas into exactly the URLs that were listed; only a password
with a raw `,` that runs into the next URL is refused, and no error shows a password.

The outside tester's: two URLs that each have a user name, no password and a port
(`amqp://guest@127.0.0.1:5672/?queue=a,amqp://guest@127.0.0.1:5672/?queue=b`, or two
`postgresql://postgres@127.0.0.1:5432/test?...` with trust auth) could not be listed in any order: the
text was read as one URL whose password was `5672/?queue=a,amqp://guest`, and refused with a masked
URL that read `amqp://guest@127.0.0.1:***@127.0.0.1:5672/?queue=b`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tests.support import free_port
from tests.test_urlmask import HEAD, TAIL, assert_hidden, strings

from agent.cli import validate
from agent.config import MAX_ITEMS, ConfigError, describe, load, parse_url_list
from agent.urlmask import split_password

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8)
SECRETS = TEXT.map(lambda middle: HEAD + middle + TAIL)  # what no host, user name or parameter holds
HOSTS = st.sampled_from(["127.0.0.1", "h1.example", "rabbit", "[::1]", "db-2.internal"])
SCHEMES = st.sampled_from(["amqp", "redis", "postgresql", "nats", "sqs", "beanstalk", "rediss"])


def encoded(text: str) -> str:
    return quote(text, safe="")


@st.composite
def userinfo(draw: Any) -> tuple[str, str | None]:
    """(`user:password@`, `user@` or nothing; the password)."""
    kind = draw(st.sampled_from(["none", "user", "user_password", "password_env"]))
    if kind == "none":
        return "", None
    user = draw(st.one_of(st.sampled_from(["guest", "postgres", "u", "worker"]), TEXT))
    if kind == "user_password":
        password = draw(SECRETS)
        return f"{encoded(user)}:{encoded(password)}@", password
    return f"{encoded(user)}@", None


@st.composite
def well_formed(draw: Any) -> tuple[str, list[str]]:
    """(a URL as a user writes one that reads as written, the passwords it holds)."""
    scheme, host = draw(SCHEMES), draw(HOSTS)
    credentials, password = draw(userinfo())
    port = draw(st.one_of(st.none(), st.integers(1, 65535)))
    path = draw(st.one_of(st.just(""), st.just("/"), TEXT.map(lambda p: "/" + encoded(p))))
    params = draw(st.lists(st.tuples(st.sampled_from(["queue", "list", "name", "stream", "query"]), TEXT),
                           max_size=3))
    query = [f"{key}={encoded(value)}" for key, value in params]
    passwords = [password] if password else []
    if draw(st.booleans()):  # a URL in a parameter, raw, as the docs write `management=`
        nested = draw(SECRETS)
        passwords.append(nested)
        query.append(f"management=http://g:{encoded(nested)}@{host}:15672")
    if credentials.endswith("@") and ":" not in credentials and draw(st.booleans()):
        query.append("password_env=QUEUE_PASSWORD")
    url = f"{scheme}://{credentials}{host}{f':{port}' if port is not None else ''}{path}"
    return url + ("?" + "&".join(query) if query else ""), passwords


LISTS = st.lists(well_formed(), min_size=1, max_size=6)
GUESTS = ["amqp://guest@127.0.0.1:5672/?queue=a", "amqp://guest@127.0.0.1:5672/?queue=b"]
POSTGRES = ["postgresql://postgres@127.0.0.1:5432/test?name=a&query=select%201",
            "postgresql://postgres@127.0.0.1:5432/test?name=b&query=select%202"]


@settings(max_examples=500, deadline=None)
@given(listed=LISTS)
@example(listed=[(url, []) for url in GUESTS])
@example(listed=[(url, []) for url in POSTGRES])
@example(listed=[("redis://h:6379/0?list=a", []), ("amqp://guest@h2/?queue=b", [])])  # the docs' "list it first"
def test_a_list_of_well_formed_urls_splits_into_them(listed: list[tuple[str, list[str]]]) -> None:
    urls = [url for url, _ in listed]
    assert not split_password(",".join(urls))
    assert parse_url_list(",".join(urls)) == tuple(urls)
    assert parse_url_list(", ".join(urls)) == tuple(urls)


@pytest.fixture(scope="module")
def environ() -> dict[str, str]:
    return {"TASKLENS_HTTP_ADDR": f"127.0.0.1:{free_port()}", "TASKLENS_STATSD_ADDR": "off",
            "QUEUE_PASSWORD": "x"}


# what spoils a list: a piece that is no URL, a space, a control character, one URL too many
SPOILERS = st.sampled_from(["oops", "redis://h:6379/0?list=a b", "redis://h/0?list=\x01", "too many"])


@settings(max_examples=150, deadline=None)
@given(listed=LISTS, spoiler=SPOILERS, at=st.integers(0, 6))
@example(listed=[(f"amqp://guest:{HEAD}%2Cx%3A%2F%2F{TAIL}@127.0.0.1:5672/?queue=a", [f"{HEAD},x://{TAIL}"]),
                 (GUESTS[1], [])], spoiler="oops", at=1)
def test_no_error_about_a_list_shows_a_password(listed: list[tuple[str, list[str]]], spoiler: str, at: int,
                                                 environ: dict[str, str]) -> None:
    urls = [url for url, _ in listed]
    if spoiler == "too many":
        urls = urls * (MAX_ITEMS // len(urls) + 1)
    else:
        urls.insert(min(at, len(urls)), spoiler)
    with pytest.raises(ConfigError) as refused:
        load({"TASKLENS_QUEUES": ",".join(urls)})
    for _, passwords in listed:
        for password in passwords:
            assert_hidden(password, [str(refused.value)])


@settings(max_examples=200, deadline=None)
@given(listed=LISTS)
def test_nothing_that_run_or_check_shows_of_a_list_holds_a_password(listed: list[tuple[str, list[str]]],
                                                                     environ: dict[str, str]) -> None:
    """Accepted or refused for what a broker needs (`queue=`, a known scheme), nothing shows a password."""
    try:
        config, warnings = validate({**environ, "TASKLENS_QUEUES": ",".join(url for url, _ in listed)})
    except ConfigError as exc:
        shown = [str(exc)]
    else:
        shown = warnings + strings(describe(config))
    for _, passwords in listed:
        for password in passwords:
            assert_hidden(password, shown)


# a password with a raw `,x://`, where the text before the comma is no URL by itself (its port would be
# the password's start): one URL or two cannot be told, and the list is refused without showing either half
@settings(max_examples=300, deadline=None)
@given(scheme=SCHEMES, user=st.sampled_from(["", "u", "guest"]), middle=st.text("abc/?#=&:%!é", max_size=6),
       after=st.sampled_from(["x", "redis", "amqp", "nats"]), rest=st.sampled_from(["", "/0?list=a", "/?queue=q"]))
@example(scheme="redis", user="", middle="", after="x", rest="/0?list=jobs")
@example(scheme="amqp", user="u", middle="", after="nats", rest="")
def test_a_raw_comma_in_a_password_is_refused_without_showing_it(scheme: str, user: str, middle: str, after: str,
                                                                 rest: str) -> None:
    text = f"{scheme}://{user}:{HEAD}{middle},{after}://{TAIL}@127.0.0.1:6379{rest}"
    with pytest.raises(ConfigError) as refused:
        load({"TASKLENS_QUEUES": text})
    assert "%2C" in str(refused.value) or "not a valid URL" in str(refused.value), str(refused.value)
    assert_hidden(HEAD + middle + "," + after + "://" + TAIL, [str(refused.value)])


def test_a_password_that_reads_as_a_port_before_a_comma_is_a_list() -> None:
    """The one text the rule reads as a list though a person may mean one URL: a password that starts
    with a port's digits and holds a raw `,x://`. Two URLs that read as written are two URLs; the
    docs ask for every `,` of a password to be percent-encoded."""
    assert parse_url_list("redis://u:12/x,y://ss@h") == ("redis://u:12/x", "y://ss@h")
    assert parse_url_list("redis://h:6379/0?list=a,amqp://guest@h2/?queue=b") == (
        "redis://h:6379/0?list=a", "amqp://guest@h2/?queue=b")
    # no host before the comma: no URL by itself
    for text in ("redis://:12/x,y://ss@h", "https://@/:pa,nats://ss@h", "amqp://u:pa,x://ss@h"):
        assert split_password(text), text
        with pytest.raises(ValueError, match="%2C"):
            parse_url_list(text)


def test_a_raw_comma_after_a_user_info_with_a_raw_slash_is_refused_and_masked() -> None:
    """A diff review's and the property test's find: read as a list, `amqp://guest/:Qv7Wj` (host `guest`,
    path `/:Qv7Wj`) showed the password's start in the error about it. A `:` after the host, or no host
    name, makes the text before the comma the start of a password, refused and masked as before."""
    from agent.config import ConfigError, load

    for user in ("guest/", "=/", "%/", "g?x", "g#x"):
        value = f"amqp://{user}:Qv7Wj,x://Xk9Zb@127.0.0.1:5672/?queue=q1"
        try:
            load({"TASKLENS_QUEUES": value})
            raise AssertionError(f"{value} taken")
        except ConfigError as exc:
            assert "Qv7Wj" not in str(exc) and "Xk9Zb" not in str(exc), str(exc)


def test_a_colon_after_the_host_then_a_bare_user_name_is_refused_in_that_order_only() -> None:
    """`?list=jobs:high` reads like a password's start after a raw `?` in a user info (`amqp://g?x:pa`):
    followed by a URL whose user name has no password, the two may be one URL, and are refused (masked);
    listed the other way round, or with the user's password, they are a list."""
    from agent.config import ConfigError, load

    first, token = "redis://cache:6379/0?list=jobs:high", "nats://tok3n@nats:4222?stream=S&consumer=c"
    try:
        load({"TASKLENS_QUEUES": f"{first},{token}"})
        raise AssertionError("taken")
    except ConfigError as exc:
        assert "tok3n" not in str(exc) and "list the URL with the user name first" in str(exc), str(exc)
    assert load({"TASKLENS_QUEUES": f"{token},{first}"}).queues == (token, first)
