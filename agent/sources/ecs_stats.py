"""Container and task metrics derived from ECS task metadata v4 `/task` and `/task/stats` (pure).

The rules are those of `shared/spec/ecs.md`. Every function here takes parsed JSON of any shape and
never raises: a value that is missing or of the wrong type is left out, and a container whose entry
is unusable is recorded as an error reason while the other containers are still derived.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from agent.identity import container_tags, distinct_containers, is_workload
from agent.model import Kind, Sample, Tags

MIB = 1024 * 1024
# the smallest hard limit Docker ever allowed (4 MiB; 6 MiB since 20.10, and ECS' minimum): a smaller
# `Limits.Memory` is junk, not a ceiling (`memory_ceiling`)
MIN_MEMORY_LIMIT = 4 * 1024 * 1024
UNLIMITED = 2**62  # memory limits at or above this are "no limit" sentinels (2^63-4096, 2^64-1)
CPU_UNITS_PER_VCPU = 1024
CPU_UNITS_UNSET = 2  # container `Limits.CPU` of 0 (EC2) or 2 (Fargate) means "not set"
# a rate above the host's online CPUs by more than this share is a counter that jumped, not usage (the
# two ends of a delta are read a little apart from their timestamps: a busy host can seem a bit over)
CPU_SLACK = 1.1
# without a bound on the CPUs, the shortest gap between two reads a rate is taken over (ns): the agent's
# own pairs are about 1 s apart (EC2) or 10 s (Fargate)
MIN_UNBOUNDED_DT = 500_000_000

_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$")


class Derived(NamedTuple):
    samples: list[Sample]
    errors: list[str]  # one reason per problem found (`bad_container`, `bad_stats`, `no_stats`, `duplicate_container`)


# --- tolerant accessors -------------------------------------------------------------------------


def _num(value: Any, *, signed: bool = False) -> float | None:
    """A finite JSON number, else None (booleans, strings such as Windows' "None", NaN, an integer
    past the float range: JSON integers have no size limit). Below 0 only when `signed`: bytes, counts,
    times and limits cannot be negative; an exit code can (Windows)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) and (signed or value >= 0) else None


def _get(obj: Any, *path: str) -> Any:
    # parsed JSON objects are dicts; checking `dict`, not the Mapping ABC, halves the cost of a poll
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _scalar(value: Any) -> int | float | str | None:
    """A JSON scalar usable as a key (garbage such as a list becomes None)."""
    return value if isinstance(value, (int, float, str)) else None


def parse_time_ns(text: Any) -> int | None:
    """RFC 3339 with up to nanoseconds -> Unix nanoseconds; None for junk and Go's zero time."""
    if not isinstance(text, str):
        return None
    m = _TIME.match(text.strip())
    if not m:
        return None
    base, frac, tz = m.groups()
    tz = "+00:00" if tz in (None, "Z") else tz
    try:
        seconds = int(datetime.fromisoformat(base + tz).timestamp())
    except (ValueError, OverflowError):
        return None
    if seconds <= 0:  # `0001-01-01T00:00:00Z`: Docker's "no previous sample"
        return None
    return seconds * 1_000_000_000 + int((frac or "0")[:9].ljust(9, "0"))


# --- CPU ----------------------------------------------------------------------------------------


def _cpu_point(stats: Any, prefix: str = "") -> tuple[float, int] | None:
    """(total_usage ns, read ns) of `cpu_stats` (prefix "") or `precpu_stats` (prefix "pre")."""
    total = _num(_get(stats, prefix + "cpu_stats", "cpu_usage", "total_usage"))
    read = parse_time_ns(_get(stats, prefix + "read"))
    if total is None or read is None or (prefix and total == 0):  # empty precpu: first sample
        return None
    return total, read


def cpu_bound_vcpus(stats: Any, task: Any) -> float | None:
    """The most vCPUs a container can use: the host's online CPUs (else as many as `percpu_usage` lists),
    and on Fargate the task's size, a hard quota there (`online_cpus` is the host's: 2 for a 0.25-vCPU
    task). Elsewhere the task's `Limits.CPU` is not taken as a bound: on EC2 it is not enforced for
    Windows containers, and a container's CPU units are a share, not a cap. None when nothing is known
    (Windows stats have neither CPU count)."""
    bounds = []
    online = _num(_get(stats, "cpu_stats", "online_cpus"))
    percpu = _get(stats, "cpu_stats", "cpu_usage", "percpu_usage")
    if online:
        bounds.append(online)
    elif isinstance(percpu, list) and percpu:
        bounds.append(float(len(percpu)))
    task_vcpus = _num(_get(task, "Limits", "CPU"))
    if is_fargate(task) and task_vcpus:
        bounds.append(task_vcpus)
    return min(bounds) if bounds else None


def is_fargate(task: Any) -> bool:
    return str(_get(task, "LaunchType") or "").upper() == "FARGATE"


