"""py-spy's raw output -> one Pyroscope `/ingest` request. Pure functions, no I/O.

py-spy `--format raw` writes folded stacks, one `frame;frame;...;leaf count` line per distinct stack,
root first. Pyroscope's legacy `/ingest` takes the same text with `format=folded`; the profile name
`<app>.cpu{k=v,...}` carries the labels, and its last dot-part is the profile type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from integrations.profilers.sitecustomize import app_name

PROFILE_TYPE = "cpu"
SPY_NAME = "pyspy"


@dataclass(frozen=True, slots=True)
class Folded:
    stacks: dict[str, int]  # stack -> samples
    skipped: int = 0  # lines that were not `stack count`

    @property
    def samples(self) -> int:
        return sum(self.stacks.values())


STATUS_PREFIX = "py-spy> "  # py-spy's own messages, on the same stdout as the stacks


def parse_raw(text: str) -> Folded:
    r"""Aggregate py-spy's lines by stack; drop py-spy's messages, empty stacks, lines that do not parse.

    Lines end at "\n" only, which is all py-spy writes (not "\r\n"): `splitlines()` would also split at
    \x0b \x0c \x1c-\x1e \x85 U+2028 U+2029, which a frame's file or function name may hold. A stack is
    kept as written, spaces and all: a frame's name may start or end with one."""
    stacks: dict[str, int] = {}
    skipped = 0
    for line in text.split("\n"):
        if not line.strip() or line.startswith(STATUS_PREFIX):
            continue
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text) if count_text.isascii() and count_text.isdigit() else 0
        if count <= 0:
            skipped += 1
        elif stack:  # py-spy writes ` 1` for a sample without a Python frame: nothing to show
            stacks[stack] = stacks.get(stack, 0) + count
    return Folded(stacks, skipped)


def render(folded: Folded) -> bytes:
    return "".join(f"{stack} {count}\n" for stack, count in folded.stacks.items()).encode()


def profile_name(service: str, labels: Mapping[str, str]) -> str:
    """`orders-worker.cpu{env=prod,task_id=abc}`; labels must already be valid (`sitecustomize.labels`)."""
    inner = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return f"{app_name(service)}.{PROFILE_TYPE}{{{inner}}}"


def ingest_params(name: str, start: float, end: float, rate: int) -> dict[str, str]:
    """Query parameters of `POST /ingest` for one window of `rate` Hz samples."""
    begin = int(start)
    return {
        "name": name,
        "from": str(begin),
        "until": str(max(begin, int(end))),
        "format": "folded",
        "sampleRate": str(rate),
        "spyName": SPY_NAME,
        "units": "samples",
        "aggregationType": "sum",
    }
