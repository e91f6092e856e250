"""The C receive thread (`agent/statsd/_recv.c`) on real sockets: it reads what `_fast.drain` reads,
the aggregates come out identical through either (and through the Python loop), it keeps reading while
the interpreter holds the GIL, a full buffer stops it without losing anything, and it stops cleanly."""

from __future__ import annotations

import gc
import os
import select
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.statsd import server
from agent.statsd._fast import drain
from agent.statsd.flush import Flusher
from agent.statsd.receive import Aggregator
from tests.statsd.test_fast_loop import SETTINGS, canonical, datagram, stats

Receiver = server.Receiver
pytestmark = pytest.mark.skipif(Receiver is None, reason="agent/statsd/_recv.c is not built")
SMALLEST = 2 * 65537  # two chunks of one slot each: the smallest buffer the C side accepts


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A Unix datagram pair: a full receiver makes the sender wait (or EAGAIN), never drop."""
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.setblocking(False)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    with reader, writer:
        yield reader, writer


def take_all(receiver: object, expected: int, timeout: float = 10.0) -> list[tuple[bytes, int, int, int]]:
    """Chunks until `expected` datagrams (too long ones included) came out."""
    out: list[tuple[bytes, int, int, int]] = []
    deadline = time.monotonic() + timeout
    while sum(t[1] for t in out) < expected:
        taken = receiver.take()  # type: ignore[attr-defined]
        if taken is None:
            assert time.monotonic() < deadline, f"{sum(t[1] for t in out)} of {expected} datagrams"
            time.sleep(0.002)
            continue
        out.append((bytes(bytearray(taken[0])), *taken[1:]))  # a copy: the chunk goes back to the thread
    return out


def joined(chunks: list[tuple[bytes, int, int, int]]) -> tuple[bytes, int, int, int]:
    return b"".join(c[0] for c in chunks), sum(c[1] for c in chunks), sum(c[2] for c in chunks), \
        sum(c[3] for c in chunks)


def test_it_reads_what_drain_reads_and_counts_too_long_datagrams(pair: tuple[socket.socket, socket.socket]) -> None:
    reader, writer = pair
    sent = (b"a:1|c", b"", b"x" * 70_000, b"b:2|c\n", b"x" * 65_536, b"c:3|c")
    for d in sent:
        writer.send(d)
    drained = drain(reader.fileno(), 64)
    receiver = Receiver([reader.fileno()], 1 << 20)
    for d in sent:
        writer.send(d)
    got = joined(take_all(receiver, len(sent)))
    receiver.stop()
    assert got == drained == (b"a:1|c\n\n" + b"b:2|c\n\n" + b"x" * 65_536 + b"\nc:3|c\n", 6, 5 + 65537 + 6 + 65536 + 5, 1)
    assert receiver.take() is None


@SETTINGS
@given(st.lists(datagram, min_size=1, max_size=60), st.sampled_from([SMALLEST, 1 << 20]))
def test_the_c_thread_and_drain_give_identical_aggregates(datagrams: list[bytes], buffer_bytes: int) -> None:
    """The same datagrams through real sockets: C thread + C loop, drain + C loop, and the Python
    loop on the datagrams as sent: the same batches, counts and errors."""
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with reader, writer:
        reader.setblocking(False)
        writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        via_thread, via_drain, via_python = Aggregator(), Aggregator(), Aggregator(accelerated=False)
        receiver = Receiver([reader.fileno()], buffer_bytes)
        for d in datagrams:
            writer.send(d)
        for chunk in take_all(receiver, len(datagrams)):
            via_thread.ingest_joined(*chunk)
        receiver.stop()
        for d in datagrams:  # read as they come: a full socket queue would block the sender
            writer.send(d)
            via_drain.ingest_joined(*drain(reader.fileno(), 64))
        via_python.ingest_many(datagrams)
    batches = [canonical(Flusher(10.0).batch(agg.swap(1000.0), now=1000.0)) for agg in (via_thread, via_drain, via_python)]
    assert batches[0] == batches[1] == batches[2]
    assert stats(via_thread) == stats(via_drain) == stats(via_python)


SENDER = textwrap.dedent("""
    import socket, sys, time
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.connect(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.read(1)  # go
    for i in range(int(sys.argv[2])):
        sock.send(b"held.gil:1|c|#i:%d" % (i % 10) + b"x" * 1000)  # blocks while the receiver's queue is full
    print(time.monotonic(), flush=True)
""")


def test_reading_goes_on_while_the_interpreter_holds_the_gil(tmp_path) -> None:
    """A sender to a Unix datagram socket waits whenever the socket's queue is full (at most
    net.unix.max_dgram_qlen datagrams, 10 by default): it finishes 5,000 of them only if something
    reads while this interpreter holds the GIL in one long C call. The Python receive thread could not."""
    path = str(tmp_path / "dsd.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    receiver = Receiver([sock.fileno()], 32 << 20)
    count = 5000
    sender = subprocess.Popen([sys.executable, "-c", SENDER, path, str(count)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert sender.stdin is not None and sender.stdout is not None
        assert sender.stdout.readline() == "ready\n"
        sender.stdin.write("x")
        sender.stdin.flush()
        # one C call, the GIL held throughout (sum over a range never lets it go): a few seconds here
        started = time.monotonic()
        sum(range(60_000_000))
        held_until = time.monotonic()
        got = joined(take_all(receiver, count))  # (what lets the sender finish if nothing read before)
        finished = float(sender.stdout.readline())
        assert sender.wait(10) == 0
    finally:
        receiver.stop()
        sock.close()
        if sender.poll() is None:
            sender.kill()
    assert got[1] == count and got[0].count(b"\n") == count
    assert finished < held_until, f"the sender finished {finished - held_until:.3f} s after the GIL was free " \
                                  f"(held {held_until - started:.2f} s): nothing read meanwhile"


def test_a_full_buffer_stops_reading_and_loses_nothing(pair: tuple[socket.socket, socket.socket]) -> None:
    reader, writer = pair
    writer.setblocking(False)
    receiver = Receiver([reader.fileno()], SMALLEST)
    payload = b"f:1|c|#" + b"t" * 30_000  # one per chunk (a whole slot must fit): full after two
    sent = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # until the thread and the socket are both full
        try:
            writer.send(payload)
            sent += 1
        except BlockingIOError:
            if receiver.stats()["buffer_full"]:
                break
            time.sleep(0.01)
    assert receiver.stats()["buffer_full"] >= 1 and sent > 4
    got = joined(take_all(receiver, sent))
    receiver.stop()
    assert got[1] == sent and got[0] == (payload + b"\n") * sent
    assert receiver.stats()["peak_bytes"] <= SMALLEST


def test_a_chunk_held_elsewhere_is_never_written_again(pair: tuple[socket.socket, socket.socket]) -> None:
    reader, writer = pair
    receiver = Receiver([reader.fileno()], SMALLEST)
    writer.send(b"first:1|c")
    kept = take_all(receiver, 1)[0][0]
    assert receiver.take() is None
    writer.send(b"second:1|c")
    while (taken := receiver.take()) is None:
        time.sleep(0.002)
    chunk = taken[0]  # a reference kept past the next take()
    hash_before = hash(chunk)
    del taken
    for i in range(200):  # many rounds through both chunks
        writer.send(b"later:%d|c" % i)
    later = take_all(receiver, 200)
    receiver.stop()
    assert kept == b"first:1|c\n" and chunk == b"second:1|c\n" and hash(chunk) == hash_before
    assert joined(later)[0] == b"".join(b"later:%d|c\n" % i for i in range(200))


def test_a_reused_chunk_hashes_as_its_new_content(pair: tuple[socket.socket, socket.socket]) -> None:
    """A chunk handed back is reused: a hash cached from its old content must not survive."""
    reader, writer = pair
    receiver = Receiver([reader.fileno()], SMALLEST)
    for text in (b"a:1|c", b"b:2|c", b"c:3|c", b"d:4|c"):
        writer.send(text)
        while (taken := receiver.take()) is None:
            time.sleep(0.002)
        assert hash(taken[0]) == hash(text + b"\n") and taken[0] == text + b"\n"
        del taken
    receiver.stop()


def test_stop_joins_the_thread_and_what_was_read_is_still_taken(pair: tuple[socket.socket, socket.socket]) -> None:
    reader, writer = pair
    receiver = Receiver([reader.fileno()], 1 << 20)
    writer.send(b"a:1|c")
    ready = select.poll()
    ready.register(receiver.fileno(), select.POLLIN)
    assert ready.poll(5000), "the thread did not signal data"
    receiver.stop()
    receiver.stop()  # twice: nothing more
    writer.send(b"b:1|c")  # after the stop: not read
    assert receiver.take() == (b"a:1|c\n", 1, 5, 0)
    assert receiver.take() is None
    assert reader.recv(100) == b"b:1|c"  # the socket itself is untouched (the thread read a dup)
    threads_before = len(os.listdir("/proc/self/task"))
    for _ in range(20):  # started and dropped without stop(): deallocation joins the thread
        Receiver([reader.fileno()], SMALLEST)
        gc.collect()
    assert len(os.listdir("/proc/self/task")) == threads_before


def test_bad_arguments_are_errors_not_crashes(pair: tuple[socket.socket, socket.socket]) -> None:
    reader, _ = pair
    with pytest.raises(ValueError):
        Receiver([], 1 << 20)
    with pytest.raises(ValueError):
        Receiver([reader.fileno()], 1000)
    with pytest.raises(ValueError):
        Receiver([reader.fileno()] * 17, 1 << 20)
    with pytest.raises(OSError):
        Receiver([10_000], 1 << 20)  # not an open descriptor
    with pytest.raises(TypeError):
        Receiver(["x"], 1 << 20)
    with pytest.raises(TypeError):
        Receiver(reader.fileno(), 1 << 20)
    uninitialized = Receiver.__new__(Receiver)
    with pytest.raises(RuntimeError):
        uninitialized.take()
    uninitialized.stop()
    del uninitialized


def test_several_sockets_are_all_read() -> None:
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(3)]
    receiver = Receiver([r.fileno() for r, _ in pairs], 1 << 20)
    for i, (_, w) in enumerate(pairs):
        for j in range(50):
            w.send(b"s%d:%d|c" % (i, j))
    got = joined(take_all(receiver, 150))[0].split(b"\n")
    receiver.stop()
    for i in range(3):  # each socket's datagrams in the order sent
        assert [line for line in got if line.startswith(b"s%d:" % i)] == [b"s%d:%d|c" % (i, j) for j in range(50)]
    for r, w in pairs:
        r.close()
        w.close()


def resident_kib() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def test_trim_hands_back_the_pages_of_a_burst_and_reading_goes_on(pair: tuple[socket.socket, socket.socket]) -> None:
    reader, writer = pair
    receiver = Receiver([reader.fileno()], 64 << 20)
    assert receiver.trim() >= 0  # nothing touched yet
    burst = [b"burst:%d|c|#" % i + b"t" * 20_000 for i in range(2000)]  # 40 MB through the buffer
    before = resident_kib()
    sent = 0
    for i, d in enumerate(burst):
        writer.send(d)
        sent += 1
        if i % 400 == 399:  # let the chunks fill before taking them (the sender would block meanwhile)
            got = take_all(receiver, 400)
            assert joined(got)[0] == b"".join(x + b"\n" for x in burst[i - 399:i + 1])
    grown = resident_kib() - before
    released = receiver.trim()
    shrunk = grown - (resident_kib() - before)
    writer.send(b"after:1|c")  # trimmed chunks read as zeros until written: nothing of the burst shows
    assert take_all(receiver, 1) == [(b"after:1|c\n", 1, 9, 0)]
    receiver.stop()
    assert released >= 4 << 20 and shrunk >= 4 * 1024, (released, grown, shrunk)
