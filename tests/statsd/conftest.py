"""`both_loops`: run a test module once with the C loop and drain (`_fast.c`) and once with the Python
loop and `recv` calls, as where the extension could not be built. `every_receiver`: the server's three
ways to receive: the C receive thread (`_recv.c`) with the C loop, the Python receive thread with the
C loop and drain, and everything in Python."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.statsd import receive, server


@pytest.fixture(params=["c_loop", "python_loop"])
def both_loops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "python_loop":
        monkeypatch.setattr(receive, "Table", None)
        monkeypatch.setattr(server, "drain", None)
        monkeypatch.setattr(server, "Receiver", None)
    elif receive.Table is None:
        pytest.fail("agent/statsd/_fast.c is not built: `pip install -e .` builds it (needs a C compiler)")
    yield request.param


@pytest.fixture(params=["c_thread", "c_drain", "python_loop"])
def every_receiver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "python_loop":
        monkeypatch.setattr(receive, "Table", None)
        monkeypatch.setattr(server, "drain", None)
        monkeypatch.setattr(server, "Receiver", None)
    elif receive.Table is None or server.Receiver is None:
        pytest.fail("agent/statsd/_fast.c or _recv.c is not built: `pip install -e .` builds them (needs a C compiler)")
    if request.param == "c_drain":
        monkeypatch.setattr(server, "Receiver", None)
    yield request.param
