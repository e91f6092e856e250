"""A password a queue URL takes from the environment (`password_env=NAME`) is masked wherever it occurs,
as one written in the URL is: in `tasklens check`, `/status`, the log and errors.

The outside tester's: `RABBIT_PASSWORD=Zq9secretX TASKLENS_QUEUES='amqp://Zq9secretX@127.0.0.1:5672/
?queue=rr_orders&password_env=RABBIT_PASSWORD' tasklens check` printed the URL with `Zq9secretX` in
clear, and so did `/status` and the poll failure's warning (`QueueURL.masked` masked only the URL's own
passwords); with `RP=Hx7pwLong` and `?queue=qHx7pwLong&password_env=RP` the queue was shown as
`qHx7pwLong` (inline, `q***`). An SQS URL took the injected password into its queue's name.

Secrets are drawn from letters, digits, the characters URLs treat apart (`/ ? # @ : = & % , +`, space)
and unicode, 1 to 24 characters, and placed as the user name, in a path, in a query value or only in a
broker's error text, for every scheme; the URL carries them percent-encoded, the variable as they are.
A secret of fewer than SHORT_SECRET characters is masked where it stands as a word (docs/queues.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import string
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote, unquote, unquote_plus, urlunsplit

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from tests.support import TASKLENS, Sidecar, clean_env, free_port, wait_until
from tests.test_urlmask import strings

from agent.cli import validate
from agent.config import ConfigError, describe
from agent.hub import Hub
from agent.identity import Identity
from agent.redact import Redactor, config_secrets
from agent.urlmask import SHORT_SECRET, mask_url, url_passwords
from integrations.queues import describe_url
from integrations.queues.base import Reading
from integrations.queues.source import queue_sources

VARIABLE = "TL_QUEUE_SECRET"
ALPHABET = string.ascii_letters + string.digits + "-._~!*'()+=:@/?#&%, $;é€"
SECRETS = st.text(ALPHABET, min_size=1, max_size=24)
CLOSED = free_port()  # nothing listens there: a poll fails at once
NEUTRAL = "Nn8Mm8Kk8"  # the baseline's secret: what the output holds besides it

# scheme -> placement -> the URL with `{}` where the secret goes (percent-encoded). A query value holds
# it inside a word (`q{}x`) when it is long, as the value when short (inside a word a short one is left)
POSTGRES_QUERY = "query=SELECT%201%20AS%20depth"
TEMPLATES: dict[str, dict[str, str]] = {
    "sqs": {"user": "sqs://{}@orders?region=eu-west-1",
            "path": f"sqs://sqs.eu-west-1.amazonaws.com/123456789012/{{}}?endpoint=http://127.0.0.1:{CLOSED}",
            "query": f"sqs://orders?region=eu-west-1&endpoint=http://127.0.0.1:{CLOSED}/{{}}",
            "error": f"sqs://orders?region=eu-west-1&endpoint=http://127.0.0.1:{CLOSED}"},
    "amqp": {"user": "amqp://{}@127.0.0.1:5672/?queue=orders",
             "path": "amqp://guest@127.0.0.1:5672/{}?queue=orders",
             "query": "amqp://guest@127.0.0.1:5672/?queue=Q",
             "error": "amqp://guest@127.0.0.1:5672/?queue=orders"},
    "redis": {"user": "redis://{}@127.0.0.1:6379/0?list=jobs",
              "query": "redis://127.0.0.1:6379/0?stream=orders&group=Q",
              "error": "redis://worker@127.0.0.1:6379/0?list=jobs"},
    "nats": {"user": "nats://{}@127.0.0.1:4222?stream=ORDERS&consumer=c",
             "path": "nats://worker@127.0.0.1:4222/{}?stream=ORDERS&consumer=c",
             "query": "nats://worker@127.0.0.1:4222?stream=ORDERS&consumer=Q",
             "error": "nats://worker@127.0.0.1:4222?stream=ORDERS&consumer=c"},
    "beanstalk": {"user": f"beanstalk://{{}}@127.0.0.1:{CLOSED}/emails",
                  "path": f"beanstalk://127.0.0.1:{CLOSED}/{{}}",
                  "error": f"beanstalk://127.0.0.1:{CLOSED}/emails"},
    "postgresql": {"user": f"postgresql://{{}}@127.0.0.1:5432/app?{POSTGRES_QUERY}",
                   "path": f"postgresql://app@127.0.0.1:5432/{{}}?{POSTGRES_QUERY}",
                   "query": f"postgresql://app@127.0.0.1:5432/app?{POSTGRES_QUERY}&application_name=Q",
                   "error": f"postgresql://app@127.0.0.1:5432/app?{POSTGRES_QUERY}"},
}
SAME = {"amqps": "amqp", "rediss": "redis", "beanstalkd": "beanstalk", "postgres": "postgresql"}
SCHEMES = sorted([*TEMPLATES, *SAME])
CASES = [(scheme, where) for scheme in SCHEMES for where in TEMPLATES[SAME.get(scheme, scheme)]]


def template(scheme: str, where: str, secret: str) -> str:
    """The URL of the case with `{}` for the secret (percent-encoded), `name=` and `password_env=`."""
    url = TEMPLATES[SAME.get(scheme, scheme)][where]
    url = scheme + url[url.find("://"):]
    url = url.replace("=Q", "=q{}x" if len(secret) >= SHORT_SECRET else "={}")
    return url + ("&" if "?" in url else "?") + f"name=tlq&password_env={VARIABLE}"


class EchoingProbe:
    """A client that fails quoting what it was given: the URL it connects to (the password in it,
    percent-encoded), decoded, and the password as a repr, JSON and percent-encoded."""

    def __init__(self, client_url: str, secret: str) -> None:
        self.text = (f"cannot connect to {client_url} ({unquote(client_url)}): user {secret!r} refused, "
                     f"{json.dumps({'password': secret})}, {quote(secret, safe='')}")

    async def read(self) -> Reading:
        raise ConnectionError(self.text)

    async def close(self) -> None:
        pass


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def shown_by_run_and_check(url: str, secret: str) -> tuple[list[str], list[str]]:
    """(every text `check` and `run` show of the URL, the URLs among them: check's and /status's), with
    the secret in the variable `password_env=` names: the refusal, or the configuration, the queue's
    description, its `/status` and log line after a client error quoting the secret, and a sink's error
    masked with the configuration's secrets."""
    environ = {"TASKLENS_HTTP_ADDR": "127.0.0.1:0", "TASKLENS_STATSD_ADDR": "off", "TASKLENS_QUEUES": url,
               VARIABLE: secret}
    lines = Lines()
    logger = logging.getLogger("tasklens")
    logger.addHandler(lines)
    try:
        with mock.patch.dict(os.environ, {VARIABLE: secret}):  # the queue URLs are resolved from os.environ
            try:
                config, warnings = validate(environ)
            except ConfigError as exc:
                return [mask_url(url), str(exc)], []
            described = [describe_url(u, config) for u in config.queues]
            shown = [mask_url(url), *warnings, *strings(describe(config)), *strings(described)]
            urls = [d["url"] for d in described]
            for source in queue_sources(config, Hub(Identity(service="check"))):
                source.probe = EchoingProbe(urlunsplit(source.url.parts), secret)
                assert not asyncio.run(source.poll())
                shown += strings(source.status())
                urls.append(source.status()["url"])
            redact = Redactor(config_secrets(config, environ))
            shown.append(redact.remote_text(f"http_400: {secret!r} {quote(secret, safe='')}"))
    finally:
        logger.removeHandler(lines)
    return [*shown, *lines.lines], urls


