"""Self-metrics: one series per label set, declared reasons at 0 from the start."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.selfmetrics import SelfMetrics


def test_declared_reasons_start_at_zero_and_count_from_there() -> None:
    m = SelfMetrics()
    m.declare("tasklens.ecs.poll_errors", ["timeout", "http_5xx"])
    m.inc("tasklens.ecs.poll_errors", reason="timeout")
    assert {dict(s.tags)["reason"]: s.value for s in m.samples()} == {"timeout": 1.0, "http_5xx": 0.0}
    m.declare("tasklens.ecs.poll_errors", ["timeout"])  # declaring again never resets a count
    assert m.get("tasklens.ecs.poll_errors", reason="timeout") == 1.0


@given(st.dictionaries(st.sampled_from(["queue", "reason", "sink", "status"]), st.text(max_size=3), min_size=1))
def test_label_order_never_splits_a_series(labels: dict[str, str]) -> None:
    m = SelfMetrics()
    m.inc("tasklens.x", **labels)
    m.inc("tasklens.x", **dict(reversed(list(labels.items()))))
    [sample] = m.samples()
    assert sample.value == 2.0 and dict(sample.tags) == labels
