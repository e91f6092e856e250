"""No password of a queue URL is ever shown, whatever characters it holds and however it is written.

Passwords (and user names) are drawn from the characters that break URL parsing (`/ ? # @ : = & % ,`,
space, `+`), unicode, and percent-encoded pieces, written raw or percent-encoded, in the URL itself
or in a `management=` URL (raw, encoded once, encoded twice). Each URL goes through what `run` and
`check` do with it: the configuration's validation, the queue source's construction, its `/status`
and log line after a client error quoting the URL, `check`'s description, `mask_url`, and the errors
of `parse_queue_url`. Not the password, nor its distinctive start or end, may appear in any of it,
as written, percent-encoded or decoded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any
from urllib.parse import quote, unquote, unquote_plus

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tests.support import free_port

from agent.cli import validate
from agent.config import ConfigError, describe, load, parse_url_list
from agent.hub import Hub
from agent.identity import Identity
from agent.urlmask import mask_query_secrets, mask_secrets, mask_url, split_password, url_passwords
from integrations.queues import describe_url, parse
from integrations.queues.base import Reading, parse_queue_url
from integrations.queues.source import queue_sources

HEAD, TAIL = "Qv7Wj", "Xk9Zb"  # a password's start and end: no user name, host or parameter holds them

PIECES = st.one_of(
    st.sampled_from(list("/?#@:=&%, +;~!*'()[]$\\\"")),
    st.sampled_from(["%2F", "%40", "%3A", "%25", "%2C", "%3D", "%26", "%20", "%C3%A9", "%zz", "%"]),
    # what reads as the start of another URL (a list's, a parameter's)
    st.sampled_from([",x://", "=x://", " x://", ",nats://", "=http://", ",redis://u:", "@h,y://"]),
    st.characters(codec="utf-8", exclude_categories=("Cs",)),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=4),
)
PASSWORDS = st.lists(PIECES, min_size=1, max_size=12).map(lambda p: HEAD + "".join(p) + TAIL)
USERS = st.lists(st.one_of(st.sampled_from(list("=&:@/%?# ")), st.text("guestmn", min_size=1, max_size=3)),
                 max_size=4).map("".join)
ENCODINGS = st.sampled_from(["raw", "encoded"])


def userinfo(user: str, password: str, encoding: str) -> str:
    return f"{user}:{password}" if encoding == "raw" else f"{quote(user, safe='')}:{quote(password, safe='')}"


@st.composite
def queue_urls(draw: Any) -> tuple[str, str]:
    """(a TASKLENS_QUEUES value, the password it carries)."""
    password, user, encoding = draw(PASSWORDS), draw(USERS), draw(ENCODINGS)
    where = draw(st.sampled_from(["amqp", "redis", "management", "management_encoded", "management_twice"]))
    if where == "amqp":
        return f"amqp://{userinfo(user, password, encoding)}@127.0.0.1:5672/?queue=q1", password
    if where == "redis":
        return f"redis://{userinfo(user, password, encoding)}@127.0.0.1:6379/9?list=x", password
    management = f"http://{userinfo(user, password, encoding)}@127.0.0.1:15672"
    if where == "management_encoded":
        management = quote(management, safe="")
    elif where == "management_twice":
        management = quote(quote(management, safe=""), safe="")
    return f"amqp://guest:guest@127.0.0.1:5672/?queue=q1&management={management}", password


def shown_forms(text: str) -> set[str]:
    """The text and what it reads as once percent-decoded, up to three times."""
    forms = {text}
    for _ in range(3):
        forms |= {decode(f) for f in forms for decode in (unquote, unquote_plus)}
    return forms


def assert_hidden(password: str, texts: list[str]) -> None:
    for text in texts:
        for form in shown_forms(text):
            for secret in (password, HEAD, TAIL):
                assert secret not in form, f"{secret!r} shown in {text!r}"


def strings(value: Any) -> list[str]:
    """Every string in a describe()/status() answer (not its repr: that would escape the password)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings(k) + strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in strings(v)]
    return [str(value)]


class EchoingProbe:
    """A client that fails quoting its URL, raw and decoded, as some client libraries do."""

    def __init__(self, raw: str) -> None:
        self.raw = raw

    async def read(self) -> Reading:
        raise ConnectionError(f"cannot connect to {self.raw} ({unquote(self.raw)}, {unquote(unquote(self.raw))})")

    async def close(self) -> None:
        pass


