"""Container health over successive ECS snapshots: memory leak forecast, OOM kills, restarts, peaks,
CPU saturation and the throttling counters that are real.

The rules (and their known false positives) are in docs/health.md. Everything but `HealthMonitor` is
a pure function over parsed `/task` + `/task/stats` JSON or over the observations made from them;
`HealthMonitor` only remembers, per container name, what the next poll needs to compare against (for a
bounded time after the container left `/task`: one back continues its counters). It
runs inside the ECS (or local) source right after `ecs_stats.derive`, on the same snapshots, and its
samples go out in the same snapshot batch.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent import trend
from agent.identity import container_tags, distinct_containers
from agent.logs import RateLimitedLog
from agent.model import Kind, Sample, Tags
from agent.selfmetrics import SelfMetrics
from agent.sources.ecs_stats import DEPARTED_POLLS, MAX_DEPARTED, Choice, CounterFloors, choose_once, memory_limit_bytes
from agent.sources.ecs_stats import checked_working_set, parse_time_ns
from agent.sources.ecs_stats import _get, _num  # the same tolerant JSON accessors as the derivations
from integrations.queues.trend import trend_window  # the queues' rule: a trend window holds 3 polls

_log = RateLimitedLog(logging.getLogger("tasklens.health"))

OOM_EXIT_CODE = 137  # 128 + SIGKILL: what the kernel's OOM killer leaves (and any other SIGKILL)
NEAR_LIMIT = 0.9  # working set at or above this share of the limit counts as "at the limit"
LEAK_SIGNIFICANCE = 5.0  # standard errors: see docs/health.md (3 was a false leak in ~1 of 2,000 noisy windows)
# what an exit with code 137 needs to be an OOM kill when memory was last seen below the limit: growth at
# this many standard errors, projected to the exit (the exit code is evidence already; see `oom_killed`)
EXIT_SIGNIFICANCE = 3.0
EXIT_LOOKBACK = 3  # running readings before an exit that can show memory at the limit: see `oom_killed`
# a leak is projected to an exit at most this many polls past the last reading of the process seen running
# (polls of at least STATS_REFRESH seconds): the exit normally shows one poll later; a container back
# after a longer gap may have been killed at any time in it, and the forecast does not say when
EXIT_PROJECTION_POLLS = 3
STATS_REFRESH = 10.0  # seconds: the agent refreshes a container's stats (and its `read`) up to this far apart
MIN_GROWTH = 0.01  # the fitted growth over the window must reach 1 % of the limit to be a leak
# ECS restarts a container (restart policy) only once it ran `restartAttemptPeriod` seconds, 60 at least:
# a `RestartCount` that rose by more than 1 + elapsed / MIN_RESTART_PERIOD cannot be (`max_restarts`)
MIN_RESTART_PERIOD = 60.0
FLOOR_BINS = 6  # the floor (lowest point of each sixth of the window) must rise by half that too: _floor_growth
# a container gone from `/task` is remembered for DEPARTED_POLLS polls (as the network totals remember
# its interfaces), so that one back after a gap continues its counters and peak; at most MAX_DEPARTED at
# once (the oldest departure is forgotten first): a task whose containers keep changing names stays bounded


# --- memory forecast ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoryForecast:
    leak_suspected: bool
    growth_bytes_per_hour: float | None  # only when the growth is significant
    time_to_limit_seconds: float | None  # only when a leak is suspected and the limit is known


def memory_forecast(points: Iterable[trend.Point], *, limit: float | None, window: float,
                    now: float | None = None, significance: float = LEAK_SIGNIFICANCE) -> MemoryForecast | None:
    """The working set's trend over the last `window` seconds; None until the window holds enough points.

    A leak is suspected when the slope is more than `significance` standard errors above 0 (it is
    growing, not noise) and the fitted growth over the window is at least `MIN_GROWTH` of the limit
    (or of the working set when there is no limit): a cache warming by a few kilobytes is real growth
    but not a leak anybody should be told about. The time to the limit extrapolates the fitted line
    from its value now (not from the last, noisy, point)."""
    pts = trend.recent(points, window=window, now=now)
    f = trend.fit(pts) if pts is not None else None
    if pts is None or f is None:
        return None
    scale = limit if limit else abs(f.level)
    leaking = (f.direction(significance) > 0 and f.slope * window >= MIN_GROWTH * scale
               and _floor_growth(pts) >= MIN_GROWTH * scale / 2)  # half: six minima are a noisy estimate
    if not leaking:
        return MemoryForecast(False, None, None)
    ttl = max(0.0, (limit - f.level) / f.slope) if limit else None
    return MemoryForecast(True, f.slope * 3600.0, ttl)


def _floor_growth(points: list[trend.Point]) -> float:
    """How much the floor rose over the window: the slope through the lowest point of each of
    `FLOOR_BINS` equal spans, times the window. A garbage collector's sawtooth has a flat floor (each
    span holds a collection when its period is at most window / FLOOR_BINS), while its rising teeth
    can tilt the fit of all points significantly; a leak raises the floor too."""
    start, end = points[0][0], points[-1][0]
    span = (end - start) / FLOOR_BINS
    lows: dict[int, trend.Point] = {}
    for t, y in points:
        b = min(int((t - start) / span), FLOOR_BINS - 1) if span > 0 else 0
        if b not in lows or y < lows[b][1]:
            lows[b] = (t, y)
    f = trend.fit(sorted(lows.values()))
    return f.slope * (end - start) if f is not None else 0.0


# --- one container at one poll ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observation:
    """What one poll says about one container; None wherever the snapshot does not say."""

    t: float  # seconds: the stats' `read` time, else the poll's
    running: bool
    exit_code: float | None = None
    restart_count: float | None = None  # only with a restart policy
    started_ns: int | None = None
    working_set: float | None = None
    limit: float | None = None
    failcnt: float | None = None  # cgroup v2 only: memory.events `oom` (`oom_events`)
    throttled_periods: float | None = None
    throttled_seconds: float | None = None
    polled: float | None = None  # Unix seconds of the poll that made it
    created_ns: int | None = None  # the container's `CreatedAt`: a restart in place keeps it

    @property
    def near_limit(self) -> bool:
        return bool(self.working_set is not None and self.limit and self.working_set >= NEAR_LIMIT * self.limit)


def oom_events(memory: Any) -> float | None:
    """Docker's `failcnt` where it says an allocation failed at the limit: on cgroup v2, where it is
    memory.events `oom`. On cgroup v1 (stats with `cache`, `rss` or `total_inactive_file`, or a
    `max_usage`) it counts every time the usage touched the limit, page cache reclaimed there as a
    routine included: no sign of an OOM kill (docs/health.md), so None."""
    if not isinstance(memory, dict) or "max_usage" in memory:
        return None
    stats = memory.get("stats")
    if isinstance(stats, dict) and any(k in stats for k in ("cache", "rss", "total_inactive_file")):
        return None
    return _num(memory.get("failcnt"))


def observe(container: Mapping[str, Any], stats: Any, task: Any, poll_time: float) -> Observation:
    """One container's `/task` entry and Docker stats (any shape) -> an Observation (never raises)."""
    stats = stats if isinstance(stats, dict) else {}
    memory = _get(stats, "memory_stats")
    read = parse_time_ns(stats.get("read"))
    # a usage above every limit the container has is garbage (`memory_is_garbage`): no reading, no peak
    ws = checked_working_set(memory, container, task) if isinstance(memory, dict) and memory else None
    throttling = _get(stats, "cpu_stats", "throttling_data")
    throttled_ns = _num(_get(throttling, "throttled_time"))
    return Observation(
        t=read / 1e9 if read is not None else poll_time,
        running=container.get("KnownStatus") == "RUNNING",
        exit_code=_num(container.get("ExitCode"), signed=True),
        restart_count=_num(container.get("RestartCount")),
        started_ns=parse_time_ns(container.get("StartedAt")),
        working_set=ws,
        limit=memory_limit_bytes(memory, container, task) if ws is not None else None,
        failcnt=oom_events(memory),
        throttled_periods=_num(_get(throttling, "throttled_periods")),
        throttled_seconds=throttled_ns / 1e9 if throttled_ns is not None else None,
        polled=poll_time,
        created_ns=parse_time_ns(container.get("CreatedAt")),
    )


