"""A NATS user name is a token only when nothing gives it a password, and a short secret is masked where it
stands as a word, not inside other words.

The outside tester's: `nats://worker@h?...&password_env=X` showed `nats://***@h` (amqp:// and redis://
show `worker@`); with a token `u`, `mask_url` gave `cons***mer=c` and `/status` read
`nats: 'A***thorization Violation'`.
"""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.urlmask import SHORT_SECRET, mask_secrets, mask_text, mask_url, url_passwords
from integrations.queues.base import mask_secret, parse_queue_url
from integrations.queues.nats import BROKER

USERS = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~", min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(user=USERS, scheme=st.sampled_from(["nats", "amqp", "redis"]))
@example(user="worker", scheme="nats")
@example(user="u", scheme="nats")
def test_a_user_name_whose_password_comes_from_password_env_is_shown_and_no_secret(user: str, scheme: str) -> None:
    url = f"{scheme}://{user}@127.0.0.1:4222/?stream=S&consumer=c&password_env=X"
    assert mask_url(url) == url
    assert url_passwords(url) == []


@settings(max_examples=200, deadline=None)
@given(token=USERS)
@example(token="u")
@example(token="worker")
def test_a_bare_nats_user_name_is_a_token_masked_as_the_user_info(token: str) -> None:
    url = f"nats://{token}@127.0.0.1:4222?stream=S&consumer=c"
    shown = mask_url(url)
    assert shown.startswith("nats://***@") and token in url_passwords(url)
    # a short one is masked only where it stands as a word: the host's `0` is one, `consumer` is none
    words = set(re.split(r"\W+", url.lower().partition("@")[2]))
    if len(token) < SHORT_SECRET and token.lower() not in words:
        assert shown == "nats://***@127.0.0.1:4222?stream=S&consumer=c"


WORDS = st.text("abcuxyzABCU019_", min_size=1, max_size=8)
SEPARATORS = st.sampled_from([" ", ", ", "'", ": ", "/", "@", "=", "&", "(", ")", "\n", "%3A", "%40"])


@settings(max_examples=500, deadline=None)
@given(secret=st.text("abcuxyzU01", min_size=1, max_size=SHORT_SECRET - 1),
       words=st.lists(st.tuples(WORDS, SEPARATORS), min_size=1, max_size=10))
@example(secret="u", words=[("nats", ": "), ("'Authorization", " "), ("Violation'", ", "), ("consumer", "="),
                            ("c", " "), ("u", "@")])
def test_a_short_secret_is_masked_as_a_word_and_not_inside_one(secret: str, words: list[tuple[str, str]]) -> None:
    text = "".join(word + sep for word, sep in words)
    expected = "".join(("***" if word.lower() == secret.lower() else word) + sep for word, sep in words)
    assert mask_secrets(text, [secret]) == expected


def test_a_short_secret_after_an_escape_is_masked() -> None:
    """An escape ends in a letter or digit (`%3A`, `\\n`, `\\x0a`, `\\u00e9`): the secret after it is no part
    of a word."""
    for before in ("%3A", "%253A", "%25253A", "\\n", "\\x0a", "\\u00e9", "\\U0001f600"):
        assert mask_secrets(f"{before}ab%40", ["ab"]) == f"{before}***%40", before
    assert mask_url("amqp://h/?queue=q&management=http%3A%2F%2Fg%3Aab%40h") == (
        "amqp://h/?queue=q&management=http%3A%2F%2Fg%3A***%40h")


def test_a_longer_secret_is_masked_wherever_it_occurs() -> None:
    assert mask_secrets("coworkers, worker", ["work"]) == "co***ers, ***er"


def test_a_password_from_password_env_is_the_secret_not_the_user_name() -> None:
    url = parse_queue_url("nats://u@h?stream=S&consumer=c&password_env=P", BROKER.params, environ={"P": "pw9"})
    assert url.secrets == ["pw9"]
    assert mask_secret("user u refused: 'pw9'", url) == "user u refused: '***'"


@settings(max_examples=300, deadline=None)
@given(user=st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~", min_size=4, max_size=12),
       extra=st.lists(st.tuples(st.sampled_from(["creds", "key", "token", "password", "name", "x", "auth_key"]),
                                st.text("/._", min_size=4, max_size=12)),  # a secret nowhere else in the URL
                      max_size=3),
       sep=st.sampled_from(["&", ";"]), with_password=st.booleans())
@example(user="s3cr3tTok", extra=[("creds", "/etc/nats/user.creds")], sep="&", with_password=False)
@example(user="s3cr3tTok", extra=[("name", "orders"), ("key", "1")], sep=";", with_password=False)
def test_a_nats_user_name_sent_as_a_token_is_never_shown_whatever_the_query_holds(
        user: str, extra: list[tuple[str, str]], sep: str, with_password: bool) -> None:
    """What `connect_options` sends as a token (a user name without a password, whatever the query holds)
    is masked; a user with a password is shown (a diff review: `&creds=...` or `;key=1` in the query made
    the token a plain user name, shown in `check`, config errors and `/status`)."""
    from urllib.parse import urlsplit

    from integrations.queues.base import QueueURL
    from integrations.queues.nats import connect_options

    userinfo = f"{user}:pw" if with_password else user
    query = "stream=S&consumer=c" + "".join(f"{sep}{k}={v}" for k, v in extra)
    url = f"nats://{userinfo}@127.0.0.1:4222?{query}"
    sent = connect_options(QueueURL(url, urlsplit(url)))  # (the parts it reads: no check of the parameters)
    assert ("token" in sent) == (not with_password)
    if "token" in sent:
        assert user not in mask_url(url) and user in url_passwords(url)
    elif not any(v.lower() in user.lower() for _, v in extra):  # (else masked as that value's secret)
        assert mask_url(url).startswith(f"nats://{user}:***@")


TOKEN = st.text("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=8, max_size=40)
CUT_FORMS = ["'X-Amz-Security-Token': b'{}'", '"token": "{}"', "password='{}'", "<SessionToken>{}</SessionToken>",
             "Authorization: Bearer {}", "error: Bearer {} (refused)", "api_key={}&x=1"]


@settings(max_examples=300, deadline=None)
@given(token=TOKEN, form=st.sampled_from(CUT_FORMS), cut=st.integers(0, 120), before=st.text("ab :\n", max_size=8))
@example(token="SECRETTOKEN123", form='"token": "{}"', cut=16, before="")
@example(token="SECRETTOKEN123", form="error: Bearer {} (refused)", cut=100, before="")
def test_a_text_cut_inside_a_secret_shows_none_of_it(token: str, form: str, cut: int, before: str) -> None:
    """A text cut to a bound (a store's error body, an ECS error) may end inside a quoted value or an element
    whose closing quote or tag is gone, which the rules did not read as a value: its start was shown. And a
    bearer token a store echoes without the header's name was shown whole. No 4 characters of it now."""
    text = (before + form.format(token))[:cut]
    shown = mask_text(text)
    assert not any(token[i:i + 4] in shown for i in range(len(token) - 3)), shown
