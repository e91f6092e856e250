"""Which processes the sidecar profiles: pure selection over /proc facts, plus a real scan."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from integrations.profilers.procs import (
    ProcessInfo, container_name, lineage, loads_pyroscope, profiles_itself, scan, select,
)

WORKER_ID = "c912d0f0f204360ee90ce67c0d083c3514975f149b854f38a48deac611e82e48"
FARGATE_ID = "67cd8a22b533459696d4ccab5278e009-3344678718"
CONTAINERS = {
    WORKER_ID: (("container_name", "worker"), ("image", "acme/worker"), ("image_tag", "2")),
    FARGATE_ID: (("container_name", "apmtest-ping"), ("image", "akirahiiro/apmtest-ping"), ("image_tag", "1.0.3")),
}

# A task seen from the sidecar (pid 7, started by tini, pid 1) with pidMode: task.
TASK = [
    ProcessInfo(1, 0, 1.0, "/sbin/tini", ("/sbin/tini", "--", "tasklens", "run")),
    ProcessInfo(7, 1, 2.0, "/usr/local/bin/python3.11", ("/usr/local/bin/python3.11", "/usr/local/bin/tasklens", "run")),
    ProcessInfo(30, 7, 9.0, "/usr/local/bin/py-spy", ("py-spy", "record", "--pid", "41")),
    ProcessInfo(40, 0, 3.0, "/bin/sh", ("/bin/sh", "-c", "python -m app.main")),
    ProcessInfo(41, 40, 3.1, "/usr/local/bin/python3.12", ("python", "-m", "app.main"),
                f"0::/ecs/abc/{WORKER_ID}\n"),
    ProcessInfo(42, 41, 3.2, "", ("python", "-m", "app.main"), f"0::/ecs/abc/{WORKER_ID}\n"),  # exe unreadable
    ProcessInfo(50, 0, 4.0, "/usr/bin/node", ("node", "server.js")),
]


def test_lineage_is_the_process_and_its_ancestors():
    assert lineage(TASK, 7) == {7, 1}
    assert lineage(TASK, 42) == {42, 41, 40}
    assert lineage(TASK, 999) == {999}


def test_select_picks_the_python_processes_that_are_not_the_sidecar():
    targets = select(TASK, lineage(TASK, 7) | {30}, None)
    assert [(t.pid, t.started, t.process, container_name(t.cgroup, CONTAINERS)) for t in targets] == [
        (41, 3.1, "app.main", "worker"), (42, 3.2, "app.main", "worker"),
    ]
    assert targets[0].lifetime == (41, 3.1) and targets[0].command == "python -m app.main"


def test_what_a_process_runs_is_part_of_its_key():
    """exec keeps the pid and the start time: a shell or a pyenv shim that execs Python is a new target."""
    shim = ProcessInfo(60, 1, 5.0, "/usr/bin/bash", ("bash", "/root/.pyenv/shims/python", "worker.py"))
    python = ProcessInfo(60, 1, 5.0, "/usr/local/bin/python3.12", ("python3.12", "worker.py"))
    retitled = ProcessInfo(60, 1, 5.0, "/usr/local/bin/python3.12", ("worker: busy",))
    [before], [after], [renamed] = (select([p], set(), re.compile("worker")) for p in (shim, python, retitled))
    assert before.lifetime == after.lifetime == renamed.lifetime == (60, 5.0)
    assert len({before.key, after.key, renamed.key}) == 3
    assert (before.process, after.process, renamed.process) == ("bash", "worker.py", "worker")
    assert after.key == (60, 5.0, "/usr/local/bin/python3.12", ("python3.12", "worker.py"))


def test_select_with_a_pattern_takes_what_it_matches_python_or_not():
    targets = select(TASK, lineage(TASK, 7) | {30}, re.compile(r"server\.js|sh -c"))
    assert [t.pid for t in targets] == [40, 50]
    # the sidecar's own py-spy runs are excluded even when the pattern matches them
    assert select(TASK, {7, 1, 30}, re.compile("py-spy")) == []


def test_container_name_from_cgroup_paths():
    assert container_name(f"0::/ecs/abc/{WORKER_ID}\n", CONTAINERS) == "worker"
    assert container_name(f"12:memory:/docker/{WORKER_ID}\n11:cpu:/docker/{WORKER_ID}\n", CONTAINERS) == "worker"
    assert container_name(f"0::/system.slice/docker-{WORKER_ID}.scope\n", CONTAINERS) == "worker"
    assert container_name(f"0::/ecs/67cd8a22b533459696d4ccab5278e009/{FARGATE_ID}\n", CONTAINERS) == "apmtest-ping"
    assert container_name("0::/\n", CONTAINERS) == ""
    assert container_name(f"0::/ecs/abc/{WORKER_ID}\n", {}) == ""


def test_loads_pyroscope():
    maps = ("7f00-7f10 r-xp 00000000 08:01 1 /shared/profiler/pyroscope/_native.cpython-311-x86_64-linux-gnu.so\n"
            "7f20-7f30 r-xp 00000000 08:01 2 /usr/lib/libc.so.6\n")
    assert loads_pyroscope(maps)
    assert not loads_pyroscope("7f20-7f30 r-xp 00000000 08:01 2 /usr/lib/libc.so.6\n")


def test_scan_sees_a_real_child_process_and_its_cgroup():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "tasklens-scan-probe"])
    try:
        found = {p.pid: p for p in scan()}
        me = found[os.getpid()]
        assert me.exe and me.cmdline and me.cgroup.strip()
        probe = found[child.pid]
        assert probe.ppid == os.getpid() and probe.cmdline[-1] == "tasklens-scan-probe"
        assert os.path.samefile(probe.exe, os.path.realpath(sys.executable))
        [target] = select(found.values(), lineage(found.values(), os.getpid()), re.compile("tasklens-scan-probe"))
        assert target.pid == child.pid and not profiles_itself(child.pid)
    finally:
        child.kill()
        child.wait()
