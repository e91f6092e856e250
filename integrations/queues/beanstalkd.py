"""beanstalkd: `stats-tube` for the counts, `peek-ready` + `stats-job` for the next job's age.

    beanstalk://host:11300/<tube>        (also beanstalkd://; no tube means `default`)

greenstalk is a blocking client, so each poll runs in a worker thread on a socket with a timeout. A
socket timeout bounds each read, not a reply: a peer that keeps sending bytes without a line end would
hold the thread (and the connection's lock) for ever, and each later poll would park one more thread
of the event loop's executor, which other parts of the sidecar share. So a poll that times out shuts
the socket down (the thread's read ends at once), and a thread waits for the lock no longer than a
poll may last. Every reply is read within `MAX_REPLY` bytes a line and a body: greenstalk would hold a
line, or a body of any announced size, whole, so a peer that sends fast without a line end grew one
reply until the poll's timeout; past the bound the poll is a `bad_reply` at once.

The probe never creates the tube it reads (`use` and `watch` create a tube): `stats-tube` needs neither, so
a tube beanstalkd does not know is `not_found`, a gap, not an empty queue. Only `peek-ready` reads the tube
in use; the probe uses its tube for that one command, once `stats-tube` found it, and then its own again.

`peek-ready` returns the job the next `reserve` would get (highest priority first, then oldest), so with
mixed priorities its age is that job's age, not necessarily the oldest ready job's. Only its id is
needed: its body, as large as the server's `-z` allows, is read past, never held.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from typing import Any, BinaryIO
from urllib.parse import unquote

from agent.capped import readline_capped
from integrations.queues.base import Broker, ProbeError, QueueURL, Reading

DEFAULT_PORT = 11300
# A connection watches `default` unless told otherwise, and would count itself in `current-watching`
# of that tube; it watches a tube of its own instead (it never reserves from it).
PROBE_TUBE = "tasklens-probe"
# bytes of one reply line or body: a `stats-tube` reply's YAML takes about 270, a reply line a few dozen
MAX_REPLY = 64 * 1024


# what beanstalkd takes as a tube name (its protocol.txt): at most 200 bytes of letters, digits and
# - + / ; . $ _ ( ), not starting with a hyphen; any other is refused at start, not at every poll
_TUBE = re.compile(r"[A-Za-z0-9+/;.$_()][A-Za-z0-9+/;.$_()-]{0,199}")


def tube_of(url: QueueURL) -> str:
    """The tube the path names, read as written: what follows the `/` after the host, percent-decoded; no
    path (or `/` alone) is `default`. A `/` at the start or end of that name (`/jobs/`, `//jobs`) is refused:
    stripped, it polled another tube than written (`jobs`, not `jobs/`), and kept, it would be one a
    trailing `/` out of habit made up. Either is written `%2F`: `/jobs%2F` is the tube `jobs/`."""
    path = url.parts.path
    written = path[1:]
    if written.startswith("/") or written.endswith("/"):
        raise ValueError(f"the path {path!r} puts a '/' at the start or end of the tube's name: name the tube "
                         f"without it (/{written.strip('/')}), or write that '/' as %2F when it is part of the name")
    tube = unquote(written) or "default"
    if not _TUBE.fullmatch(tube):
        raise ValueError(f"tube {tube!r}: a beanstalkd tube name is at most 200 letters, digits and - + / ; . $ _ "
                         "( ), not starting with -")
    return tube


def reading_of(stats: dict[str, Any], next_job_age: float | None) -> Reading:
    return Reading(depth=stats["current-jobs-ready"], in_flight=stats["current-jobs-reserved"],
                   delayed=stats["current-jobs-delayed"], consumers=stats["current-watching"],
                   oldest_age_seconds=next_job_age)


def _error(exc: Exception) -> Exception:
    import greenstalk

    if isinstance(exc, greenstalk.NotFoundError):
        return ProbeError("not_found", "tube not found (beanstalkd knows a tube only while it holds a job or a "
                                       "client uses or watches it: a misspelt name, or no worker and no job)")
    if isinstance(exc, socket.timeout):
        return ProbeError("timeout", str(exc) or "socket timeout")
    if isinstance(exc, (OSError, greenstalk.UnknownResponseError)):
        # greenstalk reads an empty line when the broker closes the connection
        return ProbeError("connection", str(exc) or type(exc).__name__)
    if isinstance(exc, AssertionError):  # greenstalk asserts a reply line ends in CRLF: cut off mid-reply
        return ProbeError("connection", "reply cut off")
    return exc


class CappedReader:
    """The socket's file that greenstalk reads every reply through, within `MAX_REPLY` bytes a line and a
    body (greenstalk reads a line, or a body of the size the peer announces, whole)."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def readline(self) -> bytes:
        return readline_capped(self._file, MAX_REPLY, lambda: ProbeError(
            "bad_reply", f"a reply line over {MAX_REPLY} bytes, not beanstalkd"))

    def read(self, size: int) -> bytes:
        if size > MAX_REPLY + 2:  # a body and its CRLF
            raise ProbeError("bad_reply", f"a reply body of {size - 2} bytes, over {MAX_REPLY}: not beanstalkd")
        return self._file.read(size)

    def skip(self, size: int) -> None:
        """Read past `size` bytes, holding at most `MAX_REPLY` of them at a time."""
        while size > 0:
            chunk = self._file.read(min(size, MAX_REPLY))
            if not chunk:
                raise ConnectionError("reply cut off")
            size -= len(chunk)

    def close(self) -> None:
        self._file.close()


