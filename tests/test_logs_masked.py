"""Every line the log handler writes is masked, whatever logger wrote it (agent/logs.py `Masked`):
a library's debug output (botocore's request headers, a client's URL) hides the same secrets as the
sidecar's own lines."""

from __future__ import annotations

import io
import logging
import string
from collections.abc import Iterator

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from agent import logs
from agent.config import Config
from agent.redact import config_secrets

# where a library's line holds a secret: botocore's headers and URL, a client's repr, a request line,
# a canonical request, an STS answer, an `Authorization` header, a bare value the configuration knows
FORMS = (
    "Sending http request: <AWSPreparedRequest method=POST, url=http://eu:{s}@127.0.0.1:47151/, "
    "headers={{'X-Amz-Security-Token': b'{s}', 'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIA/x, "
    "Signature={s}'}}>",
    "{{'url': 'https://{s}@proxy.example/x', 'body': b'{{\"QueueName\": \"q\"}}'}}",
    "Connection(host='h', password='{s}', port=5672)",
    "GET /api?queue=q&api-key={s}&x=1 HTTP/1.1",
    "CanonicalRequest:\nPOST\n/\nhost:127.0.0.1\nx-amz-security-token:{s}\n\nhost",
    "Response body: b'<AssumeRoleResult><SessionToken>{s}</SessionToken></AssumeRoleResult>'",
    "send: b'POST / HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer {s}\\r\\n'",
    "connect nats://{s}@127.0.0.1:4222 failed",  # a token, or a user whose password is in password_env=
    "sending {s} as it was given",  # only the configuration (or the AWS environment) knows it
)
KNOWN_ONLY = FORMS[-2:]
LOGGERS = st.sampled_from(["botocore.endpoint", "botocore.auth", "aiobotocore.regions", "aiormq.connection",
                           "nats.aio.client", "urllib3.connectionpool", "asyncio", "tasklens.queue", ""]) | \
    st.from_regex(r"[a-z]{1,10}(\.[a-z]{1,10}){0,2}", fullmatch=True)
# characters a password holds as generated; URL-unsafe ones percent-encoded, as a URL must carry them
SECRETS = st.text(string.ascii_letters + string.digits + "-_~+!*$%", min_size=12, max_size=40)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


def logged(level: str, name: str, record_level: int, text: str, *, error: bool, secrets: list[str]) -> str:
    out = io.StringIO()
    handler = logs.setup(level, secrets=secrets)
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)
    logger = logging.getLogger(name)
    # what reaches the handler is the subject, not a library's own level: another test (or a library it
    # imported: selenium sets urllib3's) may have set one on this logger or a parent
    saved = logger.level, logger.propagate, logger.disabled
    logger.setLevel(logging.DEBUG)
    logger.propagate, logger.disabled = True, False
    try:
        if error:
            try:
                raise ConnectionError(text)
            except ConnectionError:
                logger.log(record_level, "failed: %s", text, exc_info=True)
        else:
            logger.log(record_level, "%s", text)
    finally:
        logger.setLevel(saved[0])
        logger.propagate, logger.disabled = saved[1], saved[2]
    return out.getvalue()


@pytest.mark.usefixtures("restore_logging")
# a token in a quoted header cut by the one-line exception before it was masked: its closing quote gone
@example(secret="0" * 30, form=FORMS[0], name="botocore.endpoint", level="info", record_level=logging.INFO,
         error=True, known="unknown")
@given(secret=SECRETS, form=st.sampled_from(FORMS), name=LOGGERS, level=st.sampled_from(["debug", "info"]),
       record_level=st.sampled_from([logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR]),
       error=st.booleans(), known=st.sampled_from(["password_env", "aws", "queue_url", "unknown"]))
def test_no_secret_reaches_the_handler_from_any_logger(secret, form, name, level, record_level, error,
                                                      known) -> None:
    text = form.format(s=secret)
    assume(secret.lower() not in (form + name + logs.FORMAT + "failed ConnectionError Traceback").lower())
    if level == "info":
        record_level = max(record_level, logging.INFO)
    # how the sidecar knows the value: a queue's password from another variable, the AWS environment, a
    # queue URL's own password, or not at all (an ECS task role's token: only botocore has it)
    assume(known != "unknown" or form not in KNOWN_ONLY)
    with pytest.MonkeyPatch.context() as env:
        env.delenv("AWS_SESSION_TOKEN", raising=False)
        queue = "amqp://app@rabbit/?queue=jobs"
        if known == "password_env":
            env.setenv("TL_TEST_QUEUE_PASSWORD", secret)
            queue += "&password_env=TL_TEST_QUEUE_PASSWORD"
        elif known == "aws":
            env.setenv("AWS_SESSION_TOKEN", secret)
        elif known == "queue_url":
            queue = f"amqp://app:{secret}@rabbit/?queue=jobs"
        out = logged(level, name, record_level, text, error=error, secrets=config_secrets(Config(queues=(queue,))))
    assert out, "the line was written"
    assert secret not in out, out
    assert "***" in out


def test_a_library_line_keeps_what_is_no_secret(restore_logging) -> None:
    out = logged("debug", "aiormq.connection", logging.ERROR,
                 "Unexpected connection close from remote \"amqp://guest:******@127.0.0.1:5672/\", "
                 "Connection.Close(reply_code=320, reply_text='CONNECTION_FORCED')", error=False, secrets=[])
    assert "amqp://guest:***@127.0.0.1:5672/" in out and "reply_code=320" in out and "CONNECTION_FORCED" in out


def test_a_secret_url_setting_shows_its_host_but_not_its_password(restore_logging) -> None:
    from agent.redact import log_secrets

    config = Config(pyroscope_url="http://tl:PyroPw123456@pyro.internal:4040")
    out = logged("info", "tasklens", logging.INFO, "pushing to http://tl:PyroPw123456@pyro.internal:4040/ingest",
                 error=False, secrets=log_secrets(config))
    assert "PyroPw123456" not in out and "@pyro.internal:4040/ingest" in out, out
