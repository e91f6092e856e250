"""One typed configuration object, read from `TASKLENS_*` variables and an optional TOML file.

Every setting has an environment variable; the file (`TASKLENS_CONFIG_FILE`) may set the same keys
(the variable's name without the prefix, lowercased: `poll_interval = 5`) plus what does not fit in a
variable (StatsD mapping rules). The environment wins over the file. A bad value stops start-up with
a `ConfigError` that names the variable, the value and the expected form.
"""

from __future__ import annotations

import difflib
import ipaddress
import itertools
import math
import os
import re
import socket
import stat
import tomllib
import unicodedata
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar
from urllib.parse import urlsplit

from agent.urlmask import mask_url, split_password
from integrations.profilers.sitecustomize import is_decimal
from integrations.profilers.sitecustomize import parse_tags as tag_list

PREFIX = "TASKLENS_"


class ConfigError(ValueError):
    pass


# --- value parsers: str -> value, raising ValueError with the expected form --------------------
#
# A parser checks the form; `setting(low=, high=)` adds the range of a number (of every number of a
# list), so a new setting gets a bound by the same pattern. Without one, the parser's default range
# below applies: no setting is unbounded.

MAX_TEXT = 1024  # characters of a free-form value (a path, a regex, a user name)
MAX_TAG = 200  # characters of a tag, as Datadog keeps them
MAX_ITEMS = 100  # entries of a list setting (tags, queue URLs, buckets)


def check_text(text: str, form: str, limit: int = MAX_TEXT) -> str:
    """`text` unless it holds bytes that were not UTF-8 (decoded as surrogates by Python), a control
    character (a newline would split a log line or a StatsD line), or is longer than `limit`."""
    if any("\ud800" <= c <= "\udfff" for c in text):
        raise ValueError(f"{form}, in UTF-8 (this value has bytes that are not)")
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise ValueError(f"{form}, without control characters (newline, tab, escape...)")
    if len(text) > limit:
        raise ValueError(f"{form}, at most {limit} characters")
    return text


def parse_text(text: str) -> str:
    return check_text(text.strip(), "text")


def parse_name(text: str) -> str:
    """A tag value (service, env, version)."""
    return check_text(text.strip(), "a name", MAX_TAG)


def parse_secret(text: str) -> str:
    return check_text(text.strip(), "a secret")


def parse_path(text: str) -> str:
    return check_text(text.strip(), "a file path", 4096)


def parse_socket_path(text: str) -> str:
    path = check_text(text.strip(), "a Unix socket path")
    if len(path.encode()) > 107:  # sun_path is 108 bytes with its terminating NUL
        raise ValueError("a Unix socket path of at most 107 bytes")
    return path


def parse_regex(text: str) -> str:
    text = check_text(text.strip(), "a regular expression")
    try:
        with warnings.catch_warnings():  # `[[` warns "possible nested set": a pattern, not our problem
            warnings.simplefilter("ignore")
            re.compile(text)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ValueError(f"a regular expression ({exc})") from None
    return text


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?", re.ASCII)


def parse_hostname(text: str) -> str:
    text = text.strip()
    if not _HOSTNAME.fullmatch(text):
        raise ValueError("a host name, e.g. datadoghq.eu")
    return text


_WHOLE = re.compile(r"\s*[+-]?[0-9]+\s*")


def _float(text: str) -> float:
    """float() of a number written as a decimal (`10`, `2.5`, `1e3`): float() alone also takes `1_0`,
    `１０` and other scripts' digits, `nan` and `infinity`, so that a typo is read as a number."""
    if not is_decimal(text):
        raise ValueError(text)
    return float(text)


def _int(text: str) -> int:
    """int() of a whole number written in ASCII digits, for the same reason as `_float`."""
    if not _WHOLE.fullmatch(text):
        raise ValueError(text)
    return int(text)


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("true or false")


def parse_seconds(text: str) -> float:
    try:
        value = _float(text)
    except ValueError:
        raise ValueError("a number of seconds > 0, e.g. 10 or 2.5") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("a number of seconds > 0, e.g. 10 or 2.5")
    return value


def parse_milliseconds(text: str) -> float:
    """What OpenTelemetry's settings take (`OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_EXPORTER_OTLP_TIMEOUT`)."""
    try:
        return parse_seconds(text)
    except ValueError:
        raise ValueError("a number of milliseconds > 0, e.g. 10000") from None


def parse_number(text: str) -> float:
    """A finite number (`nan` and `inf` parse as floats but mean nothing as a threshold)."""
    try:
        value = _float(text)
    except ValueError:
        raise ValueError("a number") from None
    if not math.isfinite(value):
        raise ValueError("a number")
    return value


def parse_positive_int(text: str) -> int:
    try:
        value = _int(text)
    except ValueError:
        raise ValueError("a whole number > 0") from None
    if value <= 0:
        raise ValueError("a whole number > 0")
    return value


def parse_count(text: str) -> int:
    """A whole number, 0 allowed (0 usually means "off" or "not set")."""
    try:
        value = _int(text)
    except ValueError:
        raise ValueError("a whole number >= 0") from None
    if value < 0:
        raise ValueError("a whole number >= 0")
    return value


def parse_size(text: str) -> int:
    """Bytes, with an optional K/M/G suffix (powers of 1024): `8M`, `65536`."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(t[-1:], 1)
    if scale != 1:
        t = t[:-1]
    try:
        value = int(_float(t) * scale)
    except (ValueError, OverflowError):  # `1e400` is an infinite float, which int() refuses
        raise ValueError("a size in bytes, e.g. 8M or 65536") from None
    if value <= 0:
        raise ValueError("a size in bytes > 0, e.g. 8M or 65536")
    return value


def parse_tags(text: str) -> tuple[tuple[str, str], ...]:
    """`k:v,k:v`: each item at most MAX_TAG characters, at most MAX_ITEMS, keys that stay apart as
    Prometheus labels. The rule lives in the profiling bootstrap, which runs in the worker where `agent`
    cannot be imported, so that both profiling modes take the same `TASKLENS_TAGS`."""
    return tuple(tag_list(text))


def _host(host: str, expected: str) -> str:
    """An IP address (v6 without brackets, maybe with a %zone) or a host name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(expected) from None
    return host


