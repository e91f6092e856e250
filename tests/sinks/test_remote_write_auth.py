"""remote_write authentication: one way at a time. The store gets one `Authorization` header, so two
ways given at once (basic auth and a bearer token, an `Authorization` extra header, credentials in the
URL, SigV4) stop `run` and `check` alike, naming each variable; one way alone is what is sent.

An outside tester's finding: `TASKLENS_REMOTE_WRITE_USERNAME` + `_PASSWORD` with
`TASKLENS_REMOTE_WRITE_BEARER_TOKEN` passed `check`, and `run` sent only the bearer token."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli import validate
from agent.config import ConfigError, load
from agent.hub import Hub
from agent.identity import Identity
from agent.sinks.remote_write import RemoteWriteSink
from tests.support import clean_env, refused_alike

pytest.importorskip("cramjam")

BASE = {"TASKLENS_HTTP_ADDR": "127.0.0.1:0", "TASKLENS_STATSD_ADDR": "off"}
HOST, AMP = "mimir.example", "aps-workspaces.eu-west-1.amazonaws.com"

# each way: the settings that give it, the variables an error must name, the Authorization it sends
METHODS = {
    "basic": ({"TASKLENS_REMOTE_WRITE_USERNAME": "alice", "TASKLENS_REMOTE_WRITE_PASSWORD": "pw"},
              ["TASKLENS_REMOTE_WRITE_USERNAME", "TASKLENS_REMOTE_WRITE_PASSWORD"],
              "Basic " + base64.b64encode(b"alice:pw").decode()),
    "password_only": ({"TASKLENS_REMOTE_WRITE_PASSWORD": "pw"}, ["TASKLENS_REMOTE_WRITE_PASSWORD"],
                      "Basic " + base64.b64encode(b":pw").decode()),
    "url": ({}, ["TASKLENS_REMOTE_WRITE_URL"], "Basic " + base64.b64encode(b"bob:upw").decode()),
    "bearer": ({"TASKLENS_REMOTE_WRITE_BEARER_TOKEN": "btok-9x"}, ["TASKLENS_REMOTE_WRITE_BEARER_TOKEN"], "Bearer btok-9x"),
    "header": ({}, ["TASKLENS_REMOTE_WRITE_HEADERS"], "Token xyz"),
    "sigv4_on": ({"TASKLENS_REMOTE_WRITE_SIGV4": "on", "TASKLENS_REMOTE_WRITE_SIGV4_REGION": "eu-west-1"},
                 ["TASKLENS_REMOTE_WRITE_SIGV4"], None),
    "sigv4_auto": ({}, ["TASKLENS_REMOTE_WRITE_SIGV4"], None),  # an AMP URL
}


def environment(methods: frozenset[str], header_case: str) -> dict[str, str]:
    env = {**BASE, "TASKLENS_REMOTE_WRITE_HEADERS": "X-Scope-OrgID=t"}
    for m in methods:
        env.update(METHODS[m][0])
    userinfo = "bob:upw@" if "url" in methods else ""
    host = AMP if "sigv4_auto" in methods else HOST
    env["TASKLENS_REMOTE_WRITE_URL"] = f"https://{userinfo}{host}/api/v1/write"
    if "sigv4_auto" not in methods and "sigv4_on" not in methods:
        env["TASKLENS_REMOTE_WRITE_SIGV4"] = "auto"
    if "header" in methods:
        env["TASKLENS_REMOTE_WRITE_HEADERS"] += f",{header_case}=Token%20xyz"
    return env


ways = st.sets(st.sampled_from(sorted(METHODS)), max_size=4).map(frozenset).filter(
    lambda m: not {"basic", "password_only"} <= m and not {"sigv4_on", "sigv4_auto"} <= m)  # one setting each
authorization = st.sampled_from(["Authorization", "authorization", "AUTHORIZATION", "AuThOrIzAtIoN"])


@settings(max_examples=200, deadline=None)
@given(methods=ways, header_case=authorization)
def test_two_ways_to_authenticate_are_refused_and_one_is_sent(methods: frozenset[str], header_case: str) -> None:
    env = environment(methods, header_case)
    if len(methods) > 1:
        with pytest.raises(ConfigError) as err:
            validate(env)  # what `run` and `check` both call first
        message = str(err.value)
        for m in methods:
            for variable in METHODS[m][1]:
                assert variable in message, (methods, message)
        assert "ways to authenticate" in message and "upw" not in message and "btok-9x" not in message
        with pytest.raises(ConfigError, match="ways to authenticate"):  # a sink built in code refuses it too
            RemoteWriteSink(load(env), Hub(Identity(service="s")))
        return
    validate(env)
    sink = RemoteWriteSink(load(env), Hub(Identity(service="s")))
    sent = {k.lower(): v for k, v in sink.headers.items()}
    (method,) = methods or (None,)
    if method is None or method.startswith("sigv4"):
        assert "authorization" not in sent  # none, or the signer's own
        assert (sink.signer is not None) == (method is not None)
    else:
        assert sent["authorization"] == METHODS[method][2] and sink.signer is None
    assert len({k.lower() for k in sink.headers}) == len(sink.headers)


def test_run_and_check_refuse_basic_auth_with_a_bearer_token_alike() -> None:
    """The tester's case, with the real commands: the same line, exit 2, no secret in it."""
    env = clean_env(**BASE, TASKLENS_REMOTE_WRITE_URL="http://127.0.0.1:9/w", TASKLENS_REMOTE_WRITE_USERNAME="alice",
                    TASKLENS_REMOTE_WRITE_PASSWORD="s3cr3t-pw", TASKLENS_REMOTE_WRITE_BEARER_TOKEN="tok-s3cr3t")
    line = refused_alike(env)
    assert line.startswith("tasklens: invalid configuration: ")
    for name in ("TASKLENS_REMOTE_WRITE_USERNAME", "TASKLENS_REMOTE_WRITE_PASSWORD", "TASKLENS_REMOTE_WRITE_BEARER_TOKEN"):
        assert name in line
    assert "s3cr3t" not in line


def test_a_file_key_is_named_as_the_file_gives_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.toml"
    path.write_text('remote_write_bearer_token = "tok"\n')
    with pytest.raises(ConfigError, match=f"{path}: remote_write_bearer_token .*TASKLENS_REMOTE_WRITE_USERNAME"
                                          "|TASKLENS_REMOTE_WRITE_USERNAME.* and .*remote_write_bearer_token"):
        validate({**BASE, "TASKLENS_CONFIG_FILE": str(path), "TASKLENS_REMOTE_WRITE_URL": "http://127.0.0.1:9/w",
                  "TASKLENS_REMOTE_WRITE_USERNAME": "alice"})
