"""tasklens itself, as `tasklens run` in local mode, counted from its own `/metrics`."""

from __future__ import annotations

import sys
from collections.abc import Hashable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agent.sinks.prometheus import metric_name
from statsd_peers.base import Reading, Server, ServerError, http_get
from statsd_peers.measure import free_port, udp_drops
from statsd_peers.traffic import TAG_KEYS, Context

_TAG_KEYS = frozenset(TAG_KEYS)  # the sidecar adds its own tags (service ...): compare ours only


def parse_metrics(text: str) -> Reading:
    values: dict[Hashable, float] = {}
    extra: dict[str, float] = {}
    lines = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("tasklens_statsd_") or s.name == "tasklens_ecs_polls_total":
                # self-metrics, summed over their labels but the reason of errors
                label = s.labels.get("reason") or s.labels.get("listener") or ""
                key = s.name + (f"{{{label}}}" if label else "")
                extra[key] = extra.get(key, 0.0) + s.value
                if s.name == "tasklens_statsd_lines_total":
                    lines += s.value
                continue
            # on ECS the task's labels win and a worker tag of the same key is exported as `exported_<key>`
            labels = {k: v for k, v in s.labels.items() if k in _TAG_KEYS}
            labels.update((k[len("exported_"):], v) for k, v in s.labels.items()
                          if k.startswith("exported_") and k[len("exported_"):] in _TAG_KEYS)
            tags = frozenset(labels.items())
            values[(s.name, tags)] = s.value
    return Reading(lines, values, extra)


class Sidecar(Server):
    name = "tasklens"
    note = "this project: tasklens run (local mode), counted from its /metrics"
    receiver = "native"  # TASKLENS_STATSD_RECEIVER
    extra_env: dict[str, str] = {}  # the benchmark's --busy: an ECS endpoint to poll, ...

    def __init__(self, workdir: Path, flush_interval: float, core: int | None) -> None:
        super().__init__(workdir, flush_interval, core)
        self.http_port = free_port()

    def missing(self) -> str | None:
        try:
            import agent.statsd.server  # noqa: F401
        except ImportError as exc:
            return f"the sidecar's StatsD server is not there yet ({exc})"
        return None

    def command(self) -> tuple[list[str], dict[str, str | None], Path | None]:
        env: dict[str, str | None] = {
            "TASKLENS_STATSD_ADDR": f"127.0.0.1:{self.port}",
            "TASKLENS_HTTP_ADDR": f"127.0.0.1:{self.http_port}",
            "TASKLENS_FLUSH_INTERVAL": str(self.flush_interval),
            "TASKLENS_SERVICE": "bench",
            # no ECS variable: local mode, whatever the shell running the bench has
            "ECS_CONTAINER_METADATA_URI_V4": None,
            "ECS_CONTAINER_METADATA_URI": None,
            "TASKLENS_STATSD_RECEIVER": self.receiver,
            **self.extra_env,
        }
        return [str(Path(sys.executable).with_name("tasklens")), "run"], env, None

    def ready(self) -> bool:
        http_get(f"http://127.0.0.1:{self.http_port}/metrics", timeout=2)
        return udp_drops(self.port) is not None

    def read(self) -> Reading:
        return parse_metrics(http_get(f"http://127.0.0.1:{self.http_port}/metrics"))

    def sum_key(self, ctx: Context) -> Hashable | None:
        if ctx.kind == "c":
            return metric_name(ctx.name) + "_total", frozenset(ctx.tags)
        if ctx.kind in ("ms", "h", "d"):
            return metric_name(ctx.name) + "_count", frozenset(ctx.tags)
        return None

    def gauge_key(self, ctx: Context) -> Hashable | None:
        return (metric_name(ctx.name), frozenset(ctx.tags)) if ctx.kind == "g" else None


class SidecarPythonReceiver(Sidecar):
    """The same, with the sockets read by its Python receive thread (`_fast.drain`) instead of the C one."""

    name = "tasklens-python"
    note = "this project with TASKLENS_STATSD_RECEIVER=python: the sockets read from Python, as before"
    receiver = "python"


def baseline(tree: Path, rev: str) -> type[Sidecar]:
    """The sidecar of another commit (`bench/baseline.py`'s export of its `agent/` into `tree`), run as
    `python -m agent run` in that tree: the same measurement, side by side.

    In the tree, not only with it on PYTHONPATH: `-m` puts the working directory first on the path, and
    from this checkout that imported this checkout's `agent/`, so that a baseline was this tree again.
    `ready` checks which C loop the process loaded."""

    class SidecarBaseline(Sidecar):
        name = f"tasklens@{rev}"
        note = f"this project at {rev}"

        def command(self) -> tuple[list[str], dict[str, str | None], Path | None]:
            _, env, _ = super().command()
            return [sys.executable, "-m", "agent", "run"], {**env, "PYTHONPATH": str(tree)}, tree

        def ready(self) -> bool:
            from baseline import loaded_c_loops  # bench/baseline.py

            if not super().ready():
                return False
            loaded = loaded_c_loops(self.pid)
            if not loaded or any(not path.startswith(str(tree.resolve())) for path in loaded):
                raise ServerError(f"{self.name} runs another tree's agent/: {sorted(loaded)}")
            return True

    return SidecarBaseline