def parse_addr(text: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces)."""
    expected = "host:port, e.g. 127.0.0.1:9102 or [::1]:9102"
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(expected)
    if "[" in host or "]" in host:  # `[v6]` exactly: `[]`, `]` or `[[::1]]` is no host, not every interface
        if not (host.startswith("[") and host.endswith("]")) or not host[1:-1] or "[" in host[1:-1] or "]" in host[1:-1]:
            raise ValueError(expected)
        host = host[1:-1]
    try:
        port = _int(port_text)
    except ValueError:
        raise ValueError(expected) from None
    if not 0 <= port <= 65535:
        raise ValueError(expected)
    return _host(host, expected) if host else "0.0.0.0", port


def parse_optional_addr(text: str) -> tuple[str, int] | None:
    if text.strip().lower() in ("", "off", "none", "disabled"):
        return None
    return parse_addr(text)


def parse_target(text: str) -> tuple[str, int] | None:
    """Where to send (`host:port`, or off): port 0 means "any port" to bind, nothing to send to."""
    addr = parse_optional_addr(text)
    if addr is not None and addr[1] == 0:
        raise ValueError("host:port with a port from 1 to 65535, e.g. 127.0.0.1:8125")
    return addr


def parse_http_url(text: str) -> str:
    text = text.strip()
    expected = "an http:// or https:// URL, e.g. http://host:4040"
    check_text(text, expected, 2048)
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ValueError(expected) from None
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        hint = " (or a password holds an unencoded / ? # or @)" if "@" in text else ""
        raise ValueError(f"{expected}; its port is not a number from 0 to 65535{hint}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in text:
        raise ValueError(expected)
    return text


def parse_base_url(text: str) -> str:
    """An http(s) URL that paths are appended to (`/api/v2/series`, `/v1/metrics`, `/ingest`): a query or
    fragment would end up before them, so every request would go to the base path."""
    text = parse_http_url(text)
    if "?" in text or "#" in text:
        raise ValueError("an http:// or https:// base URL without a query or fragment (paths are appended "
                         "to it), e.g. https://host:4318")
    return text


def parse_url_list(text: str) -> tuple[str, ...]:
    expected = "comma-separated URLs, e.g. sqs://orders?region=eu-west-1,redis://host:6379/0?list=jobs"
    if split_password(text):
        raise ValueError(f"{expected}: a password's , must be percent-encoded (%2C): the list is split at every comma, "
                         "and the URL before it does not read as one by itself (a `:` after its host may be a "
                         "password's, spanning the next URL; if none is, list the URL with the user name first)")
    urls = tuple(u.strip() for u in text.split(",") if u.strip())
    for url in urls:
        check_text(url, expected, 2048)
        if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url) or any(c.isspace() for c in url):
            raise ValueError(expected)
    if len(urls) > MAX_ITEMS:
        raise ValueError(f"{expected}, at most {MAX_ITEMS}")
    return urls


def parse_float_list(text: str) -> tuple[float, ...]:
    expected = "comma-separated numbers, e.g. 0.005,0.01,0.1,1"
    try:
        values = tuple(_float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or len(values) > MAX_ITEMS or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{expected}: 1 to {MAX_ITEMS} finite numbers")
    return values


def parse_buckets(text: str) -> tuple[float, ...]:
    """Histogram bucket bounds: `le` labels, so strictly increasing (a repeat is a duplicate series)."""
    values = parse_float_list(text)
    for low, high in itertools.pairwise(values):
        if not low < high:
            what = "repeated" if low == high else f"not above {number_text(low)}"
            raise ValueError(f"comma-separated finite numbers in increasing order, e.g. 0.1,0.5,1 "
                             f"({number_text(high)} is {what})")
    return values


def parse_percentiles(text: str) -> tuple[float, ...]:
    """Fractions (their range, 0.000001 to 0.999999, is DEFAULT_RANGE's)."""
    try:
        values = parse_float_list(text)
    except ValueError:  # its message shows bucket bounds, of which 1 is one and a percentile is not
        raise ValueError(f"comma-separated fractions between 0 and 1, e.g. 0.95,0.99, at most {MAX_ITEMS} "
                         "(none: no percentile series)") from None
    # each becomes a `<p>percentile` series, p in percent with 4 decimals: two that round alike collide
    suffixes = [round(v * 100, 4) for v in values]
    if len(set(suffixes)) != len(suffixes):
        raise ValueError("comma-separated fractions between 0 and 1 without repeats (to 6 decimals), e.g. 0.95,0.99")
    return values


def parse_str_list(text: str) -> tuple[str, ...]:
    if text.strip().lower() == "none":  # an empty list: an empty variable is unset (the default)
        return ()
    values = tuple(check_text(v.strip(), "comma-separated names", MAX_TAG) for v in text.split(",") if v.strip())
    if len(values) > MAX_ITEMS:
        raise ValueError(f"comma-separated names, at most {MAX_ITEMS}")
    return values


# CloudWatch's rules for EMF (CloudWatch API reference: Dimension, Metric, PutMetricData; the EMF
# specification). Here so that `check` and `run` refuse a bad setting alike; agent/sinks/emf.py applies
# the same rules to the tags and names of the points it writes.
EMF_MAX_DIMENSIONS = 9  # dimension keys per record: the archived EMF specification's, stricter than today's 30
EMF_MAX_NAME = 255  # characters of a namespace, a dimension name or a metric name
EMF_ROOT = "_aws"  # the record's metadata member: no dimension or metric may take its place at the root
_EMF_GLOB = re.compile(r"[a-zA-Z0-9_:*?\[\]!]+")


def is_cloudwatch_text(text: str, limit: int) -> bool:
    """What CloudWatch takes as a namespace, a dimension name or value: 1 to `limit` ASCII characters,
    no control character, not only spaces."""
    return 0 < len(text) <= limit and text.isascii() and text.isprintable() and not text.isspace()


def parse_cloudwatch_namespace(text: str) -> str:
    text = text.strip()
    if not is_cloudwatch_text(text, EMF_MAX_NAME) or text.startswith((":", "AWS/")):
        raise ValueError(f"a CloudWatch namespace: 1-{EMF_MAX_NAME} printable ASCII characters, not starting "
                         "with ':' nor with 'AWS/' (reserved for AWS services), e.g. tasklens or MyApp/Workers")
    return text


def parse_cloudwatch_dimensions(text: str) -> tuple[str, ...]:
    expected = (f"comma-separated tag keys, at most {EMF_MAX_DIMENSIONS}, each once, of 1-{EMF_MAX_NAME} printable "
                f"ASCII characters, not starting with ':', not {EMF_ROOT!r}, e.g. ecs_cluster,service,queue")
    names = parse_str_list(text)
    for i, name in enumerate(names):
        if not is_cloudwatch_text(name, EMF_MAX_NAME) or name.startswith(":") or name == EMF_ROOT:
            raise ValueError(f"{expected} ({name!r} is not one)")
        if name in names[:i]:
            raise ValueError(f"{expected} ({name!r} is repeated)")
    if len(names) > EMF_MAX_DIMENSIONS:
        raise ValueError(f"{expected} ({len(names)} given)")
    return names


# why a metric selection may not be empty: the refusal of `none` and of a list of no name alike
NO_METRIC = ("comma-separated names as on /metrics (fnmatch globs, e.g. queue_*): a selection must name at least one "
             "metric (one of none would send nothing while the exporter runs; to turn it off, leave its URL or "
             "switch unset)")


def parse_selection(text: str) -> tuple[str, ...]:
    """Names or globs of the metrics an exporter sends: at least one (an empty selection sent nothing
    while the exporter ran, silently; to turn an exporter off, leave its URL or switch unset)."""
    names = parse_str_list(text)
    if not names:
        raise ValueError(NO_METRIC)
    return names


def parse_cloudwatch_metrics(text: str) -> tuple[str, ...]:
    globs = parse_selection(text)
    for glob in globs:
        if not _EMF_GLOB.fullmatch(glob):
            raise ValueError("comma-separated Prometheus-style names or fnmatch globs, e.g. queue_depth,ecs_task_* "
                             f"({glob!r} is not one)")
    return globs


HISTOGRAM_AGGREGATES = ("max", "min", "median", "avg", "sum", "count")


def parse_aggregates(text: str) -> tuple[str, ...]:
    values = tuple(v.lower() for v in parse_str_list(text))
    unknown = [v for v in values if v not in HISTOGRAM_AGGREGATES]
    if unknown or len(set(values)) != len(values):
        why = f"{unknown[0]!r} is not one" if unknown else "each once"
        raise ValueError(f"comma-separated names from {', '.join(HISTOGRAM_AGGREGATES)} ({why})")
    return values


def parse_headers(text: str) -> tuple[tuple[str, str], ...]:
    """`Name=value,Name2=value2` (the OTLP header format; values percent-decoded), for headers and attributes."""
    from urllib.parse import unquote

    expected = "comma-separated name=value pairs, e.g. X-Scope-OrgID=team-a,Authorization=Bearer%20x"
    check_text(text, expected)
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or any(c in key for c in "\r\n:"):
            raise ValueError(expected)
        name, value = unquote(key.strip()), unquote(value.strip())
        check_text(name + value, expected + " (decoded)")  # %0A must not smuggle a newline into a header
        out[name] = value
    if len(out) > MAX_ITEMS:
        raise ValueError(f"{expected}, at most {MAX_ITEMS}")
    return tuple(out.items())


_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110, 5.1)


