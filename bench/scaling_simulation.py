"""Scaling simulation (pure, fast): a queue, workers, and Application Auto Scaling's target tracking on
backlog per task, fed either the raw backlog or the sidecar's smoothed backlog (the real code:
agent/scaling/backlog.py). Prints the task count over time as text plots and a summary.

    python bench/scaling_simulation.py

The model, in 15 s steps (the sidecar's default poll interval):
- messages arrive at a rate (a base load, periodic short bursts, then a ramp) and each running task
  processes `per_task` messages/s; a new task serves after `start_seconds`;
- once a minute each task emits the backlog (raw or smoothed) and a heartbeat; the policy metric is
  backlog / running tasks (the module's metric math);
- target tracking as AWS describes it: scale out when 3 consecutive datapoints are above the target,
  proportionally (desired = ceil(running x metric / target)), capacity added during the scale-out
  cooldown counts; scale in when 15 consecutive datapoints are below 90 % of the target, proportionally,
  at most once per scale-in cooldown, and by at most 10 % of the tasks at a time (AWS says only that
  it scales in "more gradually"; `Policy.scale_in_step`); always within min..max.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.scaling import BACKLOG, BACKLOG_SMOOTHED
from agent.scaling.backlog import BacklogTracker

STEP = 15.0


@dataclass(frozen=True)
class Policy:
    target: float = 60.0  # messages per task: 60 s of latency at 1 message/s per task
    min_tasks: int = 2
    max_tasks: int = 40
    scale_out_cooldown: float = 60.0
    scale_in_cooldown: float = 300.0
    high_points: int = 3
    low_points: int = 15
    # AWS: target tracking "scales in more gradually" (undocumented how): here at most this share of
    # the running tasks per scale-in (1.0: straight to the proportional count)
    scale_in_step: float = 0.1


@dataclass(frozen=True)
class Workload:
    base_rate: float = 4.0  # messages/s
    burst_every: float = 1200.0  # a burst of `burst_size` messages every 20 minutes...
    burst_size: float = 600.0
    bursts_until: float = 7200.0  # ...for the first two hours, then
    ramp_from: float = 7200.0  # the rate ramps up to `ramp_to` over `ramp_seconds`
    ramp_seconds: float = 2400.0
    ramp_to: float = 16.0
    per_task: float = 1.0  # messages/s one task processes
    start_seconds: float = 60.0

    def rate(self, t: float) -> float:
        if t < self.ramp_from:
            return self.base_rate
        return self.base_rate + (self.ramp_to - self.base_rate) * min((t - self.ramp_from) / self.ramp_seconds, 1.0)

    def burst(self, t: float) -> float:
        if t >= self.bursts_until or t == 0:
            return 0.0
        return self.burst_size if t % self.burst_every < STEP else 0.0


@dataclass
class Run:
    times: list[float] = field(default_factory=list)
    tasks: list[int] = field(default_factory=list)
    backlog: list[float] = field(default_factory=list)
    scale_outs: list[float] = field(default_factory=list)
    scale_ins: list[float] = field(default_factory=list)

    def latency_seconds(self, workload: Workload) -> list[float]:
        """How long the last message in the queue waits: backlog / throughput."""
        return [b / max(n * workload.per_task, 1e-9) for b, n in zip(self.backlog, self.tasks)]


def simulate(smoothed: bool, policy: Policy = Policy(), workload: Workload = Workload(), hours: float = 4.0,
             window: float = 60.0, hold: float = 600.0) -> Run:
    tracker = BacklogTracker("sqs", window, hold=hold)
    metric_name = BACKLOG_SMOOTHED if smoothed else BACKLOG
    running = policy.min_tasks
    starting: list[float] = []  # times at which started tasks begin to serve
    desired = running
    backlog = 0.0
    datapoints: list[float] = []
    out_until = in_until = -math.inf
    last_value = 0.0
    run = Run()
    t = 0.0
    while t < hours * 3600:
        # tasks that finished starting
        running += sum(1 for s in starting if s <= t)
        starting = [s for s in starting if s > t]
        # the queue
        backlog += workload.rate(t) * STEP + workload.burst(t)
        backlog = max(backlog - running * workload.per_task * STEP, 0.0)
        values = {s.name: float(s.value) for s in tracker.samples(backlog, 0.0, None, t, (), t)}  # type: ignore[arg-type]
        last_value = values.get(metric_name, last_value)
        t += STEP
        if t % 60 == 0:  # one datapoint a minute: Average(backlog) / SampleCount(heartbeat)
            datapoints.append(last_value / max(running, 1))
            recent = datapoints[-policy.high_points:]
            if len(recent) == policy.high_points and min(recent) > policy.target:
                wanted = min(math.ceil(running * recent[-1] / policy.target), policy.max_tasks)
                if wanted > desired and (t >= out_until or wanted > desired):
                    desired = wanted
                    out_until, in_until = t + policy.scale_out_cooldown, -math.inf
                    run.scale_outs.append(t)
            calm = datapoints[-policy.low_points:]
            if (len(calm) == policy.low_points and max(calm) < 0.9 * policy.target and t >= in_until
                    and not starting):
                wanted = max(math.ceil(running * calm[-1] / policy.target), policy.min_tasks,
                             running - math.ceil(running * policy.scale_in_step))
                if wanted < desired:
                    desired = wanted
                    in_until = t + policy.scale_in_cooldown
                    run.scale_ins.append(t)
        # the service follows the desired count
        pending = running + len(starting)
        if desired > pending:
            starting += [t + workload.start_seconds] * (desired - pending)
        elif desired < running:
            starting = []
            running = desired
        run.times.append(t)
        run.tasks.append(running)
        run.backlog.append(backlog)
    return run


def first_scale_out(run: Run, since: float) -> float:
    return min(t for t in run.scale_outs if t >= since) - since


def flips(run: Run) -> int:
    """Changes of scaling direction: out then in then out again is two flips."""
    events = sorted([(t, 1) for t in run.scale_outs] + [(t, -1) for t in run.scale_ins])
    return sum(1 for a, b in pairwise(events) if a[1] != b[1])


def summary(run: Run, workload: Workload, until: float | None = None, since: float = 0.0) -> dict[str, float]:
    keep = [i for i, t in enumerate(run.times) if since <= t < (until or math.inf)]
    latency = run.latency_seconds(workload)
    outs = [t for t in run.scale_outs if since <= t < (until or math.inf)]
    ins = [t for t in run.scale_ins if since <= t < (until or math.inf)]
    return {
        "scale_outs": len(outs), "scale_ins": len(ins),
        "task_minutes": round(sum(run.tasks[i] for i in keep) * STEP / 60),
        "max_latency_s": round(max(latency[i] for i in keep)),
        "max_tasks": max(run.tasks[i] for i in keep),
    }


def plot(run: Run, width: int = 96, height: int = 10, label: str = "") -> str:
    """Tasks over time as text: one column per `len/width` steps (its maximum)."""
    per = max(len(run.tasks) // width, 1)
    cols = [max(run.tasks[i:i + per]) for i in range(0, len(run.tasks), per)][:width]
    top = max(cols)
    rows = []
    for level in range(height, 0, -1):
        threshold = top * level / height
        rows.append(f"{threshold:5.0f} |" + "".join("#" if c >= threshold - 1e-9 else " " for c in cols))
    hours = len(run.tasks) * STEP / 3600
    rows.append("      +" + "-" * len(cols))
    rows.append(f"       0 h{' ' * (len(cols) - 12)}{hours:.0f} h   {label}")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    workload, policy = Workload(), Policy()
    runs: dict[str, Callable[[], Run]] = {
        "raw backlog": lambda: simulate(False),
        "backlog's 60 s minimum (no hold)": lambda: simulate(True, hold=0.0),
        "smoothed backlog (60 s min, 600 s hold: the default)": lambda: simulate(True),
    }
    print(f"workload: {workload}\npolicy: {policy}\n")
    for name, make in runs.items():
        run = make()
        print(plot(run, label=f"tasks, scaling on the {name}"))
        print(f"  bursts (0-2 h): {summary(run, workload, until=workload.bursts_until)}")
        print(f"  ramp (2-4 h):   {summary(run, workload, since=workload.bursts_until)}")
        print(f"  direction changes: {flips(run)}; first scale-out {first_scale_out(run, workload.ramp_from):.0f} s "
              f"into the ramp\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
