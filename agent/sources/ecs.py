"""The ECS source: polls the task metadata endpoint v4 and publishes container and task metrics.

I/O only; the numbers come from `agent.sources.ecs_stats`. An outage never stops the sidecar: the
last known identity stays, the error is counted by reason and logged at most once per interval, and
the poller retries with a backoff capped at the poll interval, so it recovers by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from agent.capped import read_capped
from agent.config import Config
from agent.health import HealthMonitor
from agent.hub import Hub
from agent.identity import distinct_containers, task_identity
from agent.logs import RateLimitedLog
from agent.model import Batch, Sample, encodable
from agent.redact import Redactor
from agent.sources.ecs_stats import CounterFloors, Instances, NetworkTotals, derive, rate_basis
from agent.urlmask import mask_url, url_passwords

log = logging.getLogger("tasklens.ecs")

ENV_V4 = "ECS_CONTAINER_METADATA_URI_V4"
ENV_V3 = "ECS_CONTAINER_METADATA_URI"
# A response body larger than this is refused (`too_large`), read no further: the agent's `/task/stats`
# for a task of 10 containers is about 50 KB, and a body that never ends must not fill the memory.
MAX_BODY = 4 * 1024 * 1024
# A body within MAX_BODY can still cost far more once parsed: a 3-byte `{}` is a dict of 64 bytes or more,
# and 4 MiB of them held 100 MiB a copy. So an answer is refused before it is parsed past MAX_VALUES JSON
# values (`too_large`) or nested deeper than MAX_DEPTH (`bad_shape`). The real captures hold at most 237
# values a container and nest 6 deep: a task of 100 containers (the most `/task` may list) on a host of
# 192 CPUs holds about 60,000. Parsed, 100,000 values of the costliest kind take about 10 MiB.
MAX_VALUES = 100_000
MAX_DEPTH = 32
ERROR_TEXT_LIMIT = 400  # characters of a poll error kept and logged: the path, the status and the start of the answer
# A container's sample unchanged (same `read`) for longer than this many poll intervals, and at least
# STALE_MIN_SECONDS, gives no CPU rate: the agent refreshes every 1-10 s (spec), so a sample that old is
# not refreshed any more (a container stuck, a stats lookup that fails) and its rate is from before.
STALE_POLLS = 3
STALE_MIN_SECONDS = 30.0


def metadata_base_url(environ: Mapping[str, str]) -> str | None:
    """The v4 base URL (an opaque prefix), else the v3 one; None when not on ECS."""
    for name in (ENV_V4, ENV_V3):
        value = (environ.get(name) or "").strip()
        if value:
            return value.rstrip("/")
    return None


# every reason a failed poll is counted under
POLL_ERRORS = ("timeout", "connection", "http_5xx", "http_4xx", "http_other", "redirect", "too_large", "bad_json",
               "bad_shape", "bad_url", "http_error", "unexpected")


class PollError(Exception):
    """A failed poll, with the `reason` label it is counted under."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class EcsSource:
    name = "ecs"

    def __init__(self, config: Config, hub: Hub, base_url: str, *, backoff_initial: float = 1.0,
                 log_interval: float = 60.0, stale_after: float | None = None) -> None:
        self.config = config
        self.hub = hub
        self.base_url = base_url.strip().rstrip("/")
        # what is shown of it, and of the errors that quote it or the endpoint's answers: no credential of
        # the URL, no line break or escape from the endpoint (`Redactor.remote_text`)
        self.shown_url = mask_url(self.base_url)
        self._redact = Redactor(url_passwords(self.base_url))
        self.backoff_initial = backoff_initial
        self._log = RateLimitedLog(log, interval=log_interval)
        self._session: aiohttp.ClientSession | None = None
        # DockerId -> (older, latest) stats with distinct `read`s, and when (monotonic) the latest was
        # first seen: rates span a whole poll even when the agent has not refreshed its stats since the
        # last one, until the latest is older than `stale_after` seconds. Only what rates read of each
        # (`rate_basis`): a few kilobytes a container, whatever the answer carried beside it
        self._history: dict[str, tuple[dict[str, Any] | None, dict[str, Any], float]] = {}
        self.stale_after = stale_after if stale_after is not None else max(
            STALE_POLLS * config.poll_interval, STALE_MIN_SECONDS)
        self._network = NetworkTotals()  # the task's network counters, poll after poll
        self._counters = CounterFloors()  # the containers' cumulative counters: never exported lower
        # which instance stands for each container name, poll after poll: chosen once a poll, read by
        # derive and the health monitor alike
        self._instances = Instances()
        self._failures = 0
        hub.metrics.declare("tasklens.ecs.poll_errors", POLL_ERRORS)  # at 0 from the start, for increase()
        self.health = HealthMonitor.from_config(config, hub.metrics)  # leak forecast, OOM kills, restarts, saturation
        self.ready = False
        self._status: dict[str, Any] = {"base_url": self.shown_url, "last_poll": None, "last_success": None,
                                        "last_error": None, "last_error_reason": None, "last_error_at": None,
                                        "containers": 0}

    # -- Component ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    ok = await self.poll_once()
                except Exception as exc:  # a bug here must not end the source: count it, go on
                    self._failures += 1
                    self.hub.metrics.inc("tasklens.ecs.poll_errors", reason="unexpected")
                    self._log.error("poll:unexpected", "ECS poll crashed: %r", exc)
                    ok = False
                if ok:
                    delay = self.config.poll_interval
                else:  # retry sooner at first, never later than a normal poll
                    delay = min(self.config.poll_interval, self.backoff_initial * 2 ** (self._failures - 1))
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except asyncio.TimeoutError:
                    pass
        finally:
            await self.aclose()

    def status(self) -> dict[str, Any]:
        return dict(self._status, ready=self.ready, consecutive_failures=self._failures, health=self.health.settings())

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- one poll ----------------------------------------------------------------------------

    async def poll_once(self) -> bool:
        """Fetch `/task` and `/task/stats`, publish what they give. True when both succeeded."""
        metrics = self.hub.metrics
        started = time.monotonic()
        self._status["last_poll"] = time.time()
        metrics.inc("tasklens.ecs.polls")
        results: tuple[Any, Any] = await asyncio.gather(
            self._fetch("/task"), self._fetch("/task/stats"), return_exceptions=True)
        samples, error = self._apply(*results)
        # a snapshot: series that this poll could not produce disappear (a gap, never a stale value)
        self.hub.publish(Batch("ecs", samples, snapshot=True))
        metrics.set("tasklens.ecs.poll_duration_seconds", time.monotonic() - started)
        if error is None:
            if self._failures:
                # rate-limited like the failures: an endpoint that flaps would log this every other poll
                self._log.info("poll:recovered", "ECS metadata poll recovered after %d failed attempts", self._failures)
            self._failures = 0
            self.ready = True
            now = time.time()
            self._status["last_success"] = now
            metrics.set("tasklens.ecs.last_success_timestamp", now)
            return True
        self._failures += 1
        metrics.inc("tasklens.ecs.poll_errors", reason=error.reason)
        text = self._redact.remote_text(str(error), limit=ERROR_TEXT_LIMIT)
        self._status.update(last_error=text, last_error_reason=error.reason, last_error_at=time.time())
        self._log.warning(f"poll:{error.reason}", "ECS metadata poll failed (%s): %s; keeping the last "
                          "known identity and retrying", error.reason, text)
        return False

    def _apply(self, task: Any, stats: Any) -> tuple[list[Sample], PollError | None]:
        """Identity and samples from what the two requests returned (a document or an exception)."""
        if isinstance(task, BaseException):
            return [], _as_poll_error(task)
        try:
            identity = task_identity(self.config, task)
        except Exception as exc:  # ValueError, or a TypeError from a field of the wrong type
            return [], PollError("bad_shape", f"/task: {exc}")
        if not self.ready:  # once: where the metadata came from and which task it describes
            self.ready = True  # the identity is known: ready, even while the stats fail (counted apart)
            log.info("ECS mode: metadata from %s; task %s of %s:%s in cluster %s (%s), service %r, %d containers",
                     self.shown_url, identity.task_id or "?", identity.task_family or "?",
                     identity.task_revision or "?", identity.ecs_cluster or "?", identity.launch_type or "?",
                     identity.service, len(identity.containers))
        self.hub.set_identity(identity)
        self._status["containers"] = len(identity.containers)
        error = None
        if isinstance(stats, BaseException):
            error, stats = _as_poll_error(stats), {}
        elif not isinstance(stats, Mapping):
            error, stats = PollError("bad_shape", "/task/stats: not a JSON object"), {}
        else:  # only the task's containers are read: the entries of others are not kept for the next poll
            ids = {c["DockerId"] for c in task.get("Containers", [])
                   if isinstance(c, dict) and isinstance(c.get("DockerId"), str)}
            stats = {docker_id: entry for docker_id, entry in stats.items() if docker_id in ids}
        # the task's own series (state, limits) still go out when only the stats failed
        previous, stale = self._previous(stats)
        standing = self._instances.choose(distinct_containers(task.get("Containers"))[0])
        derived = derive(task, stats, previous, self._network, stale, standing, self._counters)
        derived.samples.extend(self.health.observe(task, stats, derived.samples, time.time(), standing))
        derived.errors.extend(self.health.errors)  # readings of the task the health rules could not believe
        for reason in derived.errors:
            if error is not None and reason == "no_stats":
                continue  # the stats request failed: counted once as a poll error, not again per container
            self.hub.metrics.inc("tasklens.ecs.container_errors", reason=reason)
        repeats = derived.errors.count("duplicate_container")
        if repeats:
            self._log.warning("container:duplicate_container", "ECS /task lists %d more containers under a "
                              "DockerId it already listed: each DockerId counted once (its first entry)", repeats)
        if error is None:
            self._remember(stats)
        return derived.samples, error

    async def _fetch(self, path: str) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.metadata_timeout))
        url = self.base_url + path
        # the metadata endpoint never redirects: a redirect is an error, not followed to another host
        async with self._session.get(url, allow_redirects=False) as response:
            if 300 <= response.status < 400:
                raise PollError("redirect", f"{path}: HTTP {response.status}: redirect refused")
            body = await read_capped(response, MAX_BODY, lambda: _too_large(path))
            if response.status >= 500:
                raise PollError("http_5xx", f"{path}: HTTP {response.status}: {_snippet(body)}")
            if response.status >= 400:
                raise PollError("http_4xx", f"{path}: HTTP {response.status}: {_snippet(body)}")
            if response.status != 200:
                raise PollError("http_other", f"{path}: HTTP {response.status}")
        json_bounds(path, body)
        try:
            data = json.loads(body)
            # `\ud800` escapes JSON allows, alone, decode to text no UTF-8 output (OTLP, remote_write,
            # Datadog) can hold: `?` instead, as everywhere else
            return _valid_text(data) if b"\\ud" in body.lower() else data
        except ValueError as exc:  # truncated or not JSON (UnicodeDecodeError is a ValueError)
            raise PollError("bad_json", f"{path}: {exc}") from None
        except RecursionError:
            raise PollError("bad_json", f"{path}: nested too deep") from None

    # -- rates -------------------------------------------------------------------------------

    def _previous(self, stats: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """Our earlier sample per DockerId to take rates from, and the DockerIds whose sample has not
        changed for longer than `stale_after` (no rate from those)."""
        out: dict[str, dict[str, Any] | None] = {}
        stale: set[str] = set()
        now = time.monotonic()
        for docker_id, entry in stats.items():
            remembered = self._history.get(docker_id)
            if remembered is None or not isinstance(entry, Mapping):
                continue
            older, latest, since = remembered
            # the agent refreshes its stats every 1-10 s; an unchanged `read` is the same sample
            if entry.get("read") != latest["read"]:
                out[docker_id] = latest
            elif now - since > self.stale_after:
                stale.add(docker_id)
            else:
                out[docker_id] = older
        return {k: v for k, v in out.items() if v is not None}, stale

    def _remember(self, stats: Mapping[str, Any]) -> None:
        history: dict[str, tuple[dict[str, Any] | None, dict[str, Any], float]] = {}
        now = time.monotonic()
        for docker_id, entry in stats.items():
            basis = rate_basis(entry)
            if basis is None:
                continue
            previous = self._history.get(docker_id)
            if previous is not None and basis["read"] == previous[1]["read"]:
                history[docker_id] = previous
            else:
                history[docker_id] = (previous[1] if previous is not None else None, basis, now)
        self._history = history  # containers that went away are forgotten


def _valid_text(data: Any) -> Any:
    """`data` with every string (keys too) encodable as UTF-8: lone surrogates become `?`."""
    if isinstance(data, str):
        return encodable(data)
    if isinstance(data, list):
        return [_valid_text(v) for v in data]
    if isinstance(data, dict):
        return {_valid_text(k): _valid_text(v) for k, v in data.items()}
    return data


_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)  # a JSON string, or one the end cut short
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")
_INNERMOST = re.compile(rb"\[\]|\{\}")