# Headers the HTTP client writes itself: the message's framing, its target and the connection's own
# (hop-by-hop, RFC 9110 7.6.1 and 7.2; `Expect` asks for a 100-continue exchange the client does not
# do). One given as an extra header is sent beside (or instead of) the client's own on every request:
# `Content-Length=5` made a real Prometheus refuse every push (`snappy: corrupt input`), and a lenient
# receiver read 5 bytes of each body. Refused at start by the push sinks that take extra headers.
CLIENT_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection", "keep-alive", "te",
                            "trailer", "upgrade", "proxy-connection", "expect"})


def refused_header(headers: tuple[tuple[str, str], ...], own: Mapping[str, str]) -> str | None:
    """Why a list of extra headers cannot be sent as written, or None: a header the HTTP client owns
    (`CLIENT_HEADERS`), one the sink sets itself (`own`: lower-case name -> what it is), or a name given
    twice in two cases (`X-A=1,x-a=2`: both would be sent). Names compare case-insensitively, as HTTP's."""
    seen: set[str] = set()
    for name, _ in headers:
        low = name.lower()
        if low in CLIENT_HEADERS:
            return (f"{name!r} is written by the HTTP client itself (framing and connection headers: "
                    f"{', '.join(sorted(CLIENT_HEADERS))}); sent as well, it breaks every request")
        if low in own:
            return f"{name!r} is set by tasklens itself ({own[low]}) and cannot be overridden"
        if low in seen:
            return f"{name!r} is given twice (header names are case-insensitive)"
        seen.add(low)
    return None


def headers_text(text: str) -> str:
    """Checked like `parse_headers`, each name an HTTP field name, but kept as text: a secret setting
    must be a string to be masked."""
    for name, _ in parse_headers(text):
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"comma-separated name=value pairs, each name an HTTP header name ({name!r} is not)")
    return text.strip()


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        low = text.strip().lower()
        if low not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return low

    return parse


