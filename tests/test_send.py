"""`tasklens send`: the quick start's way to try a line, checked by the sidecar's own parser."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.send import UDP_MAX, SendError, datagram
from agent.statsd.parser import MAX_DATAGRAM, parse
from tests.support import TASKLENS, clean_env, free_port, wait_until


def test_lines_are_checked_before_they_are_sent() -> None:
    assert datagram(["a:1|c", "b:2|g|#k:v"]) == b"a:1|c\nb:2|g|#k:v"
    with pytest.raises(SendError, match="bad_type"):
        datagram(["a:1|c", "b:2|x"])
    with pytest.raises(SendError, match="do not fit"):
        datagram([f"metric.{i}:1|c" for i in range(6000)])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.one_of(st.sampled_from(["a:1|c", "b:2.5|ms", "|#k:v", ",x", "|@0.5", "\n", "\r", "|", ":",
                                                    "bad", "_sc|x|0", "_sc|x|9", "_e{1,1}:a|b", "|c:id", "|T1"]),
                                    st.text(st.sampled_from("ab.:|#@,\n\r1e-+cgmshdTS_{}é\x00 "), max_size=4)),
                          max_size=6).map("".join), min_size=1, max_size=4))
def test_what_send_accepts_the_sidecar_accepts_whole(lines: list[str]) -> None:
    """Any arguments: either refused here, or every line of the datagram is one the sidecar's parser takes
    and counts (an argument holding a newline is two lines to the sidecar, and each is checked; an
    empty line would be skipped there, so it is refused here)."""
    try:
        body = datagram(lines)
    except SendError:
        return
    parsed = parse(body)
    assert not parsed.errors
    assert parsed.lines == body.count(b"\n") + 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=24).map(lambda b: b"x:" + b), min_size=1, max_size=3))
def test_an_argument_of_any_bytes_is_sent_as_those_bytes_or_refused_with_its_reason(args: list[bytes]) -> None:
    """A shell passes bytes; Python holds those that are not UTF-8 as surrogates (`$'users.seen:\\xff|s'`).
    send checks and sends the bytes themselves, as the sidecar will receive them from any client."""
    import os

    try:
        body = datagram([os.fsdecode(arg) for arg in args])
    except SendError as exc:
        assert "would be refused" in str(exc) or "empty line" in str(exc), exc
        return
    assert body == b"\n".join(args)
    parsed = parse(body)
    assert not parsed.errors and parsed.lines == body.count(b"\n") + 1


def test_to_a_unix_socket_a_datagram_may_be_as_long_as_the_sidecar_reads() -> None:
    lines = [f"metric.{i}:1|c" for i in range(4150)]  # 65,289 bytes
    lines += ["a:1|c|#k:" + "v" * 100, "b:1|c|#k:" + "v" * 111]  # 65,520 bytes in all
    body = datagram(lines, limit=MAX_DATAGRAM)
    assert UDP_MAX < len(body) == 65_520 <= MAX_DATAGRAM
    with pytest.raises(SendError, match=f"at most {UDP_MAX}"):
        datagram(lines)


def test_an_argument_with_a_newline_is_checked_line_by_line() -> None:
    with pytest.raises(SendError, match="malformed_line"):
        datagram(["ok:1|c|#x\nbad"])
    with pytest.raises(SendError, match="bad_service_check"):
        datagram(["ok:1|c|#x\n_sc|x|9"])
    assert datagram(["a:1|c\nb:2|c"]) == b"a:1|c\nb:2|c"


def test_send_reaches_the_sidecar(sidecar_factory) -> None:
    sidecar = sidecar_factory(TASKLENS_FLUSH_INTERVAL="1")
    sidecar.wait_ready()
    addr = f"127.0.0.1:{sidecar.statsd_port}"
    sent = subprocess.run([TASKLENS, "send", "--addr", addr, "tried.out:3|c|#queue:orders"], env=clean_env(),
                          capture_output=True, text=True, timeout=30)
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: 'tried_out_total{' in sidecar.get("/metrics")[1], 20, what="the sent counter")
    line = next(x for x in sidecar.get("/metrics")[1].splitlines() if x.startswith("tried_out_total{"))
    assert 'queue="orders"' in line and line.endswith(" 3.0")
    refused = subprocess.run([TASKLENS, "send", "--addr", addr, "oops:1|q"], env=clean_env(),
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "bad_type" in refused.stderr and "Traceback" not in refused.stderr
    assert sidecar.stop() == 0


def _send(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TASKLENS, "send", *args], env=clean_env(**env), capture_output=True, text=True, timeout=30)


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    """A UDP socket on loopback standing in for the sidecar's StatsD listener."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(20)
        yield sock


