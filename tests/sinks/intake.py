"""A local Datadog intake that checks requests as strictly as Datadog's API reference describes them.

Nothing of Datadog's can run here, so this fake stands in for it, on real HTTP over loopback. It
validates the method, path, `DD-API-KEY`, `Content-Type`, `Content-Encoding` (deflate or gzip for
`/api/v2/series`, deflate for `/api/v1/distribution_points`), the documented size limits, and each
body against a JSON schema of the documented fields: metric type enum 0-3, `interval` required for
counts and rates, integer timestamps in seconds within the accepted window, tags as `key:value` strings,
the points' shapes, the events' and service checks' required fields and enums. A request that breaks a
rule gets 400 with the reason (as Datadog answers) and the reason is kept in `errors`, which every test
asserts is empty. Good requests get 202 and Datadog's response body.

It is at least as strict as the real intake for every rule the sidecar validates (docs/datadog.md lists
them with their sources), and refuses the WHOLE payload for one bad object, as the real one does:
metric names (a letter first, `[A-Za-z0-9_.]`, 200 characters), values (finite numbers only, also
when the JSON spells one too large for a double), timestamps inside each endpoint's window (series and
distributions: 1 h back, 10 min ahead; service checks: 10 min back and ahead; events: 18 h back, 2 h
ahead), event title/text/aggregation key lengths, the service check name length, and text
that is valid Unicode. Where the real intake normalises instead of refusing (tags: lower case, other
characters to `_`, ...), this one refuses any tag not already in that normal form, so a test proves
the sidecar sends exactly what Datadog would store.

Failure injection: `fail_next(n, status)` answers `status` to the next n requests; `always(status)` to
every request; `fail_text` replaces the body of those answers (an intake that echoes the request);
`delay` holds every answer for that many seconds (for timeouts); `slow_body` makes those injected
answers send their status, headers (a `Content-Length` 1000 bytes past the text) and text, then stall
for that many seconds before the rest (a refusal whose body never comes).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
from aiohttp import web

from tests.support import serve_app

MAX_COMPRESSED = 512_000
MAX_DECOMPRESSED = 5_242_880
INT64_MAX = 2**63 - 1
# (seconds accepted before, after the intake's clock) per endpoint
WINDOWS = {"/api/v2/series": (3600, 600), "/api/v1/distribution_points": (3600, 600),
           "/api/v1/check_run": (600, 600), "/api/v1/events": (18 * 3600, 2 * 3600)}

TAG = {"type": "string", "minLength": 1, "maxLength": 200}  # and in normal form: `tag_problem`
TAGS = {"type": "array", "items": TAG}
NAME = {"type": "string", "pattern": r"^[A-Za-z][A-Za-z0-9_.]{0,199}$"}
TIMESTAMP = {"type": "integer"}

SERIES_SCHEMA = {
    "type": "object",
    "required": ["series"],
    "additionalProperties": False,
    "properties": {"series": {"type": "array", "minItems": 1, "items": {
        "type": "object",
        "required": ["metric", "points"],
        "additionalProperties": False,
        "properties": {
            "metric": NAME,
            "type": {"enum": [0, 1, 2, 3]},
            "interval": {"type": "integer", "minimum": 1, "maximum": INT64_MAX},
            "points": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["timestamp", "value"], "additionalProperties": False,
                "properties": {"timestamp": TIMESTAMP, "value": {"type": "number"}},
            }},
            "tags": TAGS,
            "resources": {"type": "array", "items": {"type": "object", "required": ["name", "type"]}},
            "unit": {"type": "string"},
            "source_type_name": {"type": "string"},
            "metadata": {"type": "object"},
        },
        # counts (1) and rates (2) need their interval
        "if": {"required": ["type"], "properties": {"type": {"enum": [1, 2]}}},
        "then": {"required": ["interval"]},
    }}},
}

DISTRIBUTION_SCHEMA = {
    "type": "object",
    "required": ["series"],
    "additionalProperties": False,
    "properties": {"series": {"type": "array", "minItems": 1, "items": {
        "type": "object",
        "required": ["metric", "points"],
        "additionalProperties": False,
        "properties": {
            "metric": NAME,
            "host": {"type": "string"},
            "tags": TAGS,
            "type": {"enum": ["distribution"]},
            "points": {"type": "array", "minItems": 1, "items": {
                "type": "array", "minItems": 2, "maxItems": 2,
                "prefixItems": [TIMESTAMP, {"type": "array", "minItems": 1, "items": {"type": "number"}}],
            }},
        },
    }}},
}

EVENT_SCHEMA = {
    "type": "object",
    "required": ["title", "text"],
    "additionalProperties": False,
    "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 100},
        "text": {"type": "string", "maxLength": 4000},
        "aggregation_key": {"type": "string", "maxLength": 100},
        "alert_type": {"enum": ["error", "warning", "info", "success", "user_update", "recommendation",
                                "snapshot"]},
        "date_happened": TIMESTAMP,
        "device_name": {"type": "string"},
        "host": {"type": "string"},
        "priority": {"enum": ["normal", "low"]},
        "related_event_id": {"type": "integer"},
        "source_type_name": {"type": "string"},
        "tags": TAGS,
    },
}

CHECK_RUN_SCHEMA = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["check", "host_name", "status", "tags"],
        "additionalProperties": False,
        "properties": {
            "check": {"type": "string", "minLength": 1, "maxLength": 200},
            "host_name": {"type": "string"},
            "message": {"type": "string"},  # past 500 characters only shown cut, not refused
            "status": {"enum": [0, 1, 2, 3]},
            "tags": TAGS,
            "timestamp": TIMESTAMP,
        },
    },
}

ENDPOINTS = {
    "/api/v2/series": (SERIES_SCHEMA, ("deflate", "gzip"), {"errors": []}),
    "/api/v1/distribution_points": (DISTRIBUTION_SCHEMA, ("deflate",), {"status": "ok"}),
    "/api/v1/events": (EVENT_SCHEMA, (None, "deflate", "gzip"), {"status": "ok"}),
    "/api/v1/check_run": (CHECK_RUN_SCHEMA, (None, "deflate", "gzip"), {"status": "ok"}),
}


class Invalid(Exception):
    pass


class Intake:
    def __init__(self, api_key: str = "0123456789abcdef0123456789abcdef") -> None:
        self.api_key = api_key
        self.errors: list[str] = []  # validation failures: every test expects none
        self.requests: list[tuple[str, int]] = []  # (path, status answered), in order
        self.arrivals: list[float] = []  # time.monotonic() of each request's arrival
        self.series: list[dict[str, Any]] = []
        self.distributions: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []
        self.encodings: set[str | None] = set()
        self.delay = 0.0
        self.redirect_to = ""
        self._fail: list[int] = []
        self.fail_text: str | None = None  # the body of injected failures, instead of Datadog's
        self.slow_body = 0.0  # injected failures: headers and text sent, then the rest of the body stalls
        self._always: int | None = None
        self._fail_until = 0.0
        self._fail_status = 500
        self.url = ""

    def fail_next(self, n: int, status: int = 500) -> None:
        self._fail.extend([status] * n)

    def always(self, status: int | None) -> None:
        self._always = status

    def fail_for(self, seconds: float, status: int = 500) -> None:
        """Answer `status` to everything for the next `seconds` (an outage), then recover."""
        self._fail_until = time.monotonic() + seconds
        self._fail_status = status

    # -- queries for tests --------------------------------------------------------------------

    def points(self, metric: str) -> list[tuple[int, float, tuple[str, ...], int, int | None]]:
        """(timestamp, value, tags, type, interval) of every accepted point of `metric`."""
        return [(p["timestamp"], p["value"], tuple(s.get("tags", ())), s.get("type", 0), s.get("interval"))
                for s in self.series if s["metric"] == metric for p in s["points"]]

    def metrics(self) -> set[str]:
        return {s["metric"] for s in self.series}

    def accepted(self, path: str) -> int:
        return sum(1 for p, status in self.requests if p == path and status == 202)

    # -- the server ---------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        path = request.path
        body = await request.read()
        if self.redirect_to:  # a hijacked or misconfigured endpoint: the key must not follow
            self.requests.append((path, 307))
            return web.Response(status=307, headers={"Location": self.redirect_to + path})
        if self.delay:
            await asyncio.sleep(self.delay)
        if path == "/api/v1/validate" and request.method == "GET":  # the key check, as Datadog answers it
            valid = request.headers.get("DD-API-KEY") == self.api_key
            self.requests.append((path, 200 if valid else 403))
            return web.json_response({"valid": True} if valid else {"errors": ["Forbidden"]},
                                     status=200 if valid else 403)
        outage = time.monotonic() < self._fail_until
        if self._fail or self._always or outage:
            status = self._fail.pop(0) if self._fail else (self._fail_status if outage else self._always)
            assert status is not None
            self.requests.append((path, status))
            text = self.fail_text or {403: '{"errors":["Forbidden"]}', 429: '{"errors":["Too many requests"]}'}.get(
                status, '{"errors":["Internal Server Error"]}')
            if self.slow_body:
                return await self._stall(request, status, text.encode())
            return web.Response(status=status, text=text, content_type="application/json")
        try:
            doc = self.validate(request, body)
        except Invalid as exc:
            self.errors.append(f"{path}: {exc}")
            self.requests.append((path, 400))
            return web.json_response({"errors": [str(exc)]}, status=400)
        self.requests.append((path, 202))
        _, _, answer = ENDPOINTS[path]
        if path == "/api/v2/series":
            self.series.extend(doc["series"])
        elif path == "/api/v1/distribution_points":
            self.distributions.extend(doc["series"])
        elif path == "/api/v1/events":
            self.events.append(doc)
            answer = {"status": "ok", "event": {"id": len(self.events), "title": doc["title"]}}
        else:
            self.checks.extend(doc)
        return web.json_response(answer, status=202)

    async def _stall(self, request: web.Request, status: int, text: bytes) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
        response.content_length = len(text) + 1000
        await response.prepare(request)
        await response.write(text)
        await asyncio.sleep(self.slow_body)  # the client gives up first; the rest never comes
        try:
            await response.write(b" " * 1000)
        except ConnectionError:  # the client has gone, as expected
            pass
        return response

    def validate(self, request: web.Request, body: bytes) -> Any:
        if request.method != "POST":
            raise Invalid(f"method {request.method}, expected POST")
        if request.path not in ENDPOINTS:
            raise Invalid(f"unknown path {request.path}")
        if request.query:
            raise Invalid(f"unexpected query string {request.query_string!r} (the key belongs in DD-API-KEY)")
        _, encodings, _ = ENDPOINTS[request.path]
        if request.headers.get("DD-API-KEY") != self.api_key:
            raise Invalid("missing or wrong DD-API-KEY header")
        if request.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            raise Invalid(f"Content-Type {request.headers.get('Content-Type')!r}, expected application/json")
        encoding = request.headers.get("Content-Encoding")
        self.encodings.add(encoding)
        if encoding not in encodings:
            raise Invalid(f"Content-Encoding {encoding!r}, expected one of {encodings}")
        return check_payload(request.path, encoding, body)


def check_payload(path: str, encoding: str | None, body: bytes, now: float | None = None) -> Any:
    """The body of a request to `path`, checked as the intake checks it; raises `Invalid`, else the JSON.

    Apart from the HTTP details (method, headers), so property tests can check thousands of payloads
    without a request each.
    """
    schema, encodings, _ = ENDPOINTS[path]
    if encoding not in encodings:
        raise Invalid(f"Content-Encoding {encoding!r}, expected one of {encodings}")
    if len(body) > MAX_COMPRESSED:
        raise Invalid(f"payload of {len(body)} bytes, over {MAX_COMPRESSED}")
    try:
        if encoding == "deflate":
            raw = zlib.decompress(body)
        elif encoding == "gzip":
            raw = gzip.decompress(body)
        else:
            raw = body
    except (zlib.error, OSError) as exc:
        raise Invalid(f"body is not {encoding}: {exc}") from None
    if len(raw) >= MAX_DECOMPRESSED:
        raise Invalid(f"decompressed payload of {len(raw)} bytes, over {MAX_DECOMPRESSED}")
    try:
        doc = json.loads(raw, parse_constant=_no_constants)
    except ValueError as exc:
        raise Invalid(f"body is not JSON: {exc}") from None
    try:
        jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)
    except jsonschema.ValidationError as exc:
        raise Invalid(f"{exc.message} at {list(exc.absolute_path)}") from None
    _check_unicode(doc)
    _check_times(path, doc, time.time() if now is None else now)
    _check_values(path, doc)
    _check_tags(doc)
    return doc


def _check_times(path: str, doc: Any, now: float) -> None:
    if path == "/api/v2/series":
        stamps = [p["timestamp"] for s in doc["series"] for p in s["points"]]
    elif path == "/api/v1/distribution_points":
        stamps = [p[0] for s in doc["series"] for p in s["points"]]
    elif path == "/api/v1/check_run":
        stamps = [c["timestamp"] for c in doc if "timestamp" in c]
    else:
        stamps = [doc["date_happened"]] if "date_happened" in doc else []
    past, future = WINDOWS[path]
    for ts in stamps:
        if not now - past <= ts <= now + future:
            raise Invalid(f"timestamp {ts} outside [now - {past} s, now + {future} s] (seconds, not ms?)")

def _check_values(path: str, doc: Any) -> None:
    if path == "/api/v2/series":
        values = [p["value"] for s in doc["series"] for p in s["points"]]
    elif path == "/api/v1/distribution_points":
        values = [v for s in doc["series"] for p in s["points"] for v in p[1]]
    else:
        return
    for v in values:  # `1e999` is valid JSON syntax but no double: Datadog refuses it
        try:
            finite = math.isfinite(v)
        except OverflowError:  # an integer beyond any double
            finite = False
        if not finite:
            raise Invalid(f"value {str(v)[:50]} is not a finite number")

def _check_tags(doc: Any) -> None:
    objects = doc["series"] if isinstance(doc, dict) and "series" in doc else doc if isinstance(doc, list) else [doc]
    for obj in objects:
        for tag in obj.get("tags", ()):
            problem = tag_problem(tag)
            if problem:
                raise Invalid(f"tag {tag!r}: {problem}")


def tag_problem(tag: str) -> str | None:
    """Why `tag` is not in the form Datadog stores it (getting_started/tagging), or None.

    Written apart from the sidecar's normaliser on purpose: the two must agree for the tests to pass.
    """
    if not 1 <= len(tag) <= 200:
        return "not 1-200 characters"
    if not tag[0].isalpha():
        return "does not start with a letter"
    for c in tag:
        if not (c.isalpha() or c.isdecimal() or c in "_.:/-"):
            return f"character {c!r} is not allowed"
        low = c.lower()
        if low != c and len(low) == 1 and len(low.encode()) == len(c.encode()):
            return f"upper case {c!r} (Datadog stores tags in lower case)"
    if "__" in tag:
        return "contiguous underscores"
    if tag[-1] in "_:":
        return "ends with an underscore or a colon"
    return None


def _check_unicode(value: Any) -> None:
    """Every string must be valid Unicode: a lone surrogate (`"\\ud800"`) is not text."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Invalid(f"string {value[:50]!r} is not valid Unicode") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_unicode(k)
            _check_unicode(v)
    elif isinstance(value, list):
        for v in value:
            _check_unicode(v)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def start_intake(intake: Intake, port: int = 0) -> AsyncIterator[Intake]:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", intake.handle)
    runner, intake.url = await serve_app(app, port, auto_decompress=False)  # check the raw body
    try:
        yield intake
    finally:
        await runner.cleanup()