def forms(text: str) -> set[str]:
    """The text and what it reads as once percent-decoded, up to three times, in lower case."""
    found = {text}
    for _ in range(3):
        found |= {decode(f) for f in found for decode in (unquote, unquote_plus)}
    return {f.lower() for f in found}


def found(secret: str, texts: list[str]) -> list[str]:
    """The texts that show the secret: anywhere, or for a short one where it stands as a word."""
    pattern = re.escape(secret.lower())
    if len(secret) < SHORT_SECRET:
        pattern = rf"(?<!\w){pattern}(?!\w)"
    return [text for text in texts if any(re.search(pattern, form) for form in forms(text))]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(case=st.sampled_from(CASES), secret=SECRETS)
# the outside tester's two
@example(case=("amqp", "user"), secret="Zq9secretX")
@example(case=("amqp", "query"), secret="Hx7pwLong")
@example(case=("nats", "user"), secret="tok")  # a short one where it stands as a word
@example(case=("postgresql", "error"), secret="p/w?#@x é")
@example(case=("sqs", "query"), secret="@")  # refused for its endpoint first
def test_a_password_from_password_env_is_never_shown_and_the_rest_of_the_url_is(case: tuple[str, str],
                                                                                 secret: str) -> None:
    scheme, where = case
    url = template(scheme, where, secret)
    placed = url.format("" if where == "error" else quote(secret, safe=""))
    # the secret is masked, not also a word of the output around it (`queue`, `127`, `tlq`)
    baseline, _ = shown_by_run_and_check(url.format("" if where == "error" else NEUTRAL), NEUTRAL)
    assume(not found(secret, baseline) and not found(secret, [url.format("")]))
    shown, urls = shown_by_run_and_check(placed, secret)
    assert not found(secret, shown), (secret, placed)
    expected = url.format("" if where == "error" else "***")
    # a `@` or `:` decoded reads as the end of a user info or a password's start (`%3A0` as a password
    # `0`): the rest is masked more than it needs (as with an inline password), unreadable beats leaked
    readable = not set(secret) & set("@:")
    if not urls:  # refused, naming the URL masked: SQS takes no password, a client refuses a name
        # (a decoded `@` or `:` in SQS's endpoint value is refused first, as a URL not valid as written)
        assert scheme != "sqs" or not readable or "an SQS URL takes no user name or password" in shown[1], shown
        assert not readable or expected in shown[1], shown
        return
    assert scheme != "sqs"
    assert len(urls) == 2 and all(u == expected for u in urls if readable), (urls, expected)
    assert not readable or any(expected in line and "poll failed" in line for line in shown), shown


