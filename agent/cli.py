"""`tasklens` command line: run, check, health, emulate-ecs, send, profiler-bootstrap."""

from __future__ import annotations

import argparse
import asyncio
import errno
import http.client
import json
import math
import os
import socket
import stat
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from agent import __version__, logs
from agent.config import (DATADOG_FALLBACKS, Config, ConfigError, check_range, datadog_fallback, describe, load,
                          number_text, parse_addr, parse_target, unknown_variables)
from agent.examples import EXAMPLES as EMULATOR_EXAMPLES
from agent.urlmask import mask_url, url_passwords


def _show_addr(addr: tuple[str, int]) -> str:
    from agent.http import show_addr

    return show_addr(*addr)


def _check_bindable(name: str, addr: tuple[str, int], kind: socket.SocketKind) -> None:
    """The listener's host must resolve to an address of this host. Only the host is tried (port 0):
    the port may be taken by a sidecar already running when `check` runs beside it."""
    host = addr[0]
    if host in ("", "0.0.0.0", "::"):
        return
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, 0, type=kind)[0]
        with socket.socket(family, kind) as probe:
            probe.bind(sockaddr)
    except OSError as exc:  # gaierror included: a name that does not resolve
        raise ConfigError(f"{name}={_show_addr(addr)!r} is invalid: expected an address of this host to listen on "
                          f"({host}: {exc.strerror or exc})") from None


