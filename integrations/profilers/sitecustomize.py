"""tasklens profiling bootstrap: profile this Python process with pyroscope-io, no code change.

`tasklens profiler-bootstrap DIR` copies this file as `DIR/sitecustomize.py`, next to pyroscope-io.
A worker that has DIR on its `PYTHONPATH` imports it at interpreter start-up. It reads the same
`TASKLENS_*` variables as the sidecar and, when `TASKLENS_PYROSCOPE_URL` is set (and
`TASKLENS_PROFILE_MODE` is not `off`), starts pyroscope-io in a background thread labelled with the
service name and task tags. Start-up is never delayed: the ECS metadata lookup (short timeout) and
the import of pyroscope-io's native module happen in that thread. Nothing here may break the worker:
any failure (a wheel that does not fit this interpreter, an unreachable endpoint) is one log line,
then the worker runs as before. A `sitecustomize` of the worker's own, further down `sys.path`, still
runs (chained).

This file must stay standard-library only and importable by Python 3.7+ (no `agent` import: the
shared directory must not shadow the worker's packages). The sidecar imports the label helpers below
so both modes label profiles the same way.
"""

import os
import sys

# Start-up cost matters in every worker, profiled or not: at import this module needs only `os` and
# `sys` (already loaded by `site`); the rest is imported when profiling is configured. Not even
# `__future__` (`from __future__ import annotations` imports it): annotations that Python 3.7 cannot
# evaluate are strings. A test holds this to what docs/profiling.md promises.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any

ENV_PREFIX = "TASKLENS_"
METADATA_TIMEOUT = 2.0  # seconds; the endpoint is link-local and answers in milliseconds
EXIT_GRACE = 2.0  # seconds the worker's exit may wait for its last profile to be sent
LOGGER_NAME = "tasklens.profiler"
# (default, lowest, highest) of the numbers read here, as the sidecar's settings have them (a test
# compares the two)
NUMBERS = {"PROFILE_RATE": (100, 1, 1000), "PROFILE_WINDOW": (10, 1, 3600)}
MAX_NAME_LENGTH = 200  # characters of a service, env or version name: the sidecar's (a test compares them)

# --- label rules shared with the sidecar's py-spy mode --------------------------------------------

_DIGITS = "0123456789"
# a number as the settings take it: ASCII digits, an optional sign, point and exponent; float() alone
# also takes `1_0`, other scripts' digits (`１０`), `nan` and `infinity`, so that a typo reads as a number
_DECIMAL = r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*"


def is_decimal(text: str) -> bool:
    import re

    return re.fullmatch(_DECIMAL, text) is not None
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_" + _DIGITS)
_APP_CHARS = _KEY_CHARS | frozenset(".-")
# interpreter options that take the next argument as their value
_OPTIONS_WITH_VALUE = ("-W", "-X", "-Q", "--check-hash-based-pycs")
MAX_VALUE_LENGTH = 128
# labels of tasklens's own a profile may carry: Grafana Pyroscope refuses a series of more than 30 label
# names (its default max_label_names_per_series), counting those added on the way: its `/ingest` (sidecar
# mode) adds `__name__`, `service_name`, `__delta__` and `pyroscope_spy`; pyroscope-io (bootstrap mode)
# sends `__name__`, `service_name`, `otel.scope.name`, `otel.scope.version`, `process.runtime.name` and
# `process.runtime.version` with them
MAX_LABELS_INGEST, MAX_LABELS_PUSH = 26, 24


def _only(text: str, allowed: "frozenset[str]") -> str:
    return "".join(c if c in allowed else "_" for c in text)


def label_key(key: str) -> str:
    """A Pyroscope/Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`, `__` prefix reserved."""
    out = _only(key.strip(), _KEY_CHARS)
    if out[:1].isdigit():
        out = "_" + out
    if out.startswith("__"):
        out = "_" + out.lstrip("_")
    return "" if out.strip("_") == "" else out


def label_value(value: str) -> str:
    """A value the legacy `/ingest` name parser reads back intact: no `,` `{` `}`, trimmed."""
    out = "".join("_" if c in ",{}" or ord(c) < 32 or ord(c) == 127 else c for c in value).strip()
    return out[:MAX_VALUE_LENGTH] if out else "true"  # a bare tag, as in the Prometheus sink


def app_name(service: str) -> str:
    """The application name Pyroscope accepts: `[a-zA-Z0-9_.-]+` (becomes `service_name`)."""
    return _only(service.strip(), _APP_CHARS) or "unknown"


