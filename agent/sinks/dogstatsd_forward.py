"""Forward everything to an existing DogStatsD agent (`TASKLENS_DOGSTATSD_FORWARD=host:8125`) instead of the API.

For teams that already run the Datadog agent as a daemon: the sidecar still does the ECS, queue and
StatsD work and adds the task's tags, and the agent does the shipping. Samples go back out as DogStatsD
lines with the enriched tags, packed into UDP datagrams of at most 1432 bytes (what fits an Ethernet
MTU without fragmentation, the DogStatsD clients' default).

- GAUGE -> `|g`; COUNT (already summed, sample rate applied) -> `|c`; COUNTER (cumulative) -> the delta
  since the previous sighting as `|c` (first sighting and resets skipped); HISTOGRAM -> `|h` (`|ms` for
  timers) and DISTRIBUTION -> `|d`, the raw values packed (`name:1:2:3|h`) with `@rate` = 1/weight, so
  the agent computes the aggregates itself. The agent weighs a value `int(1 / rate)` times: weights go
  whole (`whole_weights`, `agent_rate`), so that its count is the interval's. Past `MAX_VALUES` values
  in an interval, that many values at evenly spaced ranks go instead, with the rates that make their
  count right (as a client that samples would send them). Timestamped samples keep `|T<ts>`.
- Events -> `_e{..}`, service checks -> `_sc|..`. No field may hold what the agent splits on there
  (it reads every `|` piece of a line as a field, a later `#` replacing the tags): in names, hosts and
  tags those characters become `_`, in a service check message `|` becomes `¦` (docs/datadog.md).
- A line longer than a datagram of MAX_DATAGRAM goes alone in one of its own, as the clients send
  it, up to MAX_LINE (the agent's read buffer); a longer one is dropped and counted
  (`reason="too_long"`), never cut.
- Sending never blocks: a full socket buffer or an agent that is not listening drops the datagram and
  counts it; pending lines are bounded (`max_pending`, oldest dropped first).

Loops. Forwarding to the sidecar's own StatsD listener would send every line back in, forever. The
configuration refuses a target that resolves to the listener (`loop_reason`, used by `tasklens check`
and `run`). A loop it cannot see (a NAT or port mapping back to this host, a relay, a name that later
resolves here) is caught at run time by detecting our own datagrams: while the StatsD listener is on,
each interval also sends the service check `tasklens.dogstatsd_forward.loop_check` (status OK) whose
message is a random token of this process. The token can only come back in a StatsD batch through a
loop; when it does, forwarding pauses (lines counted as `points_dropped{reason="loop"}`, an error in
`/status` and the log) and only the probe keeps going, one line per interval, so that the loop carries
one line instead of everything. Without an echo for `LOOP_HOLD_INTERVALS` intervals forwarding
resumes. A rate cap was the alternative; it would bound the loop but keep it running, and cap real
traffic with it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import secrets
import socket
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from agent.config import Config
from agent.hub import Hub
from agent.logs import RateLimitedLog
from agent.model import Batch, Event, Kind, Points, Sample, ServiceCheck, Tags, format_tag
from agent.sinks.datadog import exporter_total
from agent.sinks.datadog_series import metric_name
from agent.sinks.deltas import CounterDeltas

log = logging.getLogger("tasklens.dogstatsd_forward")

EXPORTER = "dogstatsd_forward"
MAX_DATAGRAM = 1432
MAX_LINE = 8192  # the agent's `dogstatsd_buffer_size` (its default): what it reads of a datagram
MAX_VALUES = 10_000  # histogram values forwarded per series and interval; more are sent as a spread
LOOP_CHECK = "tasklens.dogstatsd_forward.loop_check"
LOOP_HOLD_INTERVALS = 5  # intervals without an echo before forwarding resumes (an echo takes 1-2)
LOOP_HOLD_MIN = 30.0  # seconds, at least


# --- loops: is the target this sidecar's own StatsD listener? -------------------------------------

def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _resolve(host: str, port: int) -> list[str]:
    return list(dict.fromkeys(str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)))


def is_own_address(text: str) -> bool:
    """Loopback, unspecified (sending to it reaches this host), or an address a socket here can bind."""
    addr = _ip(text)
    if addr.is_loopback or addr.is_unspecified:
        return True
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(addr), 0))
    except OSError:
        return False
    return True


def loop_reason(target: tuple[str, int], listen: tuple[str, int] | None) -> str | None:
    """Why datagrams sent to `target` would reach the StatsD listener on `listen` (the same port on an
    address it listens on), or None. Raises OSError when a name does not resolve."""
    if listen is None or listen[1] != target[1] or listen[1] == 0:
        return None
    listen_host = listen[0]
    wildcard = listen_host in ("", "0.0.0.0", "::")
    listening: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    if not wildcard:
        listening = {_ip(a) for a in _resolve(listen_host, listen[1])}
        if listen_host in ("127.0.0.1", "localhost"):
            listening.add(ipaddress.IPv6Address("::1"))  # the listener's companion (agent/statsd/listener.py)
    for text in _resolve(*target):
        addr = _ip(text)
        if (is_own_address(text) if wildcard
                else addr in listening or (addr.is_unspecified and any(a.is_loopback for a in listening))):
            where = "every address of this host" if wildcard else listen_host
            return (f"{text} port {target[1]} is this sidecar's own StatsD listener ({where} port {listen[1]}): "
                    "every forwarded line would come back in, forever")
    return None


def number(value: float) -> str:
    """Shortest exact text: `3` not `3.0`, `0.1`, `1e-05`."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


