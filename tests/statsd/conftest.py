"""`both_loops`: run a test module once with the C loop (`_fast.c`) and once with the Python loop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.statsd import aggregator


@pytest.fixture(params=["c_loop", "python_loop"])
def both_loops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "python_loop":
        monkeypatch.setattr(aggregator, "Table", None)
    elif aggregator.Table is None:
        pytest.fail("agent/statsd/_fast.c is not built: `pip install -e .` builds it (needs a C compiler)")
    yield request.param
