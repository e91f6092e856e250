#!/usr/bin/env python3
"""The image's numbers, measured with podman: size, cold start to /ready, idle RSS.

    python3 scripts/image-numbers.py [IMAGE] [--seconds 60] [--starts 5]

- size on disk (what `podman images` shows) and compressed (the gzip-compressed layers a registry
  stores and a pull downloads), each for the whole image and for the layers on top of the base;
- cold start: from `podman run` of the sidecar to its first 200 on /ready, in a pod with the ECS
  metadata emulator (the emulator started beforehand, as the ECS agent is), median of --starts;
- idle RSS: VmRSS of the sidecar's process (PID 1 in its container) over --seconds of idling in
  that pod, sampled every 5 s (median and max), with the container's cgroup memory usage.
IMAGE defaults to localhost/tasklens:dev (scripts/podman-build.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
ENV = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(SCRIPTS / "containers.conf"))}
MiB = 1024 * 1024


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True, env=ENV).stdout


def layer_sizes(image: str) -> tuple[list[int], list[int]]:
    """(uncompressed, gzip-compressed) size of each layer that holds files, bottom first."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "image"
        podman("save", "--format", "docker-dir", "--compress", "-o", str(out), image)
        compressed = [layer["size"] for layer in json.loads((out / "manifest.json").read_text())["layers"]]
    history = json.loads(podman("history", "--format", "json", image))
    uncompressed = [int(h["size"]) for h in reversed(history) if int(h["size"]) > 0]
    assert len(uncompressed) == len(compressed), (uncompressed, compressed)
    return uncompressed, compressed


def sizes(image: str) -> dict[str, float]:
    uncompressed, compressed = layer_sizes(image)
    labels = json.loads(podman("inspect", image))[0]["Config"].get("Labels") or {}
    base_layers = 1 if "tasklens.base" in labels else 0  # the stand-in base is one imported layer
    return {
        "on_disk_mib": sum(uncompressed) / MiB,
        "compressed_mib": sum(compressed) / MiB,
        "above_base_on_disk_mib": sum(uncompressed[base_layers:]) / MiB,
        "above_base_compressed_mib": sum(compressed[base_layers:]) / MiB,
    }


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def start_and_idle(image: str, starts: int, seconds: float) -> dict[str, float]:
    name = f"tasklens-numbers-{uuid.uuid4().hex[:8]}"
    podman("network", "create", name)
    try:
        podman("pod", "create", "--name", name, "--network", name)
        podman(
            "run",
            "-d",
            "--pod",
            name,
            "--name",
            f"{name}-metadata",
            "--read-only",
            image,
            "emulate-ecs",
            "--addr",
            "127.0.0.1:51678",
        )
        infra = podman("pod", "inspect", name, "--format", "{{.InfraContainerID}}").strip()
        ip = podman(
            "inspect", infra, "--format", f'{{{{(index .NetworkSettings.Networks "{name}").IPAddress}}}}'
        ).strip()
        url = f"http://{ip}:9102/ready"
        sidecar = f"{name}-sidecar"
        run = [
            "run",
            "-d",
            "--pod",
            name,
            "--name",
            sidecar,
            "--read-only",
            "-e",
            "ECS_CONTAINER_METADATA_URI_V4=http://127.0.0.1:51678/v4/numbers",
            "-e",
            "TASKLENS_SERVICE=numbers",
            image,
        ]
        times = []
        for _ in range(starts):
            started = time.monotonic()
            podman(*run)
            while not ready(url):
                if time.monotonic() - started > 60:
                    raise SystemExit(f"{sidecar} not ready after 60 s:\n{podman('logs', sidecar)}")
                time.sleep(0.01)
            times.append(time.monotonic() - started)
            podman("rm", "-f", "-t", "30", sidecar)
        podman(*run)
        while not ready(url):
            time.sleep(0.05)
        rss, cgroup = [], []
        deadline = time.monotonic() + seconds
        while True:
            status = podman("exec", sidecar, "cat", "/proc/1/status")
            rss.append(next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")))
            usage = podman(
                "exec",
                sidecar,
                "sh",
                "-c",
                "cat /sys/fs/cgroup/memory.current 2>/dev/null || cat /sys/fs/cgroup/memory/memory.usage_in_bytes",
            )
            cgroup.append(int(usage.split()[0]))
            if time.monotonic() >= deadline:
                break
            time.sleep(5)
        return {
            "cold_start_to_ready_s_median": statistics.median(times),
            "cold_start_to_ready_s_max": max(times),
            "idle_rss_mib_median": statistics.median(rss) / MiB,
            "idle_rss_mib_max": max(rss) / MiB,
            "idle_cgroup_memory_mib_median": statistics.median(cgroup) / MiB,
        }
    finally:
        subprocess.run(["podman", "pod", "rm", "-f", "-t", "0", name], capture_output=True, env=ENV, check=False)
        subprocess.run(["podman", "network", "rm", "-f", name], capture_output=True, env=ENV, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", default="localhost/tasklens:dev")
    parser.add_argument("--seconds", type=float, default=60.0, help="idle time sampled for RSS")
    parser.add_argument("--starts", type=int, default=5, help="cold starts timed")
    parser.add_argument("--size-only", action="store_true")
    args = parser.parse_args()
    out: dict[str, object] = {"image": args.image, **sizes(args.image)}
    if not args.size_only:
        out.update(start_and_idle(args.image, args.starts, args.seconds))
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}, indent=2))


if __name__ == "__main__":
    main()