# What the DogStatsD protocol splits on, per field (docs/datadog.md, "Forwarding"): a datagram on
# newlines (a trailing `\r` dropped), a line on every `|` (the Datadog agent reads each piece as a
# field: a later `#..` replaces the tags, `h:`/`d:` set the host and time), tags on `,`, a tag on its
# first `:`. A forwarded field never contains the separators of its position.
_SEPARATORS = {"|": "_", ",": "_", "#": "_", "\n": "_", "\r": "_"}
_FIELD = str.maketrans(_SEPARATORS)  # names, hostnames, keys, tag values
_TAG_KEY = str.maketrans({**_SEPARATORS, ":": "_"})  # a `:` in a key would move the key/value split
_MESSAGE = str.maketrans({"|": "\u00a6", "\r": None, "\n": "\\n"})  # `|` -> `¦`, newline -> `\n`


def _clean(text: str) -> str:
    return text.translate(_FIELD)


def _tag(key: str, value: str) -> str:
    return format_tag(key.translate(_TAG_KEY), value.translate(_FIELD))


def tag_suffix(tags: Tags) -> str:
    items = [t for t in (_tag(k, v) for k, v in tags) if t]  # an empty item would be an empty tag
    return "|#" + ",".join(items) if items else ""


def _escape(text: str) -> str:
    """Event title and text: sent with their byte lengths, so `|` is safe; only newlines are escaped."""
    return text.replace("\r", "").replace("\n", "\\n")


def _message(text: str) -> str:
    """A service check message is one `|` field like the others for the Datadog agent."""
    return text.translate(_MESSAGE)


def value_lines(name: str, values: Iterable[float], kind: str, tail: str, limit: int) -> Iterator[str]:
    """`name:v1:v2...|kind<tail>`, as many values per line as fit in `limit` bytes."""
    head = f"{name}:"
    line, size = head, len(head.encode()) + len(f"|{kind}{tail}".encode())
    for value in values:
        text = number(float(value))
        extra = len(text) + (0 if line == head else 1)
        if line != head and size + extra > limit:
            yield f"{line}|{kind}{tail}"
            line, size = head, len(head.encode()) + len(f"|{kind}{tail}".encode())
            extra = len(text)
        line = line + text if line == head else f"{line}:{text}"
        size += extra
    if line != head:
        yield f"{line}|{kind}{tail}"


def whole_weights(values: Iterable[float], weight: float) -> Iterator[tuple[float, int]]:
    """(value, whole weight) for values of one weight: the agent weighs a value `int(1 / rate)` times
    (datadog-agent `pkg/metrics`), so a weight that is not whole (`@0.3`, a spread of a flood, a merge
    of such values) goes as whole weights of `floor` and `ceil` spread among the values, which add up to
    the values' count rounded."""
    if weight.is_integer():
        for v in values:
            yield v, int(weight)
        return
    before = 0
    for i, v in enumerate(values, 1):
        upto = math.floor(i * weight + 0.5)
        yield v, upto - before
        before = upto


def agent_rate(weight: int) -> str:
    """The `@rate` that the agent reads back as this weight: `int(1 / rate) == weight` (`1 / (1 / 93)`
    is 92.99999999999999, which the agent would count as 92)."""
    rate = 1.0 / weight
    while int(1.0 / rate) < weight:
        rate = math.nextafter(rate, 0.0)
    return number(rate)