def parse_otlp_protocol(text: str) -> str:
    """`OTEL_EXPORTER_OTLP_PROTOCOL`, `..._METRICS_PROTOCOL`: read as written, lower-cased. Only
    `http/protobuf` is sent: the OTLP sink and `check` refuse another one, when OTLP is on
    (`agent/sinks/otlp.py` `check_protocol`); the variables are often set for the whole task, for the
    application's own OpenTelemetry SDK too."""
    return check_text(text.strip().lower(), "an OTLP protocol, e.g. http/protobuf", 64)


def _parse_busy_rule(text: str) -> str:
    from agent.scaling.busy import parse_rule  # the grammar lives with the rule (docs/scaling.md)

    if not text.strip():
        return ""
    canonical = str(parse_rule(text))
    # kept in its canonical form, which `run` parses again: that form must be within the limit too
    # (`,` is ` or ` there, `a-b>1` is `a - b > 1`)
    parse_rule(canonical)
    return canonical


def number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


# the range a parser's numbers get when a setting gives none, and how a range is described
DEFAULT_RANGE: dict[Callable[[str], Any], tuple[float, float, str]] = {
    parse_seconds: (0.001, 7 * 86400, "a number of seconds"),
    parse_milliseconds: (1, 7 * 86400 * 1000, "a number of milliseconds"),
    parse_positive_int: (1, 2**31 - 1, "a whole number"),
    parse_count: (0, 2**31 - 1, "a whole number"),
    parse_size: (1, 2**40, "a size in bytes (K, M, G suffixes allowed)"),
    parse_number: (-1e15, 1e15, "a number"),
    parse_float_list: (-1e15, 1e15, "comma-separated numbers, each"),
    parse_buckets: (-1e15, 1e15, "comma-separated increasing numbers, each"),
    parse_percentiles: (0.000001, 0.999999, "comma-separated fractions, each"),
}


def check_range(value: Any, low: float, high: float, form: str) -> None:
    """Raise ValueError unless the number (or every number of a tuple) is in [low, high]."""
    numbers = value if isinstance(value, tuple) else (value,)
    for v in numbers:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not low <= v <= high:
            raise ValueError(f"{form} from {number_text(low)} to {number_text(high)}")


def setting(default: Any, parse: Callable[[str], Any] = parse_text, *, env: str = "", secret: bool = False,
            url: bool = False, doc: str = "", low: float | None = None, high: float | None = None,
            empty: str = "") -> Any:
    """A dataclass field that knows its variable (default `TASKLENS_<NAME>`), how to parse it and, for a
    number, its range (`low`..`high`, inclusive; the parser's default range when not given).

    `secret`: shown masked, and deployed only through secrets (`valueFrom`); `url`: URLs that may carry
    a password, shown with it masked. `empty`: for a list that may not be empty, why (the error given for
    `none`, which empties every other list: see `parse_value`).
    """
    bounds: tuple[float, float, str] | None = None
    if parse in DEFAULT_RANGE:
        default_low, default_high, form = DEFAULT_RANGE[parse]
        bounds = (default_low if low is None else low, default_high if high is None else high, form)
    elif low is not None or high is not None:
        bounds = (-math.inf if low is None else low, math.inf if high is None else high, "a value")
    # neither stays in repr(config): a traceback or a debug log must not print the API key or a password
    return field(default=default, repr=not (secret or url),
                 metadata={"parse": parse, "env": env, "secret": secret, "url": url, "doc": doc, "bounds": bounds,
                           "empty": empty})