async def _serve(port: int, api_key: str) -> None:
    """Run the intake alone and print what arrives: `python -m tests.sinks.intake --port 8126`."""
    intake = Intake(api_key)
    handle = intake.handle

    async def printing(request: web.Request) -> web.Response:
        before = (len(intake.series), len(intake.distributions), len(intake.events), len(intake.checks),
                  len(intake.errors))
        response = await handle(request)
        for s in intake.series[before[0]:]:
            print(f"{request.path} {s['metric']} type={s.get('type')} interval={s.get('interval')} "
                  f"points={[(p['timestamp'], p['value']) for p in s['points']]} tags={s.get('tags')}")
        for s in intake.distributions[before[1]:]:
            print(f"{request.path} {s['metric']} points={s['points']} tags={s.get('tags')}")
        for e in intake.events[before[2]:]:
            print(f"{request.path} {e}")
        for c in intake.checks[before[3]:]:
            print(f"{request.path} {c}")
        for err in intake.errors[before[4]:]:
            print(f"REJECTED {err}")
        return response

    intake.handle = printing  # type: ignore[method-assign]
    async for running in start_intake(intake, port):
        print(f"fake Datadog intake on {running.url} (API key {api_key[:4]}...); "
              f"export DD_DD_URL={running.url} DD_API_KEY=<that key>", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="a strict local Datadog intake that prints what it accepts")
    parser.add_argument("--port", type=int, default=8126)
    parser.add_argument("--api-key", default="0123456789abcdef0123456789abcdef")
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.port, args.api_key))
    except KeyboardInterrupt:
        pass
