"""Redis queues: plain keys (lists and friends), Celery's priority lists, RQ, and streams with a group.

    redis://[:password@]host:6379/0?list=jobs          LLEN (ZCARD/SCARD/HLEN/XLEN by key type)
    redis://host:6379/0?celery=celery                  sum of the kombu priority lists
    redis://host:6379/0?rq=default                     RQ: ready, started, scheduled, live workers, age
    redis://host:6379/0?stream=orders&group=workers    XINFO GROUPS: lag, pending, consumers, age

An absent key is an empty queue (Redis deletes empty lists), so it reads 0. Lists carry no
timestamps: plain and Celery lists report no age; RQ's job hash has `enqueued_at`, and a stream
id's first part is its enqueue time in milliseconds (when Redis generated it: see `stream_age`).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from integrations.queues.base import Broker, ProbeError, QueueURL, Reading, age_of, readable_files

KINDS = ("list", "celery", "rq", "stream")
# kombu's Redis transport: priority steps 0, 3, 6, 9; level 0 is the bare name
CELERY_SEP = "\x06\x16"
CELERY_PRIORITY_STEPS = (0, 3, 6, 9)
# the length command by key type; an absent key (`none`) is an empty queue
LENGTH_BY_TYPE = {"list": "LLEN", "zset": "ZCARD", "set": "SCARD", "hash": "HLEN", "stream": "XLEN"}


def kind_of(url: QueueURL) -> tuple[str, str]:
    """(kind, key): exactly one of list=, celery=, rq=, stream= names the queue."""
    given = [(k, url.params[k]) for k in KINDS if url.params.get(k)]
    if len(given) != 1:
        raise ValueError("a Redis queue URL needs exactly one of ?list=, ?celery=, ?rq=, ?stream=")
    if url.params.get("group") and given[0][0] != "stream":
        raise ValueError("?group= goes with ?stream=")
    return given[0]


MAX_DATABASE = 2**31 - 1  # Redis' bound on `databases` (an int); the server's own setting bounds it further


def database(url: QueueURL) -> int:
    """The database the URL's path names: none or `/` is 0, `/<n>` (ASCII digits) is n. Anything else is
    refused: redis-py drops every `/` and reads the rest as a number, or reads database 0 when that fails
    (`/0/1` is 1, `/1/0` is 10, `/abc`, `/-0` and `/0x1` are 0), so the queue polled would be another one."""
    path = url.parts.path
    if path in ("", "/"):
        return 0
    digits = path[1:]
    if not (digits.isascii() and digits.isdigit()) or int(digits) > MAX_DATABASE:
        raise ValueError(f"database {digits[:40]!r}: the path is the database number, /0 to /{MAX_DATABASE} "
                         "(none for 0)")
    return int(digits)


TLS_PARAMS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_check_hostname")
CERT_REQS = ("none", "optional", "required")  # as redis-py takes them (lower case only)
# what redis-py reads as true or false (anything else is true to it, `off` too): the forms taken
BOOLEANS = ("true", "false", "yes", "no", "1", "0")


def tls_options(url: QueueURL) -> None:
    """The TLS parameters, as redis-py will take them: on a redis:// URL it passes them to a connection
    without TLS, which refuses them at every poll, and it refuses an unknown `ssl_cert_reqs` at every poll."""
    given = [key for key in TLS_PARAMS if key in url.params]
    if given and url.scheme != "rediss":
        raise ValueError(f"{given[0]}= goes with rediss:// (TLS): a redis:// connection has no TLS")
    reqs = url.params.get("ssl_cert_reqs")
    if reqs is not None and reqs not in CERT_REQS:
        raise ValueError(f"ssl_cert_reqs={reqs[:40]!r}: expected {', '.join(CERT_REQS)}")
    hostname = url.params.get("ssl_check_hostname")
    if hostname is not None and hostname.lower() not in BOOLEANS:
        raise ValueError(f"ssl_check_hostname={hostname[:40]!r}: expected true or false")
    readable_files(url, ("ssl_ca_certs",))


def check(url: QueueURL) -> None:
    kind_of(url)
    database(url)
    tls_options(url)


def celery_keys(queue: str) -> list[str]:
    return [queue if p == 0 else f"{queue}{CELERY_SEP}{p}" for p in CELERY_PRIORITY_STEPS]


def stream_id_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def stream_age(entry_id: str, now: float) -> float | None:
    """The age of the entry `entry_id` at `now` (Redis' TIME, seconds); None when its id is no time."""
    return age_of(stream_id_ms(entry_id) / 1000, now)


MAX_ENQUEUED_AT = 64  # bytes of RQ's `enqueued_at` (`2024-05-01T12:00:00.123456Z`: 27): a longer one is no time


def rq_age(enqueued_at: bytes | str | None, now: float) -> float | None:
    """The age of an RQ job whose `enqueued_at` is this, at `now`; None for any value that is not a plausible
    time (`age_of`): text, a number, bytes that are not UTF-8, a year before 2000. Never raises: the job hash
    is any writer's, and its head's odd field must not blank the queue's other numbers. RQ writes
    `2024-05-01T12:00:00.123456Z`, in UTC; a time without a zone (another writer) is UTC too, never the
    sidecar's local time."""
    if not enqueued_at or len(enqueued_at) > MAX_ENQUEUED_AT:
        return None
    try:
        text = enqueued_at.decode("ascii") if isinstance(enqueued_at, bytes) else enqueued_at
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return age_of(when.timestamp(), now)
    except (ValueError, OverflowError):  # UnicodeDecodeError is a ValueError
        return None


def _error(exc: Exception) -> Exception:
    from redis import exceptions as e

    text = str(exc)
    # an ACL's denial too: redis-py raises NoPermissionError and strips NOPERM from its text (a denial
    # inside the age's Lua script keeps it in the script's error)
    if isinstance(exc, (e.AuthenticationError, e.AuthenticationWrongNumberOfArgsError, e.NoPermissionError)) \
            or "NOAUTH" in text or "WRONGPASS" in text or "NOPERM" in text:
        return ProbeError("auth", text)
    if isinstance(exc, e.TimeoutError):
        return ProbeError("timeout", text)
    if isinstance(exc, e.ConnectionError):  # refused, reset, closed by the server
        return ProbeError("connection", text)
    if isinstance(exc, e.InvalidResponse):  # not RESP: what answers is not Redis (an HTTP server, garbage)
        return ProbeError("bad_reply", text)
    if isinstance(exc, e.ResponseError):
        if "no such key" in text.lower() or "NOGROUP" in text:
            return ProbeError("not_found", text)
        return ProbeError("bad_reply", text)
    return exc


# Lua run by Redis, so that only an id crosses the network, whatever the size of the entry it names
NEXT_ID = "local e = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', 1) if e[1] then return e[1][1] end return false"
HEAD_ID = "local v = redis.call('LINDEX', KEYS[1], 0) if v and #v <= tonumber(ARGV[1]) then return v end return false"
MAX_ID = 1024  # bytes of an RQ job id (a UUID, 36): a longer head is no job, and its age unknown
# the head job's `enqueued_at` only when it is short enough to be a time: any writer may put anything there
ENQUEUED_AT = ("local v = redis.call('HGET', KEYS[1], 'enqueued_at') if not v then return false end "
               "if #v <= tonumber(ARGV[1]) then return v end return #v")  # its length, when too long
# RQ's workers of a queue: the members of `rq:workers:<name>` whose own key `rq:worker:<name>` is still
# there. A worker killed with SIGKILL stays in the set (RQ prunes it only when a worker starts or `rq info`
# runs); its key expires worker_ttl + 60 s after its last heartbeat. Counted in Redis, one number back;
# past MAX_WORKERS members nothing is checked (a script that long would stall Redis): no count (nil).
LIVE_WORKERS = (
    "if redis.call('SCARD', KEYS[1]) > tonumber(ARGV[1]) then return false end local n = 0 "
    "for _, w in ipairs(redis.call('SMEMBERS', KEYS[1])) do n = n + redis.call('EXISTS', w) end return n")
MAX_WORKERS = 10_000


MAX_REPLY = 1024 * 1024  # bytes of one reply: the answers read are a type, numbers, a stream's groups, an id


def _capped(parser: type) -> type:
    """redis-py's `parser`, refusing a reply past MAX_REPLY bytes as it reads it: a bulk string of a
    larger announced length before it is read, an array whose elements add up past it. Without it a
    server that is not a queue (or a hostile one) made each poll read and keep what it sent: 100 MB a
    poll, and the poll's timeout did not give the memory back."""
    from redis.exceptions import ConnectionError, InvalidResponse

    class Capped(parser):  # type: ignore[misc]
        taken = 0  # bytes of the reply being read

        async def read_response(self, *args: Any, **kwargs: Any) -> Any:
            self.taken = 0
            return await super().read_response(*args, **kwargs)

        def _take(self, size: int) -> None:
            self.taken += size
            if size < 0 or self.taken > MAX_REPLY:
                # what was read goes now: the error's traceback holds this parser until a full collection
                self._chunks.clear()
                self._buffer = b""
                raise InvalidResponse(f"a reply over {MAX_REPLY} bytes: refused")

        async def _read(self, length: int) -> bytes:
            self._take(length + 2)
            data: bytes = await super()._read(length)
            return data

        async def _readline(self) -> bytes:
            try:
                line: bytes = await super()._readline()
            except ConnectionError:
                # redis-py says "closed by server" for any line not ended by CRLF; one ended by a bare LF
                # on an open connection is no RESP (random bytes, another protocol)
                if self._stream is not None and not self._stream.at_eof():
                    raise InvalidResponse("a line ended by a bare LF, not CRLF: no Redis reply") from None
                raise
            self._take(len(line) + 2)
            return line

    return Capped


# redis-py's ConnectionErrors for a handshake answer it did not expect (the connection itself is fine)
HANDSHAKE_REFUSALS = ("Invalid RESP version", "Invalid Database", "Error setting client name")


def _capped_connection(base: type) -> type:
    """`base`, redis-py's connection for the URL's scheme, whose parsers are all capped (`_capped`): it
    speaks RESP3, and when the server refuses `HELLO` (Redis before 6, some proxies) redis-py swaps in
    its RESP2 parser (`set_parser`), which is capped too."""
    from redis._parsers import _AsyncRESP2Parser, _AsyncRESP3Parser
    from redis.exceptions import ConnectionError, InvalidResponse

    capped: dict[type, type] = {parser: _capped(parser) for parser in (_AsyncRESP3Parser, _AsyncRESP2Parser)}

    class CappedConnection(base):  # type: ignore[misc]
        def set_parser(self, parser_class: type) -> None:
            super().set_parser(capped.get(parser_class, parser_class))

        async def on_connect_check_health(self, check_health: bool = True) -> None:
            """The handshake (HELLO, SELECT); an answer of the wrong shape (`+OK` or `:-5` to HELLO, whose
            reply redis-py reads as a map) is no Redis answer: InvalidResponse, where redis-py raised an
            AttributeError, or a ConnectionError for a map without the protocol asked for."""
            try:
                await super().on_connect_check_health(check_health)
            except (AttributeError, TypeError, KeyError, IndexError) as exc:
                raise InvalidResponse(f"the answer to the handshake is no Redis answer ({exc})") from exc
            except ConnectionError as exc:
                if str(exc) in HANDSHAKE_REFUSALS:
                    raise InvalidResponse(f"the answer to the handshake is no Redis answer ({exc})") from exc
                raise

    return CappedConnection


class RedisProbe:
    def __init__(self, url: QueueURL) -> None:
        self.url = url
        self.kind, self.key = kind_of(url)
        self.group = url.params.get("group", "")
        self._client: Any = None

    def _connect(self) -> Any:
        import redis.asyncio
        from redis._parsers import _AsyncRESP3Parser
        from redis.asyncio.connection import Connection, parse_url

        timeout = self.url.poll_timeout
        url = self.url.client_url(keep=lambda k: k.startswith("ssl_"))
        connection = _capped_connection(parse_url(url).get("connection_class", Connection))
        return redis.asyncio.from_url(
            url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout,  # no CLIENT
            connection_class=connection, parser_class=_AsyncRESP3Parser)  # SETNAME: one ACL fewer

    async def read(self) -> Reading:
        if self._client is None:
            self._client = self._connect()
        try:
            reading: Reading = await getattr(self, f"_read_{self.kind}")(self._client)
            return reading
        except Exception as exc:
            raise _error(exc) from exc

    async def _read_list(self, r: Any) -> Reading:
        key_type = await r.type(self.key)
        if key_type == "none":
            return Reading(depth=0)
        command = LENGTH_BY_TYPE.get(key_type)
        if command is None:
            raise ProbeError("bad_reply", f"key {self.key!r} is a {key_type}, not a queue")
        return Reading(depth=await r.execute_command(command, self.key))

    async def _read_celery(self, r: Any) -> Reading:
        async with r.pipeline(transaction=False) as p:
            for key in celery_keys(self.key):
                p.llen(key)
            lengths = await p.execute()
        return Reading(depth=sum(lengths))

    async def _read_rq(self, r: Any) -> Reading:
        # the head's id, not the head: an element of any size (up to 512 MiB) would be read whole
        now = time.time()
        async with r.pipeline(transaction=False) as p:
            p.llen(f"rq:queue:{self.key}")
            p.zcount(f"rq:wip:{self.key}", now, "+inf")  # score = expiry: older entries are abandoned
            p.zcard(f"rq:scheduled:{self.key}")
            p.eval(LIVE_WORKERS, 1, f"rq:workers:{self.key}", MAX_WORKERS)
            # RQ pushes right, workers pop left: the oldest. Undecoded, as is its `enqueued_at`: bytes that are
            # not UTF-8 are no job id or time, and give no age, where decoding them failed the whole poll
            p.execute_command("EVAL", HEAD_ID, 1, f"rq:queue:{self.key}", MAX_ID, NEVER_DECODE=True)
            depth, started, scheduled, workers, head = await p.execute()
        age = 0.0 if not depth else None
        unreadable = None
        if head:
            enqueued_at = await r.execute_command("EVAL", ENQUEUED_AT, 1, b"rq:job:" + head, MAX_ENQUEUED_AT,
                                                  NEVER_DECODE=True)
            if isinstance(enqueued_at, int):  # longer than any time: its length only came back
                age, unreadable = None, f"the head job's enqueued_at of {enqueued_at} bytes"
            else:
                age = rq_age(enqueued_at, now)
                if age is None and enqueued_at is not None:
                    unreadable = f"the head job's enqueued_at {enqueued_at!r:.60}"
        return Reading(depth=depth, in_flight=started, delayed=scheduled, consumers=workers,
                       oldest_age_seconds=age, unreadable_age=unreadable)

    async def _read_stream(self, r: Any) -> Reading:
        if not self.group:
            return Reading(depth=await r.xlen(self.key))
        # undecoded: another application's group may have a name that is not UTF-8
        groups = await r.execute_command("XINFO GROUPS", self.key, NEVER_DECODE=True)
        group = next((g for g in groups if g["name"] == self.group.encode()), None)
        if group is None:
            raise ProbeError("not_found", f"stream {self.key!r} has no group {self.group!r}")
        lag = group.get("lag")  # nil before Redis 7, or after deletions Redis cannot count across
        age: float | None = None
        if lag:
            # the next entry's id only, read by Redis: its fields may be of any size (up to 512 MiB each).
            # `(` excludes the delivered id (Redis 6.2+; `lag` is 7+): its sequence may be the largest there is
            delivered = group["last-delivered-id"].decode("ascii")
            entry_id = await r.eval(NEXT_ID, 1, self.key, f"({delivered}")
            if entry_id:
                seconds, micros = await r.time()
                age = stream_age(entry_id, seconds + micros / 1e6)
        elif lag == 0:
            age = 0.0
        # an id that is no time is a producer's own numbering (`XADD s 1-1`), not a mistake: not counted
        return Reading(depth=lag, in_flight=group["pending"], consumers=group["consumers"],
                       oldest_age_seconds=age)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _reports(url: QueueURL) -> tuple[str, ...]:
    kind, _ = kind_of(url)
    if kind == "rq":
        return ("depth", "in_flight", "delayed", "consumers", "oldest_age_seconds")
    if kind == "stream" and url.params.get("group"):
        return ("depth", "in_flight", "consumers", "oldest_age_seconds")
    return ("depth",)


def _queue_type(url: QueueURL) -> str:
    return "redis_stream" if kind_of(url)[0] == "stream" else "redis"


BROKER = Broker(
    queue_type="redis",  # `redis_stream` for streams
    client="redis",
    extra="redis",
    params=frozenset({*KINDS, "group", "ssl_cert_reqs", "ssl_ca_certs", "ssl_check_hostname"}),
    name=lambda url: kind_of(url)[1],
    reports=_reports,
    open=RedisProbe,
    queue_type_of=_queue_type,
    check=check,
    imports=("redis.asyncio", "redis.asyncio.connection", "redis._parsers", "redis.exceptions"),
)
