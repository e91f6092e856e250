"""One typed configuration object, read from `TASKLENS_*` variables and an optional TOML file.

Every setting has an environment variable; the file (`TASKLENS_CONFIG_FILE`) may set the same keys
(the variable's name without the prefix, lowercased: `poll_interval = 5`) plus what does not fit in a
variable (StatsD mapping rules). The environment wins over the file. A bad value stops start-up with
a `ConfigError` that names the variable, the value and the expected form.
"""

from __future__ import annotations

import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

PREFIX = "TASKLENS_"


class ConfigError(ValueError):
    pass


# --- value parsers: str -> value, raising ValueError with the expected form --------------------


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("true or false")


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("a number of seconds > 0, e.g. 10 or 2.5") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("a number of seconds > 0, e.g. 10 or 2.5")
    return value


def parse_number(text: str) -> float:
    """A finite number (`nan` and `inf` parse as floats but mean nothing as a threshold)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError("a number") from None
    if not math.isfinite(value):
        raise ValueError("a number")
    return value


def parse_positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("a whole number > 0") from None
    if value <= 0:
        raise ValueError("a whole number > 0")
    return value


def parse_size(text: str) -> int:
    """Bytes, with an optional K/M/G suffix (powers of 1024): `8M`, `65536`."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(t[-1:], 1)
    if scale != 1:
        t = t[:-1]
    try:
        value = int(float(t) * scale)
    except ValueError:
        raise ValueError("a size in bytes, e.g. 8M or 65536") from None
    if value <= 0:
        raise ValueError("a size in bytes > 0, e.g. 8M or 65536")
    return value


def parse_tags(text: str) -> tuple[tuple[str, str], ...]:
    tags: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition(":")
        if not key.strip() or not sep:
            raise ValueError("comma-separated key:value pairs, e.g. team:payments,tier:1")
        tags[key.strip()] = value.strip()
    return tuple(tags.items())


