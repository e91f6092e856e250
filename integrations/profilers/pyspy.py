"""Sidecar-mode profiler: sample the task's Python processes with py-spy and push to Pyroscope.

Needs a shared PID namespace (`pidMode: task`) and `SYS_PTRACE` on the sidecar; the worker runs
unchanged. Every `TASKLENS_PROFILE_WINDOW` seconds each process gets one
`py-spy record --nonblocking --format raw` run (at most `MAX_SPIES` at once), whose folded stacks go
to `POST <TASKLENS_PYROSCOPE_URL>/ingest` as `<service>.cpu{task tags, container_name, process}`.
Processes that start later are picked up at the next scan, and so is one that execs another program
(examined again, labelled with what it runs now); one that exits is dropped quietly. A profile that
cannot be pushed is dropped (counted and logged): profiles are samples, not records.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

import aiohttp
import psutil

from agent.capped import read_all_capped
from agent.config import Config, ConfigError
from agent.urlmask import mask_url
from agent.hub import Hub
from agent.logs import RateLimitedLog, log, shown
from agent.redact import Redactor, basic_auth, config_secrets
from integrations.profilers import procs
from integrations.profilers.ingest import Folded, ingest_params, parse_raw, profile_name, render
from integrations.profilers.sitecustomize import labels, split_credentials

MAX_SPIES = 4  # py-spy runs at once; more processes take turns window by window
SCAN_INTERVAL = 5.0  # at most, seconds between process scans: how soon a new process is picked up
PUSH_TIMEOUT = 10.0
INTERRUPT_GRACE = 5.0  # seconds py-spy gets to write what it has after SIGINT
OVERRUN = 10.0  # seconds past its window after which a py-spy run is interrupted (see `_record`)
# What is read of a run's pipes; past it the run is stopped and counted (`pyspy_failed`). A window's folded
# stacks, one line per distinct stack: at the default 100 Hz for 10 s, even 1,000 distinct stacks of 100
# frames (about 8 KiB a line) take 8 MiB; 64 MiB leaves room for longer windows and higher rates while
# bounding a run that writes without end (MAX_SPIES runs at once). py-spy's errors take a few KiB.
MAX_OUTPUT = 64 * 1024 * 1024
MAX_STDERR = 64 * 1024
DENIED_RETRY = 300.0  # a permission does not come back by itself: retry rarely
EMPTY_SCANS_BEFORE_HINT = 3

PTRACE_FIX = (
    "the sidecar needs the SYS_PTRACE capability and the task's PID namespace: in the task definition set "
    '"pidMode": "task" and, on the sidecar container, "linuxParameters": {"capabilities": {"add": ["SYS_PTRACE"]}} '
    '(docker compose: pid: "service:<worker>" and cap_add: [SYS_PTRACE]); a sidecar running as a non-root user '
    "also needs py-spy to carry the file capability (setcap cap_sys_ptrace+ep), as the tasklens image does, "
    "or to run as root"
)


def find_py_spy() -> str | None:
    """The py-spy binary of the `py-spy` package: next to this interpreter, else on PATH."""
    return shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")


def failure_reason(stderr: str) -> str:
    """Why a py-spy run failed, from what it printed (it has no error codes)."""
    text = stderr.lower()
    if "permission denied" in text or "operation not permitted" in text or "(os error 1)" in text:
        return "ptrace_denied"
    if "failed to find python version" in text or "failed to find a python interpreter" in text:
        return "not_python"
    if "check that the process is running" in text or "no such process" in text:
        return "exited"
    return "pyspy_failed"


@dataclass(slots=True)
class _State:
    target: procs.Target
    windows: int = 0
    samples: int = 0
    last_push: float | None = None
    note: str = "profiling"



def shown_location(location: str) -> str:
    """Where a redirect points, as shown in the log and `/status`: its scheme, host, port and path, never
    its user info or query (the server wrote them: they may hold credentials, and masking a long text
    takes long)."""
    try:
        parts = urlsplit(location)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "(an unreadable address)"
    if not parts.scheme or not host:
        return parts.path[:200]
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path[:200]}"

class PySpyProfiler:
    name = "profiler"

    def __init__(self, config: Config, hub: Hub, *, py_spy: str | None = None,
                 scan: Callable[[], list[procs.ProcessInfo]] = procs.scan) -> None:
        self.config = config
        self.hub = hub
        self.py_spy = py_spy if py_spy is not None else find_py_spy()
        self._scan = scan
        try:
            self._match = re.compile(config.profile_match) if config.profile_match else None
        except re.error as exc:
            raise ConfigError(f"{config.where('profile_match')}={config.profile_match!r} is invalid: "
                              f"expected a regular expression ({exc})") from None
        url, user, password = split_credentials(config.pyroscope_url)
        self._ingest_url = url.rstrip("/") + "/ingest"
        user, password = config.pyroscope_user or user, config.pyroscope_password or password
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if user or password:
            self._headers["Authorization"] = basic_auth(user, password)
        if config.pyroscope_tenant:
            self._headers["X-Scope-OrgID"] = config.pyroscope_tenant
        self._duration = max(1, round(config.profile_window))  # py-spy takes whole seconds
        self._scan_interval = min(SCAN_INTERVAL, config.profile_window)
        self._redact = Redactor(config_secrets(config))  # a server's error text may echo the password
        hub.metrics.declare("tasklens.profiler.record_errors",
                            ("pyspy_missing", "ptrace_denied", "not_python", "pyspy_failed", "internal"))
        hub.metrics.declare("tasklens.profiler.push_errors", ("redirect", "timeout", "connection", "error"))
        # by `Target.lifetime`: one worker, one py-spy at a time, per process whatever it execs
        self._states: dict[tuple[int, float], _State] = {}
        self._workers: dict[tuple[int, float], asyncio.Task[None]] = {}
        # by `Target.key`: not Python, or profiling itself (bootstrap mode), as long as it runs the same program
        self._skip: set[tuple[int, float, str, tuple[str, ...]]] = set()
        self._pushes: set[asyncio.Task[None]] = set()
        self._spies: set[int] = set()  # pids of our py-spy runs: never targets
        self._empty_scans = 0
        self._problem = ""
        self._last_push_error: str | None = None  # why the last push failed; None once one succeeds
        self._log = RateLimitedLog()
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(MAX_SPIES)

    # --- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        if not self.py_spy or not os.access(self.py_spy, os.X_OK):
            self._report("profiler: py-spy not found (%s): install tasklens[profiling] in the sidecar's image; "
                         "sidecar-mode profiling is off", self.py_spy or f"not next to {sys.executable} nor on PATH")
            self.hub.metrics.inc("tasklens.profiler.record_errors", reason="pyspy_missing")
            await stop.wait()
            return
        log.info("profiler: sampling Python processes at %d Hz in %d s windows, pushing to %s",
                 self.config.profile_rate, self._duration, mask_url(self._ingest_url))
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PUSH_TIMEOUT)) as session:
                self._session = session
                while not stop.is_set():
                    await self._discover(stop)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), self._scan_interval)
                # windows in flight end early (py-spy writes what it has), then their pushes finish
                await asyncio.gather(*self._workers.values(), return_exceptions=True)
                await asyncio.gather(*self._pushes, return_exceptions=True)
        finally:
            for task in list(self._workers.values()) + list(self._pushes):
                task.cancel()
            self.hub.metrics.set("tasklens.profiler.processes", 0)

    async def _discover(self, stop: asyncio.Event) -> None:
        try:
            found = await asyncio.to_thread(self._scan)
        except Exception as exc:  # /proc unreadable: try again at the next scan
            self.hub.metrics.inc("tasklens.profiler.scan_errors", reason=type(exc).__name__)
            self._log.warning("profiler:scan", "profiler: cannot list processes: %r", exc)
            return
        finally:
            self.hub.metrics.inc("tasklens.profiler.scans")
        # our py-spy runs are never targets, even one started while the scan was running
        spy = os.path.realpath(self.py_spy or "")
        exclude = procs.lineage(found, os.getpid()) | self._spies | {p.pid for p in found if p.exe == spy}
        targets = procs.select(found, exclude, self._match)
        self._skip &= {t.key for t in targets}  # forget processes that are gone, or now run another program
        for target in targets:
            if target.lifetime in self._workers:
                self._follow(self._states[target.lifetime], target)
                continue
            if target.key in self._skip:
                continue
            container = self.container_of(target)
            log.info("profiler: profiling pid %d (%s%s)", target.pid, shown(target.process),
                     f" in container {shown(container)}" if container else "")
            self._states[target.lifetime] = _State(target)
            self._workers[target.lifetime] = asyncio.create_task(self._profile(target, stop))
        live = {t.lifetime for t in targets}
        for key in list(self._states):
            if key not in live and key not in self._workers:
                del self._states[key]
        self._count_processes()
        self._empty_scans = 0 if targets else self._empty_scans + 1
        if self._empty_scans == EMPTY_SCANS_BEFORE_HINT and not self._match:
            log.warning("profiler: no Python process to profile besides the sidecar; if the worker runs in "
                        "another container, %s, or set TASKLENS_PROFILE_MATCH", PTRACE_FIX)

    def _follow(self, state: _State, target: procs.Target) -> None:
        """A process being profiled that exec'd another program (a pyenv shim execs Python) or retitled
        itself: its next windows are labelled with what it runs now."""
        if state.target == target:
            return
        if state.target.process != target.process:
            log.info("profiler: pid %d now runs %s (was %s)", target.pid, shown(target.process),
                     shown(state.target.process))
        state.target = target

    async def _left_alone(self, state: _State) -> bool:
        """Whether the process loaded pyroscope-io (bootstrap mode): it profiles itself, and is skipped."""
        # /proc/<pid>/maps of a large worker is long, and reading it takes the process's mmap lock: read once a window
        if not await asyncio.to_thread(procs.profiles_itself, state.target.pid):
            return False
        log.info("profiler: pid %d (%s) profiles itself (pyroscope-io bootstrap): not sampling it",
                 state.target.pid, shown(state.target.process))
        self._skip.add(state.target.key)
        return True

    async def _profile(self, target: procs.Target, stop: asyncio.Event) -> None:
        """Window after window until the process exits or the sidecar stops."""
        state = self._states[target.lifetime]
        looked = False  # for pyroscope-io, since the last window
        try:
            while not stop.is_set():
                if not looked and await self._left_alone(state):
                    return
                looked = False
                async with self._slots:
                    if stop.is_set():
                        return
                    start, examined = time.time(), state.target  # what it ran when py-spy started
                    returncode, stderr, text = await self._record(target.pid, stop)
                    end = time.time()
                if returncode == 0:
                    # The bootstrap loads pyroscope-io in a thread after start-up, so a new process may have
                    # started profiling itself during this window: then part of its CPU is in its own
                    # profiles, and pushed here too it would count twice, under two applications. Before it
                    # is loaded, pyroscope-io samples nothing: a window that ends before is no one else's.
                    if await self._left_alone(state):
                        return
                    looked = True
                    if state.note != "profiling":
                        state.note = "profiling"
                        self._count_processes()
                    state.windows += 1
                    self._submit(state, parse_raw(text), start, end)
                    continue
                if stop.is_set():
                    return  # interrupted before it could sample (SIGINT at its start): nothing lost
                if not self._alive(target):
                    return  # exited: dropped quietly
                reason = failure_reason(stderr)
                if reason == "exited":
                    return
                self.hub.metrics.inc("tasklens.profiler.record_errors", reason=reason)
                last = _message(stderr) or f"exit status {returncode}"
                state.note = "permission denied" if reason == "ptrace_denied" else f"py-spy failed: {last}"
                self._count_processes()
                if reason == "ptrace_denied":
                    self._report("profiler: py-spy may not read pid %d (%s): %s; %s",
                                 target.pid, shown(state.target.process), shown(last), PTRACE_FIX)
                    await _wait(stop, DENIED_RETRY)
                elif reason == "not_python":
                    log.info("profiler: pid %d (%s) is not a Python process py-spy can read: skipped",
                             target.pid, shown(examined.command))
                    # until it runs another program: not what a scan saw since (it may have exec'd Python)
                    self._skip.add(examined.key)
                    return
                else:
                    self._log.warning(f"profiler:{reason}", "profiler: py-spy failed on pid %d (%s): %s",
                                      target.pid, shown(state.target.process), shown(last))
                    await _wait(stop, self._duration)
        except Exception as exc:  # a bug here must not end profiling: the next scan starts it again
            self.hub.metrics.inc("tasklens.profiler.record_errors", reason="internal")
            self._log.error("profiler:internal", "profiler: pid %d (%s): %r", target.pid, shown(state.target.process),
                            exc)
        finally:
            self._workers.pop(target.lifetime, None)
            self._count_processes()

    async def _record(self, pid: int, stop: asyncio.Event) -> tuple[int, str, str]:
        """One py-spy window: (exit status, stderr, raw folded output). Stop ends it early; so does a run
        past its window and OVERRUN (stuck on a process, a defect): it held one of the slots for ever."""
        read_end, write_end = os.pipe()
        try:
            proc = await self._spawn(pid, write_end)
        except OSError as exc:  # the binary went away or cannot run here
            os.close(read_end)
            return 127, f"cannot run {self.py_spy}: {exc}", ""
        finally:
            os.close(write_end)  # py-spy has its copy: end of file when it exits
        self._spies.add(proc.pid)
        done = asyncio.ensure_future(_outputs(proc, os.fdopen(read_end, "rb", buffering=0)))
        try:
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({done, stopped}, timeout=self._duration + OVERRUN, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            overran = not done.done() and not stop.is_set()
            if not done.done():
                _signal(proc, signal.SIGINT)  # py-spy then writes the samples it has
                await asyncio.wait({done}, timeout=INTERRUPT_GRACE)
                if not done.done():
                    _signal(proc, signal.SIGKILL)
            try:
                out, err = await done
            except _TooLarge as exc:  # py-spy was killed: whatever it wrote is dropped
                return 1, str(exc), ""
            if overran and proc.returncode:
                err += f"\npy-spy did not end within its {self._duration} s window: interrupted".encode()
        finally:
            if proc.returncode is None:
                _signal(proc, signal.SIGKILL)
            done.cancel()
            self._spies.discard(proc.pid)
        return proc.returncode or 0, err.decode("utf-8", "replace"), out.decode("utf-8", "replace")

    def _spawn(self, pid: int, output: int) -> Awaitable[asyncio.subprocess.Process]:
        # py-spy writes its result to a path: /dev/stdout, our own pipe, as the sidecar's root file
        # system may be read-only (no temporary file), and uvloop's stdout is a socket, which
        # /dev/stdout cannot be opened on.
        return asyncio.create_subprocess_exec(
            self.py_spy or "py-spy", "record", "--pid", str(pid), "--format", "raw", "--nolineno", "--nonblocking",
            "--rate", str(self.config.profile_rate), "--duration", str(self._duration), "--output", "/dev/stdout",
            stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=asyncio.subprocess.PIPE,
        )

    @staticmethod
    def _alive(target: procs.Target) -> bool:
        try:
            return bool(psutil.Process(target.pid).create_time() == target.started)
        except psutil.Error:
            return False

    # --- pushing ------------------------------------------------------------------------------

    def container_of(self, target: procs.Target) -> str:
        # resolved at use: the task's containers are known only after the first metadata poll
        return procs.container_name(target.cgroup, self.hub.identity.containers)

    def labels_for(self, target: procs.Target) -> dict[str, str]:
        tags = [kv for kv in self.hub.identity.tags if kv[0] != "service"]  # the service is the name
        container = self.container_of(target)
        own = [("container_name", container)] if container else []
        own.append(("process", target.process))
        return labels(tags, own)  # the process's own labels win over task tags of the same name

    def _submit(self, state: _State, folded: Folded, start: float, end: float) -> None:
        if folded.skipped:
            self.hub.metrics.inc("tasklens.profiler.bad_lines", folded.skipped)
        if not folded.stacks:
            return  # idle for the whole window: nothing to show
        task = asyncio.create_task(self._push(state, folded, start, end))
        self._pushes.add(task)
        task.add_done_callback(self._pushes.discard)

    async def _push(self, state: _State, folded: Folded, start: float, end: float) -> None:
        assert self._session is not None
        name = profile_name(self.hub.identity.service, self.labels_for(state.target))
        params = ingest_params(name, start, end, self.config.profile_rate)
        reason = detail = ""
        try:
            # a redirect is not followed: after a 301/302 (an ALB's HTTP-to-HTTPS redirect is a 301) aiohttp
            # sends a GET without the profile, which a server may answer 200, and the profile counted as pushed
            async with self._session.post(self._ingest_url, params=params, data=render(folded),
                                          headers=self._headers, allow_redirects=False) as resp:
                if 300 <= resp.status < 400:
                    reason = "redirect"
                    location = self._redact.remote_text(shown_location(resp.headers.get("Location", "")))
                    detail = (f"HTTP {resp.status} to {location or '(no Location)'}, not followed: set "
                              "TASKLENS_PYROSCOPE_URL to the address the server redirects to")
                elif resp.status >= 300:
                    reason = f"http_{resp.status}"
                    detail = self._redact.remote_text(await resp.content.read(64 * 1024))
        except asyncio.TimeoutError:
            reason, detail = "timeout", f"no answer in {PUSH_TIMEOUT:g} s"
        except aiohttp.ClientError as exc:
            reason, detail = "connection", repr(exc)
        except Exception as exc:  # whatever else: the profile is dropped, the profiler goes on
            reason, detail = "error", repr(exc)
        if reason:
            self.hub.metrics.inc("tasklens.profiler.push_errors", reason=reason)
            self._last_push_error = f"{reason}: {detail}"
            self._log.warning(f"profiler:push:{reason}", "profiler: push to %s failed (%s): %s",
                              mask_url(self._ingest_url), reason, detail)
            return
        self._last_push_error = None
        self.hub.metrics.inc("tasklens.profiler.pushes")
        self.hub.metrics.inc("tasklens.profiler.samples", folded.samples)
        state.samples += folded.samples
        state.last_push = time.time()

    # --- reporting ----------------------------------------------------------------------------

    def _count_processes(self) -> None:
        """`tasklens.profiler.processes`: those being sampled, not those refused or failing."""
        sampled = sum(1 for key, s in self._states.items() if key in self._workers and s.note == "profiling")
        self.hub.metrics.set("tasklens.profiler.processes", sampled)

    def _report(self, msg: str, *args: object) -> None:
        """A problem that needs a deployment fix: logged once, shown in /status."""
        if not self._problem:
            log.error(msg, *args)
            self._problem = msg % args

    def status(self) -> dict[str, object]:
        metrics = self.hub.metrics
        return {
            "mode": "sidecar",
            "url": mask_url(self._ingest_url),
            "py_spy": self.py_spy,
            "rate_hz": self.config.profile_rate,
            "window_s": self._duration,
            "problem": self._problem or None,
            "pushes": metrics.total("tasklens.profiler.pushes"),
            "push_errors": metrics.total("tasklens.profiler.push_errors"),
            "last_error": self._last_push_error,
            "processes": [
                {"pid": s.target.pid, "process": s.target.process, "container": self.container_of(s.target),
                 "command": s.target.command, "windows": s.windows, "samples": s.samples,
                 "last_push": s.last_push, "state": s.note}
                for key, s in self._states.items() if key in self._workers
            ],
        }


class _TooLarge(Exception):
    """A py-spy run wrote more than its bound on one of its pipes."""

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(f"py-spy's {what} passed {limit} bytes: stopped")


async def _outputs(proc: asyncio.subprocess.Process, output: BinaryIO) -> tuple[bytes, bytes]:
    """(the folded stacks, stderr) once py-spy exits. As soon as either passes its bound, py-spy is killed
    and _TooLarge raised: a run that writes without end never makes the sidecar hold more."""
    assert proc.stderr is not None
    reads = [asyncio.ensure_future(_read_pipe(output)),
             asyncio.ensure_future(read_all_capped(proc.stderr.read, MAX_STDERR,
                                                   lambda: _TooLarge("error output", MAX_STDERR)))]
    try:
        out, err = await asyncio.gather(*reads)
    except _TooLarge:
        _signal(proc, signal.SIGKILL)
        raise
    finally:
        for read in reads:
            read.cancel()
    await proc.wait()
    return out, err


async def _read_pipe(pipe: BinaryIO) -> bytes:
    """The folded stacks from py-spy's output pipe, within MAX_OUTPUT, without blocking the loop."""
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        return await read_all_capped(reader.read, MAX_OUTPUT, lambda: _TooLarge("output", MAX_OUTPUT))
    finally:
        transport.close()


def _signal(proc: asyncio.subprocess.Process, signum: int) -> None:
    """Every signal to a py-spy run goes through here. It may have exited already while its output is
    still being read (or its pipe is held open): asyncio then raises ProcessLookupError, which must not
    lose the window it wrote."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signum)


def _message(stderr: str) -> str:
    """py-spy's error line, without the backtrace that follows it."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("Error:")), lines[0] if lines else "")


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
