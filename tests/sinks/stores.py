"""Real metric stores for the export tests: Prometheus (remote-write receiver on) and VictoriaMetrics,
each started on a free loopback port with a temporary data directory, queried through its HTTP API."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support import free_port, http_get, wait_until
from tests.support import until  # noqa: F401 (re-exported for the sink tests)


class Store:
    def __init__(self, kind: str, proc: subprocess.Popen[bytes], base: str, write_path: str, log: Path) -> None:
        self.kind = kind
        self.proc = proc
        self.base = base
        self.write_url = base + write_path
        self.log_path = log

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query: [{"metric": {...}, "value": [ts, "v"]}, ...]."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        code, body = http_get(f"{self.base}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=5.0)
        assert code == 200, (code, body)
        out = json.loads(body)
        assert out["status"] == "success", out
        return out["data"]["result"]  # type: ignore[no-any-return]

    def values(self, expr: str, at: float | None = None) -> dict[tuple[tuple[str, str], ...], float]:
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in self.query(expr, at)}

    def series(self, match: str, start: float) -> list[dict[str, str]]:
        """Every series matching since `start`, ended (stale) ones included."""
        query = urllib.parse.urlencode({"match[]": match, "start": f"{start:.3f}", "end": f"{time.time() + 60:.3f}"})
        code, body = http_get(f"{self.base}/api/v1/series?{query}", timeout=10.0)
        assert code == 200, (code, body)
        return json.loads(body)["data"]  # type: ignore[no-any-return]

    async def aquery(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.query, expr, at)

    async def avalues(self, expr: str, at: float | None = None) -> dict[tuple[tuple[str, str], ...], float]:
        return await asyncio.to_thread(self.values, expr, at)

    def flush(self) -> None:
        """VictoriaMetrics keeps fresh rows in memory for a moment: make them searchable now."""
        if self.kind == "victoria-metrics":
            code, body = http_get(self.base + "/internal/force_flush", timeout=5.0)
            assert code == 200, (code, body)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _start(kind: str, args: list[str], base: str, write_path: str, log: Path, ready: str) -> Store:
    fh = open(log, "wb")
    proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT)
    fh.close()
    store = Store(kind, proc, base, write_path, log)
    try:
        wait_until(lambda: proc.poll() is not None or http_get(base + ready)[0] == 200, 60.0, what=f"{kind} ready")
    except AssertionError:
        store.stop()
        raise
    assert proc.poll() is None, store.log
    return store


def start_prometheus(tmp: Path, port: int | None = None) -> Store:
    port = port or free_port()
    (tmp / "prometheus.yml").write_text("global:\n  scrape_interval: 1h\n")
    args = ["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--web.enable-remote-write-receiver", "--log.level=warn"]
    return _start("prometheus", args, f"http://127.0.0.1:{port}", "/api/v1/write", tmp / f"prometheus-{port}.log",
                  "/-/ready")


def start_victoria_metrics(tmp: Path, port: int | None = None) -> Store:
    port = port or free_port()
    # latencyOffset 0: answer queries with samples written a moment ago (the default hides the last 30 s)
    args = ["victoria-metrics", f"-storageDataPath={tmp / 'vm-data'}", f"-httpListenAddr=127.0.0.1:{port}",
            "-retentionPeriod=1", "-search.latencyOffset=0s", "-search.disableCache", "-loggerLevel=WARN"]
    return _start("victoria-metrics", args, f"http://127.0.0.1:{port}", "/api/v1/write", tmp / f"vm-{port}.log",
                  "/health")


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


@contextmanager
def running(store: Store) -> Iterator[Store]:
    try:
        yield store
    finally:
        store.stop()
