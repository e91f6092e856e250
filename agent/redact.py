"""Masking secrets in text that came from elsewhere, before it is stored (`/status`) or logged.

A remote peer can echo what we sent it: an intake's 400 body may quote the API key, a broker's error
may quote the URL with its password, a server may quote the `Authorization: Basic <base64>` header. Every sink that keeps or logs a remote error text passes it
through `Redactor.remote_text` (or `Redactor.mask` for text that is already a string):

    redact = Redactor(config_secrets(config))
    sink.last_error = f"http_400: {redact.remote_text(body)}"
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus, unquote

from agent.config import SECRET_FIELDS, URL_FIELDS, Config, parse_headers
from agent.logs import known_secrets
from agent.urlmask import mask_matches, url_credentials, url_passwords

MASK = "***"
REMOTE_TEXT_LIMIT = 200  # characters of a remote error kept: enough to say what went wrong
CUT_SHOWN = 3  # characters of a secret's start that a text cut inside it may end with, unmasked
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")  # no line breaks or escapes from a peer in our log


def basic_auth(user: str, password: str) -> str:
    """The `Authorization` value for HTTP basic auth. Every client of the sidecar builds it here, so
    that `Redactor` masks exactly the bytes that were sent (base64 of UTF-8 `user:password`)."""
    return "Basic " + _base64(f"{user}:{password}")


def _base64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()


class Redactor:
    """Replaces every occurrence of a secret in every form the sidecar sends it: as written,
    percent-encoded or decoded, JSON-escaped (`\\uXXXX` or not), base64 (with or without its `=` padding); any case.
    `config_secrets` adds `user:password` for each basic-auth pair, so its base64 is masked too.
    A secret of a few characters masks those characters everywhere: unreadable beats leaked.
    Besides `secrets`, the AWS credentials of the environment (`environ`, by default the process's) are
    masked, as every log line masks them (`logs.known_secrets`): the ECS endpoint's answer, or a store's
    under SigV4 (it is sent the session token), may quote them, and a long answer is cut after this mask."""

    def __init__(self, secrets: Iterable[str], environ: Mapping[str, str] | None = None) -> None:
        variants: set[str] = set()
        for secret in known_secrets(secrets, environ):
            if secret:
                encoded = _base64(secret)
                variants.update((secret, unquote(secret), quote(secret, safe=""), quote_plus(secret),
                                 json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
                                 encoded, encoded.rstrip("=")))
        variants.discard("")
        # longest first, so that a secret containing another is masked whole
        alternatives = sorted(variants, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, alternatives)), re.IGNORECASE) if alternatives else None
        self._starts = sorted({v.lower() for v in alternatives if len(v) > CUT_SHOWN}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        return mask_matches(self._pattern, text) if self._pattern else text

    def _cut_end(self, text: str) -> str:
        """`text` without the start of a secret it ends with: a body read up to a bound (`push.BODY_BYTES`) may
        end inside one, which no mask matches whole; masked, 64 KiB of copies of a key shrink to `***`, and
        the piece after them would be shown. More than CUT_SHOWN characters of it are masked."""
        end = text.rstrip()[-max(map(len, self._starts), default=0):].lower()
        for secret in self._starts:
            for k in range(min(len(secret) - 1, len(end)), CUT_SHOWN, -1):
                if end.endswith(secret[:k]):
                    return text.rstrip()[:-k] + MASK
        return text

    def remote_text(self, body: bytes | str, limit: int = REMOTE_TEXT_LIMIT) -> str:
        """A peer's text made safe to keep and log: decoded, secrets masked, control characters shown as
        one space, at most `limit` characters (masked before it is cut, so a cut never shows half a key)."""
        text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
        text = _CONTROL.sub(" ", self._cut_end(self.mask(text)))
        if not text.isprintable():  # other breaks and invisible characters too (U+2028, U+200E, ...)
            text = "".join(c if c.isprintable() else " " for c in text)
        text = text.strip()
        return text if len(text) <= limit else text[:limit] + "..."


HEADER_FIELDS = ("remote_write_headers", "otlp_headers")  # `Name=value,...` settings sent as headers


def config_secrets(config: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret the configuration holds: secret settings, the passwords inside URL settings, those a
    URL takes from another variable (`password_env=NAME`), and `user:password` for every basic-auth pair
    the sidecar may build from them (a user setting or a URL's user, with a password setting or a URL's
    password; as written and percent-decoded), and `token:` for an HTTP URL's bare token."""
    environ = os.environ if environ is None else environ
    found: list[str] = []
    users = {"", config.pyroscope_user, config.remote_write_username}
    passwords = {config.pyroscope_password, config.remote_write_password}
    for name in sorted(SECRET_FIELDS | URL_FIELDS):
        value = getattr(config, name, "")
        values = value if isinstance(value, tuple) else (value,)
        for item in values:
            if not isinstance(item, str) or not item:
                continue
            if name in SECRET_FIELDS:
                found.append(item)
            if name in HEADER_FIELDS:  # each header's value as sent (`Authorization=Bearer%20x`: `Bearer x`)
                found.extend(value for _, value in parse_headers(item))
            found.extend(url_passwords(item, environ))  # with those from `password_env=NAME` in `environ`
            for user, password in url_credentials(item):
                users.update((user, unquote(user)))
                passwords.update((password, unquote(password)))
                if not password:  # a bare token (`http://<token>@proxy`), sent as basic auth `<token>:`
                    found.extend((f"{user}:", f"{unquote(user)}:"))
    found.extend(passwords)
    found.extend(f"{user}:{password}" for user in sorted(users) for password in sorted(passwords) if password)
    return [f for f in found if f]


def log_secrets(config: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """`config_secrets` but the whole value of a secret URL setting (`TASKLENS_PYROSCOPE_URL`): the log
    shows such a URL as `mask_url` does, its host and path, and its password (a secret here) masked."""
    urls = {getattr(config, name) for name in SECRET_FIELDS & URL_FIELDS}
    return [s for s in config_secrets(config, environ) if s not in urls]