def cpu_vcpus(stats: Any, previous: Any = None, bound: float | None = None) -> float | None:
    """vCPUs used = CPU-time delta / wall-time delta. Uses our own previous poll when it is older
    (a rate over the whole poll interval), else the agent's `precpu_stats`. None when no valid pair.

    `bound` is `cpu_bound_vcpus`: a rate past it by more than CPU_SLACK is a counter that jumped. Without
    one, a pair read less than MIN_UNBOUNDED_DT apart is refused: a small error in either end over a
    tiny gap makes any rate at all (1 s of CPU over 1 ms: 1000 vCPUs)."""
    now = _cpu_point(stats)
    if now is None:
        return None
    for before in (_cpu_point(previous), _cpu_point(stats, "pre")):
        if before is None:
            continue
        dt, dcpu = now[1] - before[1], now[0] - before[0]
        # a negative delta is a restart, one past every CPU the container can have a jump: no rate from that pair
        if dt <= 0 or dcpu < 0:
            continue
        if bound is None and dt < MIN_UNBOUNDED_DT:
            continue
        if bound is not None and dcpu / dt > bound * CPU_SLACK:
            continue
        return dcpu / dt
    return None


def cpu_allocation_vcpus(container: Any, task: Any, stats: Any) -> float | None:
    """What the container was given: its own CPU units if set, else the task's vCPUs, else the
    online CPUs. Utilization is relative to this ("% of what I gave it")."""
    units = _num(_get(container, "Limits", "CPU"))
    if units is not None and units > CPU_UNITS_UNSET:
        return units / CPU_UNITS_PER_VCPU
    task_vcpus = _num(_get(task, "Limits", "CPU"))
    if task_vcpus is not None and task_vcpus > 0:
        return task_vcpus
    online = _num(_get(stats, "cpu_stats", "online_cpus"))
    return online if online is not None and online > 0 else None


# --- memory -------------------------------------------------------------------------------------


def working_set_bytes(memory: Any) -> float | None:
    """What `docker stats` and the ECS console show: usage minus inactive page cache, never < 0."""
    memory = _map(memory)
    windows = _num(memory.get("privateworkingset"))
    if windows is not None:
        return windows
    usage = _num(memory.get("usage"))
    if usage is None:
        return None
    s = _map(memory.get("stats"))
    if "total_inactive_file" in s:  # cgroup v1, hierarchical
        reclaimable = s["total_inactive_file"]
    elif "cache" in s:  # cgroup v1 without the totals
        reclaimable = s["cache"]
    else:  # cgroup v2
        reclaimable = s.get("inactive_file")
    return max(0.0, usage - (_num(reclaimable) or 0.0))


def plausible_limit(limit: float | None, used: float | None) -> float | None:
    """`limit` when it can be a memory limit: finite, above 0, below the "unlimited" sentinels, and not
    below what is in use (the kernel enforces a hard limit; captures with hand-truncated limits exist,
    and a 1e308 MiB one is +Inf bytes)."""
    if limit is None or not math.isfinite(limit) or not 0 < limit < UNLIMITED:
        return None
    return limit if used is None or limit >= used else None


def memory_limit_bytes(memory: Any, container: Any, task: Any) -> float | None:
    """The smallest of the limits that apply: the stats limit, the container's hard limit and the
    task's hard limit (`Limits.Memory`, MiB). On EC2 with awsvpc on cgroup v2 the stats can report
    the host's memory as the limit of a container without a limit of its own, while the task's
    limit is what the kernel enforces. Each is taken only where `plausible_limit` (a sentinel, 0, or one
    below the usage is not a limit)."""
    used = _num(_get(memory, "usage"))
    if used is None:
        used = working_set_bytes(memory)
    candidates = [_num(_get(memory, "limit"))]
    for mib in (_num(_get(container, "Limits", "Memory")), _num(_get(task, "Limits", "Memory"))):
        candidates.append(mib * MIB if mib is not None else None)
    limits = [limit for c in candidates if (limit := plausible_limit(c, used)) is not None]
    return min(limits) if limits else None


def memory_ceiling(container: Any, task: Any) -> float | None:
    """The most memory a container can hold: the larger of its own and its task's hard limits
    (`Limits.Memory`, MiB, in `/task`), each a real one (finite, at least MIN_MEMORY_LIMIT, below the
    "unlimited" sentinels). None when neither is known. The stats `limit` is no ceiling: it is the host's memory
    where the container has no limit, a sentinel, or in hand-edited captures a truncated number (the
    rule of `plausible_limit`: a limit below the usage is no limit). A usage, working set, rss, cache,
    anon or file above the ceiling cannot be: garbage in a valid answer (a gap, `bad_stats`), never a
    reading, never a peak."""
    limits = []
    for mib in (_num(_get(container, "Limits", "Memory")), _num(_get(task, "Limits", "Memory"))):
        limit = plausible_limit(mib * MIB, None) if mib is not None else None
        if limit is not None and limit >= MIN_MEMORY_LIMIT:
            limits.append(limit)
    return max(limits) if limits else None


def memory_is_garbage(memory: Any, container: Any, task: Any) -> bool:
    """Whether `memory_stats` holds a usage (or Windows' private working set) above `memory_ceiling`:
    then none of its readings is believed (its working set is computed from it)."""
    ceiling = memory_ceiling(container, task)
    if ceiling is None:
        return False
    used = [_num(_get(memory, key)) for key in ("usage", "privateworkingset")]
    return any(v is not None and v > ceiling for v in used)


def checked_working_set(memory: Any, container: Any, task: Any) -> float | None:
    """`working_set_bytes`, None when the memory reading is garbage (`memory_is_garbage`)."""
    return None if memory_is_garbage(memory, container, task) else working_set_bytes(memory)


# --- block I/O ----------------------------------------------------------------------------------


