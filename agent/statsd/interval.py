"""What both halves of the StatsD aggregator share: the data types that cross the thread boundary and
the limits of what the receive side may hold.

The receive thread (`receive.Aggregator`) creates `Context`s and `Slot`s and fills an `Interval`; at each
boundary it hands the finished `Interval` to the export side (`flush.Flusher`), which reads the same
objects on another thread. Nothing here takes a lock: an `Interval` has one owner at a time.

The slot codes are shared with the C loop (`_fast.c`), which exports its own copy of them;
`receive.py` refuses to use a build whose codes differ.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from agent.model import Event, ServiceCheck, Tags

# slot codes: what the receive side does with a value (numeric codes first)
COUNTER, HISTOGRAM, GAUGE, GAUGE_DELTA, SET, ERROR, DROPPED = range(7)
SLOT_CODES = {"COUNTER": COUNTER, "HISTOGRAM": HISTOGRAM, "GAUGE": GAUGE, "GAUGE_DELTA": GAUGE_DELTA, "SET": SET,
              "ERROR": ERROR, "DROPPED": DROPPED}
# Bytes charged against Limits.context_bytes beyond the text (measured with sys.getsizeof on 3.11): a
# context (its Context, Slot, key tuples and entries in the aggregator's and flusher's dicts), a reference
# to a tag from a context's tuple, a distinct tag pair (its tuple, two str headers, its pool entry).
CONTEXT_COST, TAG_REF_COST, PAIR_COST = 512, 8, 200


@dataclass(frozen=True, slots=True)
class Limits:
    """What the receive side may hold, in bytes as well as counts (docs/statsd.md, "Limits").

    Counts alone are not a bound: 100,000 contexts of 100 tags each, or 10,000 events of 60 KiB, are
    gigabytes. Each overflow refuses the line (never truncates it) and counts it by reason."""

    max_contexts: int = 100_000
    context_bytes: int = 128 * 1024**2  # what live contexts hold, as `Context.cost` and `TagPool` charge it
    events: int = 10_000  # events, and service checks, each per interval
    event_bytes: int = 4 * 1024**2  # per interval, each: titles, texts, messages and tags (`item_bytes`)
    set_members: int = 200_000  # distinct set members per interval, all contexts together
    set_bytes: int = 8 * 1024**2  # their bytes, per interval
    set_members_per_context: int = 100_000
    timestamped: int = 100_000  # lines with `|T<ts>` per interval (each one is a sample of its own)
    histogram_values: int = 8_000_000  # histogram, timer and distribution values per interval: 64 MiB
    set_bytes_per_context: int = 4 * 1024**2


def pair_cost(kv: tuple[str, str]) -> int:
    return len(kv[0]) + len(kv[1]) + PAIR_COST


class TagPool:
    """Equal tag pairs and tag tuples are stored once (`env:prod` on 10,000 contexts is one tuple) and
    charged once: a worker whose contexts share their tags is charged what it really costs, and one whose
    every tag is unique is charged every pair. Pairs of forgotten contexts stay (and stay charged) until
    `rebuild`, which the aggregator calls when that could make room, or after a storm of expiries.
    The C loop keeps the tags of the contexts it makes in the same two dicts, the same way (`keep_tags`
    in `_fast.c`)."""

    def __init__(self) -> None:
        self.pairs: dict[tuple[str, str], tuple[str, str]] = {}
        self.tuples: dict[Tags, Tags] = {}
        self.bytes = 0  # sum of pair_cost over `pairs`
        self.stale = False  # contexts were forgotten since the last rebuild

    def canonical(self, tags: Tags) -> Tags:
        shared = tuple(map(self.pairs.get, tags, tags))  # each pair as stored, else itself
        return self.tuples.get(shared, shared)

    def new_bytes(self, tags: Tags) -> int:
        """What `add(tags)` would charge."""
        pairs, size = self.pairs, 0
        for kv in tags:  # a loop, not sum() of a generator: called per new context
            if kv not in pairs:
                size += pair_cost(kv)
        return size

    def add(self, tags: Tags) -> None:
        pairs = self.pairs
        for kv in tags:
            if kv not in pairs:
                pairs[kv] = kv
                self.bytes += pair_cost(kv)
        self.tuples.setdefault(tags, tags)

    def rebuild(self, contexts: Iterable[Context]) -> None:
        self.pairs, self.tuples, self.bytes, self.stale = {}, {}, 0, False
        for ctx in contexts:
            self.add(ctx.tags)


def item_bytes(item: Event | ServiceCheck) -> int:
    """The text an event or service check holds (title, text or message, tags, ...), in UTF-8 bytes: a
    text of 8,000 emoji is 32,000 bytes, not 8,000 (and takes as much in memory)."""
    size = sum(utf8_len(k) + utf8_len(v) + PAIR_COST for k, v in item.tags)
    for f in fields(item):
        value = getattr(item, f.name)
        if isinstance(value, str):
            size += utf8_len(value)
    return size + CONTEXT_COST


def utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class Context:
    """One series: name + type + tags + container. Compared and hashed by identity (fast)."""

    __slots__ = ("name", "type", "tags", "container", "merge", "cost")

    def __init__(self, name: str, type_: str, tags: Tags, container: str) -> None:
        self.name, self.type, self.tags, self.container = name, type_, tags, container
        self.merge = 0  # export side only: do this histogram's values repeat? (see `points`)
        # charged against Limits.context_bytes while it lives, for itself (its tag pairs are charged once
        # for all contexts by `TagPool`); lengths of str: never more than their UTF-8 bytes
        self.cost = len(name) + len(container) + CONTEXT_COST + TAG_REF_COST * len(tags)

    def __repr__(self) -> str:
        return f"Context({self.name!r}, {self.type!r}, {self.tags!r}, {self.container!r})"


class Slot:
    """A cached head: what to do with the value of a line whose (name, tail) was seen before."""

    __slots__ = ("code", "ctx", "weight", "reason")

    def __init__(self, code: int, ctx: Context | None = None, weight: float = 1.0, reason: str = "") -> None:
        self.code, self.ctx, self.weight, self.reason = code, ctx, weight, reason



@dataclass(slots=True)
class Interval:
    """What was received during one flush interval. Counters and histogram values are kept per slot
    (a context seen with two sample rates has two slots) and merged per context at flush."""

    start: float  # wall-clock start of the interval (Unix seconds)
    periods: int = 1  # flush periods it covers: more when the export side fell behind (server.MAX_BACKLOG)
    counts: dict[Slot, float] = field(default_factory=dict)  # sum of values, times slot.weight at flush
    gauges: dict[Context, float] = field(default_factory=dict)
    sets: dict[Context, set[bytes]] = field(default_factory=dict)
    values: dict[Slot, array[float]] = field(default_factory=dict)
    timestamped: list[tuple[Context, float, float]] = field(default_factory=list)  # (ctx, value*weight, ts)
    events: list[tuple[Event, str]] = field(default_factory=list)
    service_checks: list[tuple[ServiceCheck, str]] = field(default_factory=list)
    # what the interval holds against Limits: bytes of events and checks, set members and their bytes
    event_bytes: int = 0
    check_bytes: int = 0  # of service checks
    set_members: int = 0
    set_bytes: int = 0
    set_bytes_of: dict[Context, int] = field(default_factory=dict)
    histogram_values: int = 0  # held in Python's arrays (with the C loop: `Table.values_left` counts)
    # what the C loop accumulated, as `Table.harvest` returns it: merged into counts and values by
    # `settle`, off the receive thread
    pending: list[tuple[list[Slot], bytes, list[bytearray | None]]] = field(default_factory=list)
    # each context's own slot, into which `fold` joins what the slots of forgotten heads held; the
    # weight of each of its values where they differ (values of several sample rates folded together)
    folds: dict[Context, Slot] = field(default_factory=dict)
    weights: dict[Slot, array[float]] = field(default_factory=dict)

    def settle(self) -> None:
        """Merge what the C loop accumulated into `counts` and `values` (called by the export side)."""
        counts, values = self.counts, self.values
        for slots, sums, packs in self.pending:
            for slot, total, packed in zip(slots, array("d", sums), packs):
                if packed is None:
                    counts[slot] = counts.get(slot, 0.0) + total
                elif (acc := values.get(slot)) is None:
                    # the harvest's own bytearray, not a copy of it: a finished interval's, which no one
                    # appends to any more, and which `Points` sorts in place as it would an array
                    values[slot] = memoryview(packed).cast("d")  # type: ignore[assignment]
                else:
                    if not isinstance(acc, array):  # a harvest already: into an array, to grow
                        copied = array("d")
                        copied.frombytes(acc.cast("B"))
                        acc = values[slot] = copied
                    acc.frombytes(packed)
        self.pending = []

    def fold(self) -> None:
        """Join what every slot holds into one slot per context: called by the receive side when it
        forgets its heads (`Aggregator._forget_heads`), so that the interval holds per context, not per
        head that reached it. One context can have any number of heads (a sample rate, an unknown field,
        a tag order each); without this, every forgotten head's slot, and a histogram's own buffer, stayed
        here until the flush (docs/statsd.md, "Limits").

        A counter's fold has weight 1 and holds the sum of `total * weight` of its slots, added in the
        order the flush adds them: the flush's sum is the same to the last bit. A histogram's values are
        joined in the order of their slots; where their weights differ, `weights` keeps one beside each
        value (8 bytes more a value; the values stay within `Limits.histogram_values`)."""
        pending, self.pending = self.pending, []
        totals: dict[Slot, float] = dict(self.counts)
        held: dict[Slot, array[float] | memoryview | bytearray] = dict(self.values)
        for slots, sums, packs in pending:  # merged as `settle` merges them, without a view per slot
            for slot, total, packed in zip(slots, array("d", sums), packs):
                if packed is None:
                    totals[slot] = totals.get(slot, 0.0) + total
                elif (acc := held.get(slot)) is None:
                    held[slot] = packed
                else:
                    held[slot] = _joined(acc, packed)
        del pending
        counts, values, folds, weights = self.counts, self.values, self.folds, self.weights
        counts.clear()  # in place: the Python loop holds these dicts (`Aggregator._each`)
        for slot, total in totals.items():
            ctx = slot.ctx
            fold = folds.get(ctx)  # type: ignore[arg-type]
            if fold is None:
                fold = folds[ctx] = Slot(COUNTER, ctx)  # type: ignore[index]
            counts[fold] = counts.get(fold, 0.0) + total * slot.weight
        del totals
        values.clear()
        for slot, vals in held.items():
            ctx = slot.ctx
            fold = folds.get(ctx)  # type: ignore[arg-type]
            if fold is None:
                # a slot of its own, as a counter's: a head may still hold `slot` (only a context's extra
                # heads are forgotten when they fill their bound), and its next lines would join the fold's
                # values without a weight each
                fold = folds[ctx] = Slot(slot.code, ctx, slot.weight)  # type: ignore[index]
            acc = values.get(fold)
            if acc is None:  # the fold's own values (`slot is fold`), or the first slot's
                acc = values[fold] = vals if isinstance(vals, array) else _joined(array("d"), vals)
                if slot is fold or slot.weight == fold.weight and fold not in weights:
                    continue
            else:
                acc.frombytes(memoryview(vals).cast("B"))
            each = weights.get(fold)
            if each is None:
                if slot.weight == fold.weight:
                    continue
                each = weights[fold] = array("d", [fold.weight]) * (len(acc) - _count(vals))
            each.extend(array("d", [slot.weight]) * _count(vals))

    def contexts(self) -> set[Context]:
        self.settle()
        out = set(self.gauges) | set(self.sets)
        out.update(s.ctx for s in self.counts)  # type: ignore[misc]
        out.update(s.ctx for s in self.values)  # type: ignore[misc]
        out.update(c for c, _, _ in self.timestamped)
        return out


def _count(vals: array[float] | memoryview | bytearray) -> int:
    """The number of doubles in an array, a view of doubles or a harvest's bytes."""
    return len(vals) if isinstance(vals, array) else memoryview(vals).nbytes // 8


def _joined(acc: array[float] | memoryview | bytearray, more: array[float] | memoryview | bytearray) -> array[float]:
    """`acc`'s doubles, then `more`'s, in an array (`acc` itself when it is one)."""
    if not isinstance(acc, array):
        copied = array("d")
        copied.frombytes(memoryview(acc).cast("B"))
        acc = copied
    acc.frombytes(memoryview(more).cast("B"))
    return acc