# --- transitions between two polls --------------------------------------------------------------


def max_restarts(seconds: float) -> float:
    """The most restarts a restart policy can make in `seconds`: one each MIN_RESTART_PERIOD, and one more
    (the polls and the restarts are not in step)."""
    return 1.0 + max(0.0, seconds) / MIN_RESTART_PERIOD


def restarts_between(before: Observation, now: Observation, elapsed: float | None = None) -> int | None:
    """Restarts between two polls `elapsed` seconds apart: the rise of `RestartCount` when ECS gives it
    (restart policy), else 1 when the container's `StartedAt` moved forward (it started again), else 0.
    None when `RestartCount` says what cannot be: it went down (the same instance: a restart count
    never does), or it rose by more than `max_restarts(elapsed)` (without `elapsed`, not checked)."""
    if before.restart_count is not None and now.restart_count is not None:
        rise = now.restart_count - before.restart_count
        if rise < 0 or (elapsed is not None and rise > max_restarts(elapsed)):
            return None
        return int(rise)
    if before.started_ns is not None and now.started_ns is not None and now.started_ns > before.started_ns:
        return 1
    return 0


def reached_limit(last_running: Observation, growth_per_second: float, at: float) -> bool:
    """A suspected leak projected from the last working set seen running to `at` (the poll that saw the
    exit) reaches `NEAR_LIMIT` of the limit: with polls 10 s apart a fast leak is often last seen well
    below the limit, and killed before the next poll."""
    if not growth_per_second or last_running.working_set is None or not last_running.limit:
        return False
    projected = last_running.working_set + growth_per_second * max(0.0, at - last_running.t)
    return projected >= NEAR_LIMIT * last_running.limit