def blkio_read_write(entries: Any) -> tuple[float, float] | None:
    """Bytes (or operations) read and written, each I/O counted once.

    Entries are per device (`major`, `minor`) and op, compared lowercased (cgroup v2 writes `read`,
    v1 `Read`); entries without a value count 0; `null`, `"None"` or `[]` -> (0, 0); None if absent.
    None too (a gap, never a wrong total) when a read or write entry has a value that is no usable
    number (`"57344"`, `null`, -1, 1e400, an object), or when the list has entries but none of them is
    an object with an op: a total without them would be too small, a false counter reset. Other
    entries that are not objects with a string op are passed over.
    A device stacked over another (device-mapper over its disk: real captures show a dm device with
    exactly the numbers of the disk under it, sometimes two levels deep) sees the same I/O again, so
    devices whose read and write are both identical are counted once. Two distinct disks with the
    very same non-zero totals would be undercounted; that is the rarer error."""
    if entries is None or entries == "None":
        return 0.0, 0.0
    if not isinstance(entries, list):
        return None
    devices: dict[tuple[Any, Any], list[float]] = {}
    usable = False
    for entry in entries:
        op = _get(entry, "op")
        if not isinstance(op, str):
            continue
        usable = True
        op = op.lower()
        if op not in ("read", "write"):
            continue
        value = _num(entry["value"]) if "value" in entry else 0.0
        if value is None:
            return None
        device = devices.setdefault((_scalar(_get(entry, "major")), _scalar(_get(entry, "minor"))), [0.0, 0.0])
        device[op == "write"] += value
    if entries and not usable:
        return None
    distinct = {(read, write) for read, write in devices.values()}
    return sum(read for read, _ in distinct), sum(write for _, write in distinct)


def io_totals(stats: Any) -> dict[str, float]:
    """Cumulative bytes and operations read/written; Windows reports them in `storage_stats`."""
    out: dict[str, float] = {}
    storage = _map(_get(stats, "storage_stats"))
    for name, key in (("read_bytes_total", "read_size_bytes"), ("write_bytes_total", "write_size_bytes"),
                      ("read_ops_total", "read_count_normalized"), ("write_ops_total", "write_count_normalized")):
        value = _num(storage.get(key))
        if value is not None:
            out[name] = value
    if out:
        return out
    blkio = _get(stats, "blkio_stats")
    if not isinstance(blkio, dict):
        return out
    nbytes = blkio_read_write(blkio.get("io_service_bytes_recursive"))
    if nbytes is not None:
        out["read_bytes_total"], out["write_bytes_total"] = nbytes
    ops_entries = blkio.get("io_serviced_recursive")
    if isinstance(ops_entries, list) and ops_entries:  # cgroup v2 never fills it: absent, not 0
        ops = blkio_read_write(ops_entries)
        if ops is not None:
            out["read_ops_total"], out["write_ops_total"] = ops
    return out


# --- network ------------------------------------------------------------------------------------

_NET_COUNTERS = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_errors", "tx_errors",
                 "rx_dropped", "tx_dropped")
_NET_NAMES = {
    "rx_bytes": "receive_bytes_total", "tx_bytes": "transmit_bytes_total",
    "rx_packets": "receive_packets_total", "tx_packets": "transmit_packets_total",
    "rx_errors": "receive_errors_total", "tx_errors": "transmit_errors_total",
    "rx_dropped": "receive_dropped_total", "tx_dropped": "transmit_dropped_total",
}


# a container's network namespace has 1-3 interfaces (eth0, eth1, `Ethernet 3`; a Linux name is at most 15
# bytes): more, or a longer name, is junk, and junk kept for the next poll's rates must stay small
MAX_INTERFACES = 64
MAX_INTERFACE_NAME = 256


def interfaces(stats: Any) -> dict[str, dict[str, float]]:
    """Interface name -> counters; `networks` may be missing or spelled `network` (old agents). Empty
    for an entry with more than MAX_INTERFACES interfaces or a name past MAX_INTERFACE_NAME characters
    (junk: a gap, never a part of it)."""
    nets = _get(stats, "networks")
    if not isinstance(nets, dict):
        nets = _get(stats, "network")
    nets = _map(nets)
    if len(nets) > MAX_INTERFACES or any(len(name) > MAX_INTERFACE_NAME for name in nets):
        return {}
    out: dict[str, dict[str, float]] = {}
    for name, counters in nets.items():
        values = {k: v for k in _NET_COUNTERS if (v := _num(_get(counters, k))) is not None}
        if values:
            out[str(name)] = values
    return out


def shared_network(task: Any) -> bool:
    """awsvpc and host tasks share one network namespace: every container's stats repeat the same
    interfaces. Only bridge mode gives each container its own."""
    for container in _list(_get(task, "Containers")):
        for net in _list(_get(container, "Networks")):
            if str(_get(net, "NetworkMode") or "").lower() == "bridge":
                return False
    return True


def task_interfaces(stats_by_id: Mapping[str, Any], shared: bool) -> dict[str, tuple[dict[str, float], int | None]]:
    """Network key -> (counters, read ns), one copy per interface when the namespace is shared
    (summing the copies would count the traffic once per container)."""
    out: dict[str, tuple[dict[str, float], int | None]] = {}
    for docker_id, stats in stats_by_id.items():
        read = parse_time_ns(_get(stats, "read"))
        for name, counters in interfaces(stats).items():
            key = name if shared else f"{docker_id}/{name}"
            seen = out.get(key)
            volume = counters.get("rx_bytes", 0.0) + counters.get("tx_bytes", 0.0)
            # the copies differ only by when they were read: keep the newest (largest)
            if seen is None or volume > seen[0].get("rx_bytes", 0.0) + seen[0].get("tx_bytes", 0.0):
                out[key] = (counters, read)
    return out


