"""What every queue probe shares: the reading, the probe protocol, its errors and the URL.

A probe reads one queue's numbers and closes; it connects lazily on the first `read()` and the
source calls `close()` after any failure, so the next `read()` reconnects. Brokers live in one
module each (`sqs.py`, `rabbitmq.py`, ...) and import their client library only when opened.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Protocol
from urllib.parse import SplitResult, quote, unquote, urlencode, urlsplit, urlunsplit

from agent.config import check_text, parse_number, parse_seconds
from agent.logs import shown
from agent.urlmask import is_readable, mask_secrets, mask_url, url_passwords


# past it a float does not hold every whole number (2**53 + 1 would read as 2**53); sums such as the backlog
# stay far from overflowing
MAX_COUNT = 2**53
# A time read from a message (a stream id's ms part, RQ's `enqueued_at`, a RabbitMQ publisher's `timestamp`)
# is its enqueue time only when it could be one: from 2000 to the reader's clock plus a skew (a producer
# whose clock is a little ahead). Anything else is a producer's own numbering (`XADD s 1-1 ...`), another
# unit (milliseconds read as seconds), 0 or a sentinel: no age, never one of 0 or of 56 years.
PLAUSIBLE_FROM = 946_684_800  # 2000-01-01T00:00:00Z, seconds
CLOCK_SKEW = 60  # seconds a message time may lie ahead of the reader's clock (then its age is 0)
COUNTS = ("depth", "in_flight", "delayed", "consumers")  # whole numbers; the age is any number of seconds
NUMBERS = (*COUNTS, "oldest_age_seconds")  # a Reading's numbers


def exact_number(name: str, value: object) -> float:
    """`value` as a float, when it is a number from 0 to 2**53 (int, float or Decimal: a broker's API, a
    user's query) and, for a count, a whole one: then the float holds it exactly. Else ProbeError("bad_reply"):
    NaN, infinity, a negative or fractional count, a count past 2**53 (it would be rounded), text, a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)) or not _finite(value) \
            or not 0 <= value <= MAX_COUNT:
        raise ProbeError("bad_reply", f"{name} is {str(value)[:40]!r}: not a number from 0 to 2**53")
    if name in COUNTS and value != int(value):
        raise ProbeError("bad_reply", f"{name} is {str(value)[:40]!r}: not a whole number")
    return float(value)


def _finite(value: int | float | Decimal) -> bool:
    if isinstance(value, Decimal):
        return value.is_finite()  # before any comparison, which raises on a Decimal NaN
    return isinstance(value, int) or math.isfinite(value)  # an int is finite however large: the range refuses it


def age_of(stamp: int | float, now: float) -> float | None:
    """The age at `now` (the reader's clock, seconds) of a message stamped `stamp` (seconds since the epoch),
    or None when `stamp` is no plausible enqueue time (NaN too). An int is compared as it is, however large."""
    if not PLAUSIBLE_FROM <= stamp <= now + CLOCK_SKEW:
        return None
    return max(0.0, now - stamp)


@dataclass(frozen=True, slots=True)
class Reading:
    """One poll's numbers. None means the broker does not have that number (never a 0)."""

    depth: float | None = None
    in_flight: float | None = None
    delayed: float | None = None
    consumers: float | None = None
    oldest_age_seconds: float | None = None
    # what the broker gave for the oldest message's time when it is no plausible time (`age_of`): the age
    # is then left out, and the source counts and logs it (a publisher's bug, not a failed poll)
    unreadable_age: str | None = field(default=None, compare=False)

    def values(self) -> dict[str, float]:
        return {name: float(v) for name in NUMBERS if (v := getattr(self, name)) is not None}

    def checked(self) -> Reading:
        """This reading with each number a float that holds it exactly (`exact_number`), or ProbeError("bad_reply")
        naming the first that is not: the poll is then a gap, and nothing derived from it (backlog, trend) is
        wrong. Probes pass numbers on as their client gave them (an int, a Decimal), never rounded first."""
        def exact(name: str, v: float | None) -> float | None:
            return None if v is None else exact_number(name, v)

        return replace(self, depth=exact("depth", self.depth), in_flight=exact("in_flight", self.in_flight),
                       delayed=exact("delayed", self.delayed), consumers=exact("consumers", self.consumers),
                       oldest_age_seconds=exact("oldest_age_seconds", self.oldest_age_seconds))