def _check_socket_path(path: str, name: str) -> None:
    """What the Unix listener would refuse: a missing directory, one where this user cannot create a
    socket, a path that is not a socket. (A live socket is left to `run`: it may be a sidecar already
    running beside `check`.) `name`: the setting's."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ConfigError(f"{name}={path!r} is invalid: expected a path in an existing "
                          f"directory ({directory!r} is not one)")
    if os.path.lexists(path) and not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise ConfigError(f"{name}={path!r} is invalid: expected a path that is free or a "
                          "socket (a file that is not a socket is there)")
    reason = _cannot_create_socket_in(directory)
    if reason:
        raise ConfigError(f"{name}={path!r} is invalid: expected a path in a directory where this user "
                          f"can create a socket ({directory!r}: {reason})")


def _cannot_create_socket_in(directory: str) -> str | None:
    """Why a socket cannot be created in `directory`, else None. The permission bits first (a non-root
    image with a root-owned directory); then a socket bound there and removed at once, as root passes
    every permission check yet /proc, /sys or a read-only volume refuse the bind. `check` leaves
    nothing behind: the trial socket is unlinked as soon as it exists."""
    if not os.access(directory, os.W_OK | os.X_OK):
        return "not writable by this user"
    trial = os.path.join(directory, f".tasklens-check-{os.getpid()}-{os.urandom(4).hex()}")
    if len(os.fsencode(trial)) > 107:  # too long a name to try where the path itself fits: the bits must do
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(trial)
        except OSError as exc:
            return None if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        try:
            os.unlink(trial)
        except OSError:
            pass  # already gone (somebody cleaned the directory): nothing left behind either way
    return None


def _check_mappings(mappings: Sequence[Mapping[str, Any]]) -> None:
    """The rules as the StatsD server compiles them. A pattern `re` cannot take raises more than
    re.error (`a{99999999999}`: OverflowError; 1,500 nested groups: RecursionError): named here."""
    from agent.statsd.mapping import MAX_RULES, compile_rules

    with warnings.catch_warnings():  # `[[` warns "possible nested set": the user's pattern, not a failure
        warnings.simplefilter("ignore")
        for i, rule in enumerate(mappings[:MAX_RULES]):  # more: compile_rules(mappings) below refuses them
            try:
                compile_rules([rule])
            except ConfigError:
                break  # compile_rules(mappings) below says it with the rule's own index
            except (RecursionError, OverflowError) as exc:
                match = rule.get("match") if isinstance(rule, Mapping) else None
                shown = repr(match) if len(repr(match)) <= 120 else repr(match)[:120] + "..."
                raise ConfigError(f"mappings[{i}] (match {shown}): invalid regex: "
                                  f"{exc if isinstance(exc, OverflowError) else 'nested too deep'}") from None
        compile_rules(mappings)


def _check_queue_overrides(url: Any, where: str) -> None:
    """A queue URL's own `interval=`, `window=`, `threshold=` get the range of the setting they
    override, `timeout=` (a poll's) 0.1 to 300 s: `?interval=1e-300` would poll in a tight loop."""
    bounds: dict[str, tuple[float, float, str]] = {f.name: f.metadata["bounds"] for f in fields(Config)
                                                   if f.metadata.get("bounds")}
    for key, value, (low, high, form) in (("interval", url.interval, bounds["queue_poll_interval"]),
                                          ("window", url.window, bounds["queue_trend_window"]),
                                          ("threshold", url.threshold, bounds["queue_backlog_threshold"]),
                                          ("timeout", url.timeout, (0.1, 300.0, "a number of seconds"))):
        if value is None:
            continue
        try:
            check_range(value, low, high, form)
        except ValueError as exc:
            raise ConfigError(f"{where}: {url.masked}: {key}={number_text(value)!r}: expected {exc}") from None


def _check_forward(config: Config, warnings: list[str]) -> None:
    from agent.sinks.dogstatsd_forward import loop_reason

    assert config.dogstatsd_forward is not None
    shown, name = _show_addr(config.dogstatsd_forward), config.where("dogstatsd_forward")
    try:
        reason = loop_reason(config.dogstatsd_forward, config.statsd_addr)
    except OSError as exc:  # a name that does not resolve yet: the forwarder retries at every send
        warnings.append(f"{name}={shown!r}: cannot resolve it now ({exc.strerror or exc}); "
                        "lines are dropped until it does")
        return
    if reason:
        raise ConfigError(f"{name}={shown!r} is invalid: expected the address of another "
                          f"DogStatsD agent, not this sidecar's ({config.where('statsd_addr')}): {reason}")


def _check_statsd_off(config: Config) -> None:
    """ConfigError for a setting that acts only on StatsD metrics, given with every StatsD listener off:
    it could never act, and nothing would say so. A busy rule's StatsD term would never hold (the task
    never protected: an outside tester's `jobs.in_progress>0` with `TASKLENS_STATSD_ADDR=off`); a mapping
    rule would never match."""
    off = (f"StatsD is off ({config.where('statsd_addr')}=off and no {config.where('statsd_socket')}), "
           "so no StatsD metric ever arrives")
    if config.scale_in_protection:
        from agent.scaling.busy import Cpu, parse_rule

        terms = [str(t) for t in parse_rule(config.scale_in_protection).terms if not isinstance(t, Cpu)]
        if terms:
            raise ConfigError(f"{config.where('scale_in_protection')}={config.scale_in_protection!r} is invalid: "
                              f"{' and '.join(repr(t) for t in terms)} read StatsD metrics and {off}: never true, "
                              "they would never protect the task (turn StatsD on, or use cpu>N%)")
    if config.mappings:
        raise ConfigError(f"{config.config_file}: mappings: {len(config.mappings)} StatsD mapping rule(s) given and "
                          f"{off}: they would never apply (turn StatsD on, or remove them)")


def validate(environ: Mapping[str, str] | None = None) -> tuple[Config, list[str]]:
    """The one validation of `run` and `check`, so that they cannot disagree: the settings (agent/config.py),
    then what needs several settings or a look at this host, with the code `run` builds with (mapping
    rules, queue URLs and their clients). Raises ConfigError; returns the configuration and warnings."""
    environ = os.environ if environ is None else environ
    config = load(environ)
    warnings = unknown_variables(environ)
    warnings += [w for name in DATADOG_FALLBACKS if (w := datadog_fallback(environ, name)[1])]
    if config.mappings:
        _check_mappings(config.mappings)
    if config.queues:
        from agent.hub import Hub
        from agent.identity import Identity
        from integrations.queues.source import queue_sources

        for source in queue_sources(config, Hub(Identity(service="check"))):  # built, not connected
            _check_queue_overrides(source.url, config.where("queues"))
    if not config.statsd_enabled:
        _check_statsd_off(config)
    _check_bindable(config.where("http_addr"), config.http_addr, socket.SOCK_STREAM)
    if config.statsd_addr is not None:
        _check_bindable(config.where("statsd_addr"), config.statsd_addr, socket.SOCK_DGRAM)
    if config.statsd_socket:
        _check_socket_path(config.statsd_socket, config.where("statsd_socket"))
    if config.dogstatsd_forward is not None:
        _check_forward(config, warnings)
    if config.remote_write_url:
        from agent.sinks.remote_write import check as check_remote_write

        check_remote_write(config)  # SigV4 on needs a region; headers and auth as `run` would send them
    if config.otlp_endpoint or config.otlp_metrics_endpoint:
        from agent.sinks.otlp import check_headers, check_protocol

        check_protocol(config)  # the one protocol sent
        check_headers(config)  # none the HTTP client or the sink writes itself
    if config.cloudwatch == "emf":
        from agent.sinks.emf import HEARTBEAT_LEFT_OUT, heartbeat_fits

        if not heartbeat_fits(config):  # one a minute needs a record every minute
            warnings.append(HEARTBEAT_LEFT_OUT)
    warnings += settings_run_changes(config)
    return config, warnings


def settings_run_changes(config: Config) -> list[str]:
    """Warnings for settings that `run` takes, but not as written: what it uses instead."""
    from agent.identity import TAG_KEYS

    out = []
    if config.chosen("prometheus_ttl") and config.series_ttl > config.prometheus_ttl:
        out.append(f"{config.where('prometheus_ttl')}={config.prometheus_ttl:g} is shorter than two flush intervals "
                   f"({config.where('flush_interval')}={config.flush_interval:g}): series are kept "
                   f"{config.series_ttl:g} s, so that a StatsD counter's total never starts again between flushes")
    for key in sorted({k for k, _ in config.tags} & set(TAG_KEYS)):
        used = ("never used: the identity always has a service (TASKLENS_SERVICE sets it)" if key == "service"
                else "used only where the identity has none")
        out.append(f"{config.where('tags')}: {key!r} is a tag of the task's identity; this value is {used}")
    return out


def agent_uri_warning(environ: Mapping[str, str]) -> str | None:
    """Why the ECS agent's `ECS_AGENT_URI` cannot be used, as the protection client reads it, or None.
    Its variable, not a setting: `check` warns (the sidecar runs on and reports the busy state without
    protection); `run` says it once, from the protection component, which counts it."""
    from agent.scaling.protection import ENV_AGENT_URI, endpoint_url, invalid_uri

    uri = environ.get(ENV_AGENT_URI, "").strip()
    try:
        if uri:
            endpoint_url(uri)
    except ValueError as exc:
        return f"{invalid_uri(uri, exc)}; scale-in protection is unavailable"
    return None


def _say(text: str) -> None:
    # a value may hold bytes that were not UTF-8 (surrogates): shown escaped, never an encoding error
    print(text.encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)


def _validate_or_exit() -> tuple[Config, list[str]]:
    try:
        config, warnings = validate()
    except ConfigError as exc:
        _say(f"tasklens: invalid configuration: {exc}")
        raise SystemExit(2) from None
    for warning in warnings:
        _say(f"tasklens: warning: {warning}")
    return config, warnings


def cmd_run(args: argparse.Namespace) -> int:
    from agent import memory, stopping

    stopping.block()  # a SIGTERM from here on stops the sidecar the usual way, not by the signal
    memory.use_system_allocator()  # exec again with PYTHONMALLOC=malloc: memory returns after a storm
    stopping.hold()
    memory.configure()
    config, _ = _validate_or_exit()
    from agent.redact import log_secrets

    # stderr may block (awslogs): never the event loop; the configuration's secrets masked in every line
    logs.setup(config.log_level, aside=True, secrets=log_secrets(config))
    from agent.runtime import run

    return run(config)


async def _resolve_identity(config: Config) -> tuple[dict[str, Any], str]:
    import aiohttp

    from agent.identity import local_identity, task_identity
    from agent.sources.ecs import metadata_base_url

    base = metadata_base_url(os.environ)
    if not base:
        return local_identity(config).as_dict(), "local mode (no ECS_CONTAINER_METADATA_URI_V4)"
    timeout = aiohttp.ClientTimeout(total=config.metadata_timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(base + "/task") as response:
            response.raise_for_status()
            task = await response.json(content_type=None)
    return task_identity(config, task).as_dict(), f"ECS task metadata at {mask_url(base)}"


def cmd_check(args: argparse.Namespace) -> int:
    config, warnings = _validate_or_exit()
    if config.scale_in_protection and (warning := agent_uri_warning(os.environ)):
        _say(f"tasklens: warning: {warning}")
        warnings.append(warning)
    from agent.health import settings as health_settings

    # the windows the health rules use: the memory window may be wider than set (3 polls at least)
    out: dict[str, Any] = {"version": __version__, "configuration": describe(config), "warnings": warnings,
                           "health": health_settings(config)}
    code = 0
    try:
        out["identity"], out["identity_source"] = asyncio.run(_resolve_identity(config))
    except Exception as exc:  # the metadata endpoint is down: say so, the sidecar would still run
        from agent.redact import Redactor
        from agent.sources.ecs import ERROR_TEXT_LIMIT, metadata_base_url

        redact = Redactor(url_passwords(metadata_base_url(os.environ) or ""))  # as the ECS source shows it
        out["identity_error"] = redact.remote_text(f"{type(exc).__name__}: {exc}", limit=ERROR_TEXT_LIMIT)
        code = 1
    if config.datadog_enabled:  # does the intake take the key? (the key itself is never shown)
        from agent.sinks.datadog import check_api_key

        out["datadog"] = asyncio.run(check_api_key(config))
        if out["datadog"]["api_key"].startswith("invalid"):
            code = 1
    if config.queues:  # valid: validate() built them as `run` does
        from integrations.queues import describe_url

        out["queues"] = [describe_url(u, config) for u in config.queues]
    print(json.dumps(out, indent=2, default=str))
    return code


def _addr_option(text: str) -> tuple[str, int]:
    """A listen address given as `--addr` (health, emulate-ecs), refused naming the option and the value as
    `send` refuses its own."""
    try:
        return parse_addr(text)
    except ValueError as exc:
        raise ConfigError(f"--addr {text!r} is invalid: expected {exc}") from None


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 iff the sidecar answers `/health`: the container health check (no curl needed). Without
    `--addr`, where `run` listens: the same settings, read by the same `config.load`."""
    try:
        if args.addr:
            host, port = _addr_option(args.addr)
            where = "--addr"
        else:
            config = load()
            (host, port), where = config.http_addr, config.where("http_addr")
        # the sidecar listens on this host: another host's address is bad input (2), as `run` refuses it,
        # not an unhealthy sidecar (1)
        _check_bindable(where, (host, port), socket.SOCK_STREAM)
    except ConfigError as exc:
        _say(f"tasklens health: {exc}" if args.addr else f"tasklens health: invalid configuration: {exc}")
        return 2
    if port == 0:  # "any free port": only the running sidecar knows which; as `tasklens send` says it
        _say(f"tasklens health: --addr {args.addr!r} has port 0, any free port: pass the port the sidecar listens on"
             if args.addr else f"tasklens health: {where} has port 0, any free port: pass --addr")
        return 2
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # a wildcard: on loopback
    if ":" in host:
        host = f"[{host}]"
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/{args.endpoint}", timeout=args.timeout) as resp:
            ok = resp.status == 200
    except (OSError, urllib.error.URLError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, (ConnectionResetError, BrokenPipeError)):  # reset or closed instead of an answer:
            # a broker that writes its own greeting and resets (RabbitMQ's `AMQP\0\0\t\1`), or closes
            _say(f"tasklens health: not an HTTP answer at {host}:{port}: {type(reason).__name__}: "
                 f"{logs.shown(str(reason))[:200]}")
            return 1
        _say(f"tasklens health: {logs.shown(str(exc))[:300]}")  # a reason phrase is the peer's text
        return 1
    except http.client.HTTPException as exc:  # something else answers on the port (SSH, a bare "ok", ...)
        detail = logs.shown(str(exc))[:200]  # may be the peer's first line: escaped, one line, bounded
        _say(f"tasklens health: not an HTTP answer at {host}:{port}: {type(exc).__name__}"
             + (f": {detail}" if detail else ""))
        return 1
    return 0 if ok else 1


def cmd_emulate_ecs(args: argparse.Namespace) -> int:
    from agent.emulator import check_fixtures, serve
    from agent.examples import example

    logs.setup("info")
    try:
        task, stats = example(args.example) if args.example else (args.task, args.stats)
        if task and stats:
            check_fixtures(task, stats)
        host, port = _addr_option(args.addr)
    except (ValueError, ConfigError) as exc:
        print(f"tasklens emulate-ecs: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(host, port, task, stats))
    except OSError as exc:  # the address is taken or cannot be bound
        print(f"tasklens emulate-ecs: {exc}", file=sys.stderr)
        return 1
    return 0


def _send_target(addr: str | None) -> tuple[str, int] | str:
    from agent.send import SendError, listener

    if addr is None:  # where `run` listens: the same settings, read by the same function
        return listener(load())
    try:
        target = parse_target(addr)
    except ValueError as exc:
        raise SendError(f"--addr {addr!r} is invalid: expected {exc}") from None
    if target is None:
        raise SendError(f"--addr {addr!r} is invalid: expected host:port")
    return target


def cmd_send(args: argparse.Namespace) -> int:
    from agent.send import UDP_MAX, SendError, datagram, send
    from agent.statsd.parser import MAX_DATAGRAM

    try:
        target = _send_target(args.addr)
        body = datagram(args.lines, MAX_DATAGRAM if isinstance(target, str) else UDP_MAX)  # a refused line sends nothing
        send(target, body)
    except ConfigError as exc:
        _say(f"tasklens send: invalid configuration: {exc}")
        return 2
    except (SendError, ValueError, OSError) as exc:
        _say(f"tasklens send: {exc}")
        return 2
    return 0


def cmd_profiler_bootstrap(args: argparse.Namespace) -> int:
    from integrations.profilers.bootstrap import BootstrapError, populate

    logs.setup("info")
    if not args.directory.strip():  # "" would be the current directory: never meant
        _say("tasklens profiler-bootstrap: the directory is empty: name the directory to populate")
        return 2
    try:
        populate(args.directory)
    except BootstrapError as exc:
        print(f"tasklens profiler-bootstrap: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a path that is a file, below a file, not writable, a full disk
        _say(f"tasklens profiler-bootstrap: cannot write {logs.shown(str(exc.filename or args.directory))}: "
             f"{exc.strerror or exc}")
        return 1
    return 0


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.1 <= value <= 60:  # NaN too: socket.settimeout(nan) raises
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds from 0.1 to 60")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tasklens", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tasklens {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the sidecar (configured by TASKLENS_* variables)")
    sub.add_parser("check", help="print the resolved configuration and identity; non-zero if invalid")
    health = sub.add_parser("health", help="exit 0 iff the sidecar's /health answers (container health check)")
    health.add_argument("--addr", help="host:port of the sidecar's HTTP listener (default: where `tasklens run` "
                                       "listens: TASKLENS_HTTP_ADDR, else http_addr in TASKLENS_CONFIG_FILE)")
    health.add_argument("--endpoint", default="health", choices=["health", "ready"])
    health.add_argument("--timeout", type=_timeout, default=2.0, help="seconds (0.1 to 60)")
    emulate = sub.add_parser("emulate-ecs", help="serve ECS task metadata locally (fixtures or live)",
                             description="Serves /v4/<id>, /v4/<id>/stats, /v4/<id>/task, /v4/<id>/taskWithTags "
                                         "and /v4/<id>/task/stats, the same under /v3, and the agent's task protection at "
                                         "/api/<id>/task-protection/v1/state; any other path is 404.")
    emulate.add_argument("--task", help="a /task JSON file (with --stats): an object whose Containers is a list of "
                                        "container objects; default: live from this machine")
    emulate.add_argument("--stats", help="a /task/stats JSON file: an object of stats by DockerId")
    emulate.add_argument("--example", choices=sorted(EMULATOR_EXAMPLES), help="a packaged capture instead of files")
    emulate.add_argument("--addr", default="127.0.0.1:51678", help="listen address (default 127.0.0.1:51678)")
    send = sub.add_parser("send", help="send StatsD lines to the sidecar (one datagram), checked first",
                          description="Checks every line with the sidecar's parser, then sends them as one datagram. "
                                      "An empty or invalid line is refused (exit 2) and nothing is sent.")
    send.add_argument("lines", nargs="+", metavar="LINE", help="e.g. 'jobs.processed:1|c|#queue:orders'")
    send.add_argument("--addr", help="host:port of the StatsD listener (default: where `tasklens run` listens: "
                                     "TASKLENS_STATSD_ADDR, else statsd_addr in TASKLENS_CONFIG_FILE, else "
                                     "127.0.0.1:8125; the Unix socket when UDP is off)")
    bootstrap = sub.add_parser("profiler-bootstrap", help="populate a directory for PYTHONPATH that profiles the worker")
    bootstrap.add_argument("directory")
    args = parser.parse_args(argv)
    if args.command == "emulate-ecs" and bool(args.task) != bool(args.stats):
        parser.error("--task and --stats go together")
    if args.command == "emulate-ecs" and args.example and args.task:
        parser.error("--example or --task/--stats, not both")
    commands = {
        "run": cmd_run, "check": cmd_check, "health": cmd_health,
        "emulate-ecs": cmd_emulate_ecs, "send": cmd_send, "profiler-bootstrap": cmd_profiler_bootstrap,
    }
    if args.command is None:
        parser.print_help()
        return 2
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