def shown_by_run_and_check(url: str, environ: dict[str, str], caplog: pytest.LogCaptureFixture) -> list[str]:
    """What `run` and `check` show of one TASKLENS_QUEUES value: an error, or the configuration, the
    queues' descriptions, and each source's log line and `/status` after a client error."""
    shown = [mask_url(url)]
    try:
        config, warnings = validate({**environ, "TASKLENS_QUEUES": url})
    except ConfigError as exc:
        return [*shown, str(exc)]
    shown += warnings + strings(describe(config)) + strings([describe_url(u, config) for u in config.queues])
    caplog.clear()
    for source in queue_sources(config, Hub(Identity(service="check"))):
        source.probe = EchoingProbe(source.url.raw)
        assert not asyncio.run(source.poll())
        shown += strings(source.status())
    return [*shown, caplog.text]


@pytest.fixture(scope="module")
def environ() -> dict[str, str]:
    return {"TASKLENS_HTTP_ADDR": f"127.0.0.1:{free_port()}", "TASKLENS_STATSD_ADDR": "off"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=queue_urls())
# the outside tester's three: a percent-encoded management URL, `=` in a user name, `/` in a password
@example(case=("amqp://guest:guest@127.0.0.1:5672/?queue=q1&management=http%3A%2F%2Fguest%3AQv7WjMgmtXk9Zb"
               "%40127.0.0.1%3A15672", "Qv7WjMgmtXk9Zb"))
@example(case=("redis://us=er:Qv7WjEqXk9Zb@127.0.0.1:6379/9?list=x", "Qv7WjEqXk9Zb"))
@example(case=("amqp://u:Qv7Wj/Xk9Zb@127.0.0.1:5672/?queue=x", "Qv7Wj/Xk9Zb"))
# `,x://` and `=x://` in a password read as a second URL, whose user info is the password's end
@example(case=("redis://:Qv7Wj,x://Xk9Zb@127.0.0.1:6379/9?list=x", "Qv7Wj,x://Xk9Zb"))
@example(case=("amqp://u:Qv7Wj=x://Xk9Zb@127.0.0.1:5672/?queue=x", "Qv7Wj=x://Xk9Zb"))
# a user `=@/` leaves no host after the user info that reads: the password spans the next URL
@example(case=("amqp://=@/:Qv7Wj,nats://Xk9Zb@127.0.0.1:5672/?queue=q1", "Qv7Wj,nats://Xk9Zb"))
def test_no_password_is_shown_by_run_or_check(case: tuple[str, str], environ: dict[str, str],
                                               caplog: pytest.LogCaptureFixture) -> None:
    url, password = case
    caplog.set_level(logging.INFO)
    assert_hidden(password, shown_by_run_and_check(url, environ, caplog))


@settings(max_examples=300, deadline=None)
@given(case=queue_urls())
def test_no_password_is_in_a_parse_error(case: tuple[str, str]) -> None:
    url, password = case
    for params, pass_through in ((frozenset(), False), (frozenset({"queue", "list"}), False), (frozenset(), True)):
        try:
            parse_queue_url(url, params, pass_through)
        except ValueError as exc:
            assert_hidden(password, [str(exc)])
    try:
        parse(url)
    except ValueError as exc:
        assert_hidden(password, [str(exc)])


def test_a_password_is_masked_in_any_encoding() -> None:
    assert mask_secrets("a/b a%2Fb a%252fb %61/b A/B", ["a/b"]) == "*** *** *** *** ***"
    assert mask_secrets("p w, p+w, p%20w", ["p w"]) == "***, ***, ***"
    assert url_passwords("amqp://u:Sec/ret@h/?queue=x") == ["Sec/ret"]
    # a store's credential in the query: `?token=` (a remote_write or OTLP URL), `api_key`, a signature
    for param in ("token", "access_token", "api_key", "apikey", "client_secret", "X-Amz-Signature"):
        assert url_passwords(f"https://h/api/v1/write?x=1&{param}=T0k%2Fn") == ["T0k%2Fn", "T0k/n"], param
    assert url_passwords("redis://h/0?list=jobs&password_env=REDIS_PASSWORD") == []
    assert "MgmtS3cret" in url_passwords("amqp://h/?queue=q&management=http%3A%2F%2Fg%3AMgmtS3cret%40h")


