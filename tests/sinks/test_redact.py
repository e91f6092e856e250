"""The redactor masks a secret in every form the sidecar sends it, whatever the user and password."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from urllib.parse import quote, quote_plus

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import Config
from agent.redact import Redactor, basic_auth, config_secrets

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def forms(user: str, password: str) -> list[str]:
    """What can reach a server, and come back in its error text."""
    return [password, quote(password, safe=""), quote_plus(password), json.dumps(password)[1:-1],
            json.dumps(password, ensure_ascii=False)[1:-1],
            b64(f"{user}:{password}"), b64(f"{user}:{password}").rstrip("="), b64(password),
            f"Basic {b64(f'{user}:{password}')}"]


def assert_masked(redactor: Redactor, form: str) -> None:
    if not form.strip("*"):
        return  # a password of stars is masked by stars
    text = f"denied: auth header was {form} (check the token)"
    assert form not in redactor.mask(text), (form, redactor.mask(text))


@settings(max_examples=300, deadline=None)
@given(TEXT, TEXT.filter(bool))
def test_every_form_of_a_basic_auth_pair_is_masked(user: str, password: str) -> None:
    for config in (replace(Config(), pyroscope_user=user, pyroscope_password=password),
                   replace(Config(), remote_write_username=user, remote_write_password=password)):
        redactor = Redactor(config_secrets(config, environ={}))
        for form in forms(user, password):
            assert_masked(redactor, form)


@settings(max_examples=200, deadline=None)
@given(TEXT, TEXT.filter(bool))
def test_credentials_in_a_url_are_masked_in_every_form(user: str, password: str) -> None:
    url = f"https://{quote(user, safe='')}:{quote(password, safe='')}@pyroscope.example.net"
    redactor = Redactor(config_secrets(replace(Config(), pyroscope_url=url), environ={}))
    for form in forms(user, password) + [quote(user, safe="") + ":" + quote(password, safe="")]:
        assert_masked(redactor, form)
    # remote_write sends a URL's user and password as written (percent-encoded): masked too
    raw = f"{quote(user, safe='')}:{quote(password, safe='')}"
    assert_masked(Redactor(config_secrets(replace(Config(), remote_write_url=url), environ={})), b64(raw))


def test_the_testers_case() -> None:
    config = replace(Config(), pyroscope_user="user", pyroscope_password="s3cr3t-Pyro-Pass!")
    body = b"401 Unauthorized: auth header was Basic dXNlcjpzM2NyM3QtUHlyby1QYXNzIQ=="
    assert Redactor(config_secrets(config, environ={})).remote_text(body) == "401 Unauthorized: auth header was Basic ***"
    assert basic_auth("user", "s3cr3t-Pyro-Pass!") == "Basic dXNlcjpzM2NyM3QtUHlyby1QYXNzIQ=="


SECRET = st.text("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=8, max_size=40)
FILLER = st.text("abc xyz:\n\t", max_size=30)


@settings(max_examples=300, deadline=None)
@given(SECRET, st.lists(st.one_of(st.just(None), FILLER), max_size=40), st.integers(0, 2000))
def test_a_text_cut_inside_a_secret_shows_at_most_its_first_characters(secret: str, pieces: list[str | None],
                                                                       cut: int) -> None:
    """A store's error text is read up to a bound (push.BODY_BYTES), which may fall inside a copy of the
    secret it echoes; copies before it mask to `***` and line breaks to a space, which brought the piece at
    the cut into the 200 characters shown (an outside tester: `http_400: Bearer *** ... Bearer SECRETtok`).
    However the text is made and cut, no 4 characters of the secret are shown."""
    text = "".join(secret if p is None else p for p in pieces) + secret
    shown = Redactor([secret]).remote_text(text[:cut].encode())
    assert not any(secret[i:i + 4] in shown for i in range(len(secret) - 3)), shown
