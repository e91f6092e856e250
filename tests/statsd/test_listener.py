"""Listeners and the kernel's drop counter, against real sockets."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from agent.statsd.listener import open_udp, open_unix, read_udp_tables, set_rcvbuf, udp_drops

UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            
  686: 0100007F:CC60 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 26550 2 00000000749b1a63 17        
15643: 0100007F:46CD 00000000:0000 07 00000000:00001200 00:00000000 00000000     0        0 25708 2 000000005d781d86 0         
"""
UDP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  132: 00000000000000000000000001000000:1F95 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 31337 2 0000000012345678 4
"""


def test_drops_from_proc_tables() -> None:
    assert udp_drops({"udp": UDP, "udp6": UDP6}) == {26550: 17, 25708: 0, 31337: 4}
    assert udp_drops({"udp": "", "udp6": "garbage\nmore garbage"}) == {}


def test_kernel_drops_match_sent_minus_received() -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    inode = os.fstat(sink.fileno()).st_ino
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(500):
            sender.sendto(b"x" * 1000, sink.getsockname())
    received = 0
    while True:
        try:
            sink.recv(2000)
            received += 1
        except BlockingIOError:
            break
    try:
        assert 0 < received < 500
        assert udp_drops(read_udp_tables())[inode] == 500 - received
    finally:
        sink.close()


def test_large_receive_buffer_is_granted_or_reported() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        granted = set_rcvbuf(s, 8 * 1024 * 1024)
        assert granted == s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) and granted > 212992


def test_address_in_use_is_a_clear_error() -> None:
    first = open_udp("127.0.0.1", 0, 1 << 20)
    port = first[0].address[1]  # type: ignore[index]
    try:
        with pytest.raises(OSError) as info:
            open_udp("127.0.0.1", port, 1 << 20)
        assert info.value.errno == errno.EADDRINUSE
        assert f"StatsD UDP listener on 127.0.0.1:{port} (TASKLENS_STATSD_ADDR)" in str(info.value)
    finally:
        for listener in first:
            listener.sock.close()


def test_all_interfaces_is_one_dual_stack_socket() -> None:
    listeners = open_udp("0.0.0.0", 0, 1 << 20)
    try:
        assert len(listeners) == 1
        sock = listeners[0].sock
        port = sock.getsockname()[1]
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"v4", ("127.0.0.1", port))
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b"v6", ("::1", port))
        sock.setblocking(True)
        sock.settimeout(5)
        assert sorted([sock.recv(10), sock.recv(10)]) == [b"v4", b"v6"]
    finally:
        for listener in listeners:
            listener.sock.close()


def test_unix_socket_replaces_a_stale_file_and_refuses_a_live_one(tmp_path) -> None:
    path = str(tmp_path / "dsd.socket")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody is bound: what a crash leaves behind
    listener = open_unix(path, 1 << 20)
    try:
        assert oct(os.stat(path).st_mode & 0o777) == "0o666"
        with pytest.raises(OSError, match="in use by another process"):
            open_unix(path, 1 << 20)
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"hello", path)
        assert listener.sock.recv(100) == b"hello"
    finally:
        listener.sock.close()
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(OSError, match="exists and is not a socket"):
        open_unix(str(regular), 1 << 20)