@dataclass(frozen=True)
class Config:
    # identity
    service: str = setting("", parse_name, doc="service name; else DD_SERVICE, ECS ServiceName, Group, Family")
    env: str = setting("", parse_name, doc="environment tag; else DD_ENV")
    version: str = setting("", parse_name, doc="version tag; else DD_VERSION")
    tags: tuple[tuple[str, str], ...] = setting((), parse_tags, doc="extra tags, k:v,k:v")
    # runtime and HTTP
    http_addr: tuple[str, int] = setting(("127.0.0.1", 9102), parse_addr, doc="HTTP listen address")
    poll_interval: float = setting(10.0, parse_seconds, low=0.5, high=3600, doc="ECS metadata poll interval (s)")
    metadata_timeout: float = setting(3.0, parse_seconds, low=0.1, high=60, doc="ECS metadata request timeout (s)")
    shutdown_timeout: float = setting(20.0, parse_seconds, low=1, high=3600, doc="deadline to flush on SIGTERM (s)")
    prometheus_ttl: float = setting(300.0, parse_seconds, low=1, high=7 * 86400,
                                    doc="drop series not updated for this long (s)")
    log_level: str = setting("info", parse_choice("debug", "info", "warning", "error"))
    config_file: str = setting("", parse_path, doc="optional TOML file with the same keys")
    # StatsD
    statsd_addr: tuple[str, int] | None = setting(("127.0.0.1", 8125), parse_optional_addr,
                                                  doc="StatsD UDP address, or off")
    statsd_socket: str = setting("", parse_socket_path, doc="Unix datagram socket path for StatsD")
    statsd_rcvbuf: int = setting(8 * 1024 * 1024, parse_size, low=4096, high=2**30,
                                 doc="socket receive buffer requested")
    # the StatsD receive thread's own buffer, in user space (docs/statsd.md, "How it is built")
    statsd_buffer_bytes: int = setting(32 * 1024 * 1024, parse_size, low=256 * 1024, high=2**30,
                                       doc="StatsD datagrams read but not yet parsed, at most")
    statsd_receiver: str = setting("native", parse_choice("native", "python"),
                                   doc="who reads the StatsD sockets: a C thread (native) or the Python thread")
    flush_interval: float = setting(10.0, parse_seconds, low=1, high=3600, doc="StatsD aggregation interval (s)")
    statsd_max_contexts: int = setting(100_000, parse_positive_int, high=10_000_000, doc="cap on live StatsD contexts")
    statsd_context_ttl: float = setting(300.0, parse_seconds, low=1, high=7 * 86400,
                                        doc="idle StatsD contexts expire after (s)")
    statsd_gauge_deltas: bool = setting(False, parse_bool, doc="Etsy-style +N/-N gauge deltas")
    histogram_aggregates: tuple[str, ...] = setting(("max", "median", "avg", "count"), parse_aggregates,
                                                    doc="Datadog histogram aggregates")
    histogram_percentiles: tuple[float, ...] = setting((0.95,), parse_percentiles)
    histogram_buckets: tuple[float, ...] = setting(
        (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), parse_buckets,
        doc="Prometheus buckets for StatsD histograms (timers in seconds)")
    # Datadog
    dd_api_key: str = setting("", parse_secret, env="DD_API_KEY", secret=True)
    dd_site: str = setting("datadoghq.com", parse_hostname, env="DD_SITE")
    dd_url: str = setting("", parse_base_url, env="DD_DD_URL", url=True, doc="intake base URL override")
    # low: a buffer smaller than one flush of the sidecar's own series holds nothing past the newest flush
    datadog_buffer_points: int = setting(2_000_000, parse_positive_int, low=1000, high=100_000_000,
                                         doc="points kept while the intake is down")
    datadog_buffer_bytes: int = setting(32 * 1024**2, parse_size, low=1024**2, high=2**30,
                                        doc="bytes of payloads kept while the intake is down")
    datadog_timeout: float = setting(10.0, parse_seconds, low=0.1, high=300)
    dogstatsd_forward: tuple[str, int] | None = setting(None, parse_target,
                                                        doc="forward enriched lines to a DogStatsD agent")
    # queues
    queues: tuple[str, ...] = setting((), parse_url_list, url=True, doc="queue URLs, comma-separated")
    queue_poll_interval: float = setting(15.0, parse_seconds, low=0.1, high=3600)
    queue_trend_window: float = setting(300.0, parse_seconds, low=1, high=7 * 86400)
    queue_backlog_threshold: float = setting(100.0, parse_number, low=0, high=1e15,
                                            doc="depth above which growth means backing up")
    # profiling
    pyroscope_url: str = setting("", parse_base_url, secret=True, url=True, doc="Pyroscope server; enables profiling")
    pyroscope_user: str = setting("")
    pyroscope_password: str = setting("", parse_secret, secret=True)
    pyroscope_tenant: str = setting("", doc="X-Scope-OrgID")
    profile_mode: str = setting("sidecar", parse_choice("sidecar", "off"))
    profile_rate: int = setting(100, parse_positive_int, high=1000, doc="py-spy samples per second")
    profile_window: float = setting(10.0, parse_seconds, low=1, high=3600, doc="seconds per py-spy sampling window")
    profile_match: str = setting("", parse_regex, doc="regex on the command line of processes to profile")
    # fleet export: remote_write, OTLP/HTTP, CloudWatch EMF (agent/sinks/remote_write.py, otlp.py, emf.py)
    remote_write_url: str = setting("", parse_http_url, url=True, doc="Prometheus remote_write URL; enables it")
    remote_write_labels: tuple[tuple[str, str], ...] = setting((), parse_tags, doc="external labels, k:v,k:v")
    remote_write_username: str = setting("", doc="basic auth user")
    remote_write_password: str = setting("", secret=True, doc="basic auth password")
    remote_write_bearer_token: str = setting("", secret=True, doc="Authorization: Bearer token")
    remote_write_headers: str = setting("", headers_text, secret=True, doc="extra headers, Name=value,Name=value")
    remote_write_sigv4: str = setting("auto", parse_choice("auto", "on", "off"),
                                      doc="SigV4 signing; auto: on for aps-workspaces URLs")
    remote_write_sigv4_region: str = setting("", doc="SigV4 region; else from the URL")
    remote_write_sigv4_service: str = setting("aps", doc="SigV4 service name")
    remote_write_interval: float = setting(10.0, parse_seconds, low=1, high=3600, doc="seconds between pushes")
    remote_write_metrics: tuple[str, ...] = setting(("*",), parse_selection, empty=NO_METRIC,
                                                    doc="Prometheus-style names (fnmatch globs) pushed")
    remote_write_batch_samples: int = setting(2000, parse_positive_int, doc="samples per request at most")
    # VictoriaMetrics keeps 30 labels by default and drops the rest silently (the identity labels among
    # them); AMP refuses over 70: a series over the bound is refused here and counted instead
    remote_write_max_labels: int = setting(30, parse_positive_int, low=10, high=1000,
                                           doc="labels per series at most (__name__ and le included)")
    remote_write_buffer_points: int = setting(1_000_000, parse_positive_int, doc="samples kept while the store is down")
    remote_write_buffer_bytes: int = setting(32 * 1024**2, parse_size, low=1024**2, high=2**30,
                                             doc="bytes of requests kept while the store is down")
    remote_write_timeout: float = setting(10.0, parse_seconds, low=0.1, high=300)
    otlp_endpoint: str = setting("", parse_base_url, env="OTEL_EXPORTER_OTLP_ENDPOINT", url=True,
                                 doc="OTLP/HTTP base URL; enables OTLP (+ /v1/metrics)")
    otlp_metrics_endpoint: str = setting("", parse_http_url, env="OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", url=True,
                                         doc="OTLP/HTTP metrics URL, used as is")
    otlp_headers: str = setting("", headers_text, env="OTEL_EXPORTER_OTLP_HEADERS", secret=True)
    otlp_metrics_headers: str = setting("", headers_text, env="OTEL_EXPORTER_OTLP_METRICS_HEADERS", secret=True)
    otlp_protocol: str = setting("", parse_otlp_protocol, env="OTEL_EXPORTER_OTLP_PROTOCOL",
                                 doc="http/protobuf only (grpc and http/json are refused at start when OTLP is on)")
    otlp_metrics_protocol: str = setting("", parse_otlp_protocol, env="OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
                                         doc="as OTEL_EXPORTER_OTLP_PROTOCOL, and before it")
    otlp_compression: str = setting("gzip", parse_choice("gzip", "none"), env="OTEL_EXPORTER_OTLP_COMPRESSION")
    otlp_timeout_ms: float = setting(10000.0, parse_milliseconds, env="OTEL_EXPORTER_OTLP_TIMEOUT", low=100,
                                     high=300_000, doc="milliseconds")
    otlp_interval_ms: float = setting(10000.0, parse_milliseconds, env="OTEL_METRIC_EXPORT_INTERVAL", low=1000,
                                      high=3_600_000, doc="milliseconds")
    otlp_temporality: str = setting("cumulative", parse_choice("cumulative", "delta", "lowmemory"),
                                    env="OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")
    otel_resource_attributes: tuple[tuple[str, str], ...] = setting((), parse_headers, env="OTEL_RESOURCE_ATTRIBUTES")
    otel_service_name: str = setting("", env="OTEL_SERVICE_NAME")
    otlp_buffer_points: int = setting(1_000_000, parse_positive_int, doc="points kept while the collector is down")
    otlp_buffer_bytes: int = setting(32 * 1024**2, parse_size, low=1024**2, high=2**30,
                                     doc="bytes of requests kept while the collector is down")
    cloudwatch: str = setting("off", parse_choice("off", "emf"), doc="emf: CloudWatch EMF records on stdout")
    cloudwatch_namespace: str = setting("tasklens", parse_cloudwatch_namespace, doc="EMF namespace")
    cloudwatch_metrics: tuple[str, ...] = setting(
        ("queue_backlog*", "queue_depth", "queue_in_flight", "queue_oldest_age_seconds", "tasklens_scaling_*",
         "ecs_task_cpu_utilization_percent", "ecs_task_memory_utilization_percent"), parse_cloudwatch_metrics,
        empty=NO_METRIC, doc="Prometheus-style names (fnmatch globs) sent as EMF")
    cloudwatch_dimensions: tuple[str, ...] = setting(("ecs_cluster", "service", "queue"), parse_cloudwatch_dimensions,
                                                     doc="tags used as EMF dimensions, in order")
    cloudwatch_interval: float = setting(60.0, parse_seconds, low=1, high=3600, doc="seconds between EMF records")
    # health signals and the status page (docs/health.md)
    memory_trend_window: float = setting(1800.0, parse_seconds, low=60, high=86400,
                                         doc="working-set trend window for the leak forecast (s)")
    cpu_saturation_threshold: float = setting(90.0, parse_number, low=1, high=100,
                                              doc="CPU share of the allocation that counts as saturated (%)")
    cpu_saturation_window: float = setting(60.0, parse_seconds, low=1, high=3600,
                                           doc="saturated only when sustained this long (s)")
    top_processes: int = setting(5, parse_count, high=50, doc="processes named by CPU and RSS; 0: off")
    status_page: bool = setting(True, parse_bool, doc="serve the status page at GET /")
    status_history: float = setting(3600.0, parse_seconds, low=60, high=86400,
                                    doc="seconds of history the status page keeps in memory")
    # autoscaling and scale-in protection (agent/scaling/, docs/scaling.md)
    scaling_smoothing_window: float = setting(60.0, parse_seconds,
                                              doc="queue_backlog_smoothed: levels must last this long (s)")
    scaling_hold: float = setting(600.0, parse_seconds, doc="queue_backlog_smoothed: falls pass after this long (s)")
    scaling_consumers_per_task: float = setting(1.0, parse_number, low=0.001, high=1e6,
                                                doc="broker consumers per task, for the local task-count estimate")
    scaling_target: float = setting(0.0, parse_number, low=0, high=1e12,
                                    doc="the policy's backlog-per-task target, reported for dashboards and alerts")
    scaling_max_tasks: int = setting(0, parse_count, high=1_000_000, doc="the service's max task count, reported likewise")
    scale_in_protection: str = setting("", _parse_busy_rule,
                                       doc="busy rule that protects the task from scale-in, e.g. cpu>20% or jobs.in_progress>0")
    scale_in_idle: float = setting(60.0, parse_seconds, doc="release scale-in protection after idle this long (s)")
    scale_in_expires_minutes: int = setting(30, parse_positive_int, high=2880,
                                            doc="protection expiry (1-2880 min), renewed at half-time while busy")
    # queue polling shared by a service's tasks (integrations/queues/source.py, docs/scaling.md "Queue polling cost")
    queue_poll_share: int = setting(1, parse_positive_int, high=1000,
                                    doc="each task polls its queues in 1 of this many intervals (phase from its task id)")
    # StatsD mapping rules: only from the file (`[[mappings]]`)
    mappings: tuple[dict[str, Any], ...] = ()
    # StatsD memory bounds, in bytes as well as counts (docs/statsd.md, "Limits"); per flush interval
    # except the context bytes, which are for the live contexts
    statsd_max_context_bytes: int = setting(128 * 1024**2, parse_size,
                                            doc="names, tags and container ids of live StatsD contexts")
    statsd_max_event_bytes: int = setting(4 * 1024**2, parse_size,
                                          doc="StatsD events per interval, and service checks")
    statsd_max_set_members: int = setting(200_000, parse_positive_int, doc="StatsD set members per interval")
    statsd_max_set_bytes: int = setting(8 * 1024**2, parse_size, doc="bytes of StatsD set members per interval")
    statsd_max_histogram_values: int = setting(8_000_000, parse_positive_int, low=1000, high=100_000_000,
                                               doc="StatsD histogram, timer and distribution values per interval")

    @property
    def series_ttl(self) -> float:
        """How long an exported series outlives its last update: `prometheus_ttl`, but at least two
        StatsD flushes. A StatsD series is updated at flushes only; dropped between two of them, its
        cumulative count (a counter's total, a histogram's count) would start again from zero."""
        return max(self.prometheus_ttl, 2 * self.flush_interval)

    @property
    def statsd_enabled(self) -> bool:
        return self.statsd_addr is not None or bool(self.statsd_socket)

    @property
    def datadog_enabled(self) -> bool:
        return bool(self.dd_api_key)

    @property
    def profiling_enabled(self) -> bool:
        return bool(self.pyroscope_url) and self.profile_mode != "off"

    # the settings `load` read from the file -> `<file>: <key>`; not a field: no variable sets it
    _from_file: ClassVar[Mapping[str, str]] = MappingProxyType({})

    # the settings `load` read from the environment or the file: see `chosen`
    _given: ClassVar[frozenset[str]] = frozenset()

    def chosen(self, name: str) -> bool:
        """Whether the user chose setting `name`: set in the environment or the file, even to the default
        value, or (a Config made in code) other than the default."""
        return name in self._given or getattr(self, name) != Config.__dataclass_fields__[name].default

    def where(self, name: str) -> str:
        """What an error about setting `name` calls it, as `load` does: `<file>: <key>` when the file
        gave it, else its variable. For the checks made after loading (the queue URLs' brokers)."""
        return self._from_file.get(name) or env_name(next(f for f in fields(self) if f.name == name))


