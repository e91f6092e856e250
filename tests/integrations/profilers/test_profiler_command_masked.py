"""A worker's command line is shown masked (`/status`'s "command", the profiler's log lines): a URL's
password, `--flag=value`, `--flag value` and `NAME=value` where the name holds a credential word."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid

from hypothesis import assume, given
from hypothesis import strategies as st

from agent.urlmask import CREDENTIAL_STEMS, NOT_CREDENTIALS, mask_command
from integrations.profilers.procs import scan, select
from tests.integrations.profilers.support import HOT_WORKER, WORKER_PYTHON, until
from tests.support import wait_until

DB_PASSWORD = "hunter2pwZq81"
API_KEY = "SUPERSECRETKEYZq81"
TOKEN = "TokValueZq81x"
ENV_SECRET = "EnvSecretZq81"
REDIS_PASSWORD = "hunter3pwZq81"
SECRETS = (DB_PASSWORD, API_KEY, TOKEN, ENV_SECRET, REDIS_PASSWORD)
ARGS = [f"--db=postgresql://app:{DB_PASSWORD}@db:5432/app", f"--api-key={API_KEY}", "--auth-token", TOKEN,
        f"APP_SECRET={ENV_SECRET}", f"redis://:{REDIS_PASSWORD}@cache:6379/0", "--workers", "4"]

# a flag's name: words around a credential word, in any case, with `-` or `_` (`--X-Api-Key`, `db_password`)
WORD = st.text("abcdefghijklmnopqrstuvwxyz", min_size=0, max_size=6)
NAMES = st.builds(lambda before, stem, after, sep, upper: (f"{before}{sep}{stem}{sep}{after}".strip("-_")).upper()
                  if upper else f"{before}{sep}{stem}{sep}{after}".strip("-_"),
                  WORD, st.sampled_from(CREDENTIAL_STEMS), WORD, st.sampled_from(["-", "_", ""]), st.booleans())
VALUES = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Zs"]), min_size=6, max_size=30)


@given(name=NAMES, value=VALUES, form=st.sampled_from(["--{n}={v}", "--{n} {v}", "-{n} {v}", "{n}={v}"]),
       before=st.lists(st.sampled_from(["python3", "-u", "worker.py", "--workers", "4", "-m", "app"]), max_size=4),
       after=st.lists(st.sampled_from(["--verbose", "run", "x=1"]), max_size=3), whole=st.booleans())
def test_a_credential_flag_or_word_never_shows_its_value(name, value, form, before, after, whole) -> None:
    assume(not any(name.lower() == n or name.lower().startswith(n + "=") for n in NOT_CREDENTIALS))
    assume(not name.lower().endswith("_env") and "=" not in value)
    assume(value.lower() not in " ".join([name, *before, *after]).lower())
    written = form.format(n=name, v=value)
    # as argv words, or as one word with spaces (`bash -c '...'`, a retitled process)
    argv = [*before, *written.split(" "), *after] if not whole else [*before, " ".join([written, *after])]
    shown = mask_command(argv)
    assert value not in shown, (argv, shown)
    assert name in shown and "***" in shown  # what the flag is stays readable


@given(password=VALUES.filter(lambda v: not set(v) & set("/@?#'\"")), scheme=st.sampled_from(
    ["postgresql", "redis", "amqp", "mysql", "http", "mongodb+srv"]), flag=st.sampled_from(["--db", "--url=", ""]))
def test_a_urls_password_in_a_command_line_is_masked(password, scheme, flag) -> None:
    url = f"{scheme}://app:{password}@db.internal:5432/app"
    argv = ["python3", "worker.py", *([flag + url] if flag.endswith("=") or not flag else [flag, url])]
    shown = mask_command(argv)
    assert password not in shown.replace("db.internal:5432", ""), shown
    assert f"{scheme}://app:***@db.internal:5432/app" in shown


def test_ordinary_words_stay_readable() -> None:
    argv = ["celery", "-A", "app", "worker", "--concurrency", "4", "--sslkey=/etc/tls/key.pem", "--password_env",
            "DB_PASSWORD", "-Q", "emails"]
    assert mask_command(argv) == " ".join(argv)


def test_a_real_process_is_selected_with_its_command_line_masked() -> None:
    marker = f"tasklens-test-{uuid.uuid4().hex[:12]}"
    sleeper = "import time; time.sleep(60)"
    child = subprocess.Popen(["python3", "-c", sleeper, marker, *ARGS], executable=sys.executable)  # (200 shown)
    try:
        [target] = wait_until(lambda: select(scan(), set(), re.compile(re.escape(marker))), 10,
                              what="the child in a scan")
        assert target.pid == child.pid and target.cmdline[3:] == (marker, *ARGS)  # what it runs, unmasked
        assert [s for s in SECRETS if s in target.command] == [], target.command
        assert target.command == (f"python3 -c {sleeper} {marker} --db=postgresql://app:***@db:5432/app "
                                  f"--api-key=*** --auth-token *** APP_SECRET=*** redis://:***@cache:6379/0 "
                                  f"--workers 4")
    finally:
        child.kill()
        child.wait()


async def test_status_and_log_show_the_workers_command_masked(pyroscope, spawn, sidecar_factory, ptrace_ok) -> None:
    marker = f"tasklens-test-{uuid.uuid4().hex[:12]}"
    worker = spawn([WORKER_PYTHON, HOT_WORKER, marker, "3600", *ARGS], marker)
    worker.wait_ready()
    shell = subprocess.Popen(["bash", "-c", "sleep 300; true", marker, f"redis://:{REDIS_PASSWORD}@cache:6379/0",
                              f"--api-key={API_KEY}"])
    try:
        sidecar = sidecar_factory(TASKLENS_PYROSCOPE_URL=pyroscope.url, TASKLENS_PROFILE_MATCH=re.escape(marker),
                                  TASKLENS_PROFILE_WINDOW="1")
        await asyncio.to_thread(sidecar.wait_ready)

        def profiled() -> list[dict]:
            return json.loads(sidecar.get("/status")[1])["components"]["profiler"]["processes"]
        await until(lambda: worker.pid in [p["pid"] for p in profiled()] and f"pid {shell.pid} (bash -c" in sidecar.log,
                    40, "the worker profiled and the shell skipped")
        [process] = [p for p in profiled() if p["pid"] == worker.pid]
        status = sidecar.get("/status")[1]
        assert await asyncio.to_thread(sidecar.stop) == 0
    finally:
        shell.kill()
        shell.wait()
    assert "--db=postgresql://app:***@db:5432/app --api-key=***" in process["command"]
    assert f"{marker} redis://:***@cache:6379/0 --api-key=***) is not a Python process" in sidecar.log
    assert {where: [s for s in SECRETS if s in text] for where, text in (("status", status), ("log", sidecar.log))
            if any(s in text for s in SECRETS)} == {}
