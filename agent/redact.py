"""Masking secrets in text that came from elsewhere, before it is stored (`/status`) or logged.

A remote peer can echo what we sent it: an intake's 400 body may quote the API key, a broker's error
may quote the URL with its password. Every sink that keeps or logs a remote error text passes it
through `Redactor.remote_text` (or `Redactor.mask` for text that is already a string):

    redact = Redactor(config_secrets(config))
    sink.last_error = f"http_400: {redact.remote_text(body)}"
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

from agent.config import SECRET_FIELDS, URL_FIELDS, Config
from agent.urlmask import url_passwords

MASK = "***"
REMOTE_TEXT_LIMIT = 200  # characters of a remote error kept: enough to say what went wrong
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")  # no line breaks or escapes from a peer in our log


class Redactor:
    """Replaces every occurrence of a secret (as written, percent-encoded or decoded, JSON-escaped; any
    case). A secret of a few characters masks those characters everywhere: unreadable beats leaked."""

    def __init__(self, secrets: Iterable[str]) -> None:
        variants: set[str] = set()
        for secret in secrets:
            if secret:
                variants.update((secret, unquote(secret), quote(secret, safe=""), quote_plus(secret),
                                 json.dumps(secret)[1:-1]))
        # longest first, so that a secret containing another is masked whole
        alternatives = sorted(variants, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, alternatives)), re.IGNORECASE) if alternatives else None

    def mask(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern else text

    def remote_text(self, body: bytes | str, limit: int = REMOTE_TEXT_LIMIT) -> str:
        """A peer's text made safe to keep and log: decoded, secrets masked, control characters shown as
        one space, at most `limit` characters (masked before it is cut, so a cut never shows half a key)."""
        text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
        text = _CONTROL.sub(" ", self.mask(text)).strip()
        return text if len(text) <= limit else text[:limit] + "..."


def config_secrets(config: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret the configuration holds: secret settings, the passwords inside URL settings, and
    those a URL takes from another variable (`password_env=NAME`)."""
    environ = os.environ if environ is None else environ
    found: list[str] = []
    for name in sorted(SECRET_FIELDS | URL_FIELDS):
        value = getattr(config, name, "")
        values = value if isinstance(value, tuple) else (value,)
        for item in values:
            if not isinstance(item, str) or not item:
                continue
            if name in SECRET_FIELDS:
                found.append(item)
            found.extend(url_passwords(item))
            try:
                params = parse_qsl(urlsplit(item).query)
            except ValueError:
                continue
            found.extend(environ.get(v, "") for k, v in params if k == "password_env")
    return [f for f in found if f]