MAX_NETWORK_KEYS = 1_024  # interfaces `NetworkTotals` follows (a task has a few)
# polls a container's interfaces are remembered after it left `/task` (an hour at the default 10 s): one
# that comes back with the same DockerId (a poll that missed it) continues from where it was
DEPARTED_POLLS = 360

# a container name the sidecar follows: in `/task` now, or gone for at most DEPARTED_POLLS polls, and at
# most MAX_DEPARTED gone at once (the oldest departure forgotten first), by `Instances` and the health
# monitor alike: a task whose containers keep changing names stays bounded
MAX_DEPARTED = 32


class Choice(NamedTuple):
    """Which instance stands for a container this poll (`Instances.choose`)."""

    container: dict[str, Any] | None  # None: absent this poll (only instances it replaced are listed)
    others: list[dict[str, Any]]  # the other instances listed under its name (all of them when absent)


@dataclass
class _Standing:
    docker_id: str  # the instance that stood for the container last
    started: int | None  # its StartedAt (ns)
    poll: int  # the poll it last stood (`Instances.polls`)


def _recency(container: dict[str, Any]) -> tuple[int, str]:
    """Started last first (an unknown StartedAt as the earliest); on a tie the larger DockerId: never the
    listing order, which ECS does not keep from one answer to the next."""
    return parse_time_ns(container.get("StartedAt")) or -1, container["DockerId"]


def _stands(group: list[dict[str, Any]], last: _Standing | None) -> dict[str, Any] | None:
    """The rule of docs/health.md ("Series"): the instance that stood last while it is listed RUNNING;
    else the RUNNING one started last; else the one that stood last, listed stopped; else the one
    started last of those started after it (all of them when none stood yet); else none (absent)."""
    current = next((c for c in group if last is not None and c["DockerId"] == last.docker_id), None)
    running = [c for c in group if c.get("KnownStatus") == "RUNNING"]
    if current is not None and (current.get("KnownStatus") == "RUNNING" or not running):
        return current
    if running:
        return max(running, key=_recency)
    # an unknown StartedAt (either's) is not "after": the container stays absent (a false negative)
    newer = [c for c in group if last is None or (last.started is not None
                                                  and (parse_time_ns(c.get("StartedAt")) or -1) > last.started)]
    return max(newer, key=_recency) if newer else None


@dataclass
class Instances:
    """Which instance stands for each container name, poll after poll (`_stands`). The source keeps one
    and passes its choice to derive and to the health monitor, computed once a poll. Bounded as the
    health monitor's containers are: a name not seen for DEPARTED_POLLS polls, or the oldest departed
    beyond MAX_DEPARTED, is forgotten."""

    names: dict[str, _Standing] = field(default_factory=dict)
    polls: int = 0

    def choose(self, containers: Iterable[Any]) -> dict[str, Choice]:
        """`containers`: a `/task` Containers list made distinct by DockerId (`distinct_containers`)."""
        self.polls += 1
        out: dict[str, Choice] = {}
        for name, group in instances_by_name(containers).items():
            pick = _stands(group, self.names.get(name))
            out[name] = Choice(pick, [c for c in group if c is not pick])
            if pick is not None:
                self.names[name] = _Standing(pick["DockerId"], parse_time_ns(pick.get("StartedAt")), self.polls)
        departed = sorted((s.poll, name) for name, s in self.names.items() if s.poll != self.polls)
        for i, (stood, name) in enumerate(departed):
            if self.polls - stood > DEPARTED_POLLS or i < len(departed) - MAX_DEPARTED:
                del self.names[name]
        return out


def choose_once(containers: Iterable[Any]) -> dict[str, Choice]:
    """The choice of a caller that keeps no `Instances` (one poll, or a single instance a name: the local
    source): the RUNNING instance started last, else the one started last."""
    return Instances().choose(containers)


@dataclass
class NetworkTotals:
    """The task's network counters across polls: each interface's growth since the poll before, added
    up, so that they never go down. Read as they are, they did: the sum over the containers' own
    interfaces (bridge mode) lost a container's traffic when it stopped, and the newest of the copies of
    a shared interface (awsvpc) went back to an older copy when the container read last stopped;
    Prometheus reads either as a counter reset, that is all the task's traffic at once.

    An interface not seen before adds all its counters (at the first poll: the totals so far). A shared
    one that went down adds nothing (an older copy of the same interface). A container's own interface
    (bridge) is ordered by its sample's `read`: a sample not newer than the one counted last is the same
    or an older one served again and adds nothing; counters that went down in a newer sample started
    again (the container restarted in place) and add their new value. Without a `read` to tell, a
    counter that went down adds nothing until it passes where it was (too little, never too much)."""

    # key -> counters and `read` last counted
    last: dict[str, tuple[dict[str, float], int | None]] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)  # DockerId -> the poll it was last in `/task`
    polls: int = 0
    totals: dict[str, float] = field(default_factory=dict)

    def update(self, nets: Mapping[str, tuple[dict[str, float], int | None]], shared: bool,
               containers: Iterable[str]) -> dict[str, float]:
        """`nets`: `task_interfaces` of this poll; `containers`: the task's DockerIds now (the interfaces
        of a container gone from the task for DEPARTED_POLLS polls are forgotten; a container without
        stats in one poll keeps its own)."""
        self.polls += 1
        for docker_id in containers:
            self.present[docker_id] = self.polls
        for key, (counters, read) in nets.items():
            old, old_read = self.last.get(key, ({}, None))
            restarted = False
            if not shared and read is not None and old_read is not None:
                if read <= old_read:
                    continue
                restarted = any(value < old.get(counter, 0.0) for counter, value in counters.items())
            kept = dict(old)
            for counter, value in counters.items():
                before = old.get(counter)
                if before is None or restarted:
                    growth = value
                else:
                    growth = max(0.0, value - before)
                self.totals[counter] = self.totals.get(counter, 0.0) + growth
                kept[counter] = value if before is None or restarted else max(value, before)
            self.last[key] = (kept, read if read is not None else old_read)
        self.present = {k: p for k, p in self.present.items() if self.polls - p <= DEPARTED_POLLS}
        while len(self.present) > MAX_NETWORK_KEYS:  # containers that keep being replaced: bounded
            del self.present[next(iter(self.present))]
        if not shared:
            self.last = {k: v for k, v in self.last.items() if k.split("/", 1)[0] in self.present}
        while len(self.last) > MAX_NETWORK_KEYS:  # interfaces that keep changing names: bounded
            del self.last[next(iter(self.last))]
        return dict(self.totals)