def env_name(f: Any) -> str:
    return str(f.metadata.get("env") or PREFIX + f.name.upper())


MAX_FILE_BYTES = 1024 * 1024  # a configuration file is a few lines: a bigger one is a mistake


def read_file(path: str) -> dict[str, Any]:
    """The TOML file's tables; ConfigError naming `TASKLENS_CONFIG_FILE` when it cannot be used."""
    def fail(why: str) -> ConfigError:
        return ConfigError(f"{PREFIX}CONFIG_FILE={path!r} is invalid: {why}")

    try:
        # a FIFO would block start-up (even open() waits for a writer), a device like /dev/zero never
        # ends: only a regular file is read
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise fail("expected a regular file")
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise fail(f"cannot read it: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise fail(f"expected a TOML file of at most {MAX_FILE_BYTES // 1024} KiB")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise fail(f"expected a UTF-8 TOML file (byte {exc.start} is not UTF-8)") from None
    except tomllib.TOMLDecodeError as exc:
        raise fail(f"expected a TOML file ({exc})") from None
    except RecursionError:  # `a = [[[[...` thousands deep
        raise fail("expected a TOML file (nested too deep)") from None


def is_list(f: Any) -> bool:
    """Whether field `f` is a list setting (`tuple[str, ...]`), not a pair (`tuple[str, int]`)."""
    return "..." in str(f.type)


def _file_text(f: Any, raw: Any) -> str:
    """A value from the TOML file as the text its variable would hold; ValueError for a TOML type
    the setting cannot take (a table as the service name, a list for a port)."""
    many = is_list(f)
    parse = f.metadata["parse"]
    if isinstance(raw, bool):
        if parse is not parse_bool:
            raise ValueError("a string or a number, not true/false")
        return "true" if raw else "false"
    if isinstance(raw, (str, int, float)):
        return str(raw)
    if isinstance(raw, list) and many:
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in raw):
            raise ValueError("a list of strings or numbers")
        if any("," in str(v) for v in raw):  # the text is split at `,` again: one item would become two
            raise ValueError("a list of strings or numbers, one value each: an item holds a `,`")
        return ",".join(str(v) for v in raw)
    if isinstance(raw, dict) and parse is parse_tags:
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in raw.values()):
            raise ValueError("a table of strings, e.g. { team = \"payments\" }")
        # read again as `key:value,...`: a `,` would make another tag, a `:` in a key move it into the value
        if any("," in k or ":" in k or "," in str(v) for k, v in raw.items()):
            raise ValueError("a table of strings, e.g. { team = \"payments\" }, with no `,` in a key or value "
                             "and no `:` in a key")
        return ",".join(f"{k}:{v}" for k, v in raw.items())
    kind = "a list" if isinstance(raw, list) else "a table" if isinstance(raw, dict) else "a date or time"
    form = "a string or a list of them" if many else "a string or a number"
    raise ValueError(f"{form}, not {kind}")