class BeanstalkdProbe:
    def __init__(self, url: QueueURL) -> None:
        self.url = url
        self.tube = tube_of(url)
        self.address = (url.parts.hostname or "127.0.0.1", url.parts.port or DEFAULT_PORT)
        self._client: Any = None
        self._sock: socket.socket | None = None
        self._reader: CappedReader | None = None
        self._lock = threading.Lock()  # a timed-out poll's thread may still hold the client

    def _read_sync(self) -> Reading:
        if not self._lock.acquire(timeout=self.url.poll_timeout):
            raise ProbeError("timeout", "the last poll's connection is still busy")
        try:
            try:
                if self._client is None:
                    self._connect()
                # `stats-tube` names its tube: a tube nobody uses, watches or fills is NOT_FOUND (a gap), where
                # the probe's own `use` had created it, empty, and a misspelt tube read as a healthy queue
                stats = self._client.stats_tube(self.tube)
                age: float | None = 0.0
                if stats["current-jobs-ready"]:
                    age = self._next_job_age()
                return reading_of(stats, age)
            except Exception as exc:
                raise _error(exc) from exc
        finally:
            self._lock.release()

    def _connect(self) -> None:
        import greenstalk

        self._sock = socket.create_connection(self.address, timeout=self.url.poll_timeout)
        self._client = greenstalk.Client(self._sock, encoding=None)  # sends nothing yet
        # greenstalk reads every reply from its `_reader` (the socket's file): through the bound from here on
        self._client._reader = self._reader = CappedReader(self._client._reader)
        # its own tube, used and watched, never one it reads: what a connection uses or watches exists
        self._client.use(PROBE_TUBE)
        self._client.watch(PROBE_TUBE)
        self._client.ignore("default")

    def _next_job_age(self) -> float | None:
        """The age of the job `peek-ready` shows, None when there is none any more. `peek-ready` reads the
        tube in use: the probe uses its tube only now that `stats-tube` found it, and leaves it at once, so
        that beanstalkd still forgets it once nobody else uses it (a failure closes the connection)."""
        import greenstalk

        self._client.use(self.tube)
        try:
            job = self._next_job()
            age = None if job is None else float(self._client.stats_job(job)["age"])
        except greenstalk.NotFoundError:  # reserved or deleted between the two commands
            age = None
        self._client.use(PROBE_TUBE)
        return age

    def _next_job(self) -> int | None:
        """The id of the job `peek-ready` shows (None when none is ready), its body read past."""
        assert self._sock is not None and self._reader is not None
        self._sock.sendall(b"peek-ready\r\n")
        line = self._reader.readline()
        if not line:
            raise ConnectionError("the connection closed")
        status, *values = line.split() or [b""]
        if status == b"NOT_FOUND":  # reserved or deleted since `stats-tube`
            return None
        if status != b"FOUND" or len(values) != 2 or not all(v.isdigit() for v in values):
            raise ProbeError("bad_reply", f"peek-ready answered {line[:60]!r}")
        self._reader.skip(int(values[1]) + 2)  # the body and its CRLF
        return int(values[0])

    def _close_sync(self) -> None:
        if not self._lock.acquire(timeout=self.url.poll_timeout):
            self._abort()  # still busy: its thread ends at once, and the next poll connects anew
            return
        try:
            client, self._client, self._sock, self._reader = self._client, None, None, None
            if client is not None:
                client.close()
        finally:
            self._lock.release()

    def _abort(self) -> None:
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    async def read(self) -> Reading:
        try:
            return await asyncio.to_thread(self._read_sync)
        except asyncio.CancelledError:  # the poll timed out (or the sidecar stops): end the thread's read
            self._abort()
            raise

    async def close(self) -> None:
        await asyncio.to_thread(self._close_sync)


BROKER = Broker(
    queue_type="beanstalkd",
    client="greenstalk",
    extra="beanstalkd",
    params=frozenset(),
    name=tube_of,
    reports=lambda url: ("depth", "in_flight", "delayed", "consumers", "oldest_age_seconds"),
    open=BeanstalkdProbe,
)