def sample_lines(s: Sample, deltas: CounterDeltas, now: float, limit: int = MAX_DATAGRAM) -> list[str]:
    name = metric_name(s.name)
    if not name:
        return []
    tags = tag_suffix(s.tags)
    stamp = f"|T{int(s.timestamp)}" if s.timestamp is not None else ""
    value = s.value
    if isinstance(value, Points):
        kind = "d" if s.kind is Kind.DISTRIBUTION else ("ms" if value.milliseconds else "h")
        groups: dict[float, list[float]] = {}
        if value.valid and len(value.values) > MAX_VALUES:  # a flood: its shape, as a sampling client sends it
            groups[value.count / MAX_VALUES] = value.spread(MAX_VALUES)
        else:
            for v, w in zip(value.values, value.weights):
                if math.isfinite(v) and math.isfinite(w) and w > 0:  # `nan` would make the agent reject the line
                    groups.setdefault(w, []).append(v)
        by_weight: dict[int, list[float]] = {}
        for weight, values in groups.items():
            for v, w in whole_weights(values, weight):
                if w > 0:  # a weight below 1, rounded away: its count went with its neighbours'
                    by_weight.setdefault(w, []).append(v)
        out: list[str] = []
        for weight, values in by_weight.items():
            rate = f"|@{agent_rate(weight)}" if weight > 1 else ""
            out.extend(value_lines(name, values, kind, rate + tags, limit))
        return out
    value = float(value)
    if not math.isfinite(value):
        return []
    if s.kind is Kind.COUNTER:
        delta = deltas.update((name, s.tags), value, now)
        return [] if delta is None else [f"{name}:{number(delta)}|c{tags}"]
    kind = "c" if s.kind is Kind.COUNT else "g"
    return [f"{name}:{number(value)}|{kind}{tags}{stamp}"]


def event_line(e: Event) -> str:
    title, text = _escape(e.title), _escape(e.text)
    line = f"_e{{{len(title.encode())},{len(text.encode())}}}:{title}|{text}"
    for prefix, value in (("d", None if e.timestamp is None else int(e.timestamp)), ("h", e.hostname),
                          ("k", e.aggregation_key), ("p", e.priority), ("s", e.source_type), ("t", e.alert_type)):
        if value:
            line += f"|{prefix}:{_clean(str(value))}"
    return line + tag_suffix(e.tags)


def check_line(c: ServiceCheck) -> str:
    line = f"_sc|{_clean(c.name)}|{c.status}"
    if c.timestamp is not None:
        line += f"|d:{int(c.timestamp)}"
    if c.hostname:
        line += f"|h:{_clean(c.hostname)}"
    line += tag_suffix(c.tags)
    if c.message:
        line += "|m:" + _message(c.message)  # last, as the clients send it
    return line


def pack(lines: Iterable[str], limit: int = MAX_DATAGRAM) -> tuple[list[bytes], int]:
    """Lines joined by `\\n` into datagrams of at most `limit` bytes, in order, a longer line alone in
    its own datagram (an event's long text, a check's message) up to MAX_LINE; also the count of the
    lines longer than that."""
    datagrams: list[bytes] = []
    current: list[bytes] = []
    size = 0
    too_long = 0
    for line in lines:
        data = line.encode()
        if len(data) > max(limit, MAX_LINE):
            too_long += 1
            continue
        if current and (len(data) > limit or size + 1 + len(data) > limit):
            datagrams.append(b"\n".join(current))
            current, size = [], 0
        size += len(data) + (1 if current else 0)
        current.append(data)
    if current:
        datagrams.append(b"\n".join(current))
    return datagrams, too_long