def written(data: st.DataObject, c: str, depth: int) -> str:
    """`c` as a secret may be written: literally (as a repr or JSON shows it, a space also as `+`), or
    percent-encoded, each character of its encoding written the same way one level less deep, each to
    a depth of its own."""
    level = data.draw(st.integers(0, depth))
    if level == 0:
        shown = [c, repr(c)[1:-1], ascii(c)[1:-1], json.dumps(c)[1:-1], *(["+"] if c == " " else [])]
        form = data.draw(st.sampled_from(shown))
        return form.lower() if c in "ABCDEF" and data.draw(st.booleans()) else form  # `%2f` as `%2F`
    return "".join(written(data, e, level - 1) for byte in c.encode("utf-8", "surrogatepass")
                   for e in f"%{byte:02X}")


@settings(max_examples=300, deadline=None)
@given(secret=st.text(st.characters(codec="utf-8", exclude_characters="#"), min_size=1, max_size=12),
       data=st.data())
@example(secret="a/b", data=None)  # type: ignore[arg-type]  # data is not used by this example's form
def test_a_secret_written_in_any_encoding_up_to_three_levels_deep_is_masked_whole(
        secret: str, data: st.DataObject | None) -> None:
    """Each character of the secret encoded to its own depth, literal ones as a repr or JSON shows them:
    the whole form is masked, and nothing beside it."""
    form = "".join(written(data, c, 3) for c in secret) if data else "%61%252Fb"
    assert mask_secrets(f"# {form} #", [secret]) == "# *** #", form


def test_a_url_that_does_not_read_as_written_shows_no_password_nor_port() -> None:
    assert mask_url("amqp://u:Sec/ret@127.0.0.1:5672/?queue=x") == "amqp://u:***@127.0.0.1:5672/?queue=x"
    assert mask_url("amqp://u:Sec#ret@h/?queue=x") == "amqp://u:***@h/?queue=x"
    assert mask_url("amqp://@:Sec") == "amqp://***@:***"  # the port of an unreadable URL, with user info
    # a password holding `,x://`: masked whole, and refused in a list, which it would split (where the URL
    # before the comma does not read by itself: test_urlmask_lists.py)
    assert mask_url("redis://:pa,x://ss@host") == "redis://:***@host"
    assert mask_url("redis://h:6379/0,redis://u:pw@h2") == "redis://h:6379/0,redis://u:***@h2"
    # a URL whose password is an ECS secret (`password_env=`, as the Terraform modules write it) after
    # one with a port is a URL of the list, not the end of a password
    listed = "redis://cache:6379/0?list=jobs,amqp://worker@mq:5672/prod?queue=orders&password_env=RABBIT_PASSWORD"
    assert mask_url(listed) == listed
    assert parse_url_list(listed) == tuple(listed.split(","))
    # a password of digits and `/` before `,x://` reads as a port and a path: masked whole all the same
    assert mask_url("redis://u:12/x,y://ss@h") == "redis://u:***@h"
    assert mask_url("redis://:12/abc,x://@host") == "redis://:***@host"
    # secrets that overlap (`:pw` of one reading, `pw@h,y://tail` of another) are masked as one
    assert mask_secrets("https://:pw@h,y://tail@h2", [":pw", "pw@h,y://tail"]) == "https://***@h2"
    assert mask_url("amqp://u:Sec") == "amqp://u:***"  # no host: the port may be half a password
    # what reads as written keeps its user name and everything but the password
    assert mask_url("redis://us=er:pw1@h:6379/9?list=x") == "redis://us=er:***@h:6379/9?list=x"
    assert mask_url("amqp://app:s3cret@h/?queue=q&management=http%3A%2F%2Fg%3Ahunter2%40h") == (
        "amqp://app:***@h/?queue=q&management=http%3A%2F%2Fg%3A***%40h")


# Every setting that carries a URL, with a password in any shape: what `check` prints or refuses with,
# what a sink shows of its URL (`/status`, its log lines: mask_url), and a log line in which a client
# quotes the URL (masked with the configuration's secrets). A password may start with digits, so that
# the `:` before it reads as a port (`redis://:40817/a,x://Xk9Zb@h`: a port, a path, then another URL).
URL_SETTINGS = {
    "TASKLENS_QUEUES": "redis://{}@127.0.0.1:6379/9?list=x",
    "DD_DD_URL": "https://{}@127.0.0.1:9",
    "TASKLENS_PYROSCOPE_URL": "http://{}@127.0.0.1:4040",
    "TASKLENS_REMOTE_WRITE_URL": "http://{}@127.0.0.1:9/api/v1/write",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://{}@127.0.0.1:4318",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://{}@127.0.0.1:4318/v1/metrics",
}
PORT_HEAD = "40817"  # digits a port can be
ANY_PASSWORDS = st.builds(lambda head, pieces: head + "".join(pieces) + TAIL,
                          st.sampled_from([HEAD, PORT_HEAD]), st.lists(PIECES, min_size=1, max_size=12))


