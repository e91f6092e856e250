"""What of a URL's text is secret, and how to show the text without it.

A URL setting may carry passwords in its own user info, in a URL-valued parameter (RabbitMQ's
`management=`, raw or percent-encoded), in a `password=` parameter, or as a NATS token. Users write
passwords as generated: `/ ? # @ = & %` unencoded, unicode, percent-encoded once or twice. So:

- the user info is read as a person means it, up to the last `@` before the next `scheme://`, not only
  as `urlsplit` reads it (up to the first `/ ? #`); a URL where the two differ cannot be read as
  written, and nothing of its user info is shown;
- the text is read again percent-decoded (as `parse_qsl` and then a client decode it), and every
  password found at any level is a secret;
- a password a URL takes from the environment (`password_env=NAME`: the value of the variable NAME) is a
  secret like one in the URL: `url_passwords` and `mask_url` look it up, so that every text that shows
  the URL, or is masked with its passwords, hides it (a user name, a queue or a path holding it too);
- a secret is masked wherever it occurs, literally or with any of its characters percent-encoded (or
  escaped, as a `repr` or JSON shows it); one shorter than SHORT_SECRET characters only where it stands
  as a word of its own.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, unquote_plus, urlsplit

MASK = "***"
DECODE_LEVELS = 3  # one more than the code decodes: parse_qsl, then a client's unquote of the password
# a secret of fewer characters is masked only where it stands as a word of its own: no letter, digit or `_`
# right before or after it (an escape before it, `%3A` or `\n`, is none). Masked inside words, a NATS token
# `u` made every log line unreadable (`A***thorization Violation`, `Connection ref***sed`, `cons***mer=c`);
# where it is a credential it stands apart (`nats://u@`, `'u'`, `password=u&`), and is masked there
SHORT_SECRET = 4
_HOST = re.compile(r"[A-Za-z0-9._~-]+|[0-9A-Fa-f:.]+(%[A-Za-z0-9._~-]+)?")  # a name, or an IP address
_ESCAPE_BEFORE = ("%[0-9A-F]{2}", "%25[0-9A-F]{2}", "%2525[0-9A-F]{2}", r"\\[abfnrtv0]", r"\\x[0-9A-F]{2}",
                  r"\\u[0-9A-F]{4}", r"\\U[0-9A-F]{8}")
_WORD_START = "(?:(?<!\\w)|" + "|".join(f"(?<={e})" for e in _ESCAPE_BEFORE) + ")"
_WORD_END = "(?!\\w)"
# characters of a password that may span the URLs of a list (`_spanning`): past that, the text is shown
# as its first scheme and `***` (the pattern of a secret grows 425 characters per character, and such a
# text of fifteen URLs took minutes to mask: a list of URLs with user names and ports, each without a
# password, reads so)
LONG_SPANNING = 128

# a URL starts the text, a parameter's value (`management=http://`) or an entry of a list (`,redis://`);
# elsewhere `x://` is part of a password
_SCHEME = re.compile(r"(?:^|(?<=[=,\s]))[A-Za-z][A-Za-z0-9+.-]*://")
# a credential as a query parameter: a password (`postgresql://app@db/app?password=...`, as libpq and asyncpg
# read it) or whatever else a store, a proxy or a signed URL takes there. No list of names keeps up with
# them (`api-key`, `x-api-key`, Azure's `sig`, `X-Amz-Credential`, `client_secret`, `pwd`, `code`...), so
# a name is a credential's when it holds one of these stems anywhere, in any case; an ordinary parameter
# with such a name (`keyfile=`) is masked too: unreadable beats leaked. A `*_env` name holds the name of
# the variable with the password (`password_env=`), not the password. Its value runs to the next parameter,
# spaces included (`password=abc def`: a refused URL's error shows it), or to the next URL of a list
# (`,redis://`, ` redis://`).
CREDENTIAL_STEMS = ("key", "token", "secret", "pass", "pwd", "auth", "sig", "cred", "session", "code", "jwt",
                    "bearer")
# names with a stem whose values are no secret, but words or paths that libpq, the AMQP and MongoDB-style
# clients take (`target_session_attrs=any`, `require_auth=password`, `sslkey=/path`): as secrets they
# would be masked in every log line (`too m*** tasks`)
NOT_CREDENTIALS = ("target_session_attrs", "require_auth", "auth_mechanism", "authmechanism", "authsource",
                   "sslkey", "passfile", "keyfile", "sslkeylogfile")
_NAME_CHAR = r"[^\s=&#;?,]"
# (the lookahead and the name stop at the next separator, so each name is read once: linear in the text)
_CREDENTIAL = (rf"[?&;](?!(?:{'|'.join(NOT_CREDENTIALS)})=)(?={_NAME_CHAR}*?(?:{'|'.join(CREDENTIAL_STEMS)}))"
               rf"{_NAME_CHAR}*(?<!_env)=")

# (a run of separators is taken whole, then looked past once: linear in the text)
_PARAM = re.compile(_CREDENTIAL + r"((?:[^&#,\s]|[,\s]++(?![A-Za-z][A-Za-z0-9+.-]*://))*)", re.IGNORECASE)
# in free text (a request line in an error) a value ends at a space too
_PARAM_IN_TEXT = re.compile(_CREDENTIAL + r"([^&#\s]*)", re.IGNORECASE)
_PASSWORD_ENV = re.compile(r"[?&;]password_env=", re.IGNORECASE)
# the name of the variable it takes the password from (a list's next URL, `,redis://`, ends it too)
_PASSWORD_ENV_NAME = re.compile(r"[?&;]password_env=([^&#,\s]*)", re.IGNORECASE)


@dataclass(frozen=True)
class Authority:
    """One `scheme://` in a text (a URL, a nested URL, one of a comma-separated list)."""

    scheme: str
    start: int  # where the user info would start (after `://`)
    end: int  # where this URL's text ends (the next `scheme://`, or the end)
    userinfo: str | None  # up to the last `@` before `end`: a password may hold / ? # @
    readable: bool  # urlsplit reads the same user info and a port that is a number
    port: int | None = None  # as urlsplit reads it, when readable
    host: str | None = None  # as urlsplit reads it, when readable
    colon_after_host: bool = False  # a `:` in its path, query or fragment (`amqp://guest/:pa`)

    @property
    def alone(self) -> bool:
        """It reads as a URL by itself, with a host name or address and no `:` after it: in a list, an
        entry, not the start of a password (`amqp://=/:pa,x://ss@h` has a host `=`, and
        `amqp://guest/:pa,x://ss@h` a path `/:pa`: a user info with a raw `/`, its password after it)."""
        return (self.readable and not self.colon_after_host and self.host is not None
                and _HOST.fullmatch(self.host) is not None)

    @property
    def password(self) -> str | None:
        if self.userinfo is None:
            return None
        user, colon, password = self.userinfo.partition(":")
        return password if colon else None  # a bare user name may be a token: `url_token`


def authorities(text: str) -> Iterator[Authority]:
    found = list(_SCHEME.finditer(text))
    for i, match in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        rest = text[match.end():end]
        userinfo = rest.rpartition("@")[0] if "@" in rest else None
        url = text[match.start():end]
        if i + 1 < len(found):  # not the next one's `=`, nor the `,` or spaces before it (`a, b`)
            url = url[:-1] if url.endswith("=") else url.rstrip(", \t\r\n\f\v")
        if text[match.start() - 1:match.start()] == "=":  # a parameter's value ends at `&` or `#`
            url = re.split(r"[&#]", url, maxsplit=1)[0]
        try:
            parts = urlsplit(url)
            port, host = parts.port, parts.hostname  # the port raises ValueError when it is not a number
            readable = userinfo == (parts.netloc.rpartition("@")[0] if "@" in parts.netloc else None)
            # where a user info's raw `/`, `?` or `#` leaves its password; `?list=jobs:high` reads the same
            colon = ":" in parts.path + parts.query + parts.fragment
        except ValueError:
            port, host, readable, colon = None, None, False, False
        yield Authority(match.group()[:-3].lower(), match.end(), end, userinfo, readable, port if readable else None,
                        host if readable else None, colon)


def _has_password(url: Authority, text: str) -> bool:
    """The URL has a password of its own: in its user info, or from the environment (`password_env=`,
    as the Terraform modules write a broker URL whose password is an ECS secret)."""
    return url.password is not None or _PASSWORD_ENV.search(text, url.start, url.end) is not None


def bare_user(url: Authority, text: str) -> str | None:
    """The user name of a URL without a password of its own: over HTTP a bare token
    (`https://<token>@proxy`, sent as basic auth `<token>:` whatever the query holds); for a broker, a
    user name that may be one, unless the environment (`password_env=`) or a credential in its query
    gives its password. Never shown (`***@`)."""
    if not url.userinfo or url.password:
        return None
    if url.scheme in ("http", "https") and url.readable:
        return url.userinfo.partition(":")[0] or None
    # (a user info that does not read may be a query's `@`: `https://h/api?password=a @b`)
    scheme_at = url.start - len(url.scheme) - 3
    end = url.end
    if text[scheme_at - 1:scheme_at] == "=":  # a parameter's URL ends at `&` or `#`
        end = min((i for i in (text.find("&", url.start, end), text.find("#", url.start, end)) if i >= 0),
                  default=end)
    if _PASSWORD_ENV.search(text, url.start, end) or _PARAM.search(text, url.start, end):
        return None
    return url.userinfo.partition(":")[0] or None


def http_token(url: Authority, text: str) -> str | None:
    """A bare user name that an HTTP client sends as a credential: the secret of `http://<token>@proxy`.
    (A broker's bare user name is no secret: masked in everything else's text it would blank its words.)"""
    return bare_user(url, text) if url.scheme in ("http", "https") else None


def url_token(url: Authority, text: str) -> str | None:
    """A bare user name that the client sends as a credential: over HTTP (`http_token`), and to NATS,
    which takes `nats://<token>@host` as its token unless the user has a password (in the URL, or from
    `password_env=`), whatever else the query holds: the rule `nats.connect_options` sends it by."""
    if url.scheme == "nats":
        return None if not url.userinfo or _has_password(url, text) else url.userinfo.partition(":")[0] or None
    return http_token(url, text)


def _decodings(text: str) -> list[str]:
    """`text` and what it becomes percent-decoded, once and again, as `%2B` or as `+` for a space."""
    found, frontier = [text], [text]
    for _ in range(DECODE_LEVELS):
        frontier = list(dict.fromkeys(d for t in frontier for d in (unquote(t), unquote_plus(t)) if d not in found))
        found += frontier
    return found


def _spanning(text: str, found: list[Authority]) -> Iterator[tuple[Authority, Authority, str]]:
    """Passwords read across the next `scheme://`: a password may hold `,x://` or `=x://` (`redis://:pa,
    x://ss@host`), which reads as a list of two URLs, the first without a password, the second without
    one of its own (`ss` is no password). Unless the URL reads as written up to its port or its own user
    info (not an empty one: `https://@/:pa,nats://ss@h`) and the next URL with user info has a password
    of its own, its user info is also read up to the last `@` of the text (a list of URLs may then be
    masked more than it needs): a password of digits and `/` reads as a port and a path
    (`redis://u:12/x,y://ss@h`). Yields (the URL, the next one, the password)."""
    at = text.rfind("@")
    for i, (this, after) in enumerate(zip(found, found[1:])):
        if at < after.start:
            continue  # no user info after it
        has_own = next((_has_password(a, text) for a in found[i + 1:] if a.userinfo is not None), False)
        # a host right after its user info: `amqp://=@/:pa,x://ss@h` has none (its user is `=@/`)
        hosted = this.userinfo is not None and text[this.start + len(this.userinfo) + 1:][:1] not in ("", "/", ":")
        if (this.port is not None or (this.readable and this.userinfo and hosted)) and has_own:
            continue  # a list of URLs (`redis://h:6379/0,redis://u:pw@h2`; one in a parameter spans itself)
        if this.scheme != "nats" and ":" not in text[this.start:after.start - len(after.scheme) - 3]:
            continue  # a password starts after a `:` of this URL's own text (`sqs://q,redis://u@h` holds none)
        spanned = text[this.start:at]  # for NATS, without a `:`, a token
        password = Authority(this.scheme, this.start, len(text), spanned, False).password
        if password is None and this.scheme == "nats":
            password = spanned
        if password:
            yield this, after, password


def env_passwords(url: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The passwords the text's URLs take from the environment: the value of each set variable that a
    `password_env=NAME` names (the name as written or percent-decoded, at any level of the text)."""
    environ = os.environ if environ is None else environ
    found: dict[str, None] = {}
    for text in _decodings(url.strip()):
        for match in _PASSWORD_ENV_NAME.finditer(text):
            for name in (match.group(1), unquote(match.group(1)), match.group(1).partition(";")[0]):
                if value := environ.get(name):
                    found[value] = None
    return list(found)


