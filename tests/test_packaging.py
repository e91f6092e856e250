"""Every directory of Python code under agent/ and integrations/ ships in the wheel (and the image)."""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_every_code_directory_is_a_package() -> None:
    shipped = set(find_packages(str(ROOT), include=["agent*", "integrations*"]))
    code_dirs = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("agent", "integrations")
        for p in (ROOT / top).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert code_dirs - shipped == set(), "directories without __init__.py are left out of the wheel"
