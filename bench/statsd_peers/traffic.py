"""Deterministic StatsD traffic: contexts, pre-built datagrams, and what a server must count.

Everything here is pure: the same seed gives the same bytes, and `tally()` computes from a pool and
a (start, count) window exactly what a lossless server has to report: lines, counter sums, numbers
of timer/histogram/distribution values, last gauge values.

Two variants of the same traffic:
- `tagged`: DogStatsD lines, `name:value|type|#k:v,...`, all six types;
- `plain`: for servers that reject tags (collectd): the tag values go into the name
  (`name.v1.v2`, the usual Graphite habit, so the number of contexts stays the same), and `h`/`d`
  are sent as `ms` (collectd rejects `|h`; netdata reads `|d` as a "dictionary").
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field

MAX_DATAGRAM = 1432  # the Datadog clients' default UDP payload

# one type per name (a name with two types would be two metrics in Prometheus); weights give a mix
# close to what workers send: mostly counters, then latencies, gauges, a few sizes/sets
KINDS = (("c", 55), ("ms", 13), ("g", 14), ("h", 9), ("d", 5), ("s", 4))
SUMMED = frozenset({"c", "ms", "h", "d"})  # counters: sum of values; the others: number of values

# not `queue`: the sidecar keeps `queue_*` (and `ecs_*`, `tasklens_*`) for its own families and refuses them
PREFIXES = ("worker", "app", "jobq", "http", "db", "cache", "pay", "img", "mail", "bill")
NOUNS = ("jobs", "tasks", "requests", "messages", "batches", "queries", "uploads", "retries", "events",
         "orders", "invoices", "thumbs", "emails", "sessions", "locks", "pages")
VERBS = ("done", "failed", "started", "latency", "size", "inflight", "acked", "skipped", "wait",
         "duration", "bytes", "users", "lag", "hits", "misses", "rows")
# tag keys that never collide with the sidecar's own tags (service, env, version, task_*, ...)
TAG_VALUES = {
    "queue": ("orders", "emails", "thumbs", "reports", "imports", "exports", "webhooks"),
    "status": ("ok", "error", "timeout", "retry"),
    "dc": ("eu1", "eu2", "us1", "us2", "ap1"),  # not `region`: an ECS task's own label
    "route": ("users", "orders", "items", "search", "login", "cart", "checkout", "health"),
    "method": ("get", "post", "put", "delete"),
    "shard": tuple(f"s{i}" for i in range(8)),
    "tier": ("free", "pro", "enterprise"),
    "result": ("hit", "miss", "stale"),
    "prio": ("low", "normal", "high"),
    "kind": ("full", "delta", "preview"),
}
TAG_KEYS = tuple(TAG_VALUES)
TAGS_PER_NAME, TAGS_WEIGHTS = (2, 3, 4, 5, 6), (30, 30, 20, 12, 8)


@dataclass(frozen=True)
class Context:
    name: str
    kind: str
    tags: tuple[tuple[str, str], ...]

    def wire(self, variant: str) -> Context:
        """The context as the server sees it in `variant`."""
        if variant == "tagged":
            return self
        name = ".".join((self.name, *(v for _, v in self.tags)))
        return Context(name, "ms" if self.kind in ("h", "d") else self.kind, ())


def make_contexts(count: int, rng: random.Random) -> list[Context]:
    """`count` distinct contexts over about count/5 names, each name with 2-6 tag keys of its own."""
    names: dict[str, tuple[str, tuple[str, ...]]] = {}
    kinds, weights = zip(*KINDS)
    while len(names) < max(1, count // 5):
        name = ".".join((rng.choice(PREFIXES), rng.choice(NOUNS), rng.choice(VERBS)))
        if name not in names:
            keys = tuple(sorted(rng.sample(TAG_KEYS, rng.choices(TAGS_PER_NAME, TAGS_WEIGHTS)[0])))
            names[name] = (rng.choices(kinds, weights)[0], keys)
    contexts: dict[Context, None] = {}
    name_list = list(names)
    for _ in range(count * 50):
        if len(contexts) == count:
            break
        name = rng.choice(name_list)
        kind, keys = names[name]
        contexts[Context(name, kind, tuple((k, rng.choice(TAG_VALUES[k])) for k in keys))] = None
    return list(contexts)


def make_value(kind: str, rng: random.Random) -> float | str:
    if kind == "c":
        return 1 if rng.random() < 0.8 else rng.randint(2, 20)
    if kind == "g":
        return rng.randint(0, 5000)
    if kind == "ms":
        return round(rng.lognormvariate(3.0, 1.0), 2)
    if kind == "h":
        return int(rng.lognormvariate(7.0, 1.5))
    if kind == "d":
        return round(rng.lognormvariate(1.0, 0.8), 3)
    return f"u{rng.randint(0, 999)}"  # set member


def format_line(ctx: Context, value: float | str) -> bytes:
    tags = "|#" + ",".join(f"{k}:{v}" for k, v in ctx.tags) if ctx.tags else ""
    return f"{ctx.name}:{value}|{ctx.kind}{tags}".encode()


@dataclass
class Pool:
    """One sender's datagrams, sent in a cycle, and per datagram the (context, value) of each line."""

    datagrams: list[bytes]
    entries: list[list[tuple[int, float | str]]]
    contexts: list[Context]  # wire contexts, indexed by the entries
    cycle_sums: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cycle_sums = _sums(self.contexts, self.entries)

    @property
    def lines(self) -> int:
        return sum(map(len, self.entries))


