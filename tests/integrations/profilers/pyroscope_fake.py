"""A local Pyroscope that checks what arrives as strictly as the real server does.

No Pyroscope server can run here, so this one stands in for it on real HTTP over loopback. It takes
the two ways tasklens pushes profiles:

- `POST /ingest` (sidecar mode, folded text): the `name` must parse like Pyroscope's segment key
  (`<app>.<type>{k=v,...}`: app runes `[a-zA-Z0-9_.-]`, label names `[a-zA-Z_][a-zA-Z0-9_]*`, a
  known profile type as the last dot-part of the app), `from`/`until` integers with from <= until,
  `format=folded`, a positive integer `sampleRate`, a `spyName`; every body line `frames count` with
  a positive integer count.
- `POST /push.v1.PusherService/Push` (pyroscope-io, bootstrap mode): a gzip-compressed `PushRequest`
  protobuf whose series carry labels (`__name__`, `service_name`, ...) and raw pprof profiles,
  decoded here with a small protobuf wire-format reader (no generated code is installed).

Bad requests get 400 with the reason, which is also kept in `errors`: every test asserts it empty.
`require_auth` / `require_tenant` make it answer 401 without the right credentials; `status`
overrides the answer to good requests (failure injection); `redirect` makes both endpoints answer a
redirect (`(status, Location)`, before any check, as a load balancer in front would). A request to
any other path or with another method (a client that followed the redirect) is an error too, but
answered 200, as a permissive target would: the client believes it pushed.
"""

from __future__ import annotations

import base64
import gzip
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from tests.support import serve_app

KNOWN_TYPES = {"cpu", "itimer", "wall", "alloc_objects", "alloc_space", "inuse_objects", "inuse_space",
               "goroutines", "mutex_count", "mutex_duration", "block_count", "block_duration"}
APP_NAME = re.compile(r"^[a-zA-Z0-9_.\-]+$")
# Grafana Pyroscope's default per-tenant limits on series labels
MAX_LABELS, MAX_NAME_LENGTH, MAX_VALUE_LENGTH = 30, 1024, 2048
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class Invalid(ValueError):
    pass


def parse_key(name: str) -> tuple[str, str, dict[str, str]]:
    """(service, profile type, labels) from `<app>.<type>{k=v,...}`, as Pyroscope's ParseKey reads it."""
    app, brace, rest = name.partition("{")
    app = app.strip()
    if not brace or not rest.endswith("}"):
        raise Invalid(f"name {name!r}: expected <app>.<type>{{labels}}")
    if not APP_NAME.match(app):
        raise Invalid(f"name {name!r}: invalid application name {app!r}")
    service, dot, kind = app.rpartition(".")
    if not dot or not service or kind not in KNOWN_TYPES:
        raise Invalid(f"name {name!r}: unknown profile type {kind!r}")
    labels: dict[str, str] = {}
    inner = rest[:-1]
    if inner:
        for pair in inner.split(","):
            key, eq, value = pair.partition("=")
            key = key.strip()
            if not eq or not LABEL_NAME.match(key) or key.startswith("__"):
                raise Invalid(f"name {name!r}: invalid label {pair!r}")
            if "{" in value or "}" in value:
                raise Invalid(f"name {name!r}: label value {value!r} has a brace")
            if key in labels:
                raise Invalid(f"name {name!r}: label {key!r} twice")
            labels[key] = value.strip()
    check_limits(labels, len(INGEST_ADDS))
    return service, kind, labels


# what `/ingest` adds to the labels of the name it is given before checking their number
INGEST_ADDS = ("__name__", "service_name", "__delta__", "pyroscope_spy")


def check_limits(labels: dict[str, str], added: int = 0) -> None:
    if len(labels) + added > MAX_LABELS:
        raise Invalid(f"profile series has {len(labels) + added} label names; limit {MAX_LABELS}")
    for key, value in labels.items():
        if len(key) > MAX_NAME_LENGTH or len(value) > MAX_VALUE_LENGTH:
            raise Invalid(f"label {key!r}: name or value too long")


