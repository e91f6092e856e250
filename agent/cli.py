"""`tasklens` command line: run, check, health, emulate-ecs, send, profiler-bootstrap."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from agent import __version__, logs
from agent.config import Config, ConfigError, describe, load, parse_addr
from agent.examples import EXAMPLES as EMULATOR_EXAMPLES


def _load_or_exit() -> Config:
    try:
        return load()
    except ConfigError as exc:
        print(f"tasklens: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    from agent import memory

    memory.use_system_allocator()  # exec again with PYTHONMALLOC=malloc: memory returns after a storm
    memory.configure()
    config = _load_or_exit()
    logs.setup(config.log_level)
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
    return task_identity(config, task).as_dict(), f"ECS task metadata at {base}"


def cmd_check(args: argparse.Namespace) -> int:
    config = _load_or_exit()
    if config.mappings:
        from agent.statsd.mapping import compile_rules

        try:
            compile_rules(config.mappings)
        except ConfigError as exc:
            print(f"tasklens: invalid configuration: {exc}", file=sys.stderr)
            return 2
    out: dict[str, Any] = {"version": __version__, "configuration": describe(config)}
    code = 0
    try:
        out["identity"], out["identity_source"] = asyncio.run(_resolve_identity(config))
    except Exception as exc:  # the metadata endpoint is down: say so, the sidecar would still run
        out["identity_error"] = f"{type(exc).__name__}: {exc}"
        code = 1
    if config.datadog_enabled:  # does the intake take the key? (the key itself is never shown)
        from agent.sinks.datadog import check_api_key

        out["datadog"] = asyncio.run(check_api_key(config))
        if out["datadog"]["api_key"].startswith("invalid"):
            code = 1
    if config.queues:
        from integrations.queues import describe_url

        try:
            out["queues"] = [describe_url(u, config) for u in config.queues]
        except ValueError as exc:  # ConfigError included: the message names the URL, masked
            print(f"tasklens: invalid configuration: {exc}", file=sys.stderr)
            return 2
    print(json.dumps(out, indent=2, default=str))
    return code


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 iff the sidecar answers `/health`: the container health check (no curl needed)."""
    addr = args.addr or os.environ.get("TASKLENS_HTTP_ADDR", "127.0.0.1:9102")
    try:
        host, port = parse_addr(addr)
    except ValueError as exc:
        print(f"tasklens health: bad address {addr!r}: expected {exc}", file=sys.stderr)
        return 2
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/{args.endpoint}", timeout=args.timeout) as resp:
            ok = resp.status == 200
    except (OSError, urllib.error.URLError) as exc:
        print(f"tasklens health: {exc}", file=sys.stderr)
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
        host, port = parse_addr(args.addr)
    except (ValueError, ConfigError) as exc:
        print(f"tasklens emulate-ecs: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(host, port, task, stats))
    except OSError as exc:  # the address is taken or cannot be bound
        print(f"tasklens emulate-ecs: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from agent.send import SendError, datagram, send

    try:
        body = datagram(args.lines)
        host, port = parse_addr(args.addr or os.environ.get("TASKLENS_STATSD_ADDR") or "127.0.0.1:8125")
        send(host, port, body)
    except (SendError, ValueError, OSError) as exc:
        print(f"tasklens send: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_profiler_bootstrap(args: argparse.Namespace) -> int:
    from integrations.profilers.bootstrap import BootstrapError, populate

    logs.setup("info")
    try:
        populate(args.directory)
    except BootstrapError as exc:
        print(f"tasklens profiler-bootstrap: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tasklens", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tasklens {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the sidecar (configured by TASKLENS_* variables)")
    sub.add_parser("check", help="print the resolved configuration and identity; non-zero if invalid")
    health = sub.add_parser("health", help="exit 0 iff the sidecar's /health answers (container health check)")
    health.add_argument("--addr", help="host:port of the sidecar's HTTP listener (default TASKLENS_HTTP_ADDR)")
    health.add_argument("--endpoint", default="health", choices=["health", "ready"])
    health.add_argument("--timeout", type=float, default=2.0)
    emulate = sub.add_parser("emulate-ecs", help="serve ECS task metadata locally (fixtures or live)",
                             description="Serves /v4/<id>, /v4/<id>/stats, /v4/<id>/task, /v4/<id>/taskWithTags "
                                         "and /v4/<id>/task/stats, the same under /v3, and the agent's task protection at "
                                         "/api/<id>/task-protection/v1/state; any other path is 404.")
    emulate.add_argument("--task", help="a /task JSON file (with --stats); default: live from this machine")
    emulate.add_argument("--stats", help="a /task/stats JSON file")
    emulate.add_argument("--example", choices=sorted(EMULATOR_EXAMPLES), help="a packaged capture instead of files")
    emulate.add_argument("--addr", default="127.0.0.1:51678", help="listen address (default 127.0.0.1:51678)")
    send = sub.add_parser("send", help="send StatsD lines to the sidecar (one datagram), checked first")
    send.add_argument("lines", nargs="+", metavar="LINE", help="e.g. 'jobs.processed:1|c|#queue:orders'")
    send.add_argument("--addr", help="host:port of the StatsD listener (default TASKLENS_STATSD_ADDR or 127.0.0.1:8125)")
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