@settings(max_examples=500, deadline=None)
@given(variable=st.sampled_from(sorted(URL_SETTINGS)), user=USERS, password=ANY_PASSWORDS, encoding=ENCODINGS)
@example(variable="TASKLENS_QUEUES", user="", password="40817/abc,x://Xk9Zb", encoding="raw")
@example(variable="DD_DD_URL", user="u", password="40817/x,y://Xk9Zb", encoding="raw")
@example(variable="DD_DD_URL", user="@/", password="Qv7Wj,nats://Xk9Zb", encoding="raw")  # `https://@/:Qv7Wj,...`
def test_no_password_of_any_url_setting_is_shown(variable: str, user: str, password: str, encoding: str) -> None:
    from agent.redact import Redactor, config_secrets

    url = URL_SETTINGS[variable].format(userinfo(user, password, encoding))
    environ = {variable: url, "TASKLENS_HTTP_ADDR": "127.0.0.1:0", "TASKLENS_STATSD_ADDR": "off",
               "TASKLENS_REMOTE_WRITE_SIGV4": "off"}
    shown = [mask_url(url)]
    try:
        config, warnings = validate(environ)
    except ConfigError as exc:
        shown.append(str(exc))
    else:
        redact = Redactor(config_secrets(config, environ))
        shown += warnings + strings(describe(config)) + [redact.mask(f"cannot connect to {url} ({unquote(url)})")]
    assert_hidden(password, shown)


def test_a_port_out_of_range_is_shown_where_it_cannot_be_a_password() -> None:
    """`http://pyroscope:99999` (no `@` anywhere after it) was shown as `http://pyroscope:***`: the one
    thing wrong hidden, as if it were a password. Digits with no `@` after them are a port; anything
    else in that place may still be half a password and stays masked."""
    assert mask_url("http://pyroscope:99999") == "http://pyroscope:99999"
    assert mask_url("http://pyroscope:99999/ingest?x=1") == "http://pyroscope:99999/ingest?x=1"
    assert mask_url("http://pyroscope:4040x") == "http://pyroscope:***"
    assert mask_url("amqp://u:12345/x@h") == "amqp://u:***@h"
    with pytest.raises(ConfigError, match=r"TASKLENS_PYROSCOPE_URL='http://pyroscope:99999' .*port is not a number"):
        load({"TASKLENS_PYROSCOPE_URL": "http://pyroscope:99999"})


def test_a_list_read_as_one_long_password_is_masked_whole_and_at_once() -> None:
    """URLs with a user name and a port but no password, listed: the text reads as one URL whose
    password spans the list (`_spanning`), a secret of thousands of characters whose pattern took
    minutes to build (fifteen URLs: 137 s of `tasklens check` before its one-line error). Such a text
    is shown as its first scheme and `***`. The list itself is a list: each URL reads by itself
    (`split_password`), and one more than it may hold is refused at once."""
    one = "postgresql://app@127.0.0.1:5432/app?name=q{n}&query=SELECT%20count(*)%20FROM%20jobs"
    listed = ",".join(one.format(n=n) for n in range(100))
    assert not split_password(listed)
    assert mask_url(listed) == "postgresql://***"
    assert len(load({"TASKLENS_QUEUES": listed}).queues) == 100
    with pytest.raises(ConfigError, match=r"^TASKLENS_QUEUES='postgresql://\*\*\*' is invalid: .*at most 100"):
        load({"TASKLENS_QUEUES": listed + "," + one.format(n=100)})
    # a short one is still masked character by character, its user name and host shown
    assert mask_url("redis://:pa,x://ss@host") == "redis://:***@host"


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["password", "token", "api_key", "X-Amz-Signature", "secret"]),
       st.lists(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, blacklist_characters="&#,"),
                        min_size=1, max_size=6), min_size=2, max_size=4).map(" ".join))
