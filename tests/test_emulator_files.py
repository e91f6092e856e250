"""`tasklens emulate-ecs` refuses unreadable fixture files with one line (check_fixtures: "Refuse at start
what would only fail at the first request"), JSON nested deeper than the interpreter's recursion limit
too: json.loads raises RecursionError, which is no ValueError, and escaped as a traceback."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import FIXTURES, TASKLENS, clean_env


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


# --- the shape of a task fixture: what the emulator needs of a /task answer ---------------------------

JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True, allow_infinity=True) | st.integers()
                    | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)
CONTAINER = st.one_of(JSON, st.dictionaries(st.sampled_from(["DockerId", "Name", "Type", "KnownStatus"]),
                                             st.one_of(st.text(max_size=8), JSON), max_size=4))
TASKS = st.one_of(JSON, st.builds(lambda c: {"Containers": c}, st.one_of(JSON, st.lists(CONTAINER, max_size=3))))


def servable(task: object) -> bool:
    """The rule, written out: an object whose Containers is a non-empty list of objects, each DockerId
    (where given) a string."""
    if not isinstance(task, dict) or not isinstance(task.get("Containers"), list) or not task["Containers"]:
        return False
    return all(isinstance(c, dict) and isinstance(c.get("DockerId", ""), str) for c in task["Containers"])


@settings(max_examples=400, deadline=None)
@given(task=TASKS, stats=st.one_of(JSON, st.just({})))
def test_any_fixture_shape_is_served_or_refused_in_one_line(tmp_path_factory, task: object, stats: object) -> None:
    from agent.emulator import check_fixtures

    files = tmp_path_factory.mktemp("shape")
    (files / "task.json").write_text(json.dumps(task))
    (files / "stats.json").write_text(json.dumps(stats))
    try:
        check_fixtures(str(files / "task.json"), str(files / "stats.json"))
    except ValueError as exc:  # any other exception is the traceback
        said = str(exc)
        assert not (servable(task) and isinstance(stats, dict)), said
        assert said.startswith(("--task ", "--stats ")) and "\n" not in said and len(said) < 500, said
    else:
        assert servable(task) and isinstance(stats, dict)


@pytest.mark.parametrize("shape", ['{"Containers": NaN}', '{"Containers": 5}', '{"Containers": null}',
                                   '{"Containers": "abc"}', '{"Containers": [1]}', '{"Containers": {"a": 1}}',
                                   '{"Containers": [{"DockerId": 5}]}', '{"Containers": []}', "7", "null", "[]",
                                   "[1]", "{}"])
def test_emulate_ecs_refuses_a_task_of_the_wrong_shape(tmp_path, shape: str) -> None:
    """Once a traceback (`NaN`, `5`: not iterable) or accepted, serving a task the sidecar could not read."""
    task = tmp_path / "task.json"
    task.write_text(shape)
    result = subprocess.run([TASKLENS, "emulate-ecs", "--addr", "127.0.0.1:0", "--task", str(task),
                             "--stats", str(FIXTURES / "fargate-2023.stats.json")],
                            env=clean_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-600:]
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"tasklens emulate-ecs: --task {task}: "), line


@pytest.mark.parametrize("which", ["--task", "--stats"])
@pytest.mark.parametrize("kind", ["directory", "fifo", "/dev/zero"])
def test_emulate_ecs_says_a_fixture_that_is_no_regular_file_is_not_one(tmp_path, which: str, kind: str) -> None:
    """A directory, a FIFO (a read would block) or /dev/zero (a read would never end) was "no such file"."""
    import os

    odd = tmp_path / "odd"
    if kind == "directory":
        odd.mkdir()
    elif kind == "fifo":
        os.mkfifo(odd)
    else:
        odd = Path(kind)
    files = {"--task": FIXTURES / "fargate-2023.task.json", "--stats": FIXTURES / "fargate-2023.stats.json", which: odd}
    result = subprocess.run([TASKLENS, "emulate-ecs", "--addr", "127.0.0.1:0", "--task", str(files["--task"]),
                             "--stats", str(files["--stats"])], env=clean_env(), capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2, result.stderr[-600:]
    assert result.stderr.splitlines() == [f"tasklens emulate-ecs: {which} {odd}: not a regular file"]