class DogStatsdForwarder:
    name = "dogstatsd_forward"

    def __init__(self, config: Config, hub: Hub, *, max_pending: int = 200_000, limit: int = MAX_DATAGRAM) -> None:
        assert config.dogstatsd_forward is not None
        self.address = config.dogstatsd_forward
        self.hub = hub
        self.metrics = hub.metrics
        self.interval = config.flush_interval
        self.max_pending = max_pending
        self.limit = limit
        self._pending: deque[str] = deque()
        self._deltas = CounterDeltas()
        self._wake = asyncio.Event()
        self._sock: socket.socket | None = None
        self._log = RateLimitedLog(log, interval=60.0)
        self.last_error = ""
        # the loop guard (module docstring): only a sidecar with a StatsD listener can be looped into
        self._probe = config.statsd_enabled
        self._token = secrets.token_hex(8)
        self._loop_hold = max(LOOP_HOLD_MIN, LOOP_HOLD_INTERVALS * self.interval)
        self._loop_until = 0.0  # monotonic time until which forwarding is paused

    def accept(self, batch: Batch) -> None:
        if self._probe and any(c.name == LOOP_CHECK and self._token in (c.message or "") for c in batch.service_checks):
            self._loop_detected()
        if self.looping:
            self._count("points_dropped", len(batch.samples) + len(batch.events) + len(batch.service_checks), "loop")
            return
        self._queue(self._lines(batch.samples), batch.events, batch.service_checks)

    @property
    def looping(self) -> bool:
        return time.monotonic() < self._loop_until

    def _loop_detected(self) -> None:
        if not self.looping:
            self.metrics.inc("tasklens.exporter.loops_detected", exporter=EXPORTER)
            self._count("points_dropped", len(self._pending), "loop")  # what is queued would go round too
            self._pending.clear()
        self._loop_until = time.monotonic() + self._loop_hold
        host, port = self.address
        self.last_error = (f"loop: lines sent to {host}:{port} come back to this sidecar's StatsD listener; "
                           f"forwarding paused (TASKLENS_DOGSTATSD_FORWARD must name another DogStatsD agent)")
        self._log.error("loop", "dogstatsd forward: %s", self.last_error)

    def _probe_line(self) -> str:
        return check_line(ServiceCheck(LOOP_CHECK, 0, self.hub.identity.tags,
                                       message=f"tasklens loop probe {self._token}"))

    def _lines(self, samples: Iterable[Sample]) -> Iterator[str]:
        now = time.time()
        for s in samples:
            try:
                lines = sample_lines(s, self._deltas, now, self.limit)
            except (TypeError, ValueError, ZeroDivisionError):  # one bad sample never costs the batch
                self._count("points_dropped", 1, "invalid")
                continue
            yield from lines

    def _queue(self, lines: Iterable[str], events: Iterable[Event] = (), checks: Iterable[ServiceCheck] = ()) -> None:
        pending = self._pending
        pending.extend(lines)
        pending.extend(event_line(e) for e in events)
        pending.extend(check_line(c) for c in checks)
        over = len(pending) - self.max_pending
        if over > 0:
            for _ in range(over):
                pending.popleft()
            self._count("points_dropped", over, "buffer_full")
        self._wake.set()

    def _count(self, what: str, amount: float, reason: str | None = None) -> None:
        labels = {"exporter": EXPORTER} if reason is None else {"exporter": EXPORTER, "reason": reason}
        self.metrics.inc(f"tasklens.exporter.{what}", amount, **labels)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_pull = loop.time() + self.interval
        try:
            while True:
                self._wake.clear()
                if not stop.is_set():
                    timeout = max(0.0, next_pull - loop.time())
                    waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())}
                    try:
                        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                    finally:  # also when cancelled at the shutdown deadline: no pending waiter left behind
                        for w in waits:
                            w.cancel()
                if stop.is_set() or loop.time() >= next_pull:
                    # the task info series and the self-metrics, once per interval (and once more at exit)
                    next_pull = max(next_pull + self.interval, loop.time())
                    if self.looping:
                        self._count("points_dropped", len(self.hub.pull()), "loop")
                    else:
                        self._queue(self._lines(self.hub.pull()))
                    if self._probe:
                        self._pending.append(self._probe_line())
                        self._wake.set()
                await self._send_pending()
                if stop.is_set():
                    return
        finally:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    async def _connect(self) -> socket.socket | None:
        host, port = self.address
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            family, kind, proto, _, addr = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            sock.connect(addr)
        except OSError as exc:
            self.last_error = f"cannot reach {host}:{port}: {exc}"
            self._log.warning("connect", "dogstatsd forward: %s", self.last_error)
            return None
        return sock

    async def _send_pending(self) -> None:
        if not self._pending:
            return
        if self._sock is None:
            self._sock = await self._connect()
        lines = list(self._pending)
        self._pending.clear()
        datagrams, too_long = pack(lines, self.limit)
        if too_long:
            self._count("points_dropped", too_long, "too_long")
        sent_lines = 0
        for datagram in datagrams:
            n = datagram.count(b"\n") + 1
            if self._sock is None:
                self._count("points_dropped", n, "unreachable")
                continue
            try:
                self._sock.send(datagram)
            except BlockingIOError:
                self._count("points_dropped", n, "socket_full")
                continue
            except OSError as exc:  # ECONNREFUSED from an earlier datagram: the agent is not listening
                self._count("points_dropped", n, "refused" if isinstance(exc, ConnectionRefusedError) else "error")
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._log.warning("send", "dogstatsd forward to %s:%d: %s", *self.address, self.last_error)
                continue
            sent_lines += n
            self.metrics.inc("tasklens.exporter.datagrams_sent", exporter=EXPORTER)
        if sent_lines:
            self._count("points_sent", sent_lines)
        self.metrics.set("tasklens.exporter.buffer_points", len(self._pending), exporter=EXPORTER)

    def status(self) -> dict[str, Any]:
        m, labels = self.metrics, {"exporter": EXPORTER}
        return {
            "address": f"{self.address[0]}:{self.address[1]}",
            "pending_lines": len(self._pending),
            "lines_sent": m.get("tasklens.exporter.points_sent", **labels),
            "datagrams_sent": m.get("tasklens.exporter.datagrams_sent", **labels),
            "lines_dropped": exporter_total(m, "tasklens.exporter.points_dropped", EXPORTER),
            "loop_detected": self.looping,
            "last_error": self.last_error,
        }
