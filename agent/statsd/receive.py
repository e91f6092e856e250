"""The receive side of the StatsD aggregator: what runs on the receive thread, line by line.

`Aggregator.ingest(datagram)` parses and accumulates into the open `Interval`; `swap()` hands the
finished interval over to the export side (`flush.Flusher`, on the event loop's worker thread) in a
few ms (plus the objects of the contexts the C loop made in it), and applies the expiries that side
asked for. Nothing here waits on the export side.

Speed comes from doing per line only what changes per line: a line `name:value|tail` is cut in three,
`(name, tail)` is looked up in a cache of parsed heads (type, rate, tags, container, the context), and
only the value is converted. Everything else (decoding, tags, mapping rules, the context cap) happens
once per distinct head, in `parser.parse_head`. That per-line loop runs in C (`_fast.c`, built with the
package): it handles every line whose head is known and whose value is a plain number, in order, and
leaves the others to the Python slow path; where the extension is missing, `_each` does the same in
Python, about six times slower.

Semantics (see docs/statsd.md): counters sum `value / rate`; gauges keep the last value (`+5`/`-5` set
the gauge unless Etsy-style deltas are on); sets count distinct members; histograms, timers and
distributions keep every value with weight `1 / rate`. Lines with `|T<ts>` are not aggregated.
"""

from __future__ import annotations

import math
import time
from itertools import islice
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.memory import BURST, release_freed_memory
from agent.model import Event, ServiceCheck, Tags, merge_tags
from agent.statsd import mapping, parser
from agent.statsd.interval import (CONTEXT_COST, COUNTER, DROPPED, ERROR, GAUGE, GAUGE_DELTA, HISTOGRAM, PAIR_COST,
                                   SET, SLOT_CODES, TAG_REF_COST, Context, Interval, Limits, Slot, TagPool,
                                   item_bytes, utf8_len)
from agent.statsd.parser import (CHECK_PREFIX, EVENT_PREFIX, MAX_DATAGRAM, ParseError, finite,
                                 parse_event, parse_head, parse_service_check, parse_values)

try:
    from agent.statsd import _fast
except ImportError:  # built without a C compiler: `Aggregator._each` does the same in Python
    _fast = None
if _fast is not None and any(getattr(_fast, n, None) != code for n, code in SLOT_CODES.items()):
    raise ImportError("agent/statsd/_fast.c disagrees with interval.py on the slot codes: rebuild it "
                      "(`pip install -e .`)")
if _fast is not None and any(getattr(_fast, n, None) != value for n, value in parser.LIMITS.items()):
    raise ImportError("agent/statsd/_fast.c disagrees with parser.py on the line limits: rebuild it "
                      "(`pip install -e .`)")
Table = _fast.Table if _fast is not None else None

NUMBER_CACHE = 100_000  # distinct value texts remembered
NUMBER_CACHE_TEXT = 32  # bytes: a longer value text is converted but not remembered
HEAD_CACHE_BYTES = 64 * 1024**2  # keys of the head cache's first heads (each held twice: here and in C)
HEAD_COST = 128  # bytes a first head is charged beyond its key
# A context's other heads (another sample rate, an unknown field, a tag order: `h:1|h|@0.<n>` can make a
# new one per line) and the heads of refused lines are bounded apart, charged what they really cost: each
# key twice (here and in C), and the entries, the Slot and what its slot costs at the swap and the flush
# (docs/statsd.md, "Limits")
EXTRA_HEAD_BYTES = 32 * 1024**2
EXTRA_HEAD_COST = 1024

_DROPPED = Slot(DROPPED)  # one for every refused context: the cache may hold many keys pointing to it


