"""`tasklens emulate-ecs` refuses unreadable fixture files with one line (check_fixtures: "Refuse at start
what would only fail at the first request"), JSON nested deeper than the interpreter's recursion limit
too: json.loads raises RecursionError, which is no ValueError, and escaped as a traceback."""

from __future__ import annotations

import subprocess

import pytest

from tests.support import TASKLENS, clean_env


@pytest.mark.parametrize("which", ["--task", "--stats"])
def test_deeply_nested_fixture_json_is_refused_without_a_traceback(tmp_path, which: str) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    files = {"--task": plain, "--stats": plain, which: deep}
    result = subprocess.run([TASKLENS, "emulate-ecs", "--addr", "127.0.0.1:0", "--task", str(files["--task"]),
                             "--stats", str(files["--stats"])], env=clean_env(), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-600:]
    assert which in result.stderr and "nested too deep" in result.stderr
