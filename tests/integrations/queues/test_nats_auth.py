"""NATS credentials reach the server as the user wrote them: a password percent-encoded in the URL, raw
where the URL still reads, or from `password_env=`, and a bare token (`nats://<token>@host`).

nats-py reads a URL's user info with `urlparse` and sends it undecoded: `nats://u:Pass%21word1@host` and
`password_env=` (whose password the URL carries percent-encoded) were refused with 'Authorization
Violation'. Checked against a nats-server of our own with one user per class of reserved character
(RFC 3986's gen-delims and sub-delims, `%`, a space, quotes, unicode, what reads as another URL).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.integrations.queues.support import Server, private_server

from integrations.queues.base import mask_secret, parse_queue_url
from integrations.queues.nats import BROKER, connect_options
from integrations.queues.source import QueueSource

PASSWORDS = {
    "gen-delims": "Pa:/?#[]@ss",
    "sub-delims": "Pa!$&'()*+,;=ss",
    "percent": "Pa%41%zz%ss",  # a literal `%41` must reach the server as written, not as `A`
    "space-quotes-backslash": 'Pa ss"\'\\w+',
    "unicode": "Pä€😀ss",
    "another-url": "Pa,x://u:p@h=y://ss",
    "tester": "Pass!word1",
}
USER_WITH_RESERVED = "w@rk:er/ é"  # a user name needs encoding too
TOKEN = "T0k:/?#[]@!$&'()*+,;=% é😀n"
STREAM, CONSUMER = "AUTH", "worker"


def conf_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # NATS' config reads `\"` and `\\` as JSON does


async def add_stream(url: str, **credentials: str) -> None:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await nats.connect(url, **credentials)
    js = nc.jetstream()
    await js.add_stream(name=STREAM, subjects=["auth.>"])
    await js.add_consumer(STREAM, ConsumerConfig(durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT))
    await js.publish("auth.jobs", b"one")
    await nc.close()


def nats_server(directory: Path, authorization: str) -> Iterator[Server]:
    def argv(binary: str, port: int) -> list[str]:
        conf = directory / "nats.conf"
        conf.write_text(f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: {conf_string(str(directory))} }}\n'
                        f"authorization {{ {authorization} }}\n", encoding="utf-8")
        return [binary, "-c", str(conf)]

    with private_server("nats-server", argv) as server:
        yield server


@pytest.fixture(scope="module")
def with_users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One user per class of password (`u-<class>`), one whose name needs encoding, and `admin`."""
    users = [f"{{user: {conf_string('u-' + name)}, password: {conf_string(pw)}}}" for name, pw in PASSWORDS.items()]
    users += [f"{{user: {conf_string(USER_WITH_RESERVED)}, password: pw}}", "{user: admin, password: admin}"]
    for server in nats_server(tmp_path_factory.mktemp("nats-users"), "users = [\n" + "\n".join(users) + "\n]"):
        asyncio.run(add_stream(f"nats://127.0.0.1:{server.port}", user="admin", password="admin"))
        yield server


@pytest.fixture(scope="module")
def with_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    for server in nats_server(tmp_path_factory.mktemp("nats-token"), f"token: {conf_string(TOKEN)}"):
        asyncio.run(add_stream(f"nats://127.0.0.1:{server.port}", token=TOKEN))
        yield server