def parse_folded(body: bytes) -> Counter[str]:
    stacks: Counter[str] = Counter()
    # lines end at "\n" only, as Go reads lines: U+2028, \x0c, \x1c... are part of a frame's name
    for n, line in enumerate(body.decode("utf-8").split("\n"), 1):
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        if not stack.strip() or not count.isdigit() or int(count) <= 0:
            raise Invalid(f"body line {n}: expected 'frame;frame;... count', got {line!r}")
        stacks[stack] += int(count)
    if not stacks:
        raise Invalid("empty profile")
    return stacks


# --- protobuf wire format ----------------------------------------------------------------------


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise Invalid("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return result, i


def fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs: ints for varints, bytes for length-delimited and fixed fields."""
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise Invalid("truncated field")
            value, i = buf[i:i + n], i + n
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise Invalid(f"unsupported wire type {wire}")
        out.append((number, value))
    return out


def _ints(values: list[int | bytes]) -> list[int]:
    """A repeated integer field: packed (bytes) or not."""
    out: list[int] = []
    for v in values:
        if isinstance(v, int):
            out.append(v)
        else:
            i = 0
            while i < len(v):
                x, i = _varint(v, i)
                out.append(x)
    return out


def _by_number(buf: bytes) -> dict[int, list[int | bytes]]:
    d: dict[int, list[int | bytes]] = {}
    for number, value in fields(buf):
        d.setdefault(number, []).append(value)
    return d


@dataclass
class Pprof:
    sample_types: list[tuple[str, str]]  # (type, unit)
    stacks: Counter[tuple[str, ...]]  # leaf-first function names -> first value

    def share(self, function: str) -> float:
        total = sum(self.stacks.values())
        return sum(v for s, v in self.stacks.items() if function in s) / total if total else 0.0


def decode_pprof(raw: bytes) -> Pprof:
    """The parts of a `perftools.profiles.Profile` a test looks at."""
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    p = _by_number(raw)
    strings = [bytes(s).decode() for s in p.get(6, []) if isinstance(s, bytes)]
    if not strings or strings[0] != "":
        raise Invalid("pprof string table must start with ''")
    sample_types = []
    for vt in p.get(1, []):
        d = _by_number(bytes(vt))  # type: ignore[arg-type]
        sample_types.append((strings[_ints(d.get(1, [0]))[0]], strings[_ints(d.get(2, [0]))[0]]))
    functions = {}
    for f in p.get(5, []):
        d = _by_number(bytes(f))  # type: ignore[arg-type]
        functions[_ints(d[1])[0]] = strings[_ints(d.get(2, [0]))[0]]
    locations = {}
    for loc in p.get(4, []):
        d = _by_number(bytes(loc))  # type: ignore[arg-type]
        names = [functions[_ints(_by_number(bytes(line)).get(1, [0]))[0]]  # type: ignore[arg-type]
                 for line in d.get(4, [])]
        locations[_ints(d[1])[0]] = names
    stacks: Counter[tuple[str, ...]] = Counter()
    for s in p.get(2, []):
        d = _by_number(bytes(s))  # type: ignore[arg-type]
        names = tuple(n for loc in _ints(d.get(1, [])) for n in locations[loc])
        values = _ints(d.get(2, []))
        if len(values) != len(sample_types):
            raise Invalid("sample value count differs from sample_type count")
        stacks[names] += values[0]
    return Pprof(sample_types, stacks)


@dataclass
class Series:
    labels: dict[str, str]
    profiles: list[Pprof]


def decode_push(body: bytes) -> list[Series]:
    """A `push.v1.PushRequest`: series (1) of labels (1: name 1, value 2) and samples (2: raw_profile 1)."""
    out = []
    for number, series in fields(body):
        if number != 1 or not isinstance(series, bytes):
            raise Invalid(f"PushRequest: unexpected field {number}")
        d = _by_number(series)
        labels = {}
        for pair in d.get(1, []):
            kv = _by_number(bytes(pair))  # type: ignore[arg-type]
            labels[bytes(kv[1][0]).decode()] = bytes(kv.get(2, [b""])[0]).decode()  # type: ignore[arg-type]
        for name in labels:
            if not re.match(r"^[a-zA-Z_][a-zA-Z0-9_.]*$", name):
                raise Invalid(f"invalid label name {name!r}")
        if "__name__" not in labels or "service_name" not in labels:
            raise Invalid(f"series without __name__ or service_name: {labels}")
        check_limits(labels)  # all of them: pyroscope-io's own (`otel.scope.name`, ...) count too
        profiles = [decode_pprof(bytes(_by_number(bytes(s))[1][0])) for s in d.get(2, [])]  # type: ignore[arg-type]
        out.append(Series(labels, profiles))
    return out


# --- the server --------------------------------------------------------------------------------


@dataclass
class Ingested:
    service: str
    kind: str
    labels: dict[str, str]
    start: int
    until: int
    sample_rate: int
    spy_name: str
    stacks: Counter[str]
    headers: dict[str, str]

    def share(self, function: str) -> float:
        total = sum(self.stacks.values())
        return sum(v for s, v in self.stacks.items() if function in s) / total


@dataclass
class FakePyroscope:
    require_auth: tuple[str, str] | None = None
    require_tenant: str | None = None
    status: int = 200
    ingested: list[Ingested] = field(default_factory=list)
    pushed: list[Series] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    url: str = ""
    error_text: str = ""  # the body of a non-200 answer to an ingest (servers echo what they got)
    redirect: tuple[int, str] | None = None  # (status, Location) answered to every push

    def _check_headers(self, request: web.Request) -> web.Response | None:
        if self.redirect:
            status, location = self.redirect
            return web.Response(status=status, headers={"Location": location})
        if self.require_auth:
            token = base64.b64encode(":".join(self.require_auth).encode()).decode()
            if request.headers.get("Authorization") != f"Basic {token}":
                return web.Response(status=401, text="unauthorized")
        if self.require_tenant and request.headers.get("X-Scope-OrgID") != self.require_tenant:
            return web.Response(status=401, text="no org id")
        return None

    async def ingest(self, request: web.Request) -> web.Response:
        denied = self._check_headers(request)
        if denied:
            return denied
        q = request.query
        try:
            service, kind, labels = parse_key(q.get("name", ""))
            try:
                start, until, rate = int(q["from"]), int(q["until"]), int(q["sampleRate"])
            except (KeyError, ValueError):
                raise Invalid(f"from/until/sampleRate must be integers: {dict(q)}") from None
            if start > until or rate <= 0:
                raise Invalid(f"from {start} > until {until} or sampleRate {rate} <= 0")
            if q.get("format") != "folded" or not q.get("spyName"):
                raise Invalid(f"format must be folded and spyName set: {dict(q)}")
            stacks = parse_folded(await request.read())
        except Invalid as exc:
            self.errors.append(str(exc))
            return web.Response(status=400, text=str(exc))
        if self.status == 200:
            self.ingested.append(Ingested(service, kind, labels, start, until, rate, q["spyName"], stacks,
                                          dict(request.headers)))
            return web.Response(status=200)
        return web.Response(status=self.status, text=self.error_text)

    async def other(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.errors.append(f"unexpected {request.method} {request.path} ({len(body)} bytes)")
        return web.Response(status=200)

    async def push(self, request: web.Request) -> web.Response:
        denied = self._check_headers(request)
        if denied:
            return denied
        try:
            if request.headers.get("Content-Encoding") != "gzip":
                raise Invalid(f"Content-Encoding {request.headers.get('Content-Encoding')!r}, expected gzip")
            body = await request.read()  # aiohttp has gunzipped it (and refused it if it were not gzip)
            self.pushed.extend(decode_push(body))
        except (Invalid, UnicodeDecodeError, KeyError, IndexError) as exc:
            self.errors.append(f"push: {exc!r}")
            return web.Response(status=400, text=str(exc))
        return web.Response(status=self.status)


async def start_pyroscope(fake: FakePyroscope) -> AsyncIterator[FakePyroscope]:
    app = web.Application()
    app.router.add_post("/ingest", fake.ingest)
    app.router.add_post("/push.v1.PusherService/Push", fake.push)
    app.router.add_route("*", "/{anything:.*}", fake.other)
    runner, fake.url = await serve_app(app)
    try:
        yield fake
    finally:
        await runner.cleanup()
