"""RabbitMQ: the management API when configured, else an AMQP passive `queue.declare`.

    amqp://user:pass@host:5672/vhost?queue=orders                                 ready + consumers
    amqp://user:pass@host:5672/vhost?queue=orders&management=http://host:15672    + unacked, age

The passive declare only knows ready messages and consumers. The management API
(`GET /api/queues/{vhost}/{queue}`) adds `messages_unacknowledged` and `head_message_timestamp`
(the oldest ready message's age, only when publishers set the AMQP `timestamp` property, and only when that
is a plausible time in seconds: `head_age`). Its
numbers refresh with the broker's statistics interval (5 s by default). It uses the AMQP URL's
user and password unless the management URL carries its own. RabbitMQ has no delayed count.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from agent.capped import read_capped
from agent.redact import basic_auth
from integrations.queues.base import Broker, ProbeError, QueueURL, Reading, age_of, readable_files

OWN_PARAMS = ("queue", "management")  # the rest (heartbeat, ssl...) are aio-pika's URL options
# Only the fields we read. (`disable_stats=true` would also drop the totals and
# `head_message_timestamp` from the single-queue endpoint, at least on RabbitMQ 3.10.)
MANAGEMENT_QUERY = "columns=messages_ready,messages_unacknowledged,consumers,head_message_timestamp"
MAX_ANSWER = 64 * 1024  # bytes of a management answer: the four columns asked for take about 120
MAX_SHORT_STRING = 255  # bytes (UTF-8) of an AMQP short string: a queue's name (any queue's), a vhost
MAX_VHOST = 127  # characters of a vhost in Connection.Open (AMQP's `path` domain; pamqp checks it)


def queue_name(url: QueueURL) -> str:
    name = url.params.get("queue", "")
    if not name:
        raise ValueError("a RabbitMQ URL names the queue: amqp://host:5672/vhost?queue=<name>")
    if len(name.encode()) > MAX_SHORT_STRING:
        raise ValueError(f"queue= of {len(name.encode())} bytes: a RabbitMQ queue name is at most "
                         f"{MAX_SHORT_STRING} bytes")
    if not url.params.get("management") and not _amqp_name(name):
        raise ValueError(f"queue={name!r}: the AMQP client (pamqp) refuses this name (non-ASCII, say); "
                         "read it through the management API: add &management=http://host:15672")
    return name


def _amqp_name(name: str) -> bool:
    """Whether aio-pika's codec takes `name` in a queue.declare (checked at start-up, not at every poll)."""
    try:
        from pamqp.constants import DOMAIN_REGEX
    except ImportError:  # the rabbitmq extra is not installed: the poll says so
        return True
    return bool(DOMAIN_REGEX["queue-name"].fullmatch(name))


def vhost_of(url: QueueURL) -> str:
    """AMQP URI rule: the path (percent-decoded) is the vhost; none or `/` alone means `/`."""
    path = url.parts.path
    return unquote(path[1:]) if len(path) > 1 else "/"


def check(url: QueueURL) -> None:
    queue_name(url)
    vhost = vhost_of(url)
    if not url.params.get("management") and (len(vhost) > MAX_VHOST or len(vhost.encode()) > MAX_SHORT_STRING):
        raise ValueError(f"a vhost of {len(vhost)} characters ({len(vhost.encode())} bytes): an AMQP vhost is at "
                         f"most {MAX_VHOST} characters and {MAX_SHORT_STRING} bytes")
    heartbeat = url.params.get("heartbeat")
    # aiormq reads anything else as 0: no heartbeat at all, and a dead connection found only by the timeout
    if heartbeat is not None and not (heartbeat.isascii() and heartbeat.isdigit() and int(heartbeat) < 65535):
        raise ValueError(f"heartbeat={heartbeat[:40]!r}: expected seconds, a whole number from 0 to 65534")
    readable_files(url, ("cafile", "keyfile", "certfile"))


