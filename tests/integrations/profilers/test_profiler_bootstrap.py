"""Bootstrap mode end to end: a real worker with the populated directory on PYTHONPATH runs the real
pyroscope-io, whose gzip protobuf pushes a strict local Pyroscope decodes. The same worker runs
normally with profiling unconfigured and with a broken bootstrap.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from integrations.profilers.bootstrap import BOOTSTRAP_SOURCE, distributions, populate
from tests.support import clean_env, free_port, serve_app
from tests.integrations.profilers.support import HOT_FUNCTION, WORKER_PYTHON, task_json, until

CONTAINER = "apmtest-ping"  # the worker's own container in fargate-2023.task.json


class Metadata:
    """ECS task metadata v4 on loopback: `/v4/c1` (this container) and `/v4/c1/task`."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.requests: list[str] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        await self.release.wait()  # held until the test has seen the worker start
        task = task_json()
        if request.path.endswith("/task"):
            return web.json_response(task)
        return web.json_response(next(c for c in task["Containers"] if c["Name"] == CONTAINER))


@pytest.fixture
async def metadata() -> AsyncIterator[Metadata]:
    meta = Metadata()
    app = web.Application()
    app.router.add_get("/v4/c1", meta.handle)
    app.router.add_get("/v4/c1/task", meta.handle)
    runner, base = await serve_app(app)
    meta.url = f"{base}/v4/c1"
    yield meta
    meta.release.set()
    await runner.cleanup()


def profiled_env(bootstrap_dir: Path, url: str, **extra: str) -> dict[str, str]:
    settings = {"PYTHONPATH": str(bootstrap_dir), "TASKLENS_PYROSCOPE_URL": url, "TASKLENS_PROFILE_WINDOW": "1"}
    return clean_env(**{**settings, **extra})


def test_populate_writes_only_the_bootstrap_and_pyroscope_io(tmp_path):
    target = tmp_path / "shared"
    (target / "pyroscope_io-0.1.0.dist-info").mkdir(parents=True)  # left by an older image
    populate(str(target))
    populate(str(target))  # again: replaces its own files, no error
    names = sorted(p.name for p in target.iterdir())
    version = distributions()[0].version
    assert names == ["__pycache__", "pyroscope", "pyroscope_io", f"pyroscope_io-{version}.dist-info",
                     "sitecustomize.py"]
    assert (target / "sitecustomize.py").read_text() == BOOTSTRAP_SOURCE.read_text()
    # bytecode for this interpreter, so that a read-only mount does not mean compiling at each start
    tag = sys.implementation.cache_tag
    assert [p.name for p in (target / "__pycache__").iterdir()] == [f"sitecustomize.{tag}.pyc"]
    # nothing of the sidecar's own dependencies, which would shadow the worker's
    assert not any((target / name).exists() for name in ("aiohttp", "prometheus_client", "psutil", "agent"))


def test_the_cli_command_populates(tmp_path):
    tasklens = Path(sys.executable).with_name("tasklens")
    done = subprocess.run([str(tasklens), "profiler-bootstrap", str(tmp_path / "d")], capture_output=True, text=True,
                          timeout=60, env=clean_env())
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "d" / "sitecustomize.py").is_file() and (tmp_path / "d" / "pyroscope").is_dir()


