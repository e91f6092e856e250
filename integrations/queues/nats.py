"""NATS JetStream: a stream and its durable consumer.

    nats://[user:pass@]host:4222?stream=ORDERS&consumer=worker     (or nats://<token>@host:4222?...)

Consumer info gives `num_pending` (the backlog; excludes delivered, unacked messages) and
`num_ack_pending` (in flight); stream info gives `consumer_count` (consumers defined on the stream,
not worker connections). The oldest waiting message is the first one after the consumer's delivered
stream sequence that matches its filter: one `STREAM.MSG.GET` with `next_by_subj`, whose timestamp is
the enqueue time. This works for any retention policy, not only work queues.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import unquote, urlunsplit

from integrations.queues.base import Broker, ProbeError, QueueURL, Reading

NO_MESSAGE_FOUND = 10037  # JetStream's err_code for a STREAM.MSG.GET with nothing to get
MAX_FILTERS = 16  # a consumer's filter subjects whose first messages are looked up for the age (one request each)
PERMISSIONS_VIOLATION = "permissions violation"  # the server's -ERR for a subject the user may not use

T = TypeVar("T")


# characters no stream or consumer name has (nats-py and the server refuse them): the name is a token of
# the API subject `$JS.API.CONSUMER.INFO.<stream>.<consumer>`
NOT_IN_NAMES = ". *>/\\\t\r\n"


def names(url: QueueURL) -> tuple[str, str]:
    stream, consumer = url.params.get("stream", ""), url.params.get("consumer", "")
    if not stream or not consumer:
        raise ValueError("a NATS URL names the stream and the durable consumer: nats://host:4222?stream=S&consumer=C")
    for what, name in (("stream", stream), ("consumer", consumer)):
        if any(c in NOT_IN_NAMES for c in name):
            raise ValueError(f"{what} {name!r}: a NATS name has no . * > / \\, space, tab or line end")
    return stream, consumer


def connect_options(url: QueueURL) -> dict[str, Any]:
    """nats-py's server and credentials for `url`. nats-py reads a URL's user info with `urlparse` and
    sends it undecoded (`Pass%21word1`, and a password from `password_env=`, which `with_password`
    percent-encodes, were refused), so the server's URL goes without them and the user and password (or a
    user name alone: a token, `nats://<token>@host`) go decoded, as connect's own arguments."""
    parts = url.parts
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port is not None else "")
    options: dict[str, Any] = {"servers": [urlunsplit((parts.scheme, netloc, "", "", ""))]}
    try:
        user = unquote(parts.username or "", errors="strict")
        password = None if parts.password is None else unquote(parts.password, errors="strict")
    except UnicodeDecodeError:
        raise ValueError("the user name or password holds percent-encoded bytes that are not UTF-8") from None
    if password is not None:
        options.update(user=user, password=password)
    elif user:
        options.update(token=user)
    return options


def _error(exc: Exception, nc: Any, reported: Exception | None) -> Exception:
    """What nats-py's `exc` means; `nc` is the client it came from, `reported` the last error it passed
    to the error callback (why it could not connect, which NoServersError does not say)."""
    import nats.errors as e
    import nats.js.errors as jse
    from nats.protocol.parser import AUTHORIZATION_VIOLATION

    text = str(exc) or type(exc).__name__
    if isinstance(exc, jse.NotFoundError):
        return ProbeError("not_found", text)
    if isinstance(exc, (e.AuthorizationError, e.InvalidUserCredentialsError)) \
            or AUTHORIZATION_VIOLATION in text.lower():  # the server's -ERR at connect is a plain nats Error
        return ProbeError("auth", text)
    if isinstance(exc, TimeoutError):  # nats' own TimeoutError too
        return ProbeError("timeout", text)
    if isinstance(exc, e.NoServersError):  # each connect attempt failed: refused, unreachable, no such host
        return ProbeError("connection", f"{text}: {reported}" if reported else text)
    if isinstance(exc, (e.NoRespondersError, e.ConnectionClosedError, e.StaleConnectionError, OSError)):
        # no responders: JetStream is not enabled, or the server went away mid-request
        return ProbeError("connection", text)
    if isinstance(exc, (jse.APIError, e.ProtocolError, e.JsonParseError)):
        return ProbeError("bad_reply", text)
    if isinstance(exc, e.Error) and nc is not None and nc.is_connecting:
        # the handshake failed (nats-py says "empty response ... expecting INFO" for both): the server
        # closed the connection (or refused it with an -ERR), or what answered is not NATS
        transport = getattr(nc, "_transport", None)
        closed = transport is None or transport.at_eof()
        return ProbeError("connection" if closed else "bad_reply", text)
    return exc


