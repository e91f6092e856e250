"""The release workflow (.github/workflows/release.yml): on a version tag it builds the image's
Dockerfile for amd64 and arm64 and pushes the image the Terraform modules default to; actionlint
finds nothing wrong with it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_checks import DEPLOY

ROOT = DEPLOY.parent
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"


def workflow() -> dict[str, Any]:
    doc: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def steps() -> list[dict[str, Any]]:
    return [step for job in workflow()["jobs"].values() for step in job["steps"]]


def builds() -> list[dict[str, Any]]:
    return [s["with"] for s in steps() if s.get("uses", "").startswith("docker/build-push-action@")]


def terraform_image_defaults() -> set[str]:
    """Every default sidecar image the modules declare."""
    text = "\n".join(p.read_text() for p in (DEPLOY / "terraform" / "modules").glob("*/variables.tf"))
    return set(re.findall(r'"(tasklens/[^"]+)"', text))


def test_runs_on_version_tags_only() -> None:
    assert workflow()["on"] == {"push": {"tags": ["v[0-9]+.[0-9]+.[0-9]+"]}}
    assert workflow()["permissions"] == {"contents": "read"}


def test_builds_the_dockerfile_for_amd64_and_arm64_and_pushes() -> None:
    assert builds() and all((b["context"], b["file"]) == (".", "deploy/docker/Dockerfile") for b in builds())
    (pushed,) = [b for b in builds() if b.get("push")]
    assert set(pushed["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert pushed["tags"] == "${{ steps.meta.outputs.tags }}"
    # the smoke-tested build comes before the push, and the login only after it
    names = [s.get("name", s.get("uses", "")) for s in steps()]
    assert (
        names.index("Smoke test")
        < names.index("docker/login-action@v3")
        < names.index("Build and push linux/amd64 and linux/arm64")
    )


def test_pushes_the_image_the_modules_default_to() -> None:
    image = workflow()["env"]["IMAGE"]
    (meta,) = [s["with"] for s in steps() if s.get("uses", "").startswith("docker/metadata-action@")]
    assert meta["images"] == "${{ env.IMAGE }}" and "type=semver,pattern={{version}}" in meta["tags"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    # the tag v<version> becomes <image>:<version>: exactly what the modules pull by default
    assert terraform_image_defaults() == {f"{image}:{version}"}


def test_no_secret_in_the_file() -> None:
    for step in steps():
        for key, value in (step.get("with") or {}).items():
            if re.search(r"user|pass|token|key", key, re.IGNORECASE):
                assert re.fullmatch(r"\$\{\{ secrets\.[A-Z_]+ \}\}", str(value)), (step, key)


def actionlint() -> str | None:
    candidates = [
        shutil.which("actionlint"),
        str(Path(sys.executable).with_name("actionlint")),
        str(ROOT / ".tools" / "actionlint" / "bin" / "actionlint"),
    ]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def test_actionlint_clean(tmp_path: Path) -> None:
    tool = actionlint()
    if tool is None:
        pytest.skip("actionlint not installed (scripts/system-deps.sh puts it in .tools/actionlint)")
    result = subprocess.run([tool, "-no-color", str(WORKFLOW)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # and it is not vacuous: a step output that does not exist is an error
    broken = tmp_path / "release.yml"
    broken.write_text(WORKFLOW.read_text().replace("steps.meta.outputs.tags", "steps.metadata.outputs.tags"))
    result = subprocess.run([tool, "-no-color", str(broken)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and "metadata" in result.stdout, result.stdout + result.stderr