def url_passwords(url: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret the text may carry (for masking it in other text), as written and decoded: the
    passwords in it, and those its URLs take from `environ` (`password_env=NAME`; default os.environ,
    which the queue URLs are resolved from)."""
    found: dict[str, None] = {}
    for password in env_passwords(url, environ):
        found.update(dict.fromkeys(_decodings(password)))
    for text in _decodings(url.strip()):
        listed = list(authorities(text))
        tokens = [t for a in listed if (t := url_token(a, text))]
        for password in [a.password for a in listed if a.password] + [p for _, _, p in _spanning(text, listed)] + tokens:
            found.update(dict.fromkeys(_decodings(password)))
        for match in _PARAM.finditer(text):
            if match.group(1):
                found.update(dict.fromkeys(_decodings(match.group(1))))
    return [secret for secret in found if secret]


def url_credentials(url: str) -> list[tuple[str, str]]:
    """Every `user:password` of the text's URLs (its own, any in a parameter), as written and decoded:
    what a client sends as basic auth (`token:` for an HTTP URL's bare token)."""
    found: dict[tuple[str, str], None] = {}
    for text in _decodings(url.strip()):
        for authority in authorities(text):
            if authority.userinfo and ":" in authority.userinfo:
                user, _, password = authority.userinfo.partition(":")
                found[(user, password)] = None
            elif token := http_token(authority, text):
                found[(token, "")] = None
    return list(found)


def mask_url(url: str, environ: Mapping[str, str] | None = None, secrets: Iterable[str] = ()) -> str:
    """The text with every secret as `***`; never raises. `redis://:secret@host` -> `redis://:***@host`.
    A password from `password_env=NAME` (looked up in `environ`, default os.environ), and `secrets` (one
    already resolved), are masked wherever they occur too: `amqp://<it>@h/?queue=q<it>&password_env=P`
    shows as `amqp://***@h/?queue=q***&password_env=P`.

    Where the text cannot be read as written (`amqp://u:pa/ss@host`: a port `pa`), the password is read
    as a person reads it (`amqp://u:***@host`); what is left of an unreadable URL's user info, and its
    port, are masked too (either may be half a password). The user info of a URL without a password of
    its own (`bare_user`: `http://<token>@proxy`) is masked whole (`http://***@proxy`)."""
    text = url.strip()
    if any(len(password) > LONG_SPANNING for written in _decodings(text)
           for _, _, password in _spanning(written, list(authorities(written)))):
        return text[:text.find("://") + 3] + MASK if "://" in text else MASK
    text = mask_secrets(text, url_passwords(url, environ) + [d for s in secrets for d in _decodings(s)])
    for authority in reversed(list(authorities(text))):
        if authority.readable:
            if authority.userinfo and bare_user(authority, text):
                text = text[:authority.start] + MASK + text[authority.start + len(authority.userinfo):]
            continue
        # a port may be half a password (`amqp://u:Sec/ret`, `amqp://@:Sec`); digits are a port after an
        # `@`, or with no `@` after them (`http://host:99999`: a port out of range, shown as such)
        host = authority.start + (len(authority.userinfo) + 1 if authority.userinfo is not None else 0)
        netloc = re.split(r"[/?#]", text[host:authority.end], maxsplit=1)[0]
        colon = netloc.find(":", netloc.find("]") + 1)  # after an IPv6 address's brackets
        digits = netloc[colon + 1:].isdigit() and (authority.userinfo is not None or "@" not in text[host:])
        if colon >= 0 and not digits:
            text = text[:host + colon + 1] + MASK + text[host + len(netloc):]
        if authority.userinfo is not None:
            text = text[:authority.start] + MASK + text[authority.start + len(authority.userinfo):]
    return text


def mask_query_secrets(text: str) -> str:
    """`text` with the value of every credential query parameter (`password=`, `token=`, ...) as `***`:
    for a text whose secrets no setting names (a client's request line quoted in an error)."""
    return _PARAM_IN_TEXT.sub(lambda m: m.group(0)[:m.start(1) - m.start(0)] + MASK, text)


def split_password(text: str) -> bool:
    """Whether a raw `,` in a password reads as the start of another URL of a list (`amqp://u:pa,x://ss@h`):
    split at its commas, the list's second URL would show the password's end as its user name. Not where
    the URL before the comma reads as one by itself, with a host (`Authority.alone`): `redis://h:6379/0,
    redis://u@h2` and `amqp://guest@h:5672/?queue=a,amqp://guest@h:5672/?queue=b` are lists of two URLs,
    whatever a person could read across them (so is a raw `,x://` in a password whose start reads as a
    host, port and path: `redis://u:12/x,y://ss@h`; every `,` of a password must be percent-encoded)."""
    return any("," in password for this, _, password in _spanning(text, list(authorities(text))) if not this.alone)


def is_readable(url: str) -> bool:
    """Whether every URL in the text reads as written: its user info holds no unencoded / ? # (nor an
    `@` after the host), its port is a number, and no password reads as spanning the next URL, whose
    user info then has no password of its own (`amqp://?:pa=x://ss@h`: a parameter `:pa`)."""
    text = url.strip()
    found = list(authorities(text))
    return all(a.readable for a in found) and all(after.password is not None for _, after, _ in _spanning(text, found))


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of each secret as `***`, its characters literal or percent-encoded
    (up to DECODE_LEVELS deep, any case): `a/b` hides `a/b`, `a%2Fb`, `a%252fb`, `%61/b`. A secret shorter
    than SHORT_SECRET only where it stands as a word: `u` hides `nats://u@h`, not `consumer`."""
    pattern = _pattern(tuple(sorted({s for s in secrets if s}, key=len, reverse=True)))
    return mask_matches(pattern, text) if pattern else text


def mask_matches(pattern: re.Pattern[str], text: str) -> str:
    """`text` with every match of `pattern` as `***`, overlapping ones too: `re.sub` resumes after a
    match, so a secret starting inside another's match (`:pw` before `pw@h,x://tail`) would show its end.
    Each position's match (the longest alternative first) is taken, and overlapping ones mask as one."""
    spans: list[list[int]] = []
    match = pattern.search(text)
    while match:
        start, end = match.span()
        if end > start:
            if spans and start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
        match = pattern.search(text, start + 1)
    for start, end in reversed(spans):
        text = text[:start] + MASK + text[end:]
    return text


@functools.lru_cache(maxsize=256)
def _pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    if not secrets:
        return None
    return re.compile("|".join(_secret(s) for s in secrets), re.IGNORECASE)


def _secret(secret: str) -> str:
    pattern = "".join(_char(c, DECODE_LEVELS) for c in secret)
    return pattern if len(secret) >= SHORT_SECRET else f"{_WORD_START}(?:{pattern}){_WORD_END}"


@functools.lru_cache(maxsize=4096)
def _char(c: str, levels: int) -> str:
    """A regex for the character `c` written literally (a space also as `+`, escaped as a repr or JSON
    shows it) or percent-encoded, each character of the encoding itself encoded again, `levels` deep.

    Written `c | encoded one level less deep` (the forms of `levels - 1` but the literal ones are among
    the encoded ones), so that the three characters of an encoding, the same few for every character,
    are spelled once a level: 4x shorter than `c | encoded | c one level less deep`, the same strings."""
    # also as an error's repr or JSON shows it: `\xa0`, `\U0001f600`, `\"`
    shown = {c, repr(c)[1:-1], ascii(c)[1:-1], json.dumps(c)[1:-1], *(("+",) if c == " " else ())}
    literal = "|".join(map(re.escape, sorted(shown, key=len, reverse=True)))
    if levels == 0:
        return literal if len(shown) == 1 and len(literal) == 1 else f"(?:{literal})"
    encoded = "".join("".join(_char(e, levels - 1) for e in f"%{byte:02X}")
                      for byte in c.encode("utf-8", "surrogatepass"))
    # encoded first: a `%` of the secret written `%25` is masked whole, not as `%` and a `25` shown
    return f"(?:{encoded}|{literal})"


# --- free text: a log line of any library, a command line ----------------------------------------------

# a name that holds a credential where no setting names it (a header, a JSON or dict key, a keyword
# argument, a command-line flag, an environment word): one holding a stem of CREDENTIAL_STEMS, as in a
# query. In a log line without `code`, which there is an error's number or name (aiormq's `reply_code=320`,
# botocore's `'Code': 'AccessDenied'`), the first thing to read in a failure.
LOG_STEMS = tuple(s for s in CREDENTIAL_STEMS if s != "code")


def _name(stems: tuple[str, ...]) -> str:
    """A regex for such a name, from a word's start (dashes first: `--api-key`), not ending in `_env`
    (it names the variable a password is in) nor one of NOT_CREDENTIALS (a path: `--sslkey=/etc/k`)."""
    return (rf"(?<![\w.-])(?!-*(?:{'|'.join(NOT_CREDENTIALS)})(?![\w.-]))"
            rf"[\w.-]*?(?:{'|'.join(stems)})[\w.-]*(?<!_env)")


_LOG_NAME = _name(LOG_STEMS)
# `'X-Amz-Security-Token': b'...'`, `"SecretAccessKey": "..."`, `password='...'`: the quoted value, up to
# the text's end when it has no closing quote (a text cut to a bound inside the value)
_QUOTED = re.compile(rf"({_LOG_NAME}['\"]?\s*[:=]\s*b?)(['\"])((?:\\.|(?!\2)[^\\])*)(?:\2|\\?\Z)",
                     re.IGNORECASE | re.DOTALL)
# `Signature=abc,` `--api-key=abc`, `AWS_SESSION_TOKEN=abc`: an unquoted value, up to a space or a separator
_ASSIGNED = re.compile(rf"({_LOG_NAME}=)(?![\"'])[^\s,;&'\"()<>\[\]{{}}]+", re.IGNORECASE)
# `<SessionToken>...</SessionToken>` (an STS answer's body), or up to the text's end (cut inside it)
_ELEMENT = re.compile(rf"<({_LOG_NAME})>[^<]*(?:</\1>|<[^<>]*\Z|\Z)", re.IGNORECASE)
# an HTTP bearer token without its header's name (`Bearer eyJ...`, echoed by a store)
_BEARER = re.compile(r"(?<![\w-])(Bearer\s+)[A-Za-z0-9._~+/=-]{4,}", re.IGNORECASE)
# a header as a client writes it (`Authorization: AWS4-HMAC-SHA256 Credential=..., Signature=...`,
# botocore's canonical request `x-amz-security-token:...`): its value up to the end of the line, or the
# next line's when this one ends at the colon (botocore's `Signature:\n<hex>`). Only names a header holds
# a credential under: `auth: WRONGPASS ...` is a poll's reason, and its text is what to read.
_HEADER = re.compile(r"((?<![\w.-])[\w-]*(?:authorization|token|secret|password|passwd|api-?key|signature|"
                     r"credential|cookie)[\w-]*\s*:[ \t]*(?:\r?\n[ \t]*)?)[^\s'\"\\][^\r\n'\"\\]*", re.IGNORECASE)
# a URL's user info in free text (`url=http://user:pw@host/`): the password up to its last `@` before a
# space, a quote, a `/` or the next `scheme://`; a bare user name over HTTP is a token (a NATS one may
# be a user whose password is in `password_env=`: a configured token is among the secrets)
_USER_PASSWORD = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*:)(?:(?!://)[^\s'\"/])*@")
_USER_TOKEN = re.compile(r"\b(https?://)[^\s:/@'\"]+@", re.IGNORECASE)


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` from anywhere (a library's log line, its traceback, a command line) with `***` for what
    reads as a secret: each of `secrets` (as `mask_secrets`), a URL's password or bare token, a credential
    query parameter, and the value of a name that holds a credential (LOG_STEMS) as a header, a key, an
    argument or an XML element writes it."""
    text = mask_secrets(text, secrets)
    text = _QUOTED.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}{m.group(2)}", text)
    text = _ELEMENT.sub(lambda m: f"<{m.group(1)}>{MASK}</{m.group(1)}>", text)
    text = _HEADER.sub(lambda m: m.group(1) + MASK, text)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    text = _ASSIGNED.sub(lambda m: m.group(1) + MASK, text)
    text = _USER_PASSWORD.sub(lambda m: m.group(1) + MASK + "@", text)
    text = _USER_TOKEN.sub(lambda m: m.group(1) + MASK + "@", text)
    return mask_query_secrets(text)


# a flag or an environment word of a command line (`--api-key`, `DB_PASSWORD`): with the query's stems
_ARGUMENT_NAME = re.compile(_name(CREDENTIAL_STEMS), re.IGNORECASE)


def mask_command(argv: Iterable[str], secrets: Iterable[str] = ()) -> str:
    """A command line to show (`/status`, the log), its words joined by spaces, with `***` for the
    value of each `--flag=value`, `--flag value` and `NAME=value` whose name holds a CREDENTIAL_STEMS
    stem, and for what `mask_text` masks (a URL's password: `--db postgresql://app:***@db/app`). A word
    with spaces (`bash -c '...'`, a retitled process) is read word by word too."""
    secrets = tuple(secrets)
    shown: list[str] = []
    value_next = False
    for arg in argv:
        if value_next:
            shown.append(MASK)
            value_next = False
            continue
        name, assigned, _ = arg.partition("=")
        if assigned and _ARGUMENT_NAME.fullmatch(name):
            shown.append(f"{name}={MASK}")
            continue
        value_next = arg.startswith("-") and not assigned and _ARGUMENT_NAME.fullmatch(arg) is not None
        arg = mask_text(arg, secrets)
        shown.append(mask_command(arg.split(" "), secrets) if " " in arg else arg)
    return " ".join(shown)