@dataclass(frozen=True, slots=True)
class Reading:
    """A running container's observation, with what the forecast and `failcnt` said at it."""

    obs: Observation
    growth_per_second: float = 0.0  # of the forecast at this reading, at EXIT_SIGNIFICANCE; else 0
    failcnt_rose: bool = False  # since the reading before

    def limit_hit(self, at: float) -> bool:
        """Memory was at the limit at this reading, or its growth reaches the limit by `at`."""
        return self.obs.near_limit or self.failcnt_rose or reached_limit(self.obs, self.growth_per_second, at)


def oom_killed(exit_code: float | None, before: Iterable[Reading], at: float, horizon: float = math.inf) -> bool:
    """An exit (a stop or a restart) seen by the poll at `at` was an OOM kill when its exit code is 137,
    or unknown (a restart whose exit code ECS does not show), and memory was at the limit at one of
    the last `EXIT_LOOKBACK` readings `before` it: the working set at least `NEAR_LIMIT` of the limit,
    or the cgroup v2 `oom` events risen (`oom_events`), or a suspected leak projected to the exit
    reaching it, but never further than `horizon` seconds past the last reading (a container back
    after a gap of many polls was killed at some time in it, not necessarily at its end). Not only the
    last reading: one taken after the kill, before ECS shows the stop, sees the memory freed."""
    if exit_code is not None and exit_code != OOM_EXIT_CODE:
        return False
    readings = list(before)[-EXIT_LOOKBACK:]
    if readings:
        at = min(at, readings[-1].obs.t + horizon)
    return any(r.limit_hit(at) for r in readings)


# --- CPU saturation ------------------------------------------------------------------------------


MAX_STEP = 600.0  # seconds between two readings that a run of saturation may span (see `saturation_step`)


@dataclass(slots=True)
class Saturation:
    """A run of readings at or above the threshold, and the seconds spent saturated so far."""

    above_since: float | None = None
    last_t: float | None = None
    seconds: float = 0.0
    saturated: bool = False