def json_values(bare: bytes) -> int:
    """How many JSON values a body holds (objects, arrays, strings, numbers, literals; a key is part of its
    member), exactly for valid JSON, from its structure (`json_structure`), without parsing it."""
    empty = bare.count(b"[]") + bare.count(b"{}")
    # every value but the first of a container follows a comma; the first is there when it is not empty
    return 1 + bare.count(b",") + bare.count(b"[") + bare.count(b"{") - empty


def json_structure(body: bytes) -> bytes:
    """`body` with each string one character and no whitespace: a comma or bracket in a string is text."""
    # whitespace first: a string without its own is still a string, and there is less left to copy
    return _STRING.sub(b"0", body.translate(None, b" \t\r\n"))


def json_bounds(path: str, body: bytes) -> None:
    """Refuse, before parsing, an answer past MAX_VALUES values or strings (keys too: `too_large`) or
    MAX_DEPTH levels (`bad_shape`). Linear in the body, in C: under 100 ms for 4 MiB."""
    # first the strings, whose removal costs a piece each: a quote that is no delimiter (`\\"`) counts too
    strings = body.count(b'"') // 2
    if strings > MAX_VALUES:
        raise PollError("too_large", f"{path}: up to {strings:,} JSON strings in {len(body):,} bytes, over "
                                     f"{MAX_VALUES:,}: refused")
    bare = json_structure(body)
    values = json_values(bare)
    if values > MAX_VALUES:
        raise PollError("too_large", f"{path}: {values:,} JSON values in {len(body):,} bytes, over "
                                     f"{MAX_VALUES:,}: refused")
    brackets = _NOT_BRACKET.sub(b"", bare)
    for _ in range(MAX_DEPTH + 1):  # each pass takes away the innermost level
        if not brackets:
            return
        brackets, removed = _INNERMOST.subn(b"", brackets)
        if not removed:
            return  # brackets that do not pair: not JSON, which json.loads says where
    raise PollError("bad_shape", f"{path}: JSON nested deeper than {MAX_DEPTH} levels: refused")


# aiohttp >= 3.10 raises NonHttpUrlClientError (not an InvalidURL) for other schemes
_BAD_URL = (aiohttp.InvalidURL, getattr(aiohttp, "NonHttpUrlClientError", aiohttp.InvalidURL))


def _as_poll_error(exc: BaseException) -> PollError:
    if isinstance(exc, PollError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return PollError("timeout", "no answer within the metadata timeout")
    if isinstance(exc, _BAD_URL):  # the variable holds something that is not an http URL
        return PollError("bad_url", f"{type(exc).__name__}: {exc} (check {ENV_V4})")
    if isinstance(exc, aiohttp.ClientConnectionError | OSError):
        return PollError("connection", f"{type(exc).__name__}: {exc}")
    if isinstance(exc, aiohttp.ClientError):
        return PollError("http_error", f"{type(exc).__name__}: {exc}")
    return PollError("unexpected", f"{type(exc).__name__}: {exc}")


def _too_large(path: str) -> PollError:
    return PollError("too_large", f"{path}: response body over {MAX_BODY} bytes: refused")


def _snippet(body: bytes) -> str:
    return body[:200].decode("utf-8", "replace").strip()
