"""Real ECS captures shipped with the package, for `tasklens emulate-ecs --example NAME` (SOURCES.md)."""

from __future__ import annotations

from pathlib import Path

EXAMPLES = {"fargate": "fargate-2023", "ec2-bridge": "ec2-bridge-2020"}


def example(name: str) -> tuple[str, str]:
    """The (task, stats) files of a packaged example capture."""
    if name not in EXAMPLES:
        raise ValueError(f"unknown example {name!r}: one of {', '.join(sorted(EXAMPLES))}")
    base = Path(__file__).parent / EXAMPLES[name]
    return f"{base}.task.json", f"{base}.stats.json"
