"""No secret in `/status` or `/status/history`: every text a component keeps (its last error, quoting a
peer's answer) and every message the page's recent errors keep is masked as a log line is, with the
same known secrets (the configuration's, the AWS credentials of the environment)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import Config
from agent.logs import Masked
from agent.redact import Redactor, log_secrets
from agent.runtime import Runtime

SECRET_CHARS = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.", min_size=12, max_size=40)
# the free-text forms the log masks, each holding `{}` (a secret no setting names)
FORMS = ("password={}", "Authorization: Bearer {}", "token: {}", 'api_key="{}"', "client_secret={}",
         "https://user:{}@proxy.example/", "<SessionToken>{}</SessionToken>", "X-Amz-Security-Token: {}")
FILLER = st.sampled_from(["upstream said:", "HTTP 500", "bad gateway", "(retry later)", ";", "\n", "  "])


class Failing:
    """A component whose status keeps an error text from elsewhere, as the ECS source, the queue
    sources, the sinks and the profiler do."""

    name = "failing"

    def __init__(self, text: str) -> None:
        self.text = text

    def status(self) -> dict[str, Any]:
        return {"last_error": self.text, "errors": [self.text], "by_text": {self.text: 1}, "consecutive_failures": 1}


def built(environ: dict[str, str]) -> Runtime:
    runtime = Runtime(Config(statsd_addr=None, top_processes=0), environ=environ)
    asyncio.run(runtime.build())
    assert runtime.page is not None
    return runtime


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(known=SECRET_CHARS, free=SECRET_CHARS, form=st.sampled_from(FORMS), before=st.lists(FILLER, max_size=4),
       after=st.lists(FILLER, max_size=4), known_first=st.booleans())
def test_no_secret_in_the_status_or_the_page_errors(known: str, free: str, form: str, before: list[str],
                                                     after: list[str], known_first: bool) -> None:
    """An error text holding the AWS secret key of the environment and a secret in a free-text form is
    shown in `/status` (`Runtime.status`) and the page's data (its components and its recent errors)
    without either, and exactly as the log's handler masks it."""
    environ = {"AWS_SECRET_ACCESS_KEY": known}
    parts = [known, form.format(free)] if known_first else [form.format(free), known]
    text = " ".join([*before, parts[0], *after, parts[1]])
    runtime = built(environ)
    runtime.sources.append(Failing(text))
    record = logging.getLogger("tasklens.test").makeRecord(
        "tasklens.test", logging.WARNING, __file__, 1, "poll failed: %s", (text,), None)
    runtime.page.errors.handle(record)  # type: ignore[union-attr]
    status = runtime.status()
    page = runtime.page.snapshot(status)  # type: ignore[union-attr]
    shown = {"/status": json.dumps(status), "/status/history": json.dumps(page)}
    assert {where: [s for s in (known, free) if s in text] for where, text in shown.items()
            if known in text or free in text} == {}
    # the same rules and the same known secrets as the log's handler (`logs.setup`)
    log_handler = Masked("%(message)s", [*log_secrets(runtime.config, environ), known])
    assert status["failing"]["last_error"] == log_handler.format(logging.makeLogRecord({"msg": text}))
    assert page["errors"][0]["message"] == log_handler.format(record)


@settings(max_examples=100, deadline=None)
@given(secret=SECRET_CHARS, filler=st.integers(0, 450), limit=st.integers(20, 400))
def test_a_known_aws_secret_cut_off_by_an_error_texts_bound_shows_no_part_of_it(secret: str, filler: int,
                                                                               limit: int) -> None:
    """A peer's text is cut to a bound (the ECS source's 400 characters) after its known secrets are
    masked: the AWS credentials of the environment are among them, so a copy that straddles the bound
    shows no 4 characters of it (masked after the cut, by the log's rules, it did)."""
    head = "/task: HTTP 500: "
    with mock.patch.dict(os.environ, {"AWS_SESSION_TOKEN": secret}):  # the sidecar's own environment
        redact = Redactor([])
    text = redact.remote_text(f"{head}{'~' * filler} {secret} ~", limit=limit)
    shown = text.removeprefix(head)  # (no secret's character: `~`, `*`, and the cut's `...`)
    assert not any(secret[i:i + 4] in shown for i in range(len(secret) - 3)), text