@pytest.mark.parametrize("line", ["", "   ", "\t", "\r", "\n", "a:1|c\n", "a:1|c\n\nb:1|c", "a:1|c\n  "])
def test_an_empty_line_is_refused_and_nothing_is_sent(line: str, receiver: socket.socket) -> None:
    addr = f"127.0.0.1:{receiver.getsockname()[1]}"
    refused = _send("--addr", addr, "before:1|c", line)
    assert refused.returncode == 2, refused
    assert "empty line" in refused.stderr or "malformed_line" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    sent = _send("--addr", addr, "after:1|c")
    assert sent.returncode == 0, sent.stderr
    assert receiver.recv(65536) == b"after:1|c"  # the first datagram: the refused one never left


def test_send_goes_where_run_listens_by_the_config_file(tmp_path: Path, sidecar_factory) -> None:
    """`run` and `send` configured by the same TOML file only: the line reaches the sidecar."""
    config = tmp_path / "tasklens.toml"
    config.write_text(f'statsd_addr = "0.0.0.0:{free_port(socket.SOCK_DGRAM)}"\n')  # all interfaces: sent to loopback
    sidecar = sidecar_factory(TASKLENS_CONFIG_FILE=str(config), TASKLENS_STATSD_ADDR=None, TASKLENS_FLUSH_INTERVAL="1")
    sidecar.wait_ready()
    sent = _send("from.file:2|c", TASKLENS_CONFIG_FILE=str(config))
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: "from_file_total{" in sidecar.get("/metrics")[1], 20, what="the counter sent by the file's address")
    assert sidecar.stop() == 0


def test_the_variable_wins_over_the_file_as_for_run(tmp_path: Path, receiver: socket.socket) -> None:
    config = tmp_path / "tasklens.toml"
    config.write_text('statsd_addr = "127.0.0.1:1"\n')
    sent = _send("env.wins:1|c", TASKLENS_CONFIG_FILE=str(config),
                 TASKLENS_STATSD_ADDR=f"127.0.0.1:{receiver.getsockname()[1]}")
    assert sent.returncode == 0, sent.stderr
    assert receiver.recv(65536) == b"env.wins:1|c"


def test_udp_off_sends_to_the_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "statsd.sock"
    config = tmp_path / "tasklens.toml"
    config.write_text(f'statsd_addr = "off"\nstatsd_socket = "{path}"\n')
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(20)
        sent = _send("over.unix:1|c", TASKLENS_CONFIG_FILE=str(config))
        assert sent.returncode == 0, sent.stderr
        assert sock.recv(65536) == b"over.unix:1|c"


@pytest.mark.parametrize("toml, says", [
    ('statsd_addr = "nowhere"\n', "statsd_addr"),
    ('statsd_addr = "off"\n', "StatsD is off"),
    ('statsd_addr = "127.0.0.1:0"\n', "port 0"),
    ('statsd_adr = "127.0.0.1:8125"\n', "unknown key"),
])
def test_a_config_send_cannot_use_is_refused_naming_it(toml: str, says: str, tmp_path: Path) -> None:
    config = tmp_path / "tasklens.toml"
    config.write_text(toml)
    refused = _send("a:1|c", TASKLENS_CONFIG_FILE=str(config))
    assert refused.returncode == 2 and says in refused.stderr, refused
    assert "Traceback" not in refused.stderr