def test_a_credential_parameter_with_spaces_is_masked_whole(name: str, value: str) -> None:
    """A refused URL's error quotes its value: a credential in its query with spaces in it (`token=open
    sesame`) is masked whole, not to its first space."""
    assert mask_url(f"https://h.example/api?{name}={value}&x=1") == f"https://h.example/api?{name}=***&x=1"


def test_a_refused_url_with_a_spaced_credential_shows_none_of_it() -> None:
    with pytest.raises(ConfigError) as refused:
        load({"TASKLENS_REMOTE_WRITE_URL": "https://h.example/api?password=abc def ghi"})
    assert "password=***" in str(refused.value) and not {"abc", "def", "ghi"} & set(str(refused.value).split())


@pytest.mark.parametrize("sep", [",", " ", ", "])
def test_a_list_of_urls_with_credential_parameters_is_masked_url_by_url(sep: str) -> None:
    urls = [f"postgresql://app@db{i}/app?password=p{i}secret&sslmode=require" for i in range(50)]
    shown = mask_url(sep.join(urls))
    assert shown == sep.join(u.replace(f"p{i}secret", "***") for i, u in enumerate(urls))


@pytest.mark.parametrize("filler", [" ", ",", ", "])
def test_a_long_credential_value_is_read_in_linear_time(filler: str) -> None:
    """The value's pattern looks past a run of separators once (a lookahead at each character took
    5 s for 32,000 spaces)."""
    from agent.urlmask import _PARAM

    for n in (8_000, 64_000):
        text = "http://h/?token=" + filler * (n // len(filler)) + "x"
        started = time.monotonic()
        assert _PARAM.search(text)
        assert time.monotonic() - started < 0.5


# A credential in a query under any name a store, proxy or signed URL uses: names built from the stems
# (`api-key`, `X-Amz-Security-Token`, Azure's `sig`, `client_secret`, `pwd`, `code`...) in any case, with
# any separator and prefix. Ordinary parameters keep their values.
STEMS = ["key", "token", "secret", "pass", "password", "passwd", "pwd", "auth", "sig", "signature",
         "credential", "session", "code", "apikey", "api_key", "access_key"]
CREDENTIAL_NAMES = st.builds(
    lambda prefix, before, stem, after, case: case("".join((prefix, before, stem, after))),
    st.sampled_from(["", "x-", "X-Amz-", "x_", "client", "private_", "access", "oauth_"]),
    st.sampled_from(["", "api", "security", "session"]).flatmap(
        lambda word: st.sampled_from([word + sep for sep in ("-", "_", "")]) if word else st.just("")),
    st.sampled_from(STEMS),
    st.sampled_from(["", "_id", "-token", "s", "Id"]),
    st.sampled_from([str.lower, str.upper, str.title, lambda s: s]))
QUERY_SECRET = "Zq7QrYsEcx"
ORDINARY = "list=jobs&group=g1&timeout=5&region=eu-west-1"


@settings(max_examples=150, deadline=None)
@given(name=CREDENTIAL_NAMES, encoded=st.booleans())
@example(name="sig", encoded=False)  # an Azure SAS URL (`sv=...&sig=`): the outside reviewer's
@example(name="api-key", encoded=False)
@example(name="X-Amz-Security-Token", encoded=True)
def test_a_credential_parameter_of_any_name_is_masked_and_ordinary_ones_are_kept(name: str, encoded: bool) -> None:
    value = quote(QUERY_SECRET + "/=", safe="") if encoded else QUERY_SECRET
    url = f"https://h.example/api/v1/push?sv=2020&{name}={value}&{ORDINARY}"
    assert mask_url(url) == f"https://h.example/api/v1/push?sv=2020&{name}=***&{ORDINARY}"
    assert QUERY_SECRET in "".join(url_passwords(url))
    line = f"bad request POST /api/v1/push?{ORDINARY}&{name}={value} HTTP/1.1"
    assert mask_query_secrets(line) == f"bad request POST /api/v1/push?{ORDINARY}&{name}=*** HTTP/1.1"


def test_ordinary_parameters_and_a_variable_name_are_kept() -> None:
    for url in (f"redis://h:6379/0?{ORDINARY}", "amqp://worker@mq/prod?queue=orders&password_env=RABBIT_PASSWORD",
                "postgresql://db/app?name=jobs&query=SELECT%201%20AS%20depth&sslmode=require"):
        assert mask_url(url) == url and url_passwords(url) == []
        assert mask_query_secrets(f"GET /x?{url.partition('?')[2]}") == f"GET /x?{url.partition('?')[2]}"


@pytest.mark.parametrize("filler", ["a", "key", "&a", "?key", ";"])
def test_any_parameter_name_is_read_in_linear_time(filler: str) -> None:
    """The name's stems are looked for once per name: a long name, or many, with no `=`."""
    from agent.urlmask import _PARAM, _PARAM_IN_TEXT

    for n in (8_000, 64_000):
        text = "http://h/?" + filler * (n // len(filler))
        started = time.monotonic()
        _PARAM.search(text), _PARAM_IN_TEXT.search(text), mask_url(text)
        assert time.monotonic() - started < 0.5


# A bare token as a URL's user info (`http://<token>@proxy`): no password, so `mask_url` showed it whole,
# and only the configuration section of `check` hid it (config.mask_value's own rule).
TOKENS = st.builds(lambda pieces: HEAD + "".join(pieces) + TAIL,
                   st.lists(st.one_of(st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~", min_size=1, max_size=4),
                                      st.sampled_from(["%2F", "%40", "%3A", "%25", "%C3%A9"])), max_size=6))


@settings(max_examples=60, deadline=None)
@given(variable=st.sampled_from(sorted(URL_SETTINGS)), token=TOKENS, colon=st.booleans())
def test_a_bare_token_of_any_url_setting_is_never_shown(variable: str, token: str, colon: bool) -> None:
    from agent.redact import Redactor, basic_auth, config_secrets

    url = URL_SETTINGS[variable].format(token + (":" if colon else ""))
    environ = {variable: url, "TASKLENS_HTTP_ADDR": "127.0.0.1:0", "TASKLENS_STATSD_ADDR": "off",
               "TASKLENS_REMOTE_WRITE_SIGV4": "off"}
    assert mask_url(url) == URL_SETTINGS[variable].format("***")
    config, warnings = validate(environ)
    shown = warnings + strings(describe(config))
    if variable != "TASKLENS_QUEUES":  # an HTTP client sends it as basic auth: a peer may echo either
        redact = Redactor(config_secrets(config, environ))
        shown.append(redact.mask(f"cannot connect to {url} ({unquote(url)}); "
                                 f"Authorization: {basic_auth(unquote(token), '')}"))
    assert_hidden(token, shown)


def test_a_user_with_a_password_of_its_own_is_shown() -> None:
    assert mask_url("postgresql://app@db/app?password=pw&x=1") == "postgresql://app@db/app?password=***&x=1"
    assert mask_url("amqp://worker@mq/prod?password_env=P") == "amqp://worker@mq/prod?password_env=P"
    assert mask_url("redis://u:pw@h/0") == "redis://u:***@h/0"
    assert mask_url("postgresql://postgres@127.0.0.1:5432/test") == "postgresql://***@127.0.0.1:5432/test"


@settings(max_examples=200, deadline=None)
@given(token=st.text(alphabet="abcXYZ0189", min_size=6, max_size=16),
       name=st.sampled_from(["api_key", "signal", "passthrough", "x-amz-signature", "auth"]),
       value=st.text(alphabet="abcdef123", min_size=1, max_size=8))
def test_an_http_token_is_masked_whatever_the_query_holds(token: str, name: str, value: str) -> None:
    """An HTTP client sends a bare user as basic auth `<token>:` whatever the query holds: a parameter
    whose name holds a stem (`?api_key=`, even `?signal=`) once made the token a user name, shown and
    left out of the secrets an echoed error is cleaned of."""
    url = f"https://{token}@proxy.example/api/v1/write?{name}={value}"
    assert token not in mask_url(url)
    assert token in url_passwords(url)


@pytest.mark.parametrize("query", ["target_session_attrs=any", "require_auth=password", "sslkey=/etc/k.pem",
                                   "passfile=/p", "authSource=admin", "keyfile=k"])
def test_a_word_a_client_takes_beside_a_credential_name_is_no_secret(query: str) -> None:
    """libpq's `target_session_attrs=any` as a secret masked `any` in every log line (`too m*** tasks`)."""
    url = f"postgresql://app@db/app?query=select+1&{query}"
    value = query.partition("=")[2]
    assert value not in url_passwords(url) and mask_url(url).endswith(query)