class NATSProbe:
    def __init__(self, url: QueueURL) -> None:
        self.url = url
        self.stream, self.consumer = names(url)
        self._options = connect_options(url)
        self._nc: Any = None
        self._reported: Exception | None = None
        self._denied = asyncio.Event()
        self._lost = asyncio.Event()  # the current client's connection closed (set by its closed_cb)

    async def _error_cb(self, exc: Exception) -> None:
        """nats-py would log connection errors itself; the source counts and logs them once. The last
        one says why a connect failed, which NoServersError does not. A permissions violation (the user
        may not publish to a JetStream API subject, or not subscribe to its inbox) comes only here: the
        request it refused gets no answer, and `_ask` fails it at once."""
        self._reported = exc
        if PERMISSIONS_VIOLATION in str(exc).lower():
            self._denied.set()

    async def _ask(self, request: Awaitable[T]) -> T:
        """A JetStream request's answer; `auth` as soon as the server reports a permissions violation, and
        `connection` as soon as the connection closes (closed or reset by the server): nats-py fails
        neither pending request, which would wait out the poll's timeout."""
        asked = asyncio.ensure_future(request)
        denied = asyncio.ensure_future(self._denied.wait())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait((asked, denied, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            denied.cancel()
            lost.cancel()
            answered = asked.done()
            if not answered:
                asked.cancel()
        if answered:
            return asked.result()
        if self._denied.is_set():
            raise ProbeError("auth", str(self._reported))
        why = f": {self._reported}" if self._reported else ""
        raise ProbeError("connection", f"the connection closed during the request{why}")

    async def read(self) -> Reading:
        from nats.aio.client import Client

        timeout = self.url.poll_timeout
        try:
            if self._nc is None or self._nc.is_closed:
                # kept before connecting, so that close() closes the socket of a failed connect (nats-py
                # leaves it open). Our poll loop reconnects with backoff: nats-py's own retries (every 2 s,
                # 60 times, even without reconnects) would hide outages, and make a refused port a timeout
                self._nc, self._reported = Client(), None
                # one event per client: a closed client's late callback cannot fail the next one's requests
                lost = self._lost = asyncio.Event()

                async def closed_cb() -> None:
                    lost.set()

                await self._nc.connect(**self._options, connect_timeout=timeout,
                                       allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0,
                                       name="tasklens", error_cb=self._error_cb, closed_cb=closed_cb)
            self._denied.clear()  # a violation reported during an earlier poll is not this poll's
            jsm = self._nc.jsm(timeout=timeout)
            info = await self._ask(jsm.consumer_info(self.stream, self.consumer))
            stream = await self._ask(jsm.stream_info(self.stream))
            age = await self._oldest_age(jsm, info) if info.num_pending else 0.0
        except ProbeError:
            raise
        except Exception as exc:
            raise _error(exc, self._nc, self._reported) from exc
        return Reading(depth=info.num_pending, in_flight=info.num_ack_pending,
                       consumers=stream.state.consumer_count, oldest_age_seconds=age)

    async def _oldest_age(self, jsm: Any, info: Any) -> float | None:
        """The age of the first message after the consumer's delivered sequence that matches its filter (of
        the earliest of those its filters match: `filter_subjects`, NATS 2.10+); None when there is none:
        taken (and, on a work-queue stream, deleted) since `info` counted it, or past MAX_FILTERS."""
        subjects = list(info.config.filter_subjects or []) or [info.config.filter_subject or ">"]
        if len(subjects) > MAX_FILTERS:
            return None
        first = [msg for subject in subjects if (msg := await self._next_msg(jsm, info, subject)) is not None]
        msg = min(first, key=lambda m: m.seq, default=None)
        return age_of(msg.time, datetime.now(timezone.utc)) if msg is not None and msg.time else None

    async def _next_msg(self, jsm: Any, info: Any, subject: str) -> Any:
        from nats.js.errors import NotFoundError

        try:
            return await self._ask(jsm.get_msg(self.stream, seq=info.delivered.stream_seq + 1, subject=subject,
                                               next=True))
        except NotFoundError as exc:
            if exc.err_code != NO_MESSAGE_FOUND:  # the stream itself is gone
                raise
            return None

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            await nc.close()


def age_of(enqueued: datetime, now: datetime) -> float:
    return max(0.0, (now - enqueued).total_seconds())


BROKER = Broker(
    queue_type="nats",
    client="nats",
    extra="nats",
    params=frozenset({"stream", "consumer"}),
    name=lambda url: names(url)[0],
    reports=lambda url: ("depth", "in_flight", "consumers", "oldest_age_seconds"),
    open=NATSProbe,
    imports=("nats.aio.client", "nats.errors", "nats.js.errors", "nats.protocol.parser"),
)