@dataclass
class CounterFloors:
    """The last value exported of each cumulative counter a container's stats pass through as they are
    (block I/O, CPU throttling), per instance: the guard of `NetworkTotals` for counters that are not
    summed. A counter below the value exported last for the same DockerId and the same `StartedAt` (no
    restart: a sample served out of order, garbage) is not exported lower: a gap for that poll
    (`check` False, counted as `bad_stats` by the caller), and the value before stays the floor, so
    101, 102, 50, 104 is exported 101, 102, -, 104. A new `StartedAt` (a restart in place) or DockerId
    starts afresh: its counters start again from 0. Containers gone from `/task` for DEPARTED_POLLS
    polls are forgotten, and at most MAX_NETWORK_KEYS instances are followed."""

    # (DockerId, counter) -> (StartedAt ns of the instance, value exported last)
    last: dict[tuple[str, str], tuple[int | None, float]] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)  # DockerId -> the poll it was last in `/task`
    polls: int = 0

    def begin(self, containers: Iterable[str]) -> None:
        """A new poll whose `/task` lists these DockerIds."""
        self.polls += 1
        for docker_id in containers:
            self.present[docker_id] = self.polls
        self.present = {k: p for k, p in self.present.items() if self.polls - p <= DEPARTED_POLLS}
        while len(self.present) > MAX_NETWORK_KEYS:  # containers that keep being replaced: bounded
            del self.present[next(iter(self.present))]
        if any(docker_id not in self.present for docker_id, _ in self.last):
            self.last = {k: v for k, v in self.last.items() if k[0] in self.present}

    def check(self, docker_id: str, started: int | None, counter: str, value: float) -> bool:
        """Whether `value` of `counter` may be exported for this instance (it becomes the floor)."""
        key = (docker_id, counter)
        before = self.last.get(key)
        if before is not None and before[0] == started and value < before[1]:
            return False
        self.last[key] = (started, value)
        return True


def network_rates(stats_by_id: Mapping[str, Any], previous: Mapping[str, Any], shared: bool) -> dict[str, float]:
    """Task receive/transmit bytes per second: the agent's `network_rate_stats` when present (one
    copy when shared), else the counter deltas between two polls over the `read` difference."""
    given = [_map(_get(s, "network_rate_stats")) for s in stats_by_id.values()]
    rx = [v for g in given if (v := _num(g.get("rx_bytes_per_sec"))) is not None]
    tx = [v for g in given if (v := _num(g.get("tx_bytes_per_sec"))) is not None]
    if rx or tx:
        pick = max if shared else sum
        return {k: float(pick(v)) for k, v in (("receive", rx), ("transmit", tx)) if v}
    now = task_interfaces(stats_by_id, shared)
    before = task_interfaces(previous, shared)
    rates: dict[str, float] = {}
    for key, (counters, read) in now.items():
        old = before.get(key)
        if old is None or read is None or old[1] is None or read <= old[1]:
            continue
        dt = (read - old[1]) / 1e9
        for counter, direction in (("rx_bytes", "receive"), ("tx_bytes", "transmit")):
            delta = counters.get(counter, 0.0) - old[0].get(counter, 0.0)
            if delta >= 0:
                rates[direction] = rates.get(direction, 0.0) + delta / dt
    return rates


MAX_READ_CHARS = 64  # an RFC 3339 time with nanoseconds and an offset takes 35


def rate_basis(stats: Any) -> dict[str, Any] | None:
    """What a later poll takes its rates from in this sample, as `derive`'s `previous`: the `read`, the
    CPU counter and the interfaces' counters (`cpu_vcpus`, `network_rates` read nothing else of it), a
    few kilobytes whatever else the entry carried: kept whole, junk beside them stayed for two polls.
    None without a `read` (a string of at most MAX_READ_CHARS, or a number) to tell samples apart."""
    read = _get(stats, "read")
    if not read or not isinstance(read, (str, int, float)) or (isinstance(read, str) and len(read) > MAX_READ_CHARS):
        return None
    out: dict[str, Any] = {"read": read}
    total = _num(_get(stats, "cpu_stats", "cpu_usage", "total_usage"))
    if total is not None:
        out["cpu_stats"] = {"cpu_usage": {"total_usage": total}}
    nets = interfaces(stats)
    if nets:
        out["networks"] = nets
    return out


