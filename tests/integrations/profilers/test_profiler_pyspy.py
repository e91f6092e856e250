"""Sidecar mode end to end: the real py-spy samples a real worker process; a strict local Pyroscope
receives the folded stacks. Every test targets its own worker through TASKLENS_PROFILE_MATCH (a
unique marker on its command line), never the machine's other Python processes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import Config
from agent.hub import Hub
from integrations.profilers.pyspy import PySpyProfiler, shown_location
from tests.support import clean_env, free_port
from tests.integrations.profilers.support import (
    HOT_FUNCTION, HOT_WORKER, WORKER_PYTHON, Worker, profiler_for, scans, stopped, until,
)

EXPECTED_LABELS = {  # fargate-2023.task.json, as agent.identity derives it, minus the service
    "ecs_cluster": "akira-fargate-check-cluster",
    "task_family": "akira-fargate-check",
    "task_revision": "1",
    "task_id": "67cd8a22b533459696d4ccab5278e009",
    "availability_zone": "ap-northeast-1d",
    "region": "ap-northeast-1",
    "launch_type": "FARGATE",
    "process": "hot_worker.py",
}


async def test_hot_function_dominates_under_service_name_and_task_tags(pyroscope, start_worker, ptrace_ok,
                                                                       identity):
    pyroscope.require_auth = ("tenant-user", "s3cret")
    pyroscope.require_tenant = "team-a"
    worker = start_worker()
    profiler = profiler_for(pyroscope.url, worker.marker, identity, pyroscope_user="tenant-user",
                            pyroscope_password="s3cret", pyroscope_tenant="team-a")
    stop = asyncio.Event()
    task = asyncio.create_task(profiler.run(stop))
    await until(lambda: len(pyroscope.ingested) >= 2, 40, "two windows pushed")
    metrics = profiler.hub.metrics
    assert metrics.get("tasklens.profiler.processes") == 1
    [shown] = profiler.status()["processes"]
    assert (shown["pid"], shown["process"], shown["state"]) == (worker.pid, "hot_worker.py", "profiling")
    await stopped(profiler, stop, task)

    for profile in pyroscope.ingested:
        assert (profile.service, profile.kind) == ("akira-fargate-check", "cpu")
        assert profile.labels == EXPECTED_LABELS
        assert (profile.sample_rate, profile.spy_name) == (100, "pyspy")
        # a 2 s window (whole seconds, plus py-spy's start); the last one is cut short by the stop
        assert 0 <= profile.until - profile.start <= 10
        assert profile.headers["X-Scope-OrgID"] == "team-a"
        assert profile.share(HOT_FUNCTION) >= 0.9, profile.stacks.most_common(3)
        assert all("crunch_numbers_hot (hot_worker.py)" in s for s, _ in profile.stacks.most_common(1))
    assert max(p.until - p.start for p in pyroscope.ingested) >= 1
    assert metrics.total("tasklens.profiler.pushes") == len(pyroscope.ingested)
    assert metrics.total("tasklens.profiler.samples") == sum(sum(p.stacks.values()) for p in pyroscope.ingested)
    assert metrics.total("tasklens.profiler.push_errors") == 0
    assert metrics.total("tasklens.profiler.record_errors") == 0
    assert metrics.get("tasklens.profiler.processes") == 0


async def test_picks_up_a_new_process_and_drops_it_quietly_when_it_exits(pyroscope, start_worker, ptrace_ok,
                                                                         identity, caplog):
    caplog.set_level(logging.WARNING, logger="tasklens")
    marker = f"tasklens-late-{uuid.uuid4().hex[:12]}"  # known before the worker exists
    profiler = profiler_for(pyroscope.url, marker, identity, window=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(profiler.run(stop))
    await scans(profiler, 2)  # scans that find nothing
    assert profiler.status()["processes"] == [] and pyroscope.ingested == []
    worker = start_worker(seconds=3, marker=marker)
    await until(lambda: len(pyroscope.ingested) >= 1, 20, "the late process profiled")
    await until(lambda: worker.proc.poll() is not None, 20, "the worker to exit")
    await until(lambda: profiler.hub.metrics.get("tasklens.profiler.processes") == 0, 20, "the exited one dropped")
    await stopped(profiler, stop, task)
    assert profiler.hub.metrics.total("tasklens.profiler.record_errors") == 0
    assert profiler.hub.metrics.total("tasklens.profiler.push_errors") == 0
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_missing_ptrace_is_reported_once_with_the_task_definition_fix(pyroscope, start_worker, ptrace_ok,
                                                                           identity, tmp_path, caplog):
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("setpriv (util-linux) is needed to run py-spy without privileges")
    # The real py-spy, run as `nobody` with no capabilities: the kernel refuses it ptrace.
    unprivileged = tmp_path / "py-spy-unprivileged"
    unprivileged.write_text(f'#!/bin/sh\nexec {setpriv} --reuid=65534 --regid=65534 --clear-groups '
                            f'--inh-caps=-all --bounding-set=-all {ptrace_ok} "$@"\n')
    unprivileged.chmod(0o755)
    first, second = start_worker(), start_worker()
    config = Config(pyroscope_url=pyroscope.url, profile_window=1.0,
                    profile_match=f"{re.escape(first.marker)}|{re.escape(second.marker)}")
    profiler = PySpyProfiler(config, Hub(identity), py_spy=str(unprivileged))
    stop = asyncio.Event()
    task = asyncio.create_task(profiler.run(stop))
    metrics = profiler.hub.metrics
    await until(lambda: metrics.get("tasklens.profiler.record_errors", reason="ptrace_denied") == 2, 30,
                "both processes refused")
    await stopped(profiler, stop, task)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    for needle in ("Permission Denied", "SYS_PTRACE", '"pidMode": "task"', "cap_add"):
        assert needle in errors[0]
    assert profiler.status()["problem"] == errors[0]
    assert pyroscope.ingested == []


async def test_push_failures_are_counted_and_sampling_goes_on(pyroscope, start_worker, ptrace_ok, identity):
    pyroscope.status = 500
    worker = start_worker()
    profiler = profiler_for(pyroscope.url, worker.marker, identity, window=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(profiler.run(stop))
    metrics = profiler.hub.metrics
    await until(lambda: metrics.get("tasklens.profiler.push_errors", reason="http_500") >= 2, 30, "two failed pushes")
    pyroscope.status = 200  # the server is back: the next window gets through
    await until(lambda: metrics.total("tasklens.profiler.pushes") >= 1, 30, "a push after recovery")
    await stopped(profiler, stop, task)
    assert pyroscope.ingested and pyroscope.ingested[0].share(HOT_FUNCTION) >= 0.9


async def test_an_error_text_that_echoes_the_password_is_logged_masked(pyroscope, start_worker, ptrace_ok,
                                                                       identity, caplog):
    caplog.set_level(logging.WARNING, logger="tasklens")
    password = "s3cr3t-Pyroscope-pw"
    pyroscope.status, pyroscope.error_text = 401, f"denied: user=team-a password={password}"
    worker = start_worker()
    profiler = profiler_for(pyroscope.url, worker.marker, identity, window=1.0, pyroscope_user="team-a",
                            pyroscope_password=password)
    stop = asyncio.Event()
    task = asyncio.create_task(profiler.run(stop))
    metrics = profiler.hub.metrics
    await until(lambda: metrics.get("tasklens.profiler.push_errors", reason="http_401") >= 1, 30, "a refused push")
    await stopped(profiler, stop, task)
    assert "denied: user=team-a" in caplog.text and password not in caplog.text


async def test_an_error_text_that_echoes_the_basic_auth_header_is_logged_masked(pyroscope, start_worker, ptrace_ok,
                                                                                identity, caplog):
    caplog.set_level(logging.WARNING, logger="tasklens")
    header = "Basic " + base64.b64encode(b"user:s3cr3t-Pyro-Pass!").decode()  # dXNlcjpzM2NyM3QtUHlyby1QYXNzIQ==
    pyroscope.status, pyroscope.error_text = 401, f"invalid credentials: auth header was {header}"
    worker = start_worker()
    profiler = profiler_for(pyroscope.url, worker.marker, identity, window=1.0, pyroscope_user="user",
                            pyroscope_password="s3cr3t-Pyro-Pass!")
    stop = asyncio.Event()
    task = asyncio.create_task(profiler.run(stop))
    metrics = profiler.hub.metrics
    await until(lambda: metrics.get("tasklens.profiler.push_errors", reason="http_401") >= 1, 30, "a refused push")
    await stopped(profiler, stop, task)
    assert "auth header was Basic ***" in caplog.text
    assert "dXNlcjpzM2NyM3QtUHlyby1QYXNzIQ" not in caplog.text


async def test_unreachable_server_is_a_connection_error(start_worker, ptrace_ok, identity):
    worker = start_worker()
    profiler = profiler_for(f"http://127.0.0.1:{free_port()}", worker.marker, identity, window=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(profiler.run(stop))
    metrics = profiler.hub.metrics
    await until(lambda: metrics.get("tasklens.profiler.push_errors", reason="connection") >= 1, 30, "a refused push")
    await stopped(profiler, stop, task)
    assert metrics.total("tasklens.profiler.pushes") == 0


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_not_followed_and_the_profile_is_not_counted_pushed(pyroscope, start_worker, ptrace_ok,
                                                                                identity, status):
    """Followed, a 301/302 (an ALB's HTTP-to-HTTPS redirect) would become a GET without the profile, which
    the target accepts, and the profile would count as pushed; the fake takes any followed request as an error."""
    # to another host name of the same server (the server's own URL would show as `***`: it is a secret)
    target = pyroscope.url.replace("127.0.0.1", "localhost") + "/ingest2"
    pyroscope.redirect = (status, target)
    worker = start_worker()
    profiler = profiler_for(pyroscope.url, worker.marker, identity, window=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(profiler.run(stop))
    metrics = profiler.hub.metrics
    await until(lambda: metrics.get("tasklens.profiler.push_errors", reason="redirect") >= 2, 30, "two redirects")
    assert (metrics.total("tasklens.profiler.pushes"), metrics.total("tasklens.profiler.samples")) == (0, 0)
    assert profiler.status()["last_error"].startswith(f"redirect: HTTP {status} to {target}, not followed")
    assert pyroscope.ingested == []
    pyroscope.redirect = None  # the URL is fixed: profiles get through, and the error is no longer shown
    await until(lambda: metrics.total("tasklens.profiler.pushes") >= 1, 30, "a push after the redirect")
    await stopped(profiler, stop, task)
    assert profiler.status()["last_error"] is None


async def test_a_redirects_location_is_shown_without_its_credentials(pyroscope, start_worker, ptrace_ok, identity,
                                                                      caplog):
    caplog.set_level(logging.WARNING, logger="tasklens")
    pyroscope.redirect = (301, "https://user:L0cation-pw@pyroscope.example.net/ingest?token=T0ken-s3cret")
    worker = start_worker()
    profiler = profiler_for(pyroscope.url, worker.marker, identity, window=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(profiler.run(stop))
    metrics = profiler.hub.metrics
    await until(lambda: metrics.get("tasklens.profiler.push_errors", reason="redirect") >= 1, 30, "a redirect")
    await stopped(profiler, stop, task)
    for shown in (caplog.text, profiler.status()["last_error"]):
        assert "HTTP 301 to https://pyroscope.example.net/ingest, not followed" in shown
        assert "L0cation-pw" not in shown and "T0ken-s3cret" not in shown


@pytest.mark.parametrize("location", ["http://h/ingest?token=" + "," * 8000, "http://u:" + "p" * 8000 + "@h/x",
                                      "http://[bad/x", "/relative/path?token=abc", ""])
def test_a_redirects_location_is_shown_at_once_without_user_info_or_query(location):
    """The server writes the header: shown, it is cut to its address, at once whatever its length."""
    started = time.monotonic()
    shown = shown_location(location)
    assert time.monotonic() - started < 0.1
    assert "?" not in shown and "@" not in shown and "token" not in shown and len(shown) <= 300


async def test_stop_pushes_the_window_in_flight(pyroscope, start_worker, ptrace_ok, identity):
    worker = start_worker()
    profiler = profiler_for(pyroscope.url, worker.marker, identity, window=60.0)
    stop = asyncio.Event()
    task = asyncio.create_task(profiler.run(stop))
    await until(lambda: profiler._spies, 20, "py-spy running")
    await until(lambda: profiler.status()["processes"], 20, "the window open")
    await scans(profiler, 2)  # the window has samples to write
    loop = asyncio.get_running_loop()
    began = loop.time()
    await stopped(profiler, stop, task)
    assert loop.time() - began < 20  # not the 60 s window: py-spy writes what it has on SIGINT
    [profile] = pyroscope.ingested
    assert profile.until - profile.start < 20 and profile.share(HOT_FUNCTION) >= 0.9


async def test_a_process_that_profiles_itself_is_left_alone(pyroscope, start_worker, ptrace_ok, identity,
                                                             bootstrap_dir):
    env = clean_env(PYTHONPATH=str(bootstrap_dir), TASKLENS_PYROSCOPE_URL=pyroscope.url, TASKLENS_PROFILE_WINDOW="1",
                    TASKLENS_SERVICE="self-profiled")
    worker = start_worker(env=env)
    maps = Path(f"/proc/{worker.pid}/maps")
    await until(lambda: "pyroscope" in maps.read_text(), 20, "pyroscope-io loaded by the bootstrap")
    profiler = profiler_for(pyroscope.url, worker.marker, identity, window=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(profiler.run(stop))
    await until(lambda: pyroscope.pushed, 20, "the worker's own pushes")
    await scans(profiler, 2)
    await stopped(profiler, stop, task)
    assert pyroscope.ingested == [] and profiler.status()["processes"] == []
    assert profiler.hub.metrics.total("tasklens.profiler.record_errors") == 0


async def test_missing_py_spy_is_one_clear_problem(identity, caplog):
    profiler = PySpyProfiler(Config(pyroscope_url="http://127.0.0.1:9", profile_match="x"), Hub(identity),
                             py_spy="/nonexistent/py-spy")
    stop = asyncio.Event()
    task = asyncio.create_task(profiler.run(stop))
    await until(lambda: profiler.status()["problem"], 5, "the problem reported")
    await stopped(profiler, stop, task)
    assert "install tasklens[profiling]" in profiler.status()["problem"]
    assert profiler.hub.metrics.get("tasklens.profiler.record_errors", reason="pyspy_missing") == 1
    # every known reason is exported from the start, at 0 until it happens
    pushes = {dict(s.tags)["reason"]: s.value for s in profiler.hub.metrics.samples()
              if s.name == "tasklens.profiler.push_errors"}
    assert pushes == {"redirect": 0, "timeout": 0, "connection": 0, "error": 0}
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


async def test_no_process_to_profile_hints_at_pid_mode_once(identity, caplog):
    caplog.set_level(logging.WARNING, logger="tasklens")
    profiler = PySpyProfiler(Config(pyroscope_url="http://127.0.0.1:9", profile_window=0.2), Hub(identity),
                             scan=lambda: [])
    stop = asyncio.Event()
    task = asyncio.create_task(profiler.run(stop))
    await until(lambda: any("pidMode" in r.getMessage() for r in caplog.records), 10, "the hint")
    await scans(profiler, 3)  # several more empty scans
    await stopped(profiler, stop, task)
    assert len([r for r in caplog.records if "pidMode" in r.getMessage()]) == 1


def test_an_invalid_match_pattern_is_a_config_error(identity):
    from agent.config import ConfigError

    with pytest.raises(ConfigError, match="TASKLENS_PROFILE_MATCH"):
        PySpyProfiler(Config(pyroscope_url="http://x:4040", profile_match="(unclosed"), Hub(identity))


def test_credentials_in_the_url_become_basic_auth(identity):
    profiler = PySpyProfiler(Config(pyroscope_url="https://123:glc_tok%3D@profiles.example.net/"), Hub(identity),
                             py_spy="")
    assert profiler._ingest_url == "https://profiles.example.net/ingest"
    assert profiler._headers["Authorization"] == "Basic " + base64.b64encode(b"123:glc_tok=").decode()
    assert "glc_tok" not in str(profiler.status())


async def test_container_name_comes_from_the_metadata_even_when_it_arrives_later(pyroscope, start_worker, ptrace_ok,
                                                                                 identity):
    worker = start_worker()
    # This machine's cgroup path of the worker stands in for a container id of the task metadata.
    parts = [line.rsplit("/", 1)[-1] for line in Path(f"/proc/{worker.pid}/cgroup").read_text().splitlines()]
    docker_id = next((p for p in parts if p), "")
    if not docker_id:
        pytest.skip("the worker runs in the root cgroup here: no container path to recognise")
    profiler = profiler_for(pyroscope.url, worker.marker, identity, window=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(profiler.run(stop))
    await until(lambda: pyroscope.ingested, 20, "a first profile")
    assert "container_name" not in pyroscope.ingested[0].labels  # the identity knows no container yet
    # the ECS source's next poll brings the task's containers
    containers = {docker_id: (("container_name", "worker"), ("image", "acme/worker"), ("image_tag", "2"))}
    profiler.hub.set_identity(replace(identity, containers=containers))
    seen = len(pyroscope.ingested)
    await until(lambda: len(pyroscope.ingested) >= seen + 2, 20, "profiles after the metadata")
    await stopped(profiler, stop, task)
    assert pyroscope.ingested[-1].labels["container_name"] == "worker"
    assert profiler.status()["processes"] == []


async def test_a_file_name_with_a_newline_cannot_split_or_forge_a_log_line(tmp_path, identity, caplog):
    """The names of what a process runs come from the worker's side: shown escaped in every line."""
    caplog.set_level(logging.INFO, logger="tasklens")
    script = tmp_path / "job\nERROR tasklens: forged.py"
    shutil.copy(HOT_WORKER, script)
    marker = f"tasklens-test-{uuid.uuid4().hex[:12]}"
    proc = subprocess.Popen([WORKER_PYTHON, str(script), marker, "60"], env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        Worker(proc, marker).wait_ready()
        # py-spy is `false`: every window fails, so the failure line shows the name too (no ptrace needed)
        config = Config(pyroscope_url="http://127.0.0.1:9", profile_window=1.0, profile_match=re.escape(marker))
        profiler = PySpyProfiler(config, Hub(identity), py_spy=shutil.which("false"))
        stop = asyncio.Event()
        task = asyncio.create_task(profiler.run(stop))
        await until(lambda: "py-spy failed on pid" in caplog.text, 30, "a failed window logged")
        await stopped(profiler, stop, task)
    finally:
        proc.kill()
        proc.communicate()
    lines = [r.getMessage() for r in caplog.records if str(proc.pid) in r.getMessage()]
    assert len(lines) >= 2  # "profiling pid ..." and "py-spy failed on pid ..."
    for line in lines:
        assert "\n" not in line and "(job\\nERROR tasklens: forged.py)" in line