@dataclass(slots=True)
class Stats:
    """Cumulative counts of the receive side (plain ints: no lock on the hot path)."""

    packets: int = 0
    bytes: int = 0
    lines: int = 0  # non-empty lines, good or bad
    extra_values: int = 0  # packed values beyond the first of their line
    events: int = 0
    service_checks: int = 0
    contexts_dropped: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    samples: int = 0  # metric values accepted, as of the end of the last batch (`settle`)

    def settle(self) -> None:
        """Work out `samples` from the other counts, at the end of a batch. Worked out when read, it
        could go down: a batch's lines are counted before their errors, and the event loop reads the
        counts while the receive thread adds to them."""
        self.samples = self.lines + self.extra_values - self.events - self.service_checks - sum(self.errors.values())


class Aggregator:
    def __init__(self, max_contexts: int = 100_000, gauge_deltas: bool = False,
                 rules: Sequence[mapping.Rule] = (), clock: Callable[[], float] = time.time,
                 accelerated: bool = True, limits: Limits | None = None) -> None:
        self.limits = limits if limits is not None else Limits(max_contexts=max_contexts)
        self.max_contexts = self.limits.max_contexts
        self.context_bytes = 0  # sum of Context.cost over `contexts`; their tags: `_pool.bytes`
        self.gauge_deltas = gauge_deltas
        self.rules = tuple(rules)
        self.clock = clock
        self.stats = Stats()
        self.contexts: dict[tuple[str, str, Tags, str], Context] = {}
        # (name, tail) -> Slot; bounded: cleared when it outgrows the context cap (rebuilt lazily)
        self._cache: dict[tuple[bytes, bytes], Slot] = {}
        self._cache_limit = max(4 * self.max_contexts, 10_000)  # of its first heads
        self._cache_bytes = 0  # of its first heads; cleared too at HEAD_CACHE_BYTES
        # the first head of a context is the one cached while it had none; the others in `_cache` (and the
        # heads of errors) are its extra heads, bounded apart by EXTRA_HEAD_BYTES and forgotten alone
        self._headed: set[Context] = set()  # contexts with a first head in `_cache`
        self._extras: dict[tuple[bytes, bytes], Slot] = {}
        self._extra_bytes, self._extra_limit = 0, EXTRA_HEAD_BYTES
        # heads refused at the cap (not in `_cache`: a storm of refused heads never evicts live ones)
        self._refused: set[tuple[bytes, bytes]] = set()  # the Python loop's; the C loop keeps its own
        self._refused_bytes = 0
        self._table = Table() if accelerated and Table is not None else None  # the C side of `_cache`
        self.shedding = False  # see `shed`
        self._configure_table()
        self._numbers: dict[bytes, float] = {}
        self._errors: dict[str, Slot] = {}
        self._pool = TagPool()
        self._gauge_last: dict[Context, float] = {}  # Etsy deltas apply to the value of earlier intervals
        self._expiring: deque[Iterable[Context]] = deque()  # from the Flusher's thread: deque ops are atomic
        self._open_interval(clock())

    def _open_interval(self, start: float) -> None:
        """A new interval, with all of its room for histogram values (on the C side too)."""
        self.interval = Interval(start)
        if self._table is not None:
            self._table.values_left = self.limits.histogram_values

    def _configure_table(self) -> None:
        """What the C loop needs to make and refuse new contexts itself: the cap (the contexts there are
        while shedding), the bounds of the refused heads it remembers (those of `_refused`), whether
        gauges take deltas, and what a context is charged. Not with mapping rules: they rename."""
        if self._table is not None:
            cap = min(len(self.contexts), self.max_contexts) if self.shedding else self.max_contexts
            limits = self.limits
            self._table.configure(cap, not self.rules, self._cache_limit, HEAD_CACHE_BYTES, HEAD_COST,
                                  self.gauge_deltas, (CONTEXT_COST, TAG_REF_COST, PAIR_COST),
                                  (limits.set_members, limits.set_bytes, limits.set_members_per_context,
                                   limits.set_bytes_per_context))

    def shed(self, on: bool) -> None:
        """Refuse new contexts (`overload`) while `on`: the receive side is far behind (server.py).

        A line that makes a context costs ~50 known lines, and its first flush ~350 more
        (docs/statsd.md): a storm of 100,000 new names a second needs more than a core for its first
        100,000, while the steady traffic waits in the receive buffer, and under a busy neighbour the kernel then drops datagrams of every metric
        (bench/storm_mix.py). Refused as at the cap (in C, ~5 known lines each), the buffer empties; the
        known contexts go on, and new ones are made again once it has (their refusals are forgotten)."""
        if on == self.shedding:
            return
        self.shedding = on
        self.adopt()  # the cap while shedding is the number of contexts: all of them counted
        self._configure_table()
        if not on:
            if self._table is not None:
                self._table.forget_refused()
            self._refused, self._refused_bytes = set(), 0

    @property
    def _refusal(self) -> str:
        """Why a new context is refused now."""
        return "overload" if self.shedding and self.context_count < self.max_contexts else "cardinality_limit"

    @property
    def context_count(self) -> int:
        """The live contexts, those the C loop made and Python has not adopted yet included: the C side's
        own count, which moves in one step, so safe to read from another thread (`contexts` lacks those
        until `adopt`, which adds them one by one before the C side's count of waiting ones falls)."""
        return self._table.live()[0] if self._table is not None else len(self.contexts)

    # -- receive side ----------------------------------------------------------------------------

    def ingest(self, datagram: bytes) -> None:
        """Parse and accumulate one datagram. Never raises on any input."""
        self.ingest_many([datagram])

    def ingest_many(self, datagrams: list[bytes]) -> None:
        """Parse and accumulate datagrams read in one go: their lines are split once, together."""
        sizes = list(map(len, datagrams))
        too_long = sum(1 for n in sizes if n > MAX_DATAGRAM)
        if too_long:  # rejected whole, never truncated
            datagrams = [d for d in datagrams if len(d) <= MAX_DATAGRAM]
        self.ingest_joined(b"\n".join(datagrams), len(sizes), sum(sizes), too_long)

    def ingest_joined(self, data: bytes, packets: int, size: int, too_long: int = 0) -> None:
        """The same for datagrams already joined by newlines (`_fast.drain`): `packets` datagrams of
        `size` bytes in all, `too_long` of them left out of `data`."""
        stats = self.stats
        stats.packets += packets
        stats.bytes += size
        if too_long:
            stats.lines += too_long
            stats.errors["too_long"] += too_long
        if self._table is not None:
            self._run(data)
        else:
            lines = data.split(b"\n")
            if not lines[-1]:
                lines.pop()  # the trailing newline most clients send; those inside are skipped below
            stats.lines += len(lines)
            self._each(lines)
        stats.settle()

    def _run(self, data: bytes) -> None:
        """The C loop, with the Python slow path for each line it leaves (`_fast.c`).

        The contexts the C loop makes live in its table, accumulating there, until their objects are
        made (`adopt`, in batches): before Python reads a line itself (it may name one of them), by the
        server while it has nothing to read, and at the swap, which hands them to the export side. So a
        storm's new contexts cost the lines that bring them only the C loop's work (docs/statsd.md,
        "Cardinality storms")."""
        table, end, stats = self._table, len(data), self.stats
        assert table is not None
        pos, contexts, heads = 0, -1, -1
        while True:
            # the room is given again only when Python's contexts or heads changed; never while contexts
            # made in C wait (Python's count lacks them: the room left in the table is the right one)
            if not table.pending and (len(self.contexts) != contexts or self._cache_bytes != heads):
                contexts, heads = len(self.contexts), self._cache_bytes
                self._give_room(table)
            pos = table.run(data, pos, self.interval)
            if pos >= end:
                break
            self.adopt()
            eol = data.find(b"\n", pos)
            if eol < 0:
                eol = end
            stats.lines += 1  # never an empty line: the C loop skips those
            self._slow(data[pos:eol])
            pos = eol + 1
        lines, refused, dropped = table.take_counts()
        stats.lines += lines
        if refused:  # refused at the cap in C (`new_head`): no Python object per line
            stats.errors[self._refusal] += refused
            stats.contexts_dropped += dropped

    def _give_room(self, table: Any) -> None:
        """What the C loop may take for the contexts it makes: what is left of `Limits.context_bytes`
        and of the head cache. Only a new context or a new head takes from it, and each changes the
        number of contexts or the bytes of the head cache (then `_run` gives it again); anything else
        (a pool rebuilt; the head cache emptied, then at most one head before `_run` looks) only adds."""
        table.bytes_left = self.limits.context_bytes - self.held_bytes
        table.heads_left = self._cache_limit - (len(self._cache) - len(self._extras))
        table.head_bytes_left = HEAD_CACHE_BYTES - self._cache_bytes

    @property
    def waiting(self) -> int:
        """Contexts the C loop made whose Python objects are not made yet (see `_run`)."""
        return self._table.pending if self._table is not None else 0

    def adopt(self, most: int | None = None) -> None:
        """Make the Python objects of the contexts the C loop made and keeps (see `_run`), of `most` of
        them (the oldest) when given: `contexts`, `held_bytes` and the head cache count them from then
        on. The receive thread's to call: `swap` makes all, the server some whenever it has nothing to
        read."""
        if self.waiting:
            self._adopt(self._table, most)

    def _adopt(self, table: Any, most: int | None = None) -> None:
        """The Python side of the contexts the C loop made, in the order it made them, made by the C side
        too (`Table.adopt`: no Python code per context but their `__init__`s): each `Context` and `Slot`
        as `_slot` makes them for a head Python reads, its tags kept in the pool, the head cached, a
        gauge's value set. The C loop made them within the room `_run` gave it (charging every tag pair
        as new), so each fits."""
        pool, before = self._pool, len(self.contexts)
        try:
            size, pairs, heads = table.adopt(Context, Slot, self.contexts, self._cache, pool.pairs, pool.tuples,
                                             self.interval.gauges, table.pending if most is None else most)
        except BaseException:  # out of memory, say: the C side starts again from Python's contexts
            table.reset()  # what it held of this interval is lost; the server counts the error
            self.context_bytes = sum(ctx.cost for ctx in self.contexts.values())  # some were adopted
            pool.rebuild(self.contexts.values())
            for ctx in self.contexts.values():
                table.live_add(ctx.name, ctx.type, ctx.tags, ctx.container)
            self._cache.clear()
            self._cache_bytes = 0
            self._headed, self._extras, self._extra_bytes = set(), {}, 0
            raise
        self.context_bytes += size
        pool.bytes += pairs
        self._cache_bytes += heads
        # each made with its first head, added last to `contexts` (a dict keeps the order of insertion)
        self._headed.update(islice(reversed(self.contexts.values()), len(self.contexts) - before))
        if len(self.contexts) > self.max_contexts or self.held_bytes > self.limits.context_bytes:
            raise AssertionError("the C loop made contexts past the limits")  # never: see `_run`'s room

    def _each(self, lines: list[bytes]) -> None:
        """The hot loop in Python, where the C extension is missing: one line at a time, in order."""
        iv = self.interval
        counts, gauges, values = iv.counts, iv.gauges, iv.values
        counts_get, values_get, cache_get, number_get = counts.get, values.get, self._cache.get, self._numbers.get
        slow, number = self._slow, self._number
        limit = self.limits.histogram_values
        for line in lines:
            name, _, rest = line.partition(b":")
            value, _, tail = rest.partition(b"|")
            slot = cache_get((name, tail))
            if slot is None:
                slow(line)
                continue
            code = slot.code
            if code > 2:  # GAUGE_DELTA, SET, ERROR, DROPPED: rare, or rarely on a hot path
                try:
                    self._apply(slot, value)
                except ValueError:
                    slow(line)
                continue
            v = number_get(value)
            if v is None:
                try:
                    v = number(value)
                except ValueError:  # a packed or bad value: the slow path knows which
                    slow(line)
                    continue
            if code == 0:  # COUNTER (literals: a constant is faster than a global here)
                counts[slot] = counts_get(slot, 0.0) + v
            elif code == 1:  # HISTOGRAM
                if iv.histogram_values >= limit:
                    slow(line)  # refused there (`value_limit`)
                    continue
                iv.histogram_values += 1
                acc = values_get(slot)
                if acc is None:
                    acc = values[slot] = array("d")
                acc.append(v)
            else:  # GAUGE
                gauges[slot.ctx] = v  # type: ignore[index]

    def _number(self, text: bytes) -> float:
        """`finite(text)`, remembered: values repeat a lot and `float()` is the slowest step per line."""
        value = finite(text)
        if len(text) <= NUMBER_CACHE_TEXT:
            if len(self._numbers) >= NUMBER_CACHE:
                self._numbers.clear()
            self._numbers[text] = value
        return value

    def _gauges(self, ctx: Context, vals: tuple[float, ...], relative: tuple[bool, ...]) -> None:
        """A line's gauge values, each a value or (`+N`, `-N`) a change of the last one; a line whose
        changes would leave a finite range is refused whole (`bad_value`): nothing infinite is exported."""
        gauges = self.interval.gauges
        value = gauges.get(ctx, self._gauge_last.get(ctx, 0.0))
        for v, r in zip(vals, relative):
            value = value + v if r else v
        if not math.isfinite(value):
            raise ParseError("bad_value")
        gauges[ctx] = value

    def _slow(self, line: bytes) -> None:
        """A line whose head is not cached, or whose value is packed or bad: parse it fully."""
        stats = self.stats
        try:
            if not line or line == b"\r":
                stats.lines -= 1  # an empty line is not a line
            elif line.startswith(EVENT_PREFIX):
                self._event(parse_event(line), stats)
            elif line.startswith(CHECK_PREFIX):
                self._keep(self.interval.service_checks, parse_service_check(line))
                stats.service_checks += 1
            else:
                self._metric(line)
        except ParseError as exc:
            stats.errors[exc.reason] += 1
        except Exception:  # a gap in the parser or a defect: this line is lost, never the rest of the batch
            stats.errors["malformed_line"] += 1

    def _event(self, event: tuple[Event, str], stats: Stats) -> None:
        self._keep(self.interval.events, event)
        stats.events += 1  # kept ones only: a refused one is a parse error (`samples` counts neither)

    def _keep(self, kept: list[Any], item: tuple[Event | ServiceCheck, str]) -> None:
        """An event or service check joins the interval within its count and byte limits, each kind its own:
        a burst of events never refuses a service check (a health signal)."""
        iv, limits = self.interval, self.limits
        size = item_bytes(item[0]) + utf8_len(item[1])
        held = iv.event_bytes if kept is iv.events else iv.check_bytes
        if len(kept) >= limits.events or held + size > limits.event_bytes:
            raise ParseError("event_limit")
        if kept is iv.events:
            iv.event_bytes += size
        else:
            iv.check_bytes += size
        kept.append(item)

    def _metric(self, line: bytes) -> None:
        name, colon, rest = line.partition(b":")
        value, bar, tail = rest.partition(b"|")
        if not colon or not bar:
            raise ParseError("malformed_line")
        key = (name, tail)
        slot = self._cache.get(key)
        if slot is None and key in self._refused:
            slot = _DROPPED
        timestamp, parsed = None, None
        if slot is None:
            # the C side reads the simple heads (`Table.head`: ASCII, no tag given twice, ...), as
            # parse_head would, without its Python objects; parse_head reads the others
            simple = self._table.head(name, tail) if self._table is not None else None
            if simple is not None:
                hname, kind, rate, tags, container = simple
                stamp = None
            else:
                try:
                    head = parse_head(name, tail)
                except ParseError as exc:
                    if tail:  # with an empty tail, lines of other shapes share the key (`x`, `x:1`, `x:1|`)
                        self._remember(key, self._errors.setdefault(exc.reason, Slot(ERROR, reason=exc.reason)))
                    raise
                hname, kind, rate, tags, container, stamp = (head.name, head.type, head.rate, head.tags,
                                                             head.container, head.timestamp)
            if kind != "s":
                parsed = parse_values(kind, value)  # a bad value must not create a context
            elif not value:
                raise ParseError("bad_value")
            slot = self._slot(hname, kind, rate, tags, container)
            if stamp is not None and kind in ("c", "g") and slot is not _DROPPED:
                timestamp = float(stamp)  # exported as sent, not aggregated
            else:  # other types ignore a timestamp, and a refusal is the head's: cached like any head
                self._remember(key, slot)
        self._apply(slot, value, timestamp, key, parsed)

    def _apply(self, slot: Slot, value: bytes, timestamp: float | None = None,
               key: tuple[bytes, bytes] | None = None,
               parsed: tuple[tuple[float, ...], tuple[bool, ...]] | None = None) -> None:
        """Account one line's value(s) to its slot; raises ParseError for a bad value. A counter or
        histogram whose head `key` is in the C table accumulates there, with the lines the C loop
        handled: in one place, in the order of the lines, as the Python loop does."""
        code, iv = slot.code, self.interval
        if code == ERROR:
            self.stats.errors[slot.reason] += 1
            return
        if code == DROPPED:
            self.stats.errors[self._refusal] += 1
            return
        ctx: Context = slot.ctx  # type: ignore[assignment]
        if code == SET:  # the whole text after the first `:` is one member
            if not value:
                raise ParseError("bad_value")
            members = iv.sets.get(ctx)
            if members is not None and value in members:
                return
            size, limits = len(value), self.limits
            held = iv.set_bytes_of.get(ctx, 0)
            if (members is not None and len(members) >= limits.set_members_per_context
                    or held + size > limits.set_bytes_per_context
                    or iv.set_members >= limits.set_members or iv.set_bytes + size > limits.set_bytes):
                raise ParseError("set_limit")
            if members is None:
                members = iv.sets[ctx] = set()
            members.add(value)
            iv.set_bytes_of[ctx] = held + size
            iv.set_members += 1
            iv.set_bytes += size
            return
        if timestamp is not None and len(iv.timestamped) >= self.limits.timestamped:
            raise ParseError("timestamp_limit")  # each is kept apart, not aggregated: bounded by count
        # `parsed`: the values as `_metric` read them for the head's type (relative ones only for `g`)
        vals, relative = parsed if parsed is not None else parse_values("g" if code == GAUGE_DELTA else "", value)
        if code == HISTOGRAM and timestamp is None and not self._take_values(len(vals)):
            raise ParseError("value_limit")  # each value is kept, 8 bytes: bounded per interval
        self.stats.extra_values += len(vals) - 1
        if timestamp is not None:
            total = sum(vals) * slot.weight if code == COUNTER else vals[-1]
            iv.timestamped.append((ctx, total, timestamp))
        elif (code == COUNTER or code == HISTOGRAM) and key is not None and self._table is not None \
                and self._table.feed(key[0], key[1], vals):
            pass
        elif code == COUNTER:
            iv.counts[slot] = iv.counts.get(slot, 0.0) + sum(vals)
        elif code == HISTOGRAM:
            acc = iv.values.get(slot)
            if acc is None:
                acc = iv.values[slot] = array("d")
            acc.extend(vals)
        elif code == GAUGE:
            iv.gauges[ctx] = vals[-1]
        else:
            self._gauges(ctx, vals, relative)

    def _take_values(self, n: int) -> bool:
        """Room for `n` more histogram values in this interval (`Limits.histogram_values`), taken; the
        C loop takes from the same count (`Table.values_left`)."""
        table = self._table
        if table is not None:
            if n > table.values_left:
                return False
            table.values_left -= n
            return True
        iv = self.interval
        if iv.histogram_values + n > self.limits.histogram_values:
            return False
        iv.histogram_values += n
        return True

    def _remember(self, key: tuple[bytes, bytes], slot: Slot) -> None:
        size = len(key[0]) + len(key[1])
        if slot is _DROPPED:
            self._refuse(key, size + HEAD_COST)
            return
        ctx = slot.ctx
        if ctx is not None and ctx not in self._headed:  # its context's first head
            size += HEAD_COST
            if len(self._cache) - len(self._extras) >= self._cache_limit or self._cache_bytes + size > HEAD_CACHE_BYTES:
                self._forget_heads()
            self._headed.add(ctx)
            self._cache_bytes += size
        else:  # another head of a context whose first is cached, or an error's head
            size = 2 * size + EXTRA_HEAD_COST
            if self._extra_bytes + size > self._extra_limit:
                self._forget_extra_heads()
            self._extras[key] = slot
            self._extra_bytes += size
        self._cache[key] = slot
        if self._table is not None:  # a set's or an error's head too: the C loop passes its lines on at once
            self._table.add(key[0], key[1], slot, slot.ctx, slot.code)

    def _refuse(self, key: tuple[bytes, bytes], size: int) -> None:
        """Remember a head refused at the cap: its next lines are counted without a parse. Bounded as the
        head cache is, and emptied when full; the C loop keeps the same set by the heads' hashes."""
        if self._table is not None:
            self._table.refuse(*key)
            return
        if len(self._refused) >= self._cache_limit or self._refused_bytes + size > HEAD_CACHE_BYTES:
            self._refused.clear()
            self._refused_bytes = 0
        self._refused.add(key)
        self._refused_bytes += size

    def _forget_contexts(self, gone: set[Context]) -> None:
        """The heads of expired contexts go (the others stay parsed), and so do the refusals at the cap:
        there may be room now. Called at a swap, after the C side's harvest."""
        if self._table is not None:
            self._table.forget_contexts(gone)
            self._table.forget_refused()
        kept, size, extras = {}, 0, self._extras
        for key, slot in self._cache.items():
            if slot.ctx not in gone:
                kept[key] = slot
                if key not in extras:
                    size += len(key[0]) + len(key[1]) + HEAD_COST
        self._cache, self._cache_bytes = kept, size
        self._extras = {key: slot for key, slot in extras.items() if slot.ctx not in gone}
        self._extra_bytes = sum(2 * (len(key[0]) + len(key[1])) + EXTRA_HEAD_COST for key in self._extras)
        self._headed -= gone
        self._refused, self._refused_bytes = set(), 0

    def _forget_heads(self) -> None:
        """Empty the head cache (both sides). What the forgotten heads accumulated is folded into one
        slot per context (`Interval.fold`): the open interval holds per context, not per head, so that
        a storm of heads of one context (a new sample rate or unknown field per line) is bounded by the
        head cache, and the memory of its heads goes back to the system as after expiries."""
        forgotten = len(self._cache)
        if self._table is not None:
            self.interval.pending.append(self._table.harvest())
            self._table.clear()
        self._cache.clear()  # in place: `_each` holds its `get`
        self._cache_bytes = 0
        self._headed, self._extras, self._extra_bytes = set(), {}, 0
        self.interval.fold()
        if forgotten > BURST:
            release_freed_memory()

    def _forget_extra_heads(self) -> None:
        """Forget the extra heads alone (`_remember`), on both sides, their accumulations folded as
        `_forget_heads` folds them: the first heads of the live contexts stay parsed, so that a storm of
        heads of a few contexts costs at most EXTRA_HEAD_BYTES and never the other contexts' next lines."""
        extras, cache = self._extras, self._cache
        for key in extras:
            del cache[key]  # in place: `_each` holds its `get`
        if self._table is not None:
            self.interval.pending.append(self._table.harvest())
            self._table.clear(set(extras.values()))
        self._extras, self._extra_bytes = {}, 0
        self.interval.fold()
        if len(extras) > BURST:
            release_freed_memory()

    @property
    def held_bytes(self) -> int:
        """What the live contexts are charged against `Limits.context_bytes`."""
        return self.context_bytes + self._pool.bytes

    def _slot(self, name: str, kind: str, rate: float, tags: Tags, container: str) -> Slot:
        """The slot of a new head (`parser.Head`'s fields): its context, found or made within the limits."""
        if self.rules:
            mapped = mapping.apply(self.rules, name)
            if mapped is not None:
                name, tags = mapped[0], merge_tags(tags, mapped[1])
        if len(tags) > 1:  # tags are a set: `#b:2,a:1` is the context of `#a:1,b:2` (keys are unique)
            tags = tuple(sorted(tags))
        tags = self._pool.canonical(tags)
        key = (name, kind, tags, container)
        ctx = self.contexts.get(key)
        if ctx is None:
            ctx = Context(name, kind, tags, container)
            if not self._room_for(ctx.cost, tags):
                self.stats.contexts_dropped += 1
                return _DROPPED
            self._pool.add(tags)
            self._add_context(key, ctx)
            if self._table is not None:
                self._table.live_add(name, kind, tags, container)
        return self._slot_of(ctx, rate)

    def _add_context(self, key: tuple[str, str, Tags, str], ctx: Context) -> None:
        self.contexts[key] = ctx
        self.context_bytes += ctx.cost

    def _slot_of(self, ctx: Context, rate: float) -> Slot:
        kind = ctx.type
        if kind == "c":
            return Slot(COUNTER, ctx, 1.0 / rate)
        if kind == "g":
            return Slot(GAUGE_DELTA if self.gauge_deltas else GAUGE, ctx)
        if kind == "s":
            return Slot(SET, ctx)
        return Slot(HISTOGRAM, ctx, 1.0 / rate)

    def _room_for(self, charge: int, tags: Tags) -> bool:
        """Whether a new context charged `charge` bytes for itself, with these tags, fits the limits."""
        if len(self.contexts) >= self.max_contexts or self.shedding:
            return False
        pool, limit = self._pool, self.limits.context_bytes
        if self.held_bytes + charge + pool.new_bytes(tags) <= limit:
            return True
        if not pool.stale:
            return False
        pool.rebuild(self.contexts.values())  # drop the pairs only forgotten contexts used, and retry
        return self.held_bytes + charge + pool.new_bytes(tags) <= limit

    def swap(self, now: float | None = None) -> Interval:
        """Start a new interval and return the finished one: the objects of the contexts the C loop made
        that are not made yet (about 3 us each; the server makes them while it has nothing to read),
        then O(contexts touched) in C, without a Python object per context (85,000 contexts: 7 ms), plus
        pending expiries."""
        done = self.interval
        self.adopt()
        if self._table is not None:
            done.pending.append(self._table.harvest())
        self._open_interval(self.clock() if now is None else now)
        if self.gauge_deltas:
            self._gauge_last.update(done.gauges)
        if self._expiring:
            self._expire(done)
        return done

    def expire(self, contexts: Iterable[Context]) -> None:
        """Ask to forget idle contexts; applied at the next swap. Safe from another thread."""
        self._expiring.append(contexts)

    def _expire(self, done: Interval) -> None:
        touched = done.contexts()
        gone: set[Context] = set()
        while self._expiring:
            for ctx in self._expiring.popleft():
                key = (ctx.name, ctx.type, ctx.tags, ctx.container)
                if ctx not in touched and self.contexts.get(key) is ctx:
                    del self.contexts[key]
                    self.context_bytes -= ctx.cost
                    self._gauge_last.pop(ctx, None)
                    gone.add(ctx)
        if gone:
            self.contexts = dict(self.contexts)  # a dict never shrinks by deletion: rebuild it
            self._forget_contexts(gone)
            if self.shedding:  # the C loop's cap is the number of contexts while shedding: fewer now
                self._configure_table()
            self._pool.stale = True
            if len(gone) > BURST or len(self._pool.tuples) > 2 * len(self.contexts) + BURST:
                self._pool.rebuild(self.contexts.values())  # after a storm; or it would only grow
        if len(gone) > BURST:
            release_freed_memory()  # a few ms, once after a storm: RSS back near the baseline