# --- unusable stats -----------------------------------------------------------------------------


def _given(value: Any) -> bool:
    """Whether a stats field carries something: not absent, null, empty, nor Windows' "None"."""
    return value is not None and not (isinstance(value, (dict, list, str)) and value in ({}, [], "None"))


def _memory_numbers(memory: Any) -> bool:
    mstats = _map(_get(memory, "stats"))
    return (_num(_get(memory, "usage")) is not None or working_set_bytes(memory) is not None
            or any(_num(mstats.get(key)) is not None for key in ("rss", "cache", "anon", "file")))


def _blkio_numbers(blkio: Any) -> bool:
    if not isinstance(blkio, dict):
        return False
    lists = [blkio.get(key) for key in ("io_service_bytes_recursive", "io_serviced_recursive")]
    return all(blkio_read_write(entries) is not None for entries in lists if _given(entries))


def unusable_parts(stats: Mapping[str, Any]) -> list[str]:
    """The parts of a container's stats entry that carry something (`_given`) but give no number of
    their kind: the rule of `bad_stats`. `cpu_stats` without a CPU counter or CPU count; `memory_stats`
    without usage, a working set or any of rss, cache, anon, file; `blkio_stats` that is no object, or
    whose bytes or operations list gives no total (`blkio_read_write` None); `storage_stats` without
    any of its four counters; `pids_stats` without `current`; `networks` (or `network`) without one
    usable interface. Their series are a gap then, like those of a part that is absent."""
    cpu, storage = stats.get("cpu_stats"), _map(stats.get("storage_stats"))
    network = bool(interfaces(stats))
    gives = {
        "cpu_stats": _num(_get(cpu, "cpu_usage", "total_usage")) is not None or _num(_get(cpu, "online_cpus")) is not None,
        "memory_stats": _memory_numbers(stats.get("memory_stats")),
        "blkio_stats": _blkio_numbers(stats.get("blkio_stats")),
        "storage_stats": any(_num(storage.get(key)) is not None for key in (
            "read_size_bytes", "write_size_bytes", "read_count_normalized", "write_count_normalized")),
        "pids_stats": _num(_get(stats, "pids_stats", "current")) is not None,
        "networks": network,
        "network": network,  # old agents' spelling
    }
    return [key for key, usable in gives.items() if not usable and _given(stats.get(key))]


# --- per container and task ---------------------------------------------------------------------


@dataclass
class _Totals:
    """What the task-level series sum over the task's containers (the pause container included:
    its memory and network belong to the task)."""

    vcpus: list[float] = field(default_factory=list)
    working_set: list[float] = field(default_factory=list)
    online_cpus: list[float] = field(default_factory=list)
    cpu_bounds: list[float] = field(default_factory=list)  # `cpu_bound_vcpus` of each container that has one
    stats: dict[str, Any] = field(default_factory=dict)  # DockerId -> stats, for the network
    stale: set[str] = field(default_factory=set)  # those of them whose sample stopped changing
    # a running container without a CPU or a working set this poll (no stats yet, a first sample, a
    # counter that went back): the task's total is a gap then, never the sum of the others
    cpu_unknown: bool = False
    memory_unknown: bool = False
    # DockerIds whose entry held a reading that cannot be (memory above every limit, a counter that went
    # back): `bad_stats`, once an entry and poll
    bad: set[str] = field(default_factory=set)


def in_use(container: Mapping[str, Any]) -> bool:
    """A container whose stats are usage now: RUNNING, or the pause container while it holds the task's
    network (its status is RESOURCES_PROVISIONED then, never RUNNING). The stats entry of a container
    that stopped can keep its last sample for good: that is no usage."""
    status = container.get("KnownStatus")
    return status == "RUNNING" or (status == "RESOURCES_PROVISIONED" and not is_workload(container))