async def test_worker_profiles_itself_with_service_and_task_tags(pyroscope, metadata, start_worker, bootstrap_dir):
    pyroscope.require_auth = ("u1", "pw")
    pyroscope.require_tenant = "team-a"
    env = profiled_env(bootstrap_dir, pyroscope.url, TASKLENS_PYROSCOPE_USER="u1", TASKLENS_PYROSCOPE_PASSWORD="pw",
                       TASKLENS_PYROSCOPE_TENANT="team-a", TASKLENS_ENV="prod",
                       # more tags than a series takes labels: the first are kept, the last left out
                       TASKLENS_TAGS="team:payments," + ",".join(f"t{i}:v" for i in range(40)),
                       ECS_CONTAINER_METADATA_URI_V4=metadata.url)
    worker = start_worker(seconds=4, env=env)
    # start-up did not wait: the metadata lookup was still in flight when the worker's code ran
    assert "tasklens-profiler" in worker.threads_at_start
    metadata.release.set()
    cpu = lambda: [s for s in pyroscope.pushed if s.labels["__name__"] == "process_cpu"]  # noqa: E731
    await until(lambda: len(cpu()) >= 2, 30, "two CPU profiles pushed")
    code, out, err = await asyncio.to_thread(worker.finish)
    assert (code, err) == (0, "")
    assert "pyroscope loaded: True" in out

    series = cpu()[-1]
    expected = {
        "service_name": "akira-fargate-check", "env": "prod", "ecs_cluster": "akira-fargate-check-cluster",
        "task_family": "akira-fargate-check", "task_revision": "1", "task_id": "67cd8a22b533459696d4ccab5278e009",
        "availability_zone": "ap-northeast-1d", "region": "ap-northeast-1", "launch_type": "FARGATE",
        "team": "payments", "container_name": CONTAINER, "process": "hot_worker.py",
    }
    assert {k: series.labels.get(k) for k in expected} == expected
    assert len(series.labels) == 30  # Grafana Pyroscope's limit, reached: the first extra tags kept
    profile = series.profiles[0]
    assert profile.sample_types == [("cpu", "nanoseconds")]
    assert profile.share(HOT_FUNCTION) >= 0.8, profile.stacks.most_common(3)
    # memory profiling comes with this mode
    assert any(s.labels["__name__"] == "memory" and s.labels["service_name"] == "akira-fargate-check"
               for s in pyroscope.pushed)
    assert sorted(set(metadata.requests)) == ["/v4/c1", "/v4/c1/task"]


async def test_without_metadata_the_variables_name_the_service(pyroscope, start_worker, bootstrap_dir):
    env = profiled_env(bootstrap_dir, pyroscope.url, DD_SERVICE="orders", DD_ENV="staging",
                       ECS_CONTAINER_METADATA_URI_V4=f"http://127.0.0.1:{free_port()}/v4/gone")
    worker = start_worker(seconds=3, env=env)
    await until(lambda: pyroscope.pushed, 30, "a push")
    code, _, err = await asyncio.to_thread(worker.finish)
    assert code == 0
    assert len(err.splitlines()) == 1 and "ECS metadata unavailable" in err
    labels = pyroscope.pushed[0].labels
    assert (labels["service_name"], labels["env"], labels["process"]) == ("orders", "staging", "hot_worker.py")
    assert "task_id" not in labels


@pytest.mark.parametrize("settings", [{}, {"TASKLENS_PYROSCOPE_URL": "http://127.0.0.1:9", "TASKLENS_PROFILE_MODE": "off"}],
                         ids=["unconfigured", "mode-off"])
def test_unconfigured_the_worker_runs_as_before(start_worker, bootstrap_dir, settings):
    worker = start_worker(seconds=0.5, env=clean_env(PYTHONPATH=str(bootstrap_dir), **settings))
    assert worker.threads_at_start == ["MainThread"]
    code, out, err = worker.finish()
    assert (code, err) == (0, "")
    assert "pyroscope loaded: False" in out


def imported_by(name: str, importtime: str) -> list[str]:
    """The modules `name`'s import imported, from `python -X importtime`'s report (each import is listed
    after those it made, indented deeper)."""
    rows = [line.split("|")[-1] for line in importtime.splitlines() if line.startswith("import time:")]
    depth = lambda row: len(row) - len(row.lstrip())  # noqa: E731
    [at] = [i for i, row in enumerate(rows) if row.strip() == name]
    nested = []
    for row in reversed(rows[:at]):
        if depth(row) <= depth(rows[at]):
            break
        nested.append(row.strip())
    return nested


