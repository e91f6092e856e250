"""`# HELP` says what a metric is and its unit, never just its Datadog name again."""

from __future__ import annotations

import pytest

from agent.model import Batch, Kind, Points, Sample
from agent.selfmetrics import SelfMetrics
from agent.sinks.metric_help import own_help, worker_help
from agent.sinks.prometheus import PrometheusSink


@pytest.mark.parametrize(("family", "kind", "unit"), [
    ("ecs_task_network_receive_bytes", Kind.COUNTER, "bytes, cumulative"),
    ("ecs_container_memory_peak_working_set_bytes", Kind.GAUGE, "bytes"),
    ("tasklens_ecs_poll_errors", Kind.COUNTER, "count since the start"),
    ("queue_oldest_age_seconds", Kind.GAUGE, "seconds"),
    ("ecs_container_cpu_utilization_percent", Kind.GAUGE, "percent"),
])
def test_own_families_carry_their_unit(family: str, kind: Kind, unit: str) -> None:
    assert unit in own_help(family, kind)


def test_every_help_line_of_a_scrape_describes_the_metric() -> None:
    metrics = SelfMetrics()
    metrics.inc("tasklens.ecs.poll_errors", reason="timeout")
    sink = PrometheusSink(metrics, pull=metrics.samples)
    sink.accept(Batch("ecs", [Sample("ecs.task.cpu.usage_vcpus", 0.5)], snapshot=True))
    sink.accept(Batch("statsd", [Sample("jobs.done", 1.0, Kind.COUNT),
                                 Sample("job.time", Points((250.0,), (1.0,), milliseconds=True), Kind.HISTOGRAM)]))
    helps = dict(line.split(" ", 3)[2:] for line in sink.render().decode().splitlines() if line.startswith("# HELP"))
    assert helps["ecs_task_cpu_usage_vcpus"] == "CPU used by all the task's containers, in vCPUs"
    assert helps["jobs_done_total"] == worker_help("jobs.done", Kind.COUNT)
    assert "seconds" in helps["job_time"] and "job.time" in helps["job_time"]
    for family, text in helps.items():
        assert text.replace(".", "_") not in (family, family.removesuffix("_total")), (family, text)