def _container_samples(container: Mapping[str, Any], stats: Any, previous: Any, task: Any,
                       totals: _Totals, stale: bool = False, counters: CounterFloors | None = None) -> list[Sample]:
    tags: Tags = container_tags(container)
    docker_id = str(container.get("DockerId"))
    out: list[Sample] = []
    workload = is_workload(container)

    def emit(name: str, value: float | None, kind: Kind = Kind.GAUGE) -> None:
        # finite check: absurd inputs (a 1e308 MiB limit) must not export `+Inf`
        if value is not None and workload and math.isfinite(value):
            out.append(Sample(f"ecs.container.{name}", float(value), kind, tags))

    running = container.get("KnownStatus") == "RUNNING"
    emit("running", 1.0 if running else 0.0)
    exit_code = _num(container.get("ExitCode"), signed=True)
    if not running:
        emit("exit_code", exit_code)
    emit("restart_count", _num(container.get("RestartCount")))  # only with a restart policy (`restarts_total`: always)
    health = str(_get(container, "Health", "status") or "").upper()
    if health in ("HEALTHY", "UNHEALTHY"):  # UNKNOWN: no health check yet, or none defined
        emit("healthy", 1.0 if health == "HEALTHY" else 0.0)
    if not isinstance(stats, dict) or not stats:
        totals.cpu_unknown |= running
        totals.memory_unknown |= running
        return out
    if not in_use(container):  # stopped, or not started yet: its state only
        return out

    read = parse_time_ns(stats.get("read"))
    started = parse_time_ns(container.get("StartedAt"))
    if running and read is not None and started is not None and read >= started:
        emit("uptime_seconds", (read - started) / 1e9)

    bound = cpu_bound_vcpus(stats, task)
    if bound is not None:
        totals.cpu_bounds.append(bound)
    # a sample that has not changed for a while: the rate it gives is from before, not now
    vcpus = None if stale else cpu_vcpus(stats, previous, bound)
    totals.cpu_unknown |= running and vcpus is None
    if vcpus is not None:
        totals.vcpus.append(vcpus)
        emit("cpu.usage_vcpus", vcpus)
        allocation = cpu_allocation_vcpus(container, task, stats)
        if allocation:
            emit("cpu.utilization_percent", vcpus / allocation * 100)
    online = _num(_get(stats, "cpu_stats", "online_cpus"))
    if online:
        totals.online_cpus.append(online)

    memory = _map(stats.get("memory_stats"))
    # a usage above every limit the container has (`memory_ceiling`) is garbage: none of its memory
    # readings is believed (the working set, the task's sum, the health monitor's peak are gaps)
    garbage = memory_is_garbage(memory, container, task)
    ceiling = memory_ceiling(container, task)
    if garbage:
        totals.bad.add(docker_id)
    else:
        emit("memory.usage_bytes", _num(memory.get("usage")))
    ws = None if garbage else working_set_bytes(memory)
    totals.memory_unknown |= running and ws is None
    if ws is not None:
        totals.working_set.append(ws)
        emit("memory.working_set_bytes", ws)
        limit = memory_limit_bytes(memory, container, task)
        emit("memory.limit_bytes", limit)
        if limit is not None:  # (finite and above 0: `plausible_limit`)
            emit("memory.utilization_percent", ws / limit * 100)
    mstats = _map(memory.get("stats"))
    for key in ("rss", "cache", "anon", "file"):
        value = None if garbage else _num(mstats.get(key))
        if value is not None and ceiling is not None and value > ceiling:
            totals.bad.add(docker_id)  # a part of the memory above every limit: that part is a gap
            value = None
        emit(f"memory.{key}_bytes", value)

    for name, value in io_totals(stats).items():
        # a cumulative counter below the one exported last for this instance (no restart): a gap, counted
        if counters is not None and not counters.check(docker_id, started, f"io.{name}", value):
            totals.bad.add(docker_id)
            continue
        emit(f"io.{name}", value, Kind.COUNTER)
    emit("pids", _num(_get(stats, "pids_stats", "current")))
    return out


def _task_samples(task: Any, totals: _Totals, previous: Mapping[str, Any], network: NetworkTotals) -> list[Sample]:
    out: list[Sample] = []

    def emit(name: str, value: float | None, kind: Kind = Kind.GAUGE) -> None:
        if value is not None and math.isfinite(value):
            out.append(Sample(f"ecs.task.{name}", float(value), kind))

    workloads = [c for c in _list(_get(task, "Containers")) if isinstance(c, dict) and is_workload(c)]
    running = [c for c in workloads if c.get("KnownStatus") == "RUNNING"]

    cpu_limit = _num(_get(task, "Limits", "CPU"))
    if not cpu_limit or cpu_limit <= 0:
        units = [_num(_get(c, "Limits", "CPU")) or 0.0 for c in running]
        if units and all(u > CPU_UNITS_UNSET for u in units):
            cpu_limit = sum(units) / CPU_UNITS_PER_VCPU
        else:  # EC2 without reservations: the host's CPUs bound the task
            cpu_limit = max(totals.online_cpus, default=None)
    usage = sum(totals.vcpus) if totals.vcpus and not totals.cpu_unknown else None
    # the containers share one host (on Fargate, one task size): their sum past its bound is impossible
    bound = max(totals.cpu_bounds, default=None)
    if usage is not None and bound is not None and usage > bound * CPU_SLACK:
        usage = None
    emit("cpu.usage_vcpus", usage)
    emit("cpu.limit_vcpus", cpu_limit)
    if usage is not None and cpu_limit:
        emit("cpu.utilization_percent", usage / cpu_limit * 100)

    # Without a task-level size (EC2) the task has no memory limit of its own: each container has
    # its own. The sum of what the containers were given is a reservation, not a limit (the working
    # set can pass it), so it gets its own name and no utilisation.
    ws = sum(totals.working_set) if totals.working_set and not totals.memory_unknown else None
    task_mib = _num(_get(task, "Limits", "Memory"))
    # a task size that cannot be one (+Inf bytes, a sentinel, below the task's working set) is no limit
    mem_limit = plausible_limit(task_mib * MIB, ws) if task_mib else None
    if not task_mib:
        mibs = [_num(_get(c, "Limits", "Memory")) or 0.0 for c in running]
        if mibs and all(m > 0 for m in mibs):
            emit("memory.reservation_bytes", sum(mibs) * MIB)
    emit("memory.working_set_bytes", ws)
    emit("memory.limit_bytes", mem_limit)
    if ws is not None and mem_limit is not None:
        emit("memory.utilization_percent", ws / mem_limit * 100)

    shared = shared_network(task)
    ids = [c["DockerId"] for c in _list(_get(task, "Containers")) if isinstance(_get(c, "DockerId"), str)]
    nets = task_interfaces(totals.stats, shared)
    counted = network.update(nets, shared, ids)
    # only the counters this poll read: with no interface read (the stats request failed, no container
    # has stats) the totals are a gap, as the containers' series are, never the last values again
    read_now = {counter for counters, _ in nets.values() for counter in counters}
    for counter, name in _NET_NAMES.items():
        if counter in counted and counter in read_now:
            emit(f"network.{name}", counted[counter], Kind.COUNTER)
    # a sample that stopped changing holds an old rate: when shared, the other copies tell the same
    # interfaces; a container's own (bridge) makes the task's rate a gap, never the sum of the others
    fresh = {k: v for k, v in totals.stats.items() if k not in totals.stale}
    if shared or len(fresh) == len(totals.stats):
        for direction, rate in network_rates(fresh, previous, shared).items():
            emit(f"network.{direction}_bytes_per_second", rate)

    for name, key in (("used_bytes", "Utilized"), ("reserved_bytes", "Reserved")):
        mib = _num(_get(task, "EphemeralStorageMetrics", key))
        emit(f"ephemeral_storage.{name}", mib * MIB if mib is not None else None)
    return out