async def polled(config, hub, exported, url: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    source = QueueSource(config, hub, url)
    try:
        assert await source.poll(), source.last_error
    finally:
        await source.probe.close()
    return exported.queue(STREAM)


def query(**extra: str) -> str:
    return "&".join([f"stream={STREAM}", f"consumer={CONSUMER}", *(f"{k}={v}" for k, v in extra.items())])


@pytest.mark.parametrize("kind", sorted(PASSWORDS))
async def test_a_percent_encoded_password_of_any_class_is_accepted(config, hub, exported, with_users, kind):
    user, password = quote("u-" + kind, safe=""), quote(PASSWORDS[kind], safe="")
    url = f"nats://{user}:{password}@127.0.0.1:{with_users.port}?{query()}"
    values = await polled(config, hub, exported, url)
    assert {k: values[k] for k in ("depth", "in_flight", "consumers")} == {"depth": 1.0, "in_flight": 0.0,
                                                                         "consumers": 1.0}


@pytest.mark.parametrize("kind", sorted(PASSWORDS))
async def test_a_password_of_any_class_from_password_env_is_accepted(config, hub, exported, with_users, kind,
                                                                     monkeypatch):
    monkeypatch.setenv("TL_NATS_PASSWORD", PASSWORDS[kind])
    url = f"nats://u-{kind}@127.0.0.1:{with_users.port}?{query(password_env='TL_NATS_PASSWORD')}"
    assert (await polled(config, hub, exported, url))["depth"] == 1.0


async def test_a_raw_password_that_reads_as_written_is_accepted(config, hub, exported, with_users):
    url = f"nats://u-tester:{PASSWORDS['tester']}@127.0.0.1:{with_users.port}?{query()}"
    assert (await polled(config, hub, exported, url))["depth"] == 1.0


async def test_a_user_name_that_needs_encoding_is_decoded(config, hub, exported, with_users):
    url = f"nats://{quote(USER_WITH_RESERVED, safe='')}:pw@127.0.0.1:{with_users.port}?{query()}"
    assert (await polled(config, hub, exported, url))["depth"] == 1.0


async def test_a_wrong_password_is_still_refused(config, hub, exported, with_users):
    url = f"nats://u-tester:{quote('Pass!word2')}@127.0.0.1:{with_users.port}?{query()}"
    source = QueueSource(config, hub, url)
    assert not await source.poll()
    await source.probe.close()
    assert source.last_error is not None and source.last_error.startswith("auth:")


async def test_a_refused_token_leaves_the_server_s_words_whole(config, hub, with_users):
    """A token `u` masked inside words made the error `nats: 'A***thorization Violation'`."""
    url = f"nats://u@127.0.0.1:{with_users.port}?{query()}"
    source = QueueSource(config, hub, url)
    assert not await source.poll()
    await source.probe.close()
    assert source.last_error == "auth: nats: 'Authorization Violation'"
    assert source.url.masked == f"nats://***@127.0.0.1:{with_users.port}?{query()}"
    assert mask_secret("cannot connect to nats://u@h as 'u'", source.url) == "cannot connect to nats://***@h as '***'"


async def test_a_percent_encoded_token_is_accepted(config, hub, exported, with_token):
    url = f"nats://{quote(TOKEN, safe='')}@127.0.0.1:{with_token.port}?{query()}"
    assert (await polled(config, hub, exported, url))["depth"] == 1.0


# what connect() is given, for any user name and password however written
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)


@settings(max_examples=300, deadline=None)
@given(user=TEXT, password=TEXT, from_env=st.booleans())
def test_connect_gets_the_decoded_credentials_and_a_url_without_them(user: str, password: str, from_env: bool) -> None:
    where = "nats://{}@127.0.0.1:4222?stream=S&consumer=c"
    if from_env:
        url = parse_queue_url(where.format(quote(user, safe="")) + "&password_env=P", BROKER.params,
                              environ={"P": password})
    else:
        url = parse_queue_url(where.format(f"{quote(user, safe='')}:{quote(password, safe='')}"), BROKER.params)
    assert connect_options(url) == {"servers": ["nats://127.0.0.1:4222"], "user": user, "password": password}


@settings(max_examples=100, deadline=None)
@given(token=TEXT.filter(bool))
def test_a_bare_user_name_is_given_as_a_token(token: str) -> None:
    url = parse_queue_url(f"nats://{quote(token, safe='')}@[::1]:4222?stream=S&consumer=c", BROKER.params)
    assert connect_options(url) == {"servers": ["nats://[::1]:4222"], "token": token}
    assert connect_options(parse_queue_url("nats://h?stream=S&consumer=c", BROKER.params)) == {
        "servers": ["nats://h"]}