def parse_value(f: Any, raw: str) -> Any:
    """One setting's value from its text: the parser's form, then the setting's range.

    A list is emptied by `none` (any case; an empty variable is unset, so it cannot) or, from the file, by
    `[]` or `""`, before its parser sees the text: the rule holds for every list, one added later too,
    unless the setting says why it may not be empty (`setting(empty=)`)."""
    if is_list(f) and raw.strip().lower() in ("none", ""):
        if f.metadata["empty"]:
            raise ValueError(f.metadata["empty"])
        return ()
    bounds = f.metadata.get("bounds")
    try:
        value = f.metadata["parse"](raw)
    except ValueError:
        if bounds is None or isinstance(f.default, tuple):
            raise  # a list's parser says which entry is wrong
        low, high, form = bounds  # one number: say the whole range, not only "> 0"
        raise ValueError(f"{form} from {number_text(low)} to {number_text(high)}") from None
    if bounds is not None:
        check_range(value, *bounds)
    return value


def _show(f: Any, raw: Any, limit: int = 120) -> str:
    """The value as an error shows it: masked, as repr (a newline stays `\\n`: one line), and cut short
    (a 100 kB value would otherwise be a 100 kB log line)."""
    if isinstance(raw, str):
        shown = repr(mask_value(f.name, raw))
    else:  # a TOML list or table the setting cannot take: nothing of it for a secret or a URL
        shown = "'***'" if f.name in SECRET_FIELDS or f.name in URL_FIELDS else repr(raw)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(shown)} characters)"