def instances_by_name(containers: Iterable[Any]) -> dict[str, list[dict[str, Any]]]:
    """The workload entries (with a string DockerId) of a `/task` Containers list already made distinct
    by DockerId, grouped by their `container_name` label, in the order listed. After a container
    restarts under a new DockerId (essential=false), ECS lists the stopped instance beside the new one
    under the same name, and every series of both would carry the same labels: one of them stands for
    the container (`Instances`), the others show no series of their own (derive: a running one still
    counts toward the task totals; health: the exit of one that stood before is judged once)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for container in containers:
        if isinstance(container, dict) and isinstance(container.get("DockerId"), str) and is_workload(container):
            groups.setdefault(dict(container_tags(container))["container_name"], []).append(container)
    return groups


def derive(task: Any, stats: Any, previous: Mapping[str, Any] | None = None,
           network: NetworkTotals | None = None, stale: Collection[str] = (),
           standing: Mapping[str, Choice] | None = None, counters: CounterFloors | None = None) -> Derived:
    """All container and task samples of one poll.

    `task` is the `/task` JSON, `stats` the `/task/stats` JSON (DockerId -> Docker stats),
    `previous` our own earlier stats per DockerId (for rates over the poll interval), `network`
    the task's network counters so far (the same object poll after poll; without it, they start here),
    `stale` the DockerIds whose sample has not changed for several polls (no CPU or network rate
    from them), and `standing` which instance stands for each container name this poll (the source's
    `Instances`, the same choice the health monitor reads; without it, `choose_once`), and `counters`
    the floors of the containers' cumulative counters (the same object poll after poll: a counter
    below its floor without a restart is a gap and `bad_stats`; without it, not checked).
    Containers not in `/task` are ignored, a DockerId listed again counts once (its first entry); an
    entry that is not an object, or one read whose parts give no number (`unusable_parts`), is
    `bad_stats`; the
    pause container only counts toward the task totals; a container not in use (`in_use`: stopped, not
    started) has its state series only, and counts toward nothing; of several instances listed under
    one container name only the one standing for it has series, and none when none stands this poll.
    """
    previous = previous or {}
    errors: list[str] = []
    if not isinstance(task, dict):
        return Derived([], ["bad_shape"])
    if not isinstance(stats, dict):
        errors.append("bad_shape")
        stats = {}
    # a DockerId listed twice (under one name or two) has one set of stats: count it once
    containers, repeats = distinct_containers(task.get("Containers"))
    if repeats:
        errors += ["duplicate_container"] * repeats
        task = dict(task, Containers=containers)
    # the other instances under a container's name: no series (they would share the container's labels);
    # all of them when none stands for the container this poll (`Instances`)
    standing = standing if standing is not None else choose_once(containers)
    replaced = {c["DockerId"] for choice in standing.values() for c in choice.others}
    samples: list[Sample] = []
    totals = _Totals()
    if counters is not None:
        counters.begin(c["DockerId"] for c in containers if isinstance(_get(c, "DockerId"), str))
    for container in containers:
        if not isinstance(container, dict) or not isinstance(container.get("DockerId"), str):
            errors.append("bad_container")
            continue
        docker_id = container["DockerId"]
        entry = stats.get(docker_id)
        if entry is not None and not isinstance(entry, dict):
            errors.append("bad_stats")
            entry = None
        elif not entry and container.get("KnownStatus") == "RUNNING" and is_workload(container):
            errors.append("no_stats")  # not started long enough, or a failed lookup
        elif entry and in_use(container) and unusable_parts(entry):
            errors.append("bad_stats")  # once an entry, whatever the number of its unusable parts
            totals.bad.add(docker_id)
        try:
            counted_bad = docker_id in totals.bad
            shown = _container_samples(container, entry, previous.get(docker_id), task, totals,
                                       docker_id in stale, counters)
            if docker_id in totals.bad and not counted_bad:
                errors.append("bad_stats")  # a reading that cannot be: once an entry and poll too
            if docker_id not in replaced:
                samples += shown
        except Exception:  # a shape nobody has seen yet: lose this container, not the task
            errors.append("bad_container")
            continue
        if entry and in_use(container):
            totals.stats[docker_id] = entry
            if docker_id in stale:
                totals.stale.add(docker_id)
    try:
        samples += _task_samples(task, totals, {k: v for k, v in previous.items() if k in totals.stats},
                                 network if network is not None else NetworkTotals())
    except Exception:
        errors.append("bad_task")
    return Derived(samples, errors)