def saturation_step(state: Saturation, t: float, utilization: float | None, *, threshold: float,
                    window: float, max_step: float = MAX_STEP) -> Saturation:
    """Advance by one reading. A utilization is the average since the previous reading, so a run
    starts at the previous reading's time. Saturated once the run has lasted `window` seconds;
    `seconds` integrates the saturated state (rate() of it is the share of time saturated). A missing
    reading ends the run: unknown is never saturated. So does a time that went back, or one more than
    `max_step` after the previous (a clock stepped, polls that failed for long): a run never spans a
    hole, and one reading stamped a day ahead neither adds a day nor stops every later reading."""
    if state.last_t is not None and t == state.last_t:
        return state  # the same sample again (the agent had not refreshed its stats)
    if state.last_t is not None and not 0.0 < t - state.last_t <= max_step:
        state = Saturation(None, None, state.seconds, False)
    if utilization is None or utilization < threshold:
        return Saturation(None, t if utilization is not None else None, state.seconds, False)
    since = state.above_since if state.above_since is not None else (state.last_t if state.last_t is not None else t)
    saturated = t - since >= window
    seconds = state.seconds
    if saturated and state.last_t is not None:
        seconds += t - max(state.last_t, since + window)
    return Saturation(since, t, seconds, saturated)


# --- the monitor: per-container memory of the previous polls ------------------------------------


@dataclass
class _Container:
    tags: Tags
    docker_id: str | None = None  # of the instance `last` observed
    seen: int = 0  # the poll (`HealthMonitor._polls`) it was last in `/task`
    last: Observation | None = None
    last_running: Observation | None = None
    readings: deque[Reading] = field(default_factory=lambda: deque(maxlen=EXIT_LOOKBACK))  # this process's
    memory: trend.History = field(default_factory=lambda: trend.History(0.0))
    peak_working_set: float | None = None
    restarts: float | None = None  # None until a first `RestartCount` is believed (`_restarts`)
    counted: Observation | None = None  # the last observation whose `RestartCount` was believed
    refused: Observation | None = None  # the one refused at the poll before, or the first one held (`_restarts`)
    oom_kills: float = 0.0
    growth_per_second: float = 0.0  # of the last forecast that saw growth at EXIT_SIGNIFICANCE, else 0
    saturation: Saturation = field(default_factory=Saturation)


def memory_window(config: Any) -> float:
    """The leak forecast's window: TASKLENS_MEMORY_TREND_WINDOW, widened to 3 ECS polls (`trend_window`)."""
    return trend_window(config.memory_trend_window, config.poll_interval)


def settings(config: Any) -> dict[str, float]:
    """The windows the health rules use (`check` shows them): the memory window may be wider than set."""
    return {"memory_trend_window_seconds": memory_window(config),
            "cpu_saturation_window_seconds": config.cpu_saturation_window}