def loaded_at_start(env: dict[str, str]) -> set[str]:
    """The modules the worker's interpreter has loaded when its code starts."""
    done = subprocess.run([WORKER_PYTHON, "-c", "import sys; print('\\n'.join(sys.modules))"], capture_output=True,
                          text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


@pytest.mark.parametrize("settings", [{}, {"TASKLENS_PYROSCOPE_URL": "http://127.0.0.1:9", "TASKLENS_PROFILE_MODE": "off"}],
                         ids=["unconfigured", "mode-off"])
def test_unconfigured_the_bootstrap_imports_nothing(bootstrap_dir, settings):
    """docs/profiling.md: "no import beyond `os` and `sys`, which Python has loaded already" (not even
    `__future__`), seen with the command it names."""
    env = clean_env(PYTHONPATH=str(bootstrap_dir), **settings)
    done = subprocess.run([WORKER_PYTHON, "-X", "importtime", "-c", "pass"], capture_output=True, text=True,
                          timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    assert imported_by("sitecustomize", done.stderr) == []
    plain = loaded_at_start(clean_env(**settings))
    if "sitecustomize" in plain:
        pytest.skip("this interpreter has a sitecustomize of its own, which the bootstrap runs")
    assert loaded_at_start(env) - plain == {"sitecustomize"}


@pytest.mark.parametrize("breakage", ["garbage-native-module", "no-pyroscope-io"])
def test_a_broken_bootstrap_is_one_line_then_the_worker_runs(start_worker, bootstrap_dir, tmp_path, breakage):
    broken = tmp_path / "broken"
    shutil.copytree(bootstrap_dir, broken)
    if breakage == "garbage-native-module":  # what a wheel for another libc or Python looks like to the loader
        for so in (broken / "pyroscope").glob("_native*.so"):
            so.write_bytes(b"\x7fELF not really")
    else:
        shutil.rmtree(broken / "pyroscope")
    worker = start_worker(seconds=0.5, env=clean_env(PYTHONPATH=str(broken), TASKLENS_PYROSCOPE_URL="http://127.0.0.1:9"))
    code, out, err = worker.finish()
    assert code == 0
    assert "calls " in out and "pyroscope loaded: False" in out
    assert len(err.splitlines()) == 1 and "tasklens profiling disabled: pyroscope-io does not load" in err, err


def test_the_workers_own_sitecustomize_still_runs(bootstrap_dir, tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    (own / "sitecustomize.py").write_text("import os\nos.environ['WORKER_SITECUSTOMIZE'] = 'ran'\n")
    code = ("import os, sitecustomize; print(os.environ.get('WORKER_SITECUSTOMIZE'), sitecustomize.__file__)")
    done = subprocess.run([WORKER_PYTHON, "-c", code], capture_output=True, text=True, timeout=30,
                          env=clean_env(PYTHONPATH=f"{bootstrap_dir}:{own}"))
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.split() == ["ran", str(own / "sitecustomize.py")]


@pytest.mark.parametrize("server", ["refused", "unresponsive"])
def test_a_server_that_is_down_or_hangs_never_holds_the_worker(start_worker, bootstrap_dir, server):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        if server == "unresponsive":
            listener.listen(16)  # connections are queued, never answered
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        worker = start_worker(seconds=2.5, env=profiled_env(bootstrap_dir, url, TASKLENS_SERVICE="down"))
        # 2.5 s of work, then at most the bootstrap's 2 s exit grace (pyroscope-io alone: 10 s and
        # more per pending upload to a server that does not answer)
        code, out, err = worker.finish(timeout=15)
    assert (code, err) == (0, "")
    assert "pyroscope loaded: True" in out and int(out.split()[1]) > 0


async def test_the_last_partial_window_is_sent_at_exit(pyroscope, start_worker, bootstrap_dir):
    # a 60 s upload interval: the only profile a 2 s worker sends is the one flushed at its exit
    worker = start_worker(seconds=2, env=profiled_env(bootstrap_dir, pyroscope.url, TASKLENS_PROFILE_WINDOW="60",
                                                      TASKLENS_SERVICE="short-lived"))
    code, _, err = await asyncio.to_thread(worker.finish)
    assert (code, err) == (0, "")
    await until(lambda: any(s.labels["__name__"] == "process_cpu" for s in pyroscope.pushed), 10, "the last profile")
    [cpu] = [s for s in pyroscope.pushed if s.labels["__name__"] == "process_cpu"]
    assert cpu.labels["service_name"] == "short-lived" and cpu.profiles[0].share(HOT_FUNCTION) >= 0.8
