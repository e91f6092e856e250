"""py-spy raw output -> `/ingest` request: parsing, the profile name, the query parameters."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from integrations.profilers.ingest import STATUS_PREFIX, Folded, ingest_params, parse_raw, profile_name, render
from integrations.profilers.pyspy import failure_reason
from tests.integrations.profilers.pyroscope_fake import parse_folded, parse_key

# What `py-spy record --format raw --nolineno --output /dev/stdout` wrote for a short worker: its own
# messages on the same stream, and a line without frames (a sample outside Python code).
PY_SPY_RAW = """\
py-spy> Sampling process 100 times a second for 5 seconds. Press Control-C to exit.


py-spy> Stopped sampling because process exited
 1
<module> (short.py) 1
<module> (short.py);hot_function_xyz (short.py) 84
<module> (short.py);main (short.py);time.sleep (<frozen time>) 3
<module> (short.py);hot_function_xyz (short.py) 2
py-spy> Wrote raw flamegraph data to '/dev/stdout'. Samples: 91 Errors: 3
py-spy> You can use the flamegraph.pl script from https://github.com/brendangregg/flamegraph to generate a SVG
"""


def test_parse_raw_aggregates_stacks_and_drops_empty_ones():
    folded = parse_raw(PY_SPY_RAW)
    assert folded.stacks == {
        "<module> (short.py)": 1,
        "<module> (short.py);hot_function_xyz (short.py)": 86,
        "<module> (short.py);main (short.py);time.sleep (<frozen time>)": 3,
    }
    assert (folded.samples, folded.skipped) == (90, 0)


def test_parse_raw_counts_lines_that_are_not_stack_count():
    folded = parse_raw("a;b 3\nnot a count\na;b -2\na;b 0\n\na;c ²\n")
    assert (folded.stacks, folded.skipped) == ({"a;b": 3}, 4)


def test_a_line_break_other_than_newline_in_a_name_does_not_split_the_stack():
    stack = "main (/app/run.py);handle (/app/jobs\u2028v2.py);page\x0cbreak (/app/a\x1cb\x85c.py)"
    assert parse_raw(f"{stack} 7\n<module> (x.py) 2\n").stacks == {stack: 7, "<module> (x.py)": 2}


# any text py-spy's output decodes to (UTF-8: no lone surrogate), but the line and frame separators
FRAME = st.text(st.characters(codec="utf-8", exclude_characters="\n;"), min_size=1)


@given(st.lists(st.tuples(st.lists(FRAME, min_size=1, max_size=8), st.integers(1, 10**6)), max_size=5))
def test_any_stack_of_frames_round_trips_with_its_count(samples):
    """Frames hold any character but the line and frame separators (spaces at either end included)."""
    expected: dict[str, int] = {}
    for frames, count in samples:
        stack = ";".join(frames)
        assume(not stack.startswith(STATUS_PREFIX))  # a py-spy message, not a stack
        expected[stack] = expected.get(stack, 0) + count
    folded = parse_raw("".join(f"{';'.join(frames)} {count}\n" for frames, count in samples))
    assert (folded.stacks, folded.skipped) == (expected, 0)
    assert parse_raw(render(folded).decode()).stacks == expected
    if expected and all(stack.strip() for stack in expected):  # the server refuses an empty profile, a blank stack
        assert dict(parse_folded(render(folded))) == expected


def test_render_is_what_pyroscope_reads_back():
    folded = parse_raw(PY_SPY_RAW)
    body = render(folded)
    assert body.endswith(b"\n")
    assert dict(parse_folded(body)) == folded.stacks
    assert render(Folded({})) == b""


def test_profile_name_parses_back_to_service_type_and_labels():
    name = profile_name("orders-worker", {"task_id": "abc", "env": "prod", "process": "app.main"})
    assert name == "orders-worker.cpu{env=prod,process=app.main,task_id=abc}"
    assert parse_key(name) == ("orders-worker", "cpu", {"env": "prod", "process": "app.main", "task_id": "abc"})


def test_profile_name_with_a_service_name_pyroscope_would_refuse():
    assert profile_name("my worker/v2", {}) == "my_worker_v2.cpu{}"
    assert parse_key(profile_name("my worker/v2", {})) == ("my_worker_v2", "cpu", {})


def test_ingest_params_for_a_window():
    params = ingest_params("svc.cpu{}", 1700000000.9, 1700000010.2, 100)
    assert params == {
        "name": "svc.cpu{}", "from": "1700000000", "until": "1700000010", "format": "folded",
        "sampleRate": "100", "spyName": "pyspy", "units": "samples", "aggregationType": "sum",
    }
    # a window shorter than a second still has from <= until
    short = ingest_params("svc.cpu{}", 1700000000.9, 1700000000.95, 100)
    assert short["from"] == short["until"] == "1700000000"


@pytest.mark.parametrize(("stderr", "reason"), [
    ("Permission Denied: Try running again with elevated permissions by going 'sudo env \"PATH=$PATH\" !!'",
     "ptrace_denied"),
    ("setpriv: failed to execute /usr/local/bin/py-spy: Operation not permitted", "ptrace_denied"),
    ("cannot run /usr/local/bin/py-spy: [Errno 1] Operation not permitted", "ptrace_denied"),
    ("Error: Failed to find python version from target process\n\nStack backtrace:\n   0: anyhow", "not_python"),
    ("Error: Failed to get process executable name. Check that the process is running.\n\nCaused by:\n"
     "    0: No such file or directory (os error 2)", "exited"),
    ("Error: something new", "pyspy_failed"),
    ("", "pyspy_failed"),
])
def test_failure_reason_from_what_py_spy_printed(stderr, reason):
    assert failure_reason(stderr) == reason