def labels(tags: "Iterable[tuple[str, str]]", own: "Iterable[tuple[str, str]]" = (),
           most: int = MAX_LABELS_INGEST) -> "dict[str, str]":
    """(key, value) pairs -> a dict of valid labels; the first of two keys that collide wins.

    `own` are the process's own labels (`container_name`, `process`): they win over task tags of the
    same name (`TASKLENS_TAGS=process:x` must not merge every process's profiles into one). At most
    `most` in all: the own labels, then the tags in order (the task's identity before
    `TASKLENS_TAGS`); past that a server refuses every profile."""
    out: dict[str, str] = {}
    mine = labels(own) if own else {}
    room = most - len(mine)
    for key, value in tags:
        name = label_key(key)
        if name and name not in out and name not in mine and len(out) < room:
            out[name] = label_value(value)
    out.update(mine)
    return out


def is_python(exe: str) -> bool:
    """`python`, `python3`, `python3.11`, `python3.13t` (free-threaded), `python3.11d` (debug)."""
    name = os.path.basename(exe)
    if not name.startswith("python"):
        return False
    version = name[len("python"):]
    if version[-1:].isalpha():
        version = version[:-1]
    return all(c in _DIGITS or c == "." for c in version)


def process_name(cmdline: "Sequence[str]") -> str:
    """A short, stable name for what a process runs: `-m` module, script, or executable.

    `python -u /app/worker.py` -> `worker.py`; `python -m app.main` -> `app.main`;
    `/venv/bin/celery -A app worker` (argv[0] after the shebang) -> `celery`.
    """
    if not cmdline:
        return ""
    # a retitled process (setproctitle: `celery: worker`) has its title as argv[0]
    exe = os.path.basename(cmdline[0].split(" ", 1)[0]).rstrip(":")
    if not is_python(exe):
        return exe
    args = cmdline[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-m":
            return args[i + 1] if i + 1 < len(args) else exe
        if arg.startswith("-m"):
            return arg[2:]
        if arg.startswith("-c") or arg == "-":
            return exe
        if arg in _OPTIONS_WITH_VALUE:
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        return os.path.basename(arg)
    return exe


def split_credentials(url: str) -> "tuple[str, str, str]":
    """`https://user:pw@host/p` -> (`https://host/p`, user, pw); a URL without them is unchanged."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, "", ""
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc)), unquote(parts.username or ""), unquote(parts.password or "")


# --- identity: the same rules as agent.identity, over the same variables --------------------------


TAGS_FORM = "comma-separated key:value pairs, e.g. team:payments,tier:1"
MAX_TAGS = 100  # the sidecar's MAX_ITEMS (a test compares them)
_PROMETHEUS_RESERVED = ("le", "quantile")


def prometheus_label(key: str) -> str:
    """The label a tag key is on the sidecar's `/metrics` (agent/sinks/prometheus.py `label_name`; a
    test compares them)."""
    out = _only(key, _KEY_CHARS)
    if out[:1].isdigit():
        out = "_" + out
    if out in _PROMETHEUS_RESERVED or out.startswith("__"):
        return "exported_" + out.lstrip("_")
    return out


def parse_tags(text: str) -> "list[tuple[str, str]]":
    """`TASKLENS_TAGS` as both modes read it: agent/config.py's `parse_tags` is this function (the
    bootstrap cannot import `agent`), so that the worker takes exactly the tags the sidecar takes, and
    refuses what it refuses. ValueError with the expected form."""
    tags: dict[str, str] = {}  # a repeated key: the last value wins
    if text.strip().lower() == "none":  # no tags: an empty variable is unset (the file's tags)
        return []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition(":")
        if not key.strip() or not sep:
            raise ValueError(TAGS_FORM)
        if any("\ud800" <= c <= "\udfff" for c in item):
            raise ValueError(TAGS_FORM + ", in UTF-8 (this value has bytes that are not)")
        if any(c < " " or "\x7f" <= c <= "\x9f" for c in item):  # Unicode's Cc, as `is_name`
            raise ValueError(TAGS_FORM + ", without control characters (newline, tab, escape...)")
        if len(item) > MAX_NAME_LENGTH:
            raise ValueError(TAGS_FORM + ", at most %d characters" % MAX_NAME_LENGTH)
        tags[key.strip()] = value.strip()
    if len(tags) > MAX_TAGS:
        raise ValueError(TAGS_FORM + ", at most %d" % MAX_TAGS)
    # the task's tags are labels of every series on /metrics: two keys that are one label there are refused
    labels: dict[str, str] = {}
    for key in tags:
        other = labels.setdefault(prometheus_label(key), key)
        if other != key:
            raise ValueError("%s, keys that stay apart as Prometheus labels (%r and %r are both %r)"
                             % (TAGS_FORM, other, key, prometheus_label(key)))
    return list(tags.items())


def _extra_tags(environ: "Mapping[str, str]") -> "list[tuple[str, str]]":
    """`TASKLENS_TAGS`; a value the sidecar would refuse is ignored with a warning, as a bad name is
    (`_name`): the sidecar does not start with it, the worker must."""
    variable = ENV_PREFIX + "TAGS"
    try:
        return parse_tags(environ.get(variable, ""))
    except ValueError as exc:
        _log().warning("tasklens profiling: %s=%r is ignored: expected %s", variable, environ[variable][:80], exc)
        return []


def _cluster(task: "Mapping[str, Any]", arn: str) -> str:
    """`Cluster` (a name or an ARN), else the cluster in a new-style task ARN `task/<cluster>/<id>`."""
    cluster = str(task.get("Cluster") or "")
    if cluster:
        return cluster.rsplit("/", 1)[-1]
    parts = arn.split(":", 5)[-1].split("/")
    return parts[1] if len(parts) == 3 else ""


def is_name(text: str) -> bool:
    """The sidecar's rule for a name (agent/config.py `parse_name`, after trimming): no control character
    (Unicode's Cc: U+0000-U+001F, U+007F-U+009F), no byte that was not UTF-8 (a surrogate), not too long."""
    return len(text) <= MAX_NAME_LENGTH and not any(
        c < " " or "\x7f" <= c <= "\x9f" or "\ud800" <= c <= "\udfff" for c in text)


def _name(environ: "Mapping[str, str]", variable: str) -> str:
    """A service, env or version variable, trimmed; a value that is not a name is ignored with a warning,
    as the sidecar ignores such a `DD_*` (it refuses such a `TASKLENS_*` at start; the worker cannot)."""
    value = environ.get(variable, "").strip()
    if is_name(value):
        return value
    _log().warning("tasklens profiling: %s=%r is ignored: expected a name of at most %d characters, without "
                   "control characters, in UTF-8", variable, environ[variable][:80], MAX_NAME_LENGTH)
    return ""


def identity(environ: "Mapping[str, str]", task: "Any" = None) -> "tuple[str, list[tuple[str, str]]]":
    """(service, tags without `service`) from the variables and, if given, the ECS `/task` document."""
    service, env, version = (_name(environ, ENV_PREFIX + name) or _name(environ, "DD_" + name)
                             for name in ("SERVICE", "ENV", "VERSION"))
    pairs = [("env", env), ("version", version)]
    if isinstance(task, dict) and isinstance(task.get("TaskARN"), str):
        arn = task["TaskARN"]
        arn_fields = arn.split(":")
        group = str(task.get("Group") or "")
        family = str(task.get("Family") or "")
        service = (
            service
            or str(task.get("ServiceName") or "")
            or (group[len("service:"):] if group.startswith("service:") else "")
            or family
        )
        pairs += [
            ("ecs_cluster", _cluster(task, arn)),
            ("task_family", family),
            ("task_revision", str(task.get("Revision") or "")),
            ("task_id", arn.rsplit("/", 1)[-1]),
            ("availability_zone", str(task.get("AvailabilityZone") or "")),
            ("region", arn_fields[3] if len(arn_fields) > 5 else ""),
            ("launch_type", str(task.get("LaunchType") or "").upper()),
        ]
    tags = [(k, v) for k, v in pairs if v]
    keys = {k for k, _ in tags} | {"service"}
    tags += [kv for kv in _extra_tags(environ) if kv[0] not in keys]
    if not service:
        import socket

        service = socket.gethostname()
    return service, tags


# --- the bootstrap ---------------------------------------------------------------------------------


def settings(environ: "Mapping[str, str]") -> "dict[str, Any] | None":
    """What to configure pyroscope-io with, or None when profiling is not configured here."""
    url = environ.get(ENV_PREFIX + "PYROSCOPE_URL", "").strip()
    if not url or environ.get(ENV_PREFIX + "PROFILE_MODE", "").strip().lower() == "off":
        return None
    import math
    url, user, password = split_credentials(url)

    def number(name: str) -> float:
        """The sidecar's rule for the same variable (agent/config.py); a bad value is not this
        worker's problem: one warning naming it, and the default."""
        default, low, high = NUMBERS[name]
        raw = environ.get(ENV_PREFIX + name, "").strip()
        if not raw:
            return default
        value = float(raw) if is_decimal(raw) else math.nan
        if not low <= value <= high:  # NaN too
            _log().warning("tasklens profiling: %s%s=%r is ignored: expected a number from %g to %g; using %g",
                           ENV_PREFIX, name, raw[:40], low, high, default)
            return default
        return value

    return {
        "server_address": url.rstrip("/"),
        "basic_auth_username": environ.get(ENV_PREFIX + "PYROSCOPE_USER") or user,
        "basic_auth_password": environ.get(ENV_PREFIX + "PYROSCOPE_PASSWORD") or password,
        "tenant_id": environ.get(ENV_PREFIX + "PYROSCOPE_TENANT", ""),
        "sample_rate": int(number("PROFILE_RATE")),
        "upload_interval": int(number("PROFILE_WINDOW")),
    }


def _fetch_json(url: str, timeout: float) -> "Any":
    import json
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # link-local: never a proxy
    with opener.open(url, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def _own_cmdline() -> "list[str]":
    try:
        with open("/proc/self/cmdline", "rb") as fh:
            return [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return list(getattr(sys, "orig_argv", None) or [sys.executable] + sys.argv)


def resolve_labels(environ: "Mapping[str, str]") -> "tuple[str, dict[str, str]]":
    """(application name, labels): identity from ECS metadata when reachable, else the variables."""
    task = container = None
    base = environ.get("ECS_CONTAINER_METADATA_URI_V4", "").rstrip("/")
    if base:
        try:
            task = _fetch_json(base + "/task", METADATA_TIMEOUT)
            container = _fetch_json(base, METADATA_TIMEOUT)
        except Exception as exc:  # no metadata: the variables still name the service
            _log().warning("tasklens profiling: ECS metadata unavailable (%s); using TASKLENS_* variables only", exc)
    service, tags = identity(environ, task)
    own = [("process", process_name(_own_cmdline()))]
    if isinstance(container, dict) and container.get("Name"):
        own.insert(0, ("container_name", str(container["Name"])))
    return app_name(service), labels(tags, own, MAX_LABELS_PUSH)


def _log() -> "logging.Logger":
    import logging

    return logging.getLogger(LOGGER_NAME)


def _start(config: "dict[str, Any]", environ: "Mapping[str, str]") -> None:
    try:
        import pyroscope
    except Exception as exc:  # another Python version, musl, a missing directory: step aside
        _log().warning("tasklens profiling disabled: pyroscope-io does not load in %s %s (%s: %s)",
                       sys.implementation.name, sys.version.split()[0], type(exc).__name__, exc)
        return
    try:
        application, tags = resolve_labels(environ)
        options = dict(config, application_name=application, tags=tags, mem_enabled=True)
        pyroscope.configure(**_supported(pyroscope.configure, options))
        import atexit

        atexit.register(_stop_at_exit, pyroscope)
    except Exception as exc:
        _log().warning("tasklens profiling disabled: pyroscope-io did not start (%s: %s)", type(exc).__name__, exc)


def _supported(function: "Any", options: "dict[str, Any]") -> "dict[str, Any]":
    """The options `function` takes: an older pyroscope-io lacks some (memory profiling, the interval)."""
    import inspect

    parameters = inspect.signature(function).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return options
    return {k: v for k, v in options.items() if k in parameters}


def _stop_at_exit(pyroscope: "Any") -> None:
    """Send the last profile at exit, but never hold the worker for long.

    Left alone, pyroscope-io's own exit hook waits for pending uploads as long as its HTTP timeout
    (10 s each) when the server accepts connections but does not answer; once stopped here, it does
    not wait at all.
    """
    import threading

    stopping = threading.Thread(target=pyroscope.shutdown, name="tasklens-profiler-exit", daemon=True)
    stopping.start()
    stopping.join(EXIT_GRACE)


def _chain(own_file: str) -> None:
    """Run the next `sitecustomize` on sys.path (the worker's own), which this file shadows."""
    own_dir = os.path.dirname(own_file)
    rest = [p for p in sys.path if os.path.realpath(p or ".") != own_dir]
    # the path finder Python imports with: on sys.meta_path already, where `importlib.machinery` is a module
    # to import (`importlib` is not loaded at start-up in every interpreter)
    finder = next((f for f in sys.meta_path if getattr(f, "__name__", "") == "PathFinder"), None)
    if finder is None:
        import importlib.machinery

        finder = importlib.machinery.PathFinder
    spec = finder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None or os.path.realpath(spec.origin or "") == own_file:
        return
    import importlib.util  # only when the worker has a sitecustomize of its own

    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)  # its errors surface as without us ("Error in sitecustomize")


def main() -> None:
    environ = dict(os.environ)
    try:
        config = settings(environ)
        if config is not None:
            import threading

            threading.Thread(target=_start, args=(config, environ), name="tasklens-profiler", daemon=True).start()
    except Exception as exc:
        _log().warning("tasklens profiling disabled: %s: %s", type(exc).__name__, exc)
    _chain(os.path.realpath(__file__))


if __name__ == "sitecustomize":
    main()