class Probe(Protocol):
    async def read(self) -> Reading:
        """The queue's current numbers; raises on any failure (`ProbeError` when it knows why)."""

    async def close(self) -> None:
        """Drop the connection; the next `read()` opens a new one."""


class ProbeError(Exception):
    """A failed read with a short, bounded `reason` for the `poll_errors` self-metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


DEFAULT_TIMEOUT = 10.0  # per poll; polls never overlap, so a slow broker only delays the next one

# Query parameters every queue URL may carry; the rest belong to the broker module.
COMMON_PARAMS = frozenset({"name", "interval", "window", "threshold", "timeout", "password_env"})


@dataclass(frozen=True)
class QueueURL:
    """A parsed queue URL: its parts, its broker parameters and the per-queue overrides."""

    raw: str
    parts: SplitResult
    params: Mapping[str, str] = field(default_factory=dict)  # broker parameters, last one wins
    name: str | None = None
    interval: float | None = None
    window: float | None = None
    threshold: float | None = None
    timeout: float | None = None
    injected_secrets: tuple[str, ...] = ()  # from `password_env=`: in `parts`, not in `raw`

    @property
    def scheme(self) -> str:
        return self.parts.scheme.lower()

    @property
    def masked(self) -> str:
        """The URL as shown (`check`, `/status`, logs, errors): every password masked, one from
        `password_env=` too, wherever it occurs (a user name, a parameter, a path holding it)."""
        return mask_url(self.raw, secrets=self.injected_secrets)

    @property
    def poll_timeout(self) -> float:
        return self.timeout or DEFAULT_TIMEOUT

    @property
    def secrets(self) -> list[str]:
        """The URL's password, those of URLs in its parameters and one from `password_env=`."""
        return url_passwords(self.raw) + list(self.injected_secrets)

    def client_url(self, keep: Callable[[str], bool] = lambda key: False) -> str:
        """The URL without our parameters, for a client that parses URLs itself (redis, asyncpg)."""
        query = urlencode([(k, v) for k, v in query_params(self.parts.query)
                           if k not in COMMON_PARAMS and keep(k)])
        return urlunsplit(self.parts._replace(query=query, fragment=""))


def query_params(query: str) -> list[tuple[str, str]]:
    """`k=v&k=v` percent-decoded as a URL's query (RFC 3986), not as an HTML form: `+` is a plus (a Redis
    key `jobs+high`; `parse_qsl` would poll `jobs high`, an absent key that reads as an empty queue), and
    a space is `%20`. Octets that are not UTF-8 (`%FF`) are an error: read as U+FFFD they would name
    another key, absent, and the queue would read as empty."""
    try:
        return [(unquote(key, errors="strict"), unquote(value, errors="strict")) for key, _, value in
                (field.partition("=") for field in query.split("&") if field)]
    except UnicodeDecodeError:
        raise ValueError("a parameter holds percent-encoded bytes that are not UTF-8 (%FF, say): "
                         "such a key or name cannot be read") from None


def with_password(parts: SplitResult, password: str) -> SplitResult:
    """The URL with `password` in its user part (percent-encoded, as a client will decode it)."""
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:{quote(password, safe='')}@{netloc}")


def parse_queue_url(url: str, broker_params: frozenset[str], pass_through: bool = False,
                    environ: Mapping[str, str] | None = None) -> QueueURL:
    """Split a queue URL; unknown parameters are an error unless the client takes them (`pass_through`).

    `password_env=NAME` takes the password from the variable NAME (an ECS secret), so that the URL
    itself can stay in plain `environment`. Every error message is masked: it may quote part of the URL.
    """
    try:
        return _parse_queue_url(url, broker_params, pass_through, environ)
    except ValueError as exc:
        raise ValueError(mask_secrets(str(exc), url_passwords(url, environ))) from None


# A URL read otherwise than written would send part of its password as a host, port, path or parameter,
# and quote it in errors; said without quoting any of it.
UNREADABLE = ("not a valid URL as written: a user name or password with / ? # @ (or & in a parameter's URL) must "
              "be percent-encoded (%2F %3F %23 %40 %26), as must an @ after the host, and the port must be a number "
              "from 0 to 65535")