def management_endpoint(url: QueueURL) -> tuple[str, tuple[str, str]]:
    """(the queue's API URL without credentials, (user, password)). The management URL's own
    credentials win; else the AMQP URL's; else RabbitMQ's default guest/guest."""
    m = urlsplit(url.params["management"])
    host = m.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{m.port}" if m.port else "")
    base = urlunsplit((m.scheme, netloc, m.path.rstrip("/"), "", ""))
    path = f"/api/queues/{quote(vhost_of(url), safe='')}/{quote(queue_name(url), safe='')}"
    if m.username is not None:
        auth = (unquote(m.username), unquote(m.password or ""))
    else:
        auth = (unquote(url.parts.username or "guest"), unquote(url.parts.password or "guest"))
    return f"{base}{path}?{MANAGEMENT_QUERY}", auth


def head_age(head: object, now: float) -> float | None:
    """The oldest ready message's age from `head_message_timestamp`, its publisher's AMQP `timestamp` (any
    64-bit number the publisher chose). A number that is no plausible time in seconds (`age_of`: milliseconds,
    0, negative, 2**62) gives no age: the publisher's mistake costs the age only, not the depth scaling reads.
    What is not a finite JSON number (`NaN`, text, `true`, an int past any float) is no RabbitMQ answer:
    ProbeError("bad_reply"), a gap."""
    try:
        stamp = float(head) if isinstance(head, (int, float)) and not isinstance(head, bool) else math.nan
    except OverflowError:  # an int past any float
        stamp = math.nan
    if not math.isfinite(stamp):
        raise ProbeError("bad_reply", f"head_message_timestamp is {str(head)[:40]!r}: not a time")
    return age_of(stamp, now)


def reading_of_management(doc: dict[str, Any], now: float) -> Reading:
    ready = doc.get("messages_ready")
    head = doc.get("head_message_timestamp")
    unreadable = None
    if head is not None:
        age = head_age(head, now)
        if age is None:  # (a publisher's timestamp in milliseconds?)
            unreadable = f"head_message_timestamp {str(head)[:40]}"
    elif ready == 0:
        age = 0.0
    else:
        age = None  # messages without a timestamp property
    return Reading(depth=ready, in_flight=doc.get("messages_unacknowledged"), consumers=doc.get("consumers"),
                   oldest_age_seconds=age, unreadable_age=unreadable)


def _amqp_error(exc: Exception) -> Exception:
    import aiormq.exceptions as e

    text = str(exc) or type(exc).__name__
    if isinstance(exc, e.ChannelNotFoundEntity):
        return ProbeError("not_found", text)
    if isinstance(exc, (e.AuthenticationError, e.ProbableAuthenticationError, e.ChannelAccessRefused)) \
            or "ACCESS_REFUSED" in text:
        return ProbeError("auth", text)
    if isinstance(exc, e.InvalidFrameError) and "Connection.Close" in text:
        # the broker closed the connection during the handshake (an unknown vhost, a connection limit)
        return ProbeError("connection", text)
    if isinstance(exc, (e.IncompatibleProtocolError, e.ProtocolSyntaxError)):  # not AMQP 0-9-1
        return ProbeError("bad_reply", text)
    if isinstance(exc.__cause__, asyncio.IncompleteReadError) and exc.__cause__.partial:
        # "Server connection unexpectedly closed. Read 350 bytes but 1327528739 bytes expected": what
        # answered sent bytes that are no AMQP frame, then closed (an HTTP server's 400, a NATS -ERR)
        return ProbeError("bad_reply", text)
    if isinstance(exc, (e.AMQPConnectionError, e.ChannelInvalidStateError, ConnectionError)):
        return ProbeError("connection", text)  # refused, reset, closed by the broker
    return exc