def load(environ: Mapping[str, str] | None = None) -> Config:
    """Resolve the configuration: defaults < file < environment. Raises ConfigError."""
    environ = os.environ if environ is None else environ
    by_name = {f.name: f for f in fields(Config)}
    file_values: dict[str, Any] = {}
    path = environ.get(PREFIX + "CONFIG_FILE", "")
    if path.strip():
        try:
            path = parse_path(path)
        except ValueError as exc:
            raise ConfigError(f"{PREFIX}CONFIG_FILE={_show(by_name['config_file'], path)} is invalid: "
                              f"expected {exc}") from None
        file_values = read_file(path)
    # a setting whose variable is not `TASKLENS_*` (DD_DD_URL, OTEL_*) is also found in the file under
    # that variable lowercased, as a reader of the README would write it (`otel_exporter_otlp_endpoint`)
    aliases = {env_name(f).lower(): f.name for f in fields(Config)
               if f.name != "mappings" and env_name(f).lower() not in by_name}
    written: dict[str, str] = {}  # field -> the key the file used, for messages
    for key in list(file_values):
        if key in aliases:
            name = aliases[key]
            if name in file_values:
                raise ConfigError(f"{path}: {key!r} and {name!r} are the same setting: give one of them")
            file_values[name] = file_values.pop(key)
            written[name] = key
    for key in file_values:
        if key not in by_name:
            raise ConfigError(f"{path}: unknown key {key!r}{closest(key, by_name)}")

    values: dict[str, Any] = {}
    from_file: dict[str, str] = {}
    for f in fields(Config):
        if f.name == "mappings":
            continue
        name = env_name(f)
        try:
            if environ.get(name, "").strip():  # an empty variable is unset (compose's `${VAR}` of nothing)
                raw, where = environ[name], name
                values[f.name] = parse_value(f, raw)
            elif f.name in file_values:
                raw, where = file_values[f.name], f"{path}: {written.get(f.name, f.name)}"
                from_file[f.name] = where
                raw = _file_text(f, raw)  # shown as text from here: masked like a variable's
                values[f.name] = parse_value(f, raw)
        except ValueError as exc:
            raise ConfigError(f"{where}={_show(f, raw)} is invalid: expected {exc}") from None
    mappings = file_values.get("mappings", [])
    if not isinstance(mappings, list) or not all(isinstance(m, dict) for m in mappings):
        raise ConfigError(f"{path}: mappings: expected a list of tables ([[mappings]])")
    values["mappings"] = tuple(mappings)
    config = Config(**values)
    object.__setattr__(config, "_from_file", MappingProxyType(from_file))  # frozen: set once, here
    object.__setattr__(config, "_given", frozenset(k for k in values if k != "mappings" or mappings))
    return config


# `TASKLENS_*` variables read by something other than a Config field. None today: the profiler
# bootstrap (integrations/profilers/sitecustomize.py) reads only variables that are settings too.
# tests/test_config.py greps the source tree for others, so that a new one is added here.
OTHER_VARIABLES: frozenset[str] = frozenset()


def known_variables() -> frozenset[str]:
    return frozenset(env_name(f) for f in fields(Config) if f.name != "mappings") | OTHER_VARIABLES


def closest(name: str, known: Any) -> str:
    """`; did you mean 'x'?` for the known name closest to a misspelled one, or nothing.

    The shared prefix is left out of the comparison: it would make every name look close."""
    def bare(text: str) -> str:
        return text.removeprefix(PREFIX).lower()

    by_bare = {bare(k): k for k in sorted(known)}
    match = difflib.get_close_matches(bare(name), list(by_bare), n=1, cutoff=0.6)
    return f"; did you mean {by_bare[match[0]]!r}?" if match else ""


DATADOG_FALLBACKS = ("DD_SERVICE", "DD_ENV", "DD_VERSION")  # read when TASKLENS_SERVICE, _ENV, _VERSION are empty


def datadog_fallback(environ: Mapping[str, str], name: str) -> tuple[str, str]:
    """The value of `DD_SERVICE`, `DD_ENV` or `DD_VERSION`, checked as a name, and a warning when it
    is not one: it is then ignored, not refused (Datadog's libraries in the same task read it too)."""
    raw = environ.get(name, "")
    try:
        return parse_name(raw), ""
    except ValueError as exc:
        return "", f"{name}={raw[:80]!r} is ignored: expected {exc}"


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each `TASKLENS_*` variable that no setting reads (a typo is otherwise silent).

    `DD_*` variables are not looked at: Datadog's own libraries in the same task read many of them.
    """
    environ = os.environ if environ is None else environ
    known = known_variables()
    return [f"{name!r} is not a tasklens setting and is ignored{closest(name, known)}"
            for name in sorted(environ) if name.startswith(PREFIX) and name not in known]


def mask_value(name: str, value: Any) -> Any:
    """What may be shown of a setting: secrets as `***` (a long API key with its last 4 characters, to
    tell keys apart, as Datadog shows them; never part of a password), URLs without their password,
    and nothing of a text that looks like credentials (`user:pw@`)."""
    if not isinstance(value, str) or not value:
        return value
    if name in URL_FIELDS:  # as one text: a password may hold the comma that separates a list's URLs
        masked = mask_url(value)
        return masked if "@" not in masked or "***@" in masked else "***"
    if name in SECRET_FIELDS:
        return "***" + value[-4:] if name in API_KEY_FIELDS and len(value) >= 12 else "***"
    return value


SECRET_FIELDS = frozenset(f.name for f in fields(Config) if f.metadata.get("secret"))
URL_FIELDS = frozenset(f.name for f in fields(Config) if f.metadata.get("url"))
API_KEY_FIELDS = frozenset({"dd_api_key"})


def describe(config: Config) -> dict[str, Any]:
    """The resolved configuration for humans: variable name -> value, secrets and URL passwords masked."""
    out: dict[str, Any] = {}
    for f in fields(Config):
        value = getattr(config, f.name)
        if f.name == "queues":
            value = [mask_value(f.name, u) for u in value]
        elif f.name in SECRET_FIELDS or f.name in URL_FIELDS:
            value = mask_value(f.name, value)
        elif isinstance(value, tuple) and f.name in ("http_addr", "statsd_addr", "dogstatsd_forward"):
            value = f"{value[0]}:{value[1]}"
        elif f.name == "tags":
            value = ",".join(f"{k}:{v}" for k, v in value)
        elif isinstance(value, tuple):
            value = list(value)
        out[env_name(f) if f.name != "mappings" else "mappings (file)"] = value
    return out


def hostname() -> str:
    return socket.gethostname()