def _parse_queue_url(url: str, broker_params: frozenset[str], pass_through: bool,
                     environ: Mapping[str, str] | None) -> QueueURL:
    if not is_readable(url):
        raise ValueError(UNREADABLE)
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    params: dict[str, str] = {}
    common: dict[str, str] = {}
    for key, value in query_params(parts.query):
        # decoded: `%0A` must not smuggle a newline into a label or a log line (`name=`, `list=`, ...);
        # an SQL query is the one value where a newline is only white space
        check_text(key if key == "query" else key + value, f"{shown(key)}=: text (decoded)", 2048)
        if "://" in value and not is_readable(value):  # a URL in a parameter (`management=`), decoded
            raise ValueError(f"{key}=: {UNREADABLE}")
        if key in COMMON_PARAMS:
            common[key] = value
        elif key in broker_params or pass_through:
            params[key] = value
        else:
            known = ", ".join(sorted(COMMON_PARAMS | broker_params))
            # a name no parameter has may be a password's end, cut off at an unencoded `&`: not quoted
            named = repr(key) if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", key) else "(its name not shown: not a parameter's)"
            raise ValueError(f"unknown parameter {named} (known: {known})")
    overrides: dict[str, float] = {}
    for key, parse in (("interval", parse_seconds), ("window", parse_seconds), ("timeout", parse_seconds),
                       ("threshold", parse_number)):
        if key in common:
            try:
                overrides[key] = parse(common[key])
            except ValueError as exc:
                raise ValueError(f"{key}={common[key]!r}: expected {exc}") from None
    injected: tuple[str, ...] = ()
    if common.get("password_env"):
        variable = common["password_env"]
        password = (os.environ if environ is None else environ).get(variable)
        if password is None:
            raise ValueError(f"password_env={variable!r}: that variable is not set")
        parts, injected = with_password(parts, password), (password,)
    return QueueURL(raw=url.strip(), parts=parts, params=params, name=common.get("name") or None,
                    injected_secrets=injected, **overrides)


def mask_secret(text: str, url: QueueURL) -> str:
    """Hide the URL's passwords where a client library echoes them in an error message."""
    return mask_secrets(text, url.secrets)


def readable_files(url: QueueURL, keys: tuple[str, ...]) -> None:
    """Raises ValueError when a parameter among `keys` names no file the sidecar can read (a CA bundle, a
    client certificate or key): the client would fail at every poll, its error counted and logged each time."""
    for key in keys:
        path = url.params.get(key)
        if path is None:
            continue
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            why = "not readable" if os.path.isfile(path) else "no such file"
            raise ValueError(f"{key}={path[:200]!r}: {why}")


def flag(url: QueueURL, key: str) -> bool:
    value = url.params.get(key, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{key}={value!r}: expected true or false")


@dataclass(frozen=True)
class Broker:
    """What the registry knows about one broker module, without importing its client."""

    queue_type: str
    client: str  # the importable module of the asyncio client, e.g. `aiobotocore`
    extra: str  # the pip extra that installs it: `tasklens[sqs]`
    params: frozenset[str]
    name: Callable[[QueueURL], str]  # the `queue` tag; raises ValueError when the URL lacks it
    reports: Callable[[QueueURL], tuple[str, ...]]  # the Reading fields this URL yields
    open: Callable[[QueueURL], Probe]
    pass_through: bool = False  # unknown parameters go to the client's URL
    queue_type_of: Callable[[QueueURL], str] | None = None  # when one module serves two types
    # what else makes the URL unusable, found at start-up rather than at every poll; raises ValueError
    check: Callable[[QueueURL], None] = lambda url: None
    imports: tuple[str, ...] = ()  # the modules its probe imports on its first read (none given: `client`)

    def type_of(self, url: QueueURL) -> str:
        return self.queue_type_of(url) if self.queue_type_of else self.queue_type


@dataclass(frozen=True)
class Target:
    """One configured queue: its broker, parsed URL, name (the `queue` tag) and type."""

    broker: Broker
    url: QueueURL
    name: str
    queue_type: str
