"""Scale-in protection end to end: `tasklens run` as a process, `tasklens emulate-ecs` as the ECS agent
(metadata + task protection), and a real worker process whose CPU time the emulated agent reports.
Both busy rules protect the task within about one poll of the worker becoming busy and release it
after the idle time."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from tests.support import TASKLENS, clean_env, free_port, http_get, wait_until

WORKER = str(Path(__file__).with_name("worker.py"))
TASK_ARN = "arn:aws:ecs:eu-west-1:123456789012:task/prod/0123456789abcdef0123456789abcdef"


def task_document() -> dict:
    def container(docker_id: str, name: str, cpu: int) -> dict:
        return {"DockerId": docker_id, "Name": name, "DockerName": name, "Image": f"{name}:1",
                "KnownStatus": "RUNNING", "DesiredStatus": "RUNNING", "Limits": {"CPU": cpu, "Memory": 256},
                "Type": "NORMAL", "StartedAt": "2026-01-01T00:00:00Z"}

    return {"Cluster": "prod", "TaskARN": TASK_ARN, "Family": "thumbs", "Revision": "3", "ServiceName": "thumbs",
            "KnownStatus": "RUNNING", "DesiredStatus": "RUNNING", "Limits": {"CPU": 1, "Memory": 512},
            "Containers": [container("worker0", "worker", 1024), container("sidecar0", "tasklens", 32)]}


class StatsWriter(threading.Thread):
    """Writes `/task/stats` for the emulator every 0.2 s: the worker container's CPU is the worker
    process's real CPU time (as the agent reads its cgroup), the sidecar's is its own."""

    def __init__(self, path: Path, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.path, self.pids = path, pids
        self.stop = threading.Event()
        self.previous: dict[str, dict] = {}

    def sample(self) -> dict:
        out = {}
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for docker_id, pid in self.pids.items():
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            cpu = {"cpu_usage": {"total_usage": int((times.user + times.system) * 1e9)}, "online_cpus": 2}
            out[docker_id] = {"read": now, "cpu_stats": cpu,
                              "precpu_stats": self.previous.get(docker_id, {}).get("cpu_stats", {}),
                              "preread": self.previous.get(docker_id, {}).get("read", "0001-01-01T00:00:00Z"),
                              "memory_stats": {"usage": 1 << 20, "limit": 256 << 20}}
        self.previous = out
        return out

    def run(self) -> None:
        while not self.stop.is_set():
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.sample()))
            tmp.replace(self.path)
            self.stop.wait(0.2)


@pytest.fixture
def ecs(tmp_path: Path):
    """The emulator serving the task file and live stats of the worker process (and the sidecar's)."""
    (tmp_path / "task.json").write_text(json.dumps(task_document()))
    (tmp_path / "stats.json").write_text("{}")
    port = free_port()
    emulator = subprocess.Popen([TASKLENS, "emulate-ecs", "--task", str(tmp_path / "task.json"), "--stats",
                                 str(tmp_path / "stats.json"), "--addr", f"127.0.0.1:{port}"],
                                env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_get(base + "/v4/sidecar0")[0] == 200, what="the emulator")
    yield base, tmp_path
    emulator.terminate()
    emulator.wait(10)


def metric(sidecar, name: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    text = sidecar.get("/metrics")[1]
    values = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
    return values[0] if values else None


def protection(agent_uri: str) -> dict:
    status, body = http_get(agent_uri + "/task-protection/v1/state")
    assert status == 200, body
    return json.loads(body)["protection"]


@pytest.mark.parametrize("rule", ["cpu>20%", "jobs.in_progress>0"])
def test_busy_worker_protects_the_task_and_idle_releases_it(ecs, sidecar_factory, tmp_path, rule) -> None:
    base, files = ecs
    agent_uri = f"{base}/api/sidecar0"
    sidecar = sidecar_factory(ECS_CONTAINER_METADATA_URI_V4=f"{base}/v4/sidecar0", ECS_AGENT_URI=agent_uri,
                              TASKLENS_SCALE_IN_PROTECTION=rule, TASKLENS_SCALE_IN_IDLE="2",
                              TASKLENS_POLL_INTERVAL="0.5", TASKLENS_FLUSH_INTERVAL="1")
    flag = tmp_path / "busy"
    worker = subprocess.Popen([sys.executable, WORKER, str(sidecar.statsd_port), str(flag)])
    # the agent reports the worker's CPU from when its start-up is over: on a busy machine, its imports
    # alone are above 20 % of a core for a stats interval, which protects the task before the test begins
    wait_until(lambda: Path(f"{flag}.ready").exists(), what="the worker's start-up")
    writer = StatsWriter(files / "stats.json", {"worker0": worker.pid, "sidecar0": sidecar.proc.pid})
    writer.start()
    try:
        sidecar.wait_ready()

        def state() -> dict:
            return json.loads(sidecar.get("/status")[1])["components"]["scaling:protection"]

        if rule.startswith("cpu"):
            wait_until(lambda: state()["own_container"] == "tasklens", what="the sidecar's own container name")
        # three metadata polls and StatsD flushes of an idle worker: nothing is protected
        wait_until(lambda: metric(sidecar, "tasklens_ecs_polls_total") >= 3, what="three ECS polls")
        wait_until(lambda: metric(sidecar, "jobs_in_progress") == 0.0, what="the worker's gauge")
        assert not protection(agent_uri)["ProtectionEnabled"] and not state()["busy"]
        flag.touch()
        started = time.monotonic()
        wait_until(lambda: protection(agent_uri)["ProtectionEnabled"], timeout=15, what="protection")
        took = time.monotonic() - started
        print(f"{rule}: protected {took:.2f} s after the worker became busy")
        assert took < 5.0, took  # one metadata poll / StatsD flush (0.5 s) plus one evaluation (1 s)
        assert state()["busy"] and state()["holding"] == [rule] and state()["protected"]
        assert protection(agent_uri)["ExpirationDate"] is not None
        flag.unlink()
        wait_until(lambda: not protection(agent_uri)["ProtectionEnabled"], timeout=20, what="release")
        assert not state()["busy"] and state()["idle_seconds"] >= 2
        _, metrics = sidecar.get("/metrics")
        assert 'tasklens_scaling_protection_requests_total{action="protect"' in metrics
        assert "tasklens_scaling_protected{" in metrics and "tasklens_scaling_task_heartbeat{" in metrics
    finally:
        writer.stop.set()
        worker.kill()
        worker.wait()
    assert sidecar.stop() == 0
    assert "Traceback" not in sidecar.log


def test_a_hostile_agent_uri_does_not_crash_the_sidecar(sidecar_factory) -> None:
    """The outside tester's case: an IDNA label too long for the agent's host. Protection says once
    that it is unavailable, counts it, and the busy state is still reported; nothing crashes."""
    import socket

    sidecar = sidecar_factory(ECS_AGENT_URI="http://" + "a" * 70 + ".example/api/x",
                              TASKLENS_SCALE_IN_PROTECTION="jobs.in_progress>0", TASKLENS_FLUSH_INTERVAL="1")
    sidecar.wait_ready()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        def busy() -> bool:
            udp.sendto(b"jobs.in_progress:1|g", ("127.0.0.1", sidecar.statsd_port))
            return metric(sidecar, "tasklens_scaling_busy") == 1.0

        wait_until(busy, timeout=15, what="the busy state")
    _, text = sidecar.get("/metrics")
    assert 'tasklens_scaling_protection_errors_total{' in text and 'reason="bad_url"' in text
    assert metric(sidecar, "tasklens_scaling_protection_errors_total") == 1.0
    assert "tasklens_component_crashes_total{" not in text, text
    state = json.loads(sidecar.get("/status")[1])["components"]["scaling:protection"]
    assert state["unavailable"].startswith("ECS_AGENT_URI=") and state["busy"]
    assert sidecar.stop() == 0
    assert "Traceback" not in sidecar.log and sidecar.log.count("ECS_AGENT_URI=") == 1, sidecar.log