def test_url_passwords_and_mask_url_look_the_variable_up() -> None:
    url = f"amqp://Zq9secretX@127.0.0.1:5672/?queue=rr_orders&password_env={VARIABLE}"
    assert url_passwords(url, {}) == []
    assert "Zq9secretX" in url_passwords(url, {VARIABLE: "Zq9secretX"})
    assert mask_url(url, {VARIABLE: "Zq9secretX"}) == f"amqp://***@127.0.0.1:5672/?queue=rr_orders&password_env={VARIABLE}"
    assert mask_url(url, {VARIABLE: "other"}) == url  # a user name that is not the password is shown
    assert mask_url(f"amqp://u@h/?queue=qHx7pwLong&password_env={VARIABLE}", {VARIABLE: "Hx7pwLong"}) == (
        f"amqp://u@h/?queue=q***&password_env={VARIABLE}")
    # a short one only where it stands as a word, as in the URL itself
    assert mask_url(f"nats://u@h?stream=S&consumer=cu&password_env={VARIABLE}", {VARIABLE: "u"}) == (
        f"nats://***@h?stream=S&consumer=cu&password_env={VARIABLE}")


# --- the real thing: `tasklens run` (its /status and log) and `tasklens check` as processes -------------

SIDECAR_SECRETS = st.text(ALPHABET.replace("@", "").replace(":", ""), min_size=8, max_size=24).filter(
    lambda s: any(c.isalpha() for c in s) and any(c.isdigit() for c in s))  # no number nor word of the output


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("password_env")


def status_of_queue(sidecar: Sidecar) -> dict[str, Any] | None:
    code, body = sidecar.get("/status")
    if code != 200:
        return None
    entry: dict[str, Any] | None = json.loads(body)["components"].get("queue:tlq")
    return entry if entry and entry.get("last_error") else None


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from([c for c in CASES if c[0] not in ("sqs", "amqps", "rediss") and c[1] != "error"]),
       secret=SIDECAR_SECRETS)
@example(case=("amqp", "user"), secret="Zq9secretX")
@example(case=("amqp", "query"), secret="Hx7pwLong")
@example(case=("postgresql", "user"), secret="Pg7 role/é")  # PostgreSQL's own error quotes the role
def test_a_running_sidecar_and_check_never_show_a_password_from_password_env(workdir: Path, case: tuple[str, str],
                                                                             secret: str) -> None:
    scheme, where = case
    url = template(scheme, where, secret)
    placed, expected = url.format(quote(secret, safe="")), url.format("***")
    env = {"TASKLENS_QUEUES": placed, VARIABLE: secret, "TASKLENS_QUEUE_POLL_INTERVAL": "0.5"}
    check = subprocess.run([TASKLENS, "check"], env=clean_env(**env), capture_output=True, text=True, timeout=60)
    if check.returncode == 2:  # refused (a name the client refuses): the error names the URL masked
        assert f"TASKLENS_QUEUES: {expected}: " in check.stderr and not found(secret, [check.stderr]), check.stderr
        return
    assert check.returncode in (0, 1), check.stderr  # 1: no ECS metadata
    queues = json.loads(check.stdout)["queues"]
    assert [q["url"] for q in queues] == [expected]
    sidecar = Sidecar(workdir, **env)
    try:
        sidecar.wait_ready()
        wait_until(lambda: status_of_queue(sidecar) is not None, what="a failed poll in /status")
        _, status = sidecar.get("/status")
    finally:
        sidecar.stop()
    entry = json.loads(status)["components"]["queue:tlq"]
    assert entry["url"] == expected
    assert f"({expected}): poll failed" in sidecar.log
    assert not found(secret, [check.stdout, check.stderr, status, sidecar.log]), (secret, entry)
