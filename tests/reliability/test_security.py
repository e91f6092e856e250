"""Security: what the sidecar exposes and to whom.

- With no address configured, every listener binds loopback only (run in a network namespace of its
  own, so the default ports are free whatever else runs on the machine).
- Known fake secrets (the Datadog key, a queue URL's password, the Pyroscope password and URL
  password, an intake URL's password, a secret in the config file) appear in no endpoint, not in the
  log at debug level, not in `tasklens check`, not in a configuration error; each one is used (the
  queue's broker requires its password, the intake its key), so "not shown" is not "not configured".
- The image runs as a non-root user, and the sidecar works as one.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import redis

from tests.support import ROOT, TASKLENS, Sidecar, clean_env, free_port, wait_until
from tests.reliability.support import poll, redis_server, scrape
from tests.sinks.intake import Intake, start_intake

DD_KEY = "tlfake0dd0key0c0ffee0123456789ab"
QUEUE_PASSWORD = "qpass-Zq81-secret"
PYROSCOPE_URL_PASSWORD = "pyro-url-pw-77x"
PYROSCOPE_PASSWORD = "pyro-pw-from-file-55aa"
INTAKE_URL_PASSWORD = "intake-url-pw-3141"
SECRETS = (DD_KEY, QUEUE_PASSWORD, PYROSCOPE_URL_PASSWORD, PYROSCOPE_PASSWORD, INTAKE_URL_PASSWORD)
ENDPOINTS = ("/metrics", "/status", "/health", "/ready", "/no-such-page")


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


@pytest.mark.slow
async def test_no_secret_in_any_endpoint_the_log_or_check(tmp_path) -> None:
    broker = redis_server(tmp_path)
    broker.argv += ["--requirepass", QUEUE_PASSWORD]
    broker.start()
    config_file = tmp_path / "tasklens.toml"
    config_file.write_text(f'pyroscope_password = "{PYROSCOPE_PASSWORD}"\npyroscope_user = "tl"\n')
    try:
        redis.Redis(port=broker.port, password=QUEUE_PASSWORD).rpush("jobs", 1, 2, 3)
        async for intake in start_intake(Intake(DD_KEY)):
            host_port = intake.url.removeprefix("http://")
            env = dict(
                DD_API_KEY=DD_KEY, DD_DD_URL=f"http://tl:{INTAKE_URL_PASSWORD}@{host_port}",
                TASKLENS_QUEUES=f"redis://:{QUEUE_PASSWORD}@127.0.0.1:{broker.port}/0?list=jobs&interval=1",
                TASKLENS_PYROSCOPE_URL=f"http://pyro:{PYROSCOPE_URL_PASSWORD}@127.0.0.1:9/",
                TASKLENS_PROFILE_MATCH="^no-such-process-tasklens-test$",  # profile nothing on this machine
                TASKLENS_CONFIG_FILE=str(config_file), TASKLENS_LOG_LEVEL="debug", TASKLENS_FLUSH_INTERVAL="1")
            sidecar = Sidecar(tmp_path, **env)
            try:
                await poll(lambda: sidecar.get("/ready")[0] == 200, 30, "sidecar ready")
                # every secret is in use: the broker answered with its password, the intake took the key
                await poll(lambda: scrape(sidecar).value("queue_depth", queue="jobs") == 3, 20, "the queue depth")
                await poll(lambda: intake.accepted("/api/v2/series") >= 2, 20, "accepted series")
                assert intake.errors == []
                found: dict[str, list[str]] = {}  # where -> secrets seen there
                for path in ENDPOINTS:
                    found[path] = leaks(sidecar.get(path)[1])
                assert "***" in sidecar.get("/status")[1]  # the URLs are there, masked
            finally:
                await asyncio_stop(sidecar)
            log = sidecar.log
            assert "DEBUG" in log  # the most talkative level was on
            found["log"] = leaks(log)
            check = subprocess.run([TASKLENS, "check"], env=clean_env(**env), capture_output=True, text=True,
                                   timeout=60)
            found["tasklens check"] = leaks(check.stdout + check.stderr)
            assert {where: s for where, s in found.items() if s} == {}
            described = json.loads(check.stdout)["configuration"]
            assert described["DD_API_KEY"] == "***" + DD_KEY[-4:]
    finally:
        broker.kill()


# What a proxy, a store or a signed URL takes as a credential, in the shapes the sidecar used to show:
# a bare token as DD_DD_URL's user info, and query parameters named other than `password=`/`token=`.
DD_URL_TOKEN = "Zq7DdTokenX"
RW_QUERY_KEY = "Zq7RwApiKeyX"
OTLP_SIGNATURE = "Zq7OtlpSigX"


@pytest.mark.slow
async def test_no_url_credential_in_status_history_the_log_or_check(tmp_path) -> None:
    """Each sink's peer answers 500 quoting the request line and the Authorization header, as a proxy's
    error page may: the credentials are then in the sink's URL (`/status`), its last error (`/status`,
    `/status/history`, the log) and in both sections of `check`."""
    from aiohttp import web

    from tests.support import serve_app

    async def echo(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=500, text=f"bad request {request.method} {request.path_qs} "
                                             f"auth={request.headers.get('Authorization')}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner, peer = await serve_app(app)
    secrets = (DD_URL_TOKEN, RW_QUERY_KEY, OTLP_SIGNATURE, base64.b64encode(f"{DD_URL_TOKEN}:".encode()).decode())
    env = dict(DD_API_KEY=DD_KEY, DD_DD_URL=peer.replace("://", f"://{DD_URL_TOKEN}@"),
               TASKLENS_REMOTE_WRITE_URL=f"{peer}/api/v1/write?X-Api-Key={RW_QUERY_KEY}",
               TASKLENS_REMOTE_WRITE_INTERVAL="1", TASKLENS_REMOTE_WRITE_SIGV4="off",
               OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=f"{peer}/v1/metrics?sv=2020&sig={OTLP_SIGNATURE}",
               OTEL_METRIC_EXPORT_INTERVAL="1000", TASKLENS_FLUSH_INTERVAL="1", TASKLENS_LOG_LEVEL="debug",
               TASKLENS_PROFILE_MODE="off")
    try:
        sidecar = Sidecar(tmp_path, **env)
        try:
            await poll(lambda: sidecar.get("/status")[1].count("http_500") >= 3, 30, "every sink's error")
            shown = {path: sidecar.get(path)[1] for path in ("/status", "/status/history", "/metrics", "/")}
        finally:
            await asyncio_stop(sidecar)
        shown["log"] = sidecar.log
        check = subprocess.run([TASKLENS, "check"], env=clean_env(**env), capture_output=True, text=True, timeout=60)
        shown["tasklens check"] = check.stdout + check.stderr
    finally:
        await runner.cleanup()
    assert {where: [s for s in secrets if s in text] for where, text in shown.items()
            if any(s in text for s in secrets)} == {}
    assert "X-Api-Key=***" in shown["/status"] and "sig=***" in shown["/status"]
    assert shown["tasklens check"].count("://***@127.0.0.1") >= 2  # the configuration's and the intake's


async def asyncio_stop(sidecar: Sidecar) -> None:
    import asyncio

    assert await asyncio.to_thread(sidecar.stop) == 0


@pytest.mark.parametrize("variable, value", [
    ("TASKLENS_QUEUES", f"redis://:{QUEUE_PASSWORD}@127.0.0.1:6379/0?list=jobs&nosuchparam=1"),
    ("TASKLENS_QUEUES", f"redis://:{QUEUE_PASSWORD}@127.0.0.1:notaport/0?list=jobs"),
    ("TASKLENS_PYROSCOPE_URL", f"pyro:{PYROSCOPE_URL_PASSWORD}@host:4040"),
    ("TASKLENS_PYROSCOPE_URL", f"http://pyro:{PYROSCOPE_URL_PASSWORD}@[::1/"),
])
def test_a_configuration_error_never_echoes_a_password(variable: str, value: str) -> None:
    env = clean_env(**{variable: value, "TASKLENS_HTTP_ADDR": f"127.0.0.1:{free_port()}",
                       "TASKLENS_STATSD_ADDR": "off", "TASKLENS_PROFILE_MODE": "off"})
    check = subprocess.run([TASKLENS, "check"], env=env, capture_output=True, text=True, timeout=30)
    assert leaks(check.stdout + check.stderr) == [], check.stdout + check.stderr
    # `run` either refuses the value (exit 2) or runs with it: either way, nothing shown
    run = subprocess.Popen([TASKLENS, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        run.wait(5)
    except subprocess.TimeoutExpired:
        run.terminate()
    out = run.communicate(timeout=30)[0].decode()
    assert leaks(out) == [], out


@pytest.mark.slow
def test_every_listener_binds_loopback_by_default(tmp_path) -> None:
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None or shutil.which("nsenter") is None or shutil.which("ss") is None:
        pytest.skip("needs unshare, nsenter (util-linux), ip and ss (iproute2) for a private network namespace")
    probe = subprocess.run([unshare, "--net", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.decode().strip()}")
    log = open(tmp_path / "sidecar.log", "wb")
    # a namespace with only `lo`: the default ports are free, and nothing else is listening
    proc = subprocess.Popen([unshare, "--net", "sh", "-c", f"{ip} link set lo up && exec {TASKLENS} run"],
                            env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        host_ns = os.readlink("/proc/self/ns/net")

        def listening() -> set[tuple[str, str, str]]:
            # until unshare(2) has run, the process is still in this namespace: its sockets are not the sidecar's
            if os.readlink(f"/proc/{proc.pid}/ns/net") == host_ns:
                return set()
            # the sidecar's own view of its namespace: `ss` run inside it
            out = subprocess.run(["nsenter", f"--target={proc.pid}", "--net", "ss", "-H", "-ltnu"],
                                 capture_output=True, text=True, timeout=10).stdout
            found = {(cols[0], *cols[4].rsplit(":", 1)) for cols in (line.split() for line in out.splitlines())}
            return found if any(p == "tcp" for p, _, _ in found) and any(p == "udp" for p, _, _ in found) else set()
        found = wait_until(listening, 30, what="the default listeners")
        assert ("tcp", "127.0.0.1", "9102") in found and ("udp", "127.0.0.1", "8125") in found, found
        assert {address for _, address, _ in found} <= {"127.0.0.1", "[::1]"}, found
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"


def final_stage_user(text: str) -> str:
    """The user the image's last stage runs as, with its ARG default substituted."""
    stage = re.split(r"(?m)^FROM ", text)[-1]
    args = dict(re.findall(r"(?m)^ARG (\w+)=(\S+)", stage))
    (user,) = re.findall(r"(?m)^USER (\S+)", stage)[-1:]
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], user)


