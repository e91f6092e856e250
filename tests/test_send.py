"""`tasklens send`: the quick start's way to try a line, checked by the sidecar's own parser."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.send import SendError, datagram
from agent.statsd.parser import parse
from tests.support import TASKLENS, clean_env, wait_until


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
    (an argument holding a newline is two lines to the sidecar, and each is checked)."""
    try:
        body = datagram(lines)
    except SendError:
        return
    assert not parse(body).errors


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
