"""Coverage-guided fuzzing (atheris, libFuzzer) of the sidecar's two parsers of untrusted input.

    python bench/fuzz.py statsd [-max_total_time=600] [libFuzzer flags...]
    python bench/fuzz.py ecs    [-max_total_time=600] [libFuzzer flags...]

`statsd`: arbitrary datagrams into the pure parser and into the aggregator (twice: the second pass
goes through its caches) and the flusher. Checked: nothing raises; the parser and the aggregator
agree on every line and every error reason; a cached second pass counts exactly the same again; the C
loop (`agent/statsd/_fast.c`) and the Python loop give the same counts and the same batch;
accepted names and tags are within their limits and valid UTF-8; no gauge, set or histogram value is
NaN or infinite.

`ecs`: the real captures of /task and /task/stats, mutated by the fuzzer (any node replaced by any
JSON value, including NaN, infinities and huge numbers), into `task_identity` and `derive`.
Checked: `task_identity` raises nothing but ValueError or TypeError (the ECS source counts those
as `bad_shape`); `derive` raises nothing; every sample is a
finite float with a non-empty name and string tags.

The suite runs each target for a few seconds (tests/reliability/test_fuzz.py); run it here for
minutes. libFuzzer prints executions, coverage and time; a failure prints the input and exits 1.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import atheris

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = ROOT / "tests" / "fixtures" / "ecs"

with atheris.instrument_imports():
    from agent.config import Config
    from agent.identity import task_identity
    from agent.model import Points
    from agent.sources.ecs_stats import derive
    from agent.statsd.flush import Flusher
    from agent.statsd.receive import Aggregator
    from agent.statsd.parser import MAX_NAME, MAX_TAG, parse

# --- StatsD ------------------------------------------------------------------------------------

STATSD_SEEDS = [
    b"jobs.done:1|c", b"jobs.done:1|c|@0.5|#queue:orders,bare", b"worker.busy:3|g\nworker.busy:+2|g",
    b"job.seconds:1:2:3|h|@0.25", b"lat:12.5|ms|#route:users", b"users:abc:def|s", b"size:5|d|c:abc123",
    b"ts:4|c|T1700000000", b"_e{5,4}:title|text|p:low|t:warning|#a:b", b"_sc|db.up|2|m:down|again",
    b"a:1|c\r\nb:2|g\n\nc:nan|c\nd:1e400|g\ne:-0|c", b"x:1|q|e:ext|card:high|#t",
]
STATSD_DICT = ['"|c"', '"|g"', '"|ms"', '"|h"', '"|s"', '"|d"', '"|@"', '"|#"', '"|c:"', '"|T"', '"_e{"', '"_sc|"',
               '"|m:"', '"nan"', '"inf"', '"1e400"', '"-0"', '"+"', '"\\x0a"', '"\\xff"', '"1e-320"']


def check_statsd(data: bytes) -> None:
    parsed = parse(data)
    agg = Aggregator(max_contexts=20)
    agg.ingest(data)
    agg.ingest(data)  # the same again, now through the caches
    assert agg.stats.lines == 2 * parsed.lines, (agg.stats.lines, parsed.lines)
    # at the context cap (20 here) a line of a refused context counts as cardinality_limit, whatever
    # its value (a bad value too) and in either pass; every other line counts as the parser says
    errors = {k: v for k, v in agg.stats.errors.items() if v}
    capped = errors.pop("cardinality_limit", 0)
    expected = {k: 2 * v for k, v in parsed.errors.items() if v}
    moved = sum(expected.values()) - sum(errors.values())  # errors the cap took over
    assert errors.keys() <= expected.keys() and all(errors[k] <= expected[k] for k in errors), (errors, expected)
    assert 0 <= moved <= capped, (agg.stats.errors, parsed.errors)
    for m in parsed.metrics:
        assert len(m.head.name.encode()) <= MAX_NAME
        assert all(len((f"{k}:{v}" if v else k).encode()) <= MAX_TAG for k, v in m.head.tags)
    python_loop = Aggregator(max_contexts=20, accelerated=False)
    python_loop.ingest(data)
    python_loop.ingest(data)
    assert _counts(python_loop) == _counts(agg), (_counts(python_loop), _counts(agg))
    batch = Flusher(10.0).batch(agg.swap(1.0), now=1.0)
    assert _samples(batch) == _samples(Flusher(10.0).batch(python_loop.swap(1.0), now=1.0))
    for s in batch.samples:
        if isinstance(s.value, Points):
            assert all(math.isfinite(v) for v in s.value.values), s
        elif s.kind.value == "gauge":
            assert math.isfinite(s.value), s
        s.name.encode()  # valid text
        for k, v in s.tags:
            (k + v).encode()


def _counts(agg: Aggregator) -> tuple[Any, ...]:
    s = agg.stats
    return s.lines, s.samples, {k: v for k, v in s.errors.items() if v}, s.contexts_dropped, agg.context_count


def _samples(batch: Any) -> list[tuple[Any, ...]]:
    """Comparable samples: floats by repr (exact, -0.0), histogram values in their order."""
    def value(s: Any) -> str:
        return repr(list(zip(s.value.values, s.value.weights)) if isinstance(s.value, Points) else s.value)
    return sorted((s.name, s.tags, s.kind.value, s.timestamp or 0, value(s)) for s in batch.samples)


# --- ECS ---------------------------------------------------------------------------------------

PAIRS = [("fargate-2023.task", "fargate-2023.stats"), ("ec2-bridge-2020.task", "ec2-bridge-2020.stats"),
         ("ec2-awsvpc-2023-cgroupv2.task", "ec2-awsvpc-2023-cgroupv2.stats"),
         ("fargate-2021.task", "fargate-2021.stats")]
DOCS = [(json.loads((FIXTURES / f"{t}.json").read_text()), json.loads((FIXTURES / f"{s}.json").read_text()))
        for t, s in PAIRS]
CONFIG = Config()
ODD_NUMBERS = (float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 2**64, 2**1100, -1, 0, -0.0, 1e-320)


def _nodes(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _nodes(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _nodes(v, path + (i,))
    return out


def _value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> Any:
    kind = fdp.ConsumeIntInRange(0, 8 if depth < 2 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeInt(8)
    if kind == 3:
        return fdp.PickValueInList(list(ODD_NUMBERS))
    if kind == 4:
        return fdp.ConsumeRegularFloat()
    if kind == 5:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    if kind == 6:
        return [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if kind == 7:
        return {fdp.ConsumeUnicodeNoSurrogates(8): _value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))}
    return fdp.ConsumeUnicodeNoSurrogates(30)


def _mutate(doc: Any, fdp: atheris.FuzzedDataProvider) -> Any:
    doc = json.loads(json.dumps(doc))  # a fresh copy
    for _ in range(fdp.ConsumeIntInRange(1, 6)):
        nodes = _nodes(doc)
        path = nodes[fdp.ConsumeIntInRange(0, len(nodes) - 1)]
        if not path:
            return _value(fdp)
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if fdp.ConsumeBool() and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = _value(fdp)
    return doc


def check_ecs(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    task, stats = DOCS[fdp.ConsumeIntInRange(0, len(DOCS) - 1)]
    which = fdp.ConsumeIntInRange(0, 2)
    if which != 1:
        task = _mutate(task, fdp)
    if which != 0:
        stats = _mutate(stats, fdp)
    previous = _mutate(stats, fdp) if fdp.ConsumeBool() and isinstance(stats, dict) else {}
    try:
        task_identity(CONFIG, task, {})
    except (ValueError, TypeError):  # what the ECS source expects (counted as `bad_shape`)
        pass
    derived = derive(task, stats, previous if isinstance(previous, dict) else {})
    for s in derived.samples:
        assert isinstance(s.value, float) and math.isfinite(s.value), s
        assert isinstance(s.name, str) and s.name, s
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in s.tags), s


TARGETS = {"statsd": check_statsd, "ecs": check_ecs}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in TARGETS:
        print(__doc__)
        return 2
    name, flags = argv[1], argv[2:]
    target = TARGETS[name]
    corpus: list[str] = []
    if not any(not f.startswith("-") for f in flags):  # no corpus directory given: seed a fresh one
        seeds = Path(tempfile.mkdtemp(prefix=f"tasklens-fuzz-{name}-"))
        if name == "statsd":
            for i, seed in enumerate(STATSD_SEEDS):
                (seeds / f"seed{i}").write_bytes(seed)
            (seeds.parent / f"{seeds.name}.dict").write_text("\n".join(STATSD_DICT) + "\n")
            flags.append(f"-dict={seeds.parent / f'{seeds.name}.dict'}")
        else:
            for i in range(8):
                (seeds / f"seed{i}").write_bytes(bytes(range(i, i + 64)))
        corpus = [str(seeds)]
    atheris.Setup([argv[0], *flags, *corpus], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