@pytest.mark.slow
def test_the_image_runs_as_non_root_and_the_sidecar_works_as_that_user(tmp_path) -> None:
    user = final_stage_user(DOCKERFILE.read_text())
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0, user
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs setpriv (util-linux) and root, to drop to the image's user")
    # the sidecar as that user, with no capability: binds, a Unix socket, serves, reads its cgroup
    shared = Path(tempfile.mkdtemp(prefix="tasklens-nonroot-"))  # pytest's tmp_path is root-only (0700)
    shared.chmod(0o777)
    http, statsd = free_port(), free_port(socket.SOCK_DGRAM)
    sock = shared / "dsd.socket"
    proc = subprocess.Popen([setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
                             TASKLENS, "run"],
                            env=clean_env(TASKLENS_HTTP_ADDR=f"127.0.0.1:{http}", TASKLENS_STATSD_ADDR=f"127.0.0.1:{statsd}",
                                          TASKLENS_STATSD_SOCKET=str(sock), TASKLENS_FLUSH_INTERVAL="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        from tests.support import http_get

        wait_until(lambda: http_get(f"http://127.0.0.1:{http}/ready")[0] == 200, 30, what="the sidecar as uid " + uid)
        import psutil

        assert psutil.Process(proc.pid).uids().effective == int(uid)
        assert sock.stat().st_uid == int(uid)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"nonroot.jobs:3|c", str(sock))
        wait_until(lambda: "nonroot_jobs_total" in http_get(f"http://127.0.0.1:{http}/metrics")[1], 10,
                   what="a metric through the socket")
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
        shutil.rmtree(shared, ignore_errors=True)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