def parse_addr(text: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces)."""
    expected = "host:port, e.g. 127.0.0.1:9102 or [::1]:9102"
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(expected)
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(expected) from None
    if not 0 <= port <= 65535:
        raise ValueError(expected)
    return host or "0.0.0.0", port


def parse_optional_addr(text: str) -> tuple[str, int] | None:
    if text.strip().lower() in ("", "off", "none", "disabled"):
        return None
    return parse_addr(text)


def parse_http_url(text: str) -> str:
    text = text.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// or https:// URL, e.g. http://host:4040")
    return text


def parse_url_list(text: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in text.split(",") if u.strip())
    for url in urls:
        if "://" not in url:
            raise ValueError("comma-separated URLs, e.g. sqs://orders?region=eu-west-1,redis://host:6379/0?list=jobs")
    return urls


def parse_float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError("comma-separated numbers, e.g. 0.005,0.01,0.1,1") from None
    if not values:
        raise ValueError("comma-separated numbers, e.g. 0.005,0.01,0.1,1")
    return values


def parse_percentiles(text: str) -> tuple[float, ...]:
    values = parse_float_list(text)
    if any(not 0 < v < 1 for v in values):
        raise ValueError("comma-separated fractions between 0 and 1, e.g. 0.95,0.99")
    return values


def parse_str_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        low = text.strip().lower()
        if low not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return low

    return parse


def setting(default: Any, parse: Callable[[str], Any] = str, *, env: str = "", secret: bool = False,
            url: bool = False, doc: str = "") -> Any:
    """A dataclass field that knows its variable (default `TASKLENS_<NAME>`) and how to parse it.

    `secret`: shown masked, and deployed only through secrets (`valueFrom`); `url`: URLs that may carry
    a password, shown with it masked.
    """
    # neither stays in repr(config): a traceback or a debug log must not print the API key or a password
    return field(default=default, repr=not (secret or url),
                 metadata={"parse": parse, "env": env, "secret": secret, "url": url, "doc": doc})


@dataclass(frozen=True)
class Config:
    # identity
    service: str = setting("", doc="service name; else DD_SERVICE, ECS ServiceName, Group, Family")
    env: str = setting("", doc="environment tag; else DD_ENV")
    version: str = setting("", doc="version tag; else DD_VERSION")
    tags: tuple[tuple[str, str], ...] = setting((), parse_tags, doc="extra tags, k:v,k:v")
    # runtime and HTTP
    http_addr: tuple[str, int] = setting(("127.0.0.1", 9102), parse_addr, doc="HTTP listen address")
    poll_interval: float = setting(10.0, parse_seconds, doc="ECS metadata poll interval (s)")
    metadata_timeout: float = setting(3.0, parse_seconds, doc="ECS metadata request timeout (s)")
    shutdown_timeout: float = setting(20.0, parse_seconds, doc="deadline to flush on SIGTERM (s)")
    prometheus_ttl: float = setting(300.0, parse_seconds, doc="drop series not updated for this long (s)")
    log_level: str = setting("info", parse_choice("debug", "info", "warning", "error"))
    config_file: str = setting("", doc="optional TOML file with the same keys")
    # StatsD
    statsd_addr: tuple[str, int] | None = setting(("127.0.0.1", 8125), parse_optional_addr,
                                                  doc="StatsD UDP address, or off")
    statsd_socket: str = setting("", doc="Unix datagram socket path for StatsD")
    statsd_rcvbuf: int = setting(8 * 1024 * 1024, parse_size, doc="socket receive buffer requested")
    flush_interval: float = setting(10.0, parse_seconds, doc="StatsD aggregation interval (s)")
    statsd_max_contexts: int = setting(100_000, parse_positive_int, doc="cap on live StatsD contexts")
    statsd_context_ttl: float = setting(300.0, parse_seconds, doc="idle StatsD contexts expire after (s)")
    statsd_gauge_deltas: bool = setting(False, parse_bool, doc="Etsy-style +N/-N gauge deltas")
    histogram_aggregates: tuple[str, ...] = setting(("max", "median", "avg", "count"), parse_str_list,
                                                    doc="Datadog histogram aggregates")
    histogram_percentiles: tuple[float, ...] = setting((0.95,), parse_percentiles)
    histogram_buckets: tuple[float, ...] = setting(
        (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), parse_float_list,
        doc="Prometheus buckets for StatsD histograms (timers in seconds)")
    # Datadog
    dd_api_key: str = setting("", env="DD_API_KEY", secret=True)
    dd_site: str = setting("datadoghq.com", env="DD_SITE")
    dd_url: str = setting("", parse_http_url, env="DD_DD_URL", url=True, doc="intake base URL override")
    datadog_buffer_points: int = setting(2_000_000, parse_positive_int, doc="points kept while the intake is down")
    datadog_timeout: float = setting(10.0, parse_seconds)
    dogstatsd_forward: tuple[str, int] | None = setting(None, parse_optional_addr,
                                                        doc="forward enriched lines to a DogStatsD agent")
    # queues
    queues: tuple[str, ...] = setting((), parse_url_list, url=True, doc="queue URLs, comma-separated")
    queue_poll_interval: float = setting(15.0, parse_seconds)
    queue_trend_window: float = setting(300.0, parse_seconds)
    queue_backlog_threshold: float = setting(100.0, parse_number, doc="depth above which growth means backing up")
    # profiling
    pyroscope_url: str = setting("", parse_http_url, secret=True, url=True, doc="Pyroscope server; enables profiling")
    pyroscope_user: str = setting("")
    pyroscope_password: str = setting("", secret=True)
    pyroscope_tenant: str = setting("", doc="X-Scope-OrgID")
    profile_mode: str = setting("sidecar", parse_choice("sidecar", "off"))
    profile_rate: int = setting(100, parse_positive_int, doc="py-spy samples per second")
    profile_window: float = setting(10.0, parse_seconds, doc="seconds per py-spy sampling window")
    profile_match: str = setting("", doc="regex on the command line of processes to profile")
    # StatsD mapping rules: only from the file (`[[mappings]]`)
    mappings: tuple[dict[str, Any], ...] = ()
    # StatsD memory bounds, in bytes as well as counts (docs/statsd.md, "Limits"); per flush interval
    # except the context bytes, which are for the live contexts
    statsd_max_context_bytes: int = setting(128 * 1024**2, parse_size,
                                            doc="names, tags and container ids of live StatsD contexts")
    statsd_max_event_bytes: int = setting(4 * 1024**2, parse_size,
                                          doc="StatsD events and service checks per interval")
    statsd_max_set_members: int = setting(200_000, parse_positive_int, doc="StatsD set members per interval")
    statsd_max_set_bytes: int = setting(8 * 1024**2, parse_size, doc="bytes of StatsD set members per interval")

    @property
    def statsd_enabled(self) -> bool:
        return self.statsd_addr is not None or bool(self.statsd_socket)

    @property
    def datadog_enabled(self) -> bool:
        return bool(self.dd_api_key)

    @property
    def profiling_enabled(self) -> bool:
        return bool(self.pyroscope_url) and self.profile_mode != "off"


def env_name(f: Any) -> str:
    return str(f.metadata.get("env") or PREFIX + f.name.upper())


def load(environ: Mapping[str, str] | None = None) -> Config:
    """Resolve the configuration: defaults < file < environment. Raises ConfigError."""
    environ = os.environ if environ is None else environ
    file_values: dict[str, Any] = {}
    path = environ.get(PREFIX + "CONFIG_FILE", "").strip()
    if path:
        try:
            with open(path, "rb") as fh:
                file_values = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{PREFIX}CONFIG_FILE={path!r}: cannot read a TOML file: {exc}") from None

    values: dict[str, Any] = {}
    known = {f.name for f in fields(Config)}
    for key in file_values:
        if key not in known:
            raise ConfigError(f"{path}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
    for f in fields(Config):
        if f.name == "mappings":
            continue
        name = env_name(f)
        if name in environ:
            raw, where = environ[name], name
        elif f.name in file_values:
            raw, where = file_values[f.name], f"{path}: {f.name}"
            if isinstance(raw, list):
                raw = ",".join(str(v) for v in raw)
            elif isinstance(raw, dict):
                raw = ",".join(f"{k}:{v}" for k, v in raw.items())
            elif isinstance(raw, bool):
                raw = "true" if raw else "false"
            raw = str(raw)
        else:
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            shown = mask_value(f.name, raw)
            raise ConfigError(f"{where}={shown!r} is invalid: expected {exc}") from None
    mappings = file_values.get("mappings", [])
    if not isinstance(mappings, list) or not all(isinstance(m, dict) for m in mappings):
        raise ConfigError(f"{path}: mappings: expected a list of tables ([[mappings]])")
    values["mappings"] = tuple(mappings)
    return Config(**values)


# `scheme://user:password@`, also inside a parameter (`&management=http://user:password@host`); the
# password runs to the last `@` of the authority, as urlsplit reads it (`:p@ss@host` -> `p@ss`)
_USERINFO = re.compile(r"(://[^:/?#@&=\s]*:)[^/?#&\s]*@")
# NATS takes a bare token as the user part: `nats://<token>@host`
_TOKEN = re.compile(r"^(nats://)[^:/?#@\s]+@")
# a password as a query parameter (`postgresql://app@db/app?password=...`, as libpq and asyncpg read it)
_PARAM = re.compile(r"([?&][A-Za-z_]*password=)([^&#\s]*)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Every password in a URL (its own, any in a parameter, a NATS token) shown as `***`; never raises.

    `redis://:secret@host` -> `redis://:***@host`.
    """
    masked = _TOKEN.sub(r"\1***@", _USERINFO.sub(r"\1***@", url.strip()))
    return _PARAM.sub(lambda m: m.group(1) + "***" if m.group(2) else m.group(0), masked)


def url_passwords(url: str) -> list[str]:
    """The passwords `mask_url` hides, as written in the URL (for masking them in other text)."""
    found = [m.group(0)[len(m.group(1)):-1] for pattern in (_USERINFO, _TOKEN) for m in pattern.finditer(url)]
    return found + [m.group(2) for m in _PARAM.finditer(url) if m.group(2)]


def mask_value(name: str, value: Any) -> Any:
    """What may be shown of a setting: secrets as `***` (a long API key with its last 4 characters, to
    tell keys apart, as Datadog shows them; never part of a password), URLs without their password,
    and nothing of a text that looks like credentials (`user:pw@`)."""
    if not isinstance(value, str) or not value:
        return value
    if name in URL_FIELDS:
        masked = ",".join(mask_url(u) for u in value.split(","))
        return masked if "@" not in masked or ":***@" in masked else "***"
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