class AMQPProbe:
    """Passive declare on a connection kept open between polls."""

    def __init__(self, url: QueueURL) -> None:
        self.url = url
        self.queue = queue_name(url)
        self._connection: Any = None
        self._channel: Any = None
        self._lost: BaseException | None = None  # why the broker closed the connection since the last poll

    def _closed(self, connection: Any, exc: BaseException | None) -> None:
        """aio-pika's close callback: the broker closed the connection (a restart, a forced close)."""
        if connection is self._connection:  # not one close() dropped
            self._lost = exc if isinstance(exc, Exception) else ConnectionError("the broker closed the connection")

    async def read(self) -> Reading:
        import aio_pika

        try:
            if self._connection is None:
                self._connection = await aio_pika.connect(
                    self.url.client_url(keep=lambda k: k not in OWN_PARAMS), timeout=self.url.poll_timeout,
                    client_properties={"connection_name": "tasklens"})
                self._connection.close_callbacks.add(self._closed)
            if self._lost is not None:  # a connection the broker closed is an outage, not a fresh connect
                raise self._lost
            if self._channel is None or self._channel.is_closed:
                self._channel = await self._connection.channel()
            queue = await self._channel.declare_queue(self.queue, passive=True)
        except Exception as exc:
            raise _amqp_error(exc) from exc
        ok = queue.declaration_result
        return Reading(depth=ok.message_count, consumers=ok.consumer_count)

    async def close(self) -> None:
        connection, self._connection, self._channel, self._lost = self._connection, None, None, None
        if connection is not None:
            await connection.close()


def _http_error(exc: Exception) -> Exception:
    import aiohttp

    text = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return exc
    if isinstance(exc, aiohttp.ClientConnectionError):  # refused, reset, closed without an answer
        return ProbeError("connection", text)
    if isinstance(exc, (aiohttp.ClientResponseError, aiohttp.ClientPayloadError)):  # not HTTP, not JSON
        return ProbeError("bad_reply", text)
    return exc


class ManagementProbe:
    """One HTTP GET per poll to the management API."""

    def __init__(self, url: QueueURL) -> None:
        self.url = url
        self.endpoint, self.auth = management_endpoint(url)
        self._session: Any = None

    async def read(self) -> Reading:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": basic_auth(*self.auth)},
                timeout=aiohttp.ClientTimeout(total=self.url.poll_timeout))
        try:
            async with self._session.get(self.endpoint) as response:
                if response.status == 404:
                    raise ProbeError("not_found", f"queue {self.url.params['queue']!r} not found (HTTP 404)")
                if response.status in (401, 403):
                    raise ProbeError("auth", f"management API refused the credentials (HTTP {response.status})")
                if response.status != 200:
                    raise ProbeError("bad_reply", f"management API answered HTTP {response.status}")
                body = await read_capped(response, MAX_ANSWER, lambda: ProbeError(
                    "bad_reply", f"the management API's answer is over {MAX_ANSWER} bytes"))
            try:
                doc = json.loads(body)
            except (ValueError, RecursionError) as exc:  # not JSON, or nested past what a parser takes
                raise ProbeError("bad_reply", f"the management API's answer is not JSON: {str(exc)[:80]}") from None
        except ProbeError:
            raise
        except Exception as exc:
            raise _http_error(exc) from exc
        if not isinstance(doc, dict) or doc.get("messages_ready") is None:
            # `[]` or no totals: the broker has no statistics for the queue yet (new, or stats disabled)
            raise ProbeError("bad_reply", "the management API has no statistics for this queue (yet)")
        return reading_of_management(doc, time.time())

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _open(url: QueueURL) -> AMQPProbe | ManagementProbe:
    return ManagementProbe(url) if url.params.get("management") else AMQPProbe(url)


def _reports(url: QueueURL) -> tuple[str, ...]:
    if url.params.get("management"):
        return ("depth", "in_flight", "consumers", "oldest_age_seconds")
    return ("depth", "consumers")


BROKER = Broker(
    queue_type="rabbitmq",
    client="aio_pika",
    extra="rabbitmq",
    params=frozenset({*OWN_PARAMS, "heartbeat", "ssl", "cafile", "keyfile", "certfile", "no_verify_ssl"}),
    name=queue_name,
    reports=_reports,
    open=_open,
    check=check,
    imports=("aio_pika", "aiormq.exceptions", "aiohttp"),
)