def _sums(contexts: Sequence[Context], datagrams: Sequence[list[tuple[int, float | str]]]) -> dict[int, float]:
    sums: dict[int, float] = {}
    for entries in datagrams:
        for ctx, value in entries:
            kind = contexts[ctx].kind
            if kind in SUMMED:
                sums[ctx] = sums.get(ctx, 0.0) + (float(value) if kind == "c" else 1.0)
    return sums


def make_pools(contexts: Sequence[Context], variant: str, senders: int, datagrams: int, seed: int) -> list[Pool]:
    """`datagrams` in all, split over `senders`; each sender owns every `senders`-th context, so the
    last value of a gauge is decided by one sender's order alone. Contexts are drawn with a skew
    (a few hot ones, a long tail), as in real traffic."""
    rng = random.Random(seed)
    wire = [c.wire(variant) for c in contexts]
    pools = []
    for k in range(senders):
        own = list(range(k, len(wire), senders))
        rng.shuffle(own)
        picks = _draws(rng, own, [1.0 / (rank + 1) ** 0.8 for rank in range(len(own))])
        out: list[bytes] = []
        entries: list[list[tuple[int, float | str]]] = []
        for _ in range(datagrams // senders):
            lines: list[bytes] = []
            dg_entries: list[tuple[int, float | str]] = []
            size = -1
            while True:
                ctx = next(picks)
                value = make_value(wire[ctx].kind, rng)
                line = format_line(wire[ctx], value)
                if size + 1 + len(line) > MAX_DATAGRAM:
                    break  # this draw is dropped: the datagram is full
                lines.append(line)
                dg_entries.append((ctx, value))
                size += 1 + len(line)
            out.append(b"\n".join(lines))
            entries.append(dg_entries)
        pools.append(Pool(out, entries, wire))
    return pools


def _draws(rng: random.Random, population: list[int], weights: list[float]) -> Iterator[int]:
    while True:
        yield from rng.choices(population, weights, k=4096)


@dataclass
class Tally:
    """What a lossless server counts for a window of sent datagrams, by the server's own keys."""

    lines: int = 0
    datagrams: int = 0
    sums: dict[Hashable, float] = field(default_factory=dict)  # counter sums, numbers of values
    gauges: dict[Hashable, float] = field(default_factory=dict)  # last value, for gauges sent in the window


KeyFn = Callable[[Context], "Hashable | None"]


def tally(pools: Sequence[Pool], windows: Sequence[tuple[int, int]], key: KeyFn, gauge_key: KeyFn) -> Tally:
    """`windows[k]` = (start, count): sender k sent datagrams start..start+count-1 (mod pool size).
    `key` maps a wire context to the server's key for its sum (None: the server cannot show it);
    `gauge_key` the same for last gauge values."""
    out = Tally()
    sums: dict[Hashable, float] = {}
    for pool, (start, count) in zip(pools, windows):
        size = len(pool.datagrams)
        full, rest = divmod(count, size)
        partial = [pool.entries[(start + i) % size] for i in range(rest)]
        out.lines += full * pool.lines + sum(map(len, partial))
        out.datagrams += count
        partial_sums = _sums(pool.contexts, partial)
        for ctx in (pool.cycle_sums.keys() if full else partial_sums.keys()):
            k = key(pool.contexts[ctx])
            if k is not None:
                sums[k] = sums.get(k, 0.0) + full * pool.cycle_sums.get(ctx, 0.0) + partial_sums.get(ctx, 0.0)
        # last gauge values: walk back at most one cycle from the last datagram sent
        seen: set[int] = set()
        for i in range(start + count - 1, start + count - 1 - min(count, size), -1):
            for ctx, value in reversed(pool.entries[i % size]):
                c = pool.contexts[ctx]
                if c.kind == "g" and ctx not in seen:
                    seen.add(ctx)
                    k = gauge_key(c)
                    if k is not None:
                        out.gauges.setdefault(k, float(value))
    out.sums = sums
    return out


def describe(pools: Sequence[Pool]) -> dict[str, float]:
    """Shape of the traffic, for the report."""
    datagrams = [d for p in pools for d in p.datagrams]
    lines = [line for d in datagrams for line in d.split(b"\n")]
    kinds = Counter(p.contexts[ctx].kind for p in pools for e in p.entries for ctx, _ in e)
    total = sum(kinds.values())
    return {
        "datagrams": len(datagrams),
        "lines": len(lines),
        "bytes_per_datagram": sum(map(len, datagrams)) / len(datagrams),
        "lines_per_datagram": len(lines) / len(datagrams),
        "min_lines_per_datagram": min(d.count(b"\n") + 1 for d in datagrams),
        "max_lines_per_datagram": max(d.count(b"\n") + 1 for d in datagrams),
        "distinct_lines_ratio": len(set(lines)) / len(lines),
        "contexts_seen": len({(p.contexts[ctx]) for p in pools for e in p.entries for ctx, _ in e}),
        **{f"share_{k}": v / total for k, v in sorted(kinds.items())},
    }