class HealthMonitor:
    """Feeds each poll's snapshots through the rules above and returns the health samples."""

    @classmethod
    def from_config(cls, config: Any, metrics: SelfMetrics | None = None) -> HealthMonitor:
        # a window shorter than 3 polls never holds the points a forecast needs: no leak would ever be
        # reported. The saturation window needs no widening: one reading above the threshold is an
        # average over a whole poll, so a run lasts at least a poll, and MAX_STEP follows the interval.
        return cls(memory_window=memory_window(config),
                   saturation_threshold=config.cpu_saturation_threshold,
                   saturation_window=config.cpu_saturation_window, metrics=metrics,
                   max_step=max(MAX_STEP, 3 * config.poll_interval), poll_interval=config.poll_interval)

    def __init__(self, *, memory_window: float, saturation_threshold: float, saturation_window: float,
                 metrics: SelfMetrics | None = None, max_step: float = MAX_STEP, poll_interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics or SelfMetrics()
        self.memory_window = memory_window
        self.clock = clock  # the sidecar's: bounds the memory trend whatever the `read`s do (`trend.History`)
        self.saturation_threshold = saturation_threshold
        self.saturation_window = saturation_window
        self.max_step = max_step  # see `saturation_step`
        # how far past the last reading a leak is projected to an exit (`oom_killed`)
        self.exit_horizon = EXIT_PROJECTION_POLLS * max(poll_interval, STATS_REFRESH)
        self._containers: dict[str, _Container] = {}  # by container name: those in `/task`, and departed ones
        self._polls = 0
        self._task_saturation = Saturation()
        self._throttling_real = False
        self._counters = CounterFloors()  # the throttling counters: never exported lower without a restart
        # reasons of what the last poll held that cannot be (a `RestartCount` refused, a counter that went
        # back): `bad_stats` once a container, which the ECS source counts with derive's
        self.errors: list[str] = []

    def settings(self) -> dict[str, float]:
        """The windows in use, as `settings` gives them from a configuration (`/status` shows them)."""
        return {"memory_trend_window_seconds": self.memory_window,
                "cpu_saturation_window_seconds": self.saturation_window}

    def observe(self, task: Any, stats: Any, derived: Iterable[Sample], poll_time: float,
                standing: Mapping[str, Choice] | None = None) -> list[Sample]:
        """`task`/`stats`: this poll's JSON; `derived`: what `ecs_stats.derive` made of it (for the
        CPU utilization, computed there once); `poll_time`: Unix seconds of the poll; `standing`: which
        instance stands for each container name, the choice derive was given (the source's `Instances`;
        without it, `choose_once`). Never raises: a bug here costs the health series of one poll, never
        the container metrics beside them."""
        try:
            return self._observe(task, stats, derived, poll_time, standing)
        except Exception as exc:
            self.metrics.inc("tasklens.health.errors")
            _log.error("observe", "health signals failed for this poll: %r", exc)
            return []

    def _observe(self, task: Any, stats: Any, derived: Iterable[Sample], poll_time: float,
                 standing: Mapping[str, Choice] | None) -> list[Sample]:
        stats = stats if isinstance(stats, dict) else {}
        self.errors = []
        utilization = {(s.name, s.tags): float(s.value) for s in derived
                       if s.name.endswith("cpu.utilization_percent") and isinstance(s.value, (int, float))}
        self._polls += 1
        # one container per name, the instance standing for it (none: absent this poll); the other
        # instances listed under that name, by DockerId, for the exit of the one that stood before
        if standing is None:
            standing = choose_once(distinct_containers(_get(task, "Containers"))[0])
        observed: dict[str, tuple[Tags, str, Observation, dict[str, Any]]] = {}
        for name, choice in standing.items():
            container = choice.container
            if container is None:
                continue
            try:
                obs = observe(container, stats.get(container["DockerId"]), task, poll_time)
                observed[name] = (container_tags(container), container["DockerId"], obs,
                                  {c["DockerId"]: c for c in choice.others})
            except Exception:  # a shape nobody has seen: this container's health is a gap, not a crash
                continue
        # ECS reports throttling as 0 even under throttling (a platform bug): a constant 0 would be a
        # lie, so the counters appear only once some container of the task shows a non-zero value
        self._throttling_real |= any(obs.throttled_periods for _, _, obs, _ in observed.values())
        self._counters.begin(docker_id for _, docker_id, _, _ in observed.values())
        out: list[Sample] = []
        for name, (tags, docker_id, obs, others) in observed.items():
            util = utilization.get(("ecs.container.cpu.utilization_percent", tags))
            replaced = others.get(self._containers[name].docker_id or "") if name in self._containers else None
            out += self._container(name, tags, obs, util, docker_id=docker_id,
                                   replaced=observe(replaced, stats.get(replaced["DockerId"]), task, poll_time)
                                   if replaced is not None else None)
        self._forget_departed()
        state = self._task_saturation = saturation_step(
            self._task_saturation, poll_time, utilization.get(("ecs.task.cpu.utilization_percent", ())),
            threshold=self.saturation_threshold, window=self.saturation_window, max_step=self.max_step)
        if state.last_t is not None:
            out.append(Sample("ecs.task.cpu.saturated", 1.0 if state.saturated else 0.0))
            out.append(Sample("ecs.task.cpu.saturated_seconds_total", state.seconds, Kind.COUNTER))
        return out

    def _forget_departed(self) -> None:
        """Containers gone from `/task` for more than DEPARTED_POLLS polls, and the oldest departed
        beyond MAX_DEPARTED, are forgotten; until then one that comes back continues where it was."""
        departed = sorted((c.seen, name) for name, c in self._containers.items() if c.seen != self._polls)
        for i, (seen, name) in enumerate(departed):
            if self._polls - seen > DEPARTED_POLLS or i < len(departed) - MAX_DEPARTED:
                del self._containers[name]

    def _container(self, name: str, tags: Tags, obs: Observation, utilization: float | None, *,
                   docker_id: str | None = None, replaced: Observation | None = None) -> list[Sample]:
        """`obs`: the container (the instance `docker_id`); `replaced`: this poll's observation of the
        instance that stood before under this name when `/task` lists it beside another that stands now."""
        c = self._containers.get(name)
        if c is None:
            c = self._containers[name] = _Container(tags, memory=trend.History(self.memory_window, self.clock))
        bad = False
        c.tags = tags
        c.seen = self._polls
        before = c.last
        switched = before is not None and c.docker_id is not None and docker_id is not None \
            and docker_id != c.docker_id
        if switched:
            # another instance stands (`Instances`): one restart; the exit of the one that stood before is
            # judged now if it was running then, with its own exit code when listed stopped, else as
            # unknown; never while it is listed RUNNING (the source's `Instances` keeps it standing then)
            exited = bool(before and before.running) and (replaced is None or not replaced.running)
            exit_code = replaced.exit_code if replaced is not None else None
            restarts = 1
            c.counted, c.refused = obs, None  # another instance: its own RestartCount
            if c.restarts is None:  # none believed yet: the counter starts here
                c.restarts = 0.0
        else:
            exited = before is not None and before.running and not obs.running
            exit_code = obs.exit_code
            restarts, refused = self._restarts(c, obs)
            bad |= refused
        c.docker_id = docker_id
        # an exit is judged once: when the stop is seen, or at the restart if the stop fell between polls
        judged = exited or bool(restarts and not switched and before is not None and before.running)
        if judged and oom_killed(exit_code, c.readings, at=obs.t, horizon=self.exit_horizon):
            c.oom_kills += 1
        if switched:
            c.last_running = None  # another process, in another cgroup: nothing of it compares with this one
        if restarts or exited or switched:
            c.restarts = c.restarts + restarts if c.restarts is not None else None
            c.memory = trend.History(self.memory_window, self.clock)  # a new process: its memory starts afresh
            c.readings.clear()
            c.growth_per_second = 0.0  # of the process before: not this one's
            c.saturation = Saturation()
        # the agent refreshes stats every 1-10 s: a `read` already seen is the same sample, not a point; an
        # earlier one means the clock went back (after a reading stamped ahead): the trend starts afresh
        if obs.running and c.last_running is not None and obs.t < c.last_running.t:
            c.memory = trend.History(self.memory_window, self.clock)
        # a new reading of the running process, not the same `read` again
        new = obs.working_set if obs.running and (c.last_running is None or obs.t != c.last_running.t) else None
        failcnt_rose = False
        if new is not None:
            previous = c.last_running.failcnt if c.last_running is not None else None
            failcnt_rose = obs.failcnt is not None and previous is not None and obs.failcnt > previous
            c.last_running = obs
            c.memory.add(obs.t, new)
            c.peak_working_set = max(c.peak_working_set or 0.0, new)
        c.last = obs
        if obs.running:
            c.saturation = saturation_step(c.saturation, obs.t, utilization, threshold=self.saturation_threshold,
                                           window=self.saturation_window, max_step=self.max_step)
        out: list[Sample] = []

        def emit(metric: str, value: float | None, kind: Kind = Kind.GAUGE) -> None:
            if value is not None and math.isfinite(value):
                out.append(Sample(f"ecs.container.{metric}", float(value), kind, tags))

        emit("restarts_total", c.restarts, Kind.COUNTER)
        emit("oom_kills_total", c.oom_kills, Kind.COUNTER)
        emit("memory.peak_working_set_bytes", c.peak_working_set)
        if obs.running and obs.working_set is not None:
            forecast = memory_forecast(c.memory.points, limit=obs.limit, window=self.memory_window, now=obs.t)
            if forecast is not None:
                growing = forecast if forecast.leak_suspected else memory_forecast(
                    c.memory.points, limit=obs.limit, window=self.memory_window, now=obs.t,
                    significance=EXIT_SIGNIFICANCE)
                c.growth_per_second = (growing.growth_bytes_per_hour or 0.0) / 3600 if growing else 0.0
                emit("memory.leak_suspected", 1.0 if forecast.leak_suspected else 0.0)
                emit("memory.growth_bytes_per_hour", forecast.growth_bytes_per_hour)
                emit("memory.time_to_limit_seconds", forecast.time_to_limit_seconds)
        if new is not None:
            c.readings.append(Reading(obs, c.growth_per_second, failcnt_rose))
        if obs.running and c.saturation.last_t is not None:
            emit("cpu.saturated", 1.0 if c.saturation.saturated else 0.0)
            emit("cpu.saturated_seconds_total", c.saturation.seconds, Kind.COUNTER)
        for metric, value in (("cpu.throttled_periods_total", obs.throttled_periods),
                              ("cpu.throttled_seconds_total", obs.throttled_seconds)):
            # cumulative: one below the value exported last for this instance (no restart) is a gap
            if value is not None and docker_id is not None \
                    and not self._counters.check(docker_id, obs.started_ns, metric, value):
                bad = True
                continue
            if self._throttling_real:
                emit(metric, value, Kind.COUNTER)
        if bad:
            self.errors.append("bad_stats")
        return out

    @staticmethod
    def _restarts(c: _Container, obs: Observation) -> tuple[int, bool]:
        """Restarts since the last believed `RestartCount` (`c.counted`), and whether this one was refused.

        `restarts_total` starts at the `RestartCount` first seen (it counts from the task's start): at
        once when it is at most 1 (or absent), else once the next poll agrees with it (the same count, or
        a rise `restarts_between` allows): a count above 1 seen once may be garbage, and would stay in
        the counter for good. Until then `restarts_total` is a gap. After, a count that went down or rose
        past what the time since allows (`restarts_between` None) is refused: it adds nothing and
        `c.counted` stays. The same count refused at two polls in a row is what the container says now:
        it becomes the one compared against, still adding nothing (the reading believed before was the
        wrong one: too few restarts counted, never too many)."""
        if c.counted is None:
            held = c.refused
            if obs.restart_count is None or obs.restart_count <= max_restarts(0.0):
                c.restarts, c.counted, c.refused = obs.restart_count or 0.0, obs, None
                return 0, False
            if held is None:  # the first count seen: held until the next poll says the same
                c.refused = obs
                return 0, False
            rise = restarts_between(held, obs, _elapsed(held, obs))
            c.refused = None if rise is not None else obs
            if rise is None:
                return 0, True
            c.restarts, c.counted = held.restart_count or 0.0, obs
            return rise, False
        restarts = restarts_between(c.counted, obs, _elapsed(c.counted, obs))
        if restarts is None:
            again = c.refused is not None and c.refused.restart_count == obs.restart_count
            c.counted, c.refused = (obs, None) if again else (c.counted, obs)
            return 0, True
        c.counted, c.refused = obs, None
        return restarts, False


def _elapsed(before: Observation, now: Observation) -> float | None:
    """Seconds between the polls that made two observations (None when either time is unknown)."""
    return now.polled - before.polled if now.polled is not None and before.polled is not None else None
