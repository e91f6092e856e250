"""The label rules both modes share, and the bootstrap's identity against agent.identity's.

The bootstrap cannot import `agent` (it runs inside the worker), so it derives the identity again from
the same variables and `/task` document; these tests keep the two in step on every ECS fixture.
"""

from __future__ import annotations

import json
import logging
import sys

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.config import MAX_TAG, ConfigError, load, parse_name
from agent.identity import local_identity, task_identity
from integrations.profilers import sitecustomize as site
from tests.support import FIXTURES

TASKS = sorted(FIXTURES.glob("*.task.json"))
ENVIRONMENTS = [
    {},
    {"TASKLENS_SERVICE": "orders", "TASKLENS_ENV": "prod", "TASKLENS_VERSION": "1.2", "TASKLENS_TAGS": "team:pay,tier:1"},
    {"DD_SERVICE": "dd-orders", "DD_ENV": "staging", "DD_VERSION": "9"},
    {"TASKLENS_SERVICE": "wins", "DD_SERVICE": "loses", "TASKLENS_TAGS": "env:ignored,canary:"},
]


@pytest.mark.parametrize("environ", ENVIRONMENTS, ids=range(len(ENVIRONMENTS)))
@pytest.mark.parametrize("path", TASKS, ids=[p.name for p in TASKS])
def test_bootstrap_identity_matches_the_sidecars(path, environ):
    task = json.loads(path.read_text())
    expected = task_identity(load(environ), task, environ)
    service, tags = site.identity(environ, task)
    assert service == expected.service
    assert tags == [kv for kv in expected.tags if kv[0] != "service"]


@pytest.mark.parametrize("environ", ENVIRONMENTS + [{"TASKLENS_TAGS": "team:a,team:b"}])
def test_bootstrap_identity_matches_without_a_cluster_field(environ):
    # `Cluster` missing: the cluster comes from the task ARN; a repeated tag key: the last value wins
    task = {"TaskARN": "arn:aws:ecs:us-east-1:123456789012:task/prod-cluster/abc", "Family": "fam"}
    expected = task_identity(load(environ), task, environ)
    assert dict(expected.tags)["ecs_cluster"] == "prod-cluster"
    assert site.identity(environ, task) == (expected.service, [kv for kv in expected.tags if kv[0] != "service"])


@pytest.mark.parametrize("environ", ENVIRONMENTS, ids=range(len(ENVIRONMENTS)))
def test_bootstrap_identity_without_ecs_matches_local_mode(environ):
    expected = local_identity(load(environ), environ)
    assert site.identity(environ) == (expected.service, [kv for kv in expected.tags if kv[0] != "service"])


# DD_SERVICE values: the sidecar ignores one that is not a name (with a warning); the bootstrap must too
SERVICE_NAMES = [
    "orders-worker", "  orders-worker ", "orders\tworker", "orders\nworker", "orders\x1b[31mworker",
    "orders\x7fworker", "orders\x85worker", "\x1corders\x1c", "", "   ", "x" * 200, "x" * 201,
    "commandes-été", "注文-worker", "orders\u2028worker", "orders\udcffworker",
]


@pytest.mark.parametrize("task", [None, "ecs"], ids=["local", "ecs"])
@pytest.mark.parametrize("name", SERVICE_NAMES, ids=[ascii(n)[:40] for n in SERVICE_NAMES])
def test_both_modes_name_the_application_the_same_whatever_dd_service_holds(name, task):
    from integrations.profilers.ingest import profile_name
    from tests.integrations.profilers.pyroscope_fake import parse_key
    from tests.integrations.profilers.support import task_json

    task = task_json() if task else None
    environ = {"DD_SERVICE": name, "DD_ENV": name, "DD_VERSION": name}
    sidecar = task_identity(load(environ), task, environ) if task else local_identity(load(environ), environ)
    service, tags = site.identity(environ, task)
    assert (service, tags) == (sidecar.service, [kv for kv in sidecar.tags if kv[0] != "service"])
    application, _, _ = parse_key(profile_name(sidecar.service, {}))  # what the sidecar pushes under
    assert site.app_name(service) == application
    if not task:
        assert site.resolve_labels(environ)[0] == application


def test_a_name_the_sidecar_would_refuse_is_ignored_by_the_bootstrap_with_a_warning(caplog):
    environ = {"TASKLENS_SERVICE": "orders\tworker", "DD_SERVICE": "dd-orders"}
    with pytest.raises(ConfigError, match="TASKLENS_SERVICE"):
        load(environ)  # the sidecar does not start; the worker must, under the next name it has
    with caplog.at_level("WARNING", logger=site.LOGGER_NAME):
        assert site.identity(environ)[0] == "dd-orders"
    assert "TASKLENS_SERVICE='orders\\tworker' is ignored" in caplog.text


def test_the_bootstraps_name_rule_is_the_sidecars_for_every_character():
    assert site.MAX_NAME_LENGTH == MAX_TAG
    for code in range(sys.maxunicode + 1):
        text = f"a{chr(code)}a"  # inside: trimming is not what is compared
        try:
            parse_name(text)
            accepted = True
        except ValueError:
            accepted = False
        assert site.is_name(text) is accepted, hex(code)


def bootstrap_tags(environ: dict[str, str]) -> tuple[list[tuple[str, str]], list[str]]:
    """The bootstrap's tags for `environ`, and the warnings it logged."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(site.LOGGER_NAME)
    logger.addHandler(handler)
    try:
        _, tags = site.identity(environ)
    finally:
        logger.removeHandler(handler)
    return tags, [r.getMessage() for r in records]


# what TASKLENS_TAGS is made of: separators, spaces, characters a label cannot hold, control characters
# (Cc: tab, escape, U+0085), a byte that was not UTF-8 (a surrogate), keys that are one Prometheus label
TAG_TEXT = st.lists(st.sampled_from(list("ab_1.-: ,") + ["\t", "\x1b", "\x85", "é", "\udcff", "le", "quantile",
                                                          "exported_", "__", "x" * 60]), max_size=40).map("".join)
TAG_ITEMS = st.lists(st.tuples(st.sampled_from(["team", "tier", "a.b", "a_b", "1a", "_1a", "le", "exported_le",
                                                "__x", "exported_x", " team ", ""]),
                               st.sampled_from(["", "pay", " pay ", "a:b", "x" * 196, "x" * 197, "\x1b"])),
                     max_size=6).map(lambda items: ",".join(f"{k}:{v}" for k, v in items))
MANY = st.integers(95, 105).map(lambda n: ",".join(f"k{i}:v" for i in range(n)))


@settings(max_examples=500, deadline=None)
@given(st.one_of(TAG_TEXT, TAG_ITEMS, MANY))
@example("team:payments,canary")  # an item without `:`
@example("a.b:1,a_b:2")  # one Prometheus label
@example("team:pay\x1bments")
def test_the_bootstrap_takes_the_tags_the_sidecar_takes_and_ignores_what_it_refuses(text: str) -> None:
    """Differential: the sidecar's configuration loader against the bootstrap, on TASKLENS_TAGS alone.
    The bootstrap once skipped an item without `:`, and took control characters, items of any length
    and keys that are one label on /metrics, all of which the sidecar refuses at start."""
    environ = {"TASKLENS_SERVICE": "orders", "TASKLENS_TAGS": text}
    try:
        sidecar: list[tuple[str, str]] | None = [
            kv for kv in local_identity(load(environ), environ).tags if kv[0] != "service"]
    except ConfigError:
        sidecar = None
    tags, warnings = bootstrap_tags(environ)
    if sidecar is None:  # refused: the worker runs on without the tags, and says why
        assert tags == [] and len(warnings) == 1 and warnings[0].startswith("tasklens profiling: TASKLENS_TAGS=")
    else:
        assert (tags, warnings) == (sidecar, [])


def test_the_bootstraps_label_rule_is_the_prometheus_sinks_for_every_character():
    """`prometheus_label` decides which keys collide; it must be the sink's `label_name`."""
    from agent.config import MAX_ITEMS
    from agent.sinks.prometheus import label_name

    assert site.MAX_TAGS == MAX_ITEMS
    for code in range(sys.maxunicode + 1):
        for key in (chr(code), f"a{chr(code)}", f"_{chr(code)}a"):
            assert site.prometheus_label(key) == label_name(key), hex(code)
    for key in ("le", "quantile", "__x", "___", "9", "exported_le", "_le", "__le"):
        assert site.prometheus_label(key) == label_name(key), key


@pytest.mark.parametrize(("key", "label"), [
    ("task_id", "task_id"), ("ecs.cluster", "ecs_cluster"), ("team-name", "team_name"), ("9lives", "_9lives"),
    ("__name__", "_name__"), ("__", ""), ("", ""), ("  env ", "env"),
])
def test_label_key(key, label):
    assert site.label_key(key) == label


@pytest.mark.parametrize(("value", "label"), [
    ("prod", "prod"), ("a,b", "a_b"), ("{x}", "_x_"), (" padded ", "padded"), ("", "true"),
    ("tab\there", "tab_here"), ("k=v", "k=v"), ("x" * 300, "x" * 128),
])
def test_label_value(value, label):
    assert site.label_value(value) == label


def test_labels_drop_unusable_keys_and_keep_the_first_of_a_collision():
    assert site.labels([("a.b", "1"), ("a-b", "2"), ("__", "3"), ("ok", "")]) == {"a_b": "1", "ok": "true"}


@pytest.mark.parametrize(("cmdline", "name"), [
    (["/usr/local/bin/python3.11", "-u", "/app/worker.py", "--queue", "jobs"], "worker.py"),
    (["python", "-m", "app.main"], "app.main"),
    (["python3", "-mcelery", "worker"], "celery"),
    (["python3", "-X", "dev", "-W", "ignore", "run.py"], "run.py"),
    (["/venv/bin/python", "/venv/bin/celery", "-A", "app", "worker"], "celery"),
    (["python3", "-c", "print(1)"], "python3"),
    (["python3"], "python3"),
    (["gunicorn: worker [app]"], "gunicorn"),
    (["/usr/bin/uwsgi", "--ini", "app.ini"], "uwsgi"),
    ([], ""),
])
def test_process_name(cmdline, name):
    assert site.process_name(cmdline) == name


@pytest.mark.parametrize(("exe", "python"), [
    ("/usr/bin/python3.11", True), ("python", True), ("/opt/venv/bin/python3", True), ("python3.13t", True),
    ("/usr/bin/pythonista", False), ("/usr/bin/bash", False), ("py-spy", False),
])
def test_is_python(exe, python):
    assert site.is_python(exe) is python


def test_split_credentials():
    assert site.split_credentials("https://123:tok%40x@profiles.example.net/p") == (
        "https://profiles.example.net/p", "123", "tok@x")
    assert site.split_credentials("http://pyroscope:4040") == ("http://pyroscope:4040", "", "")


def test_settings_read_the_sidecars_variables():
    assert site.settings({}) is None
    assert site.settings({"TASKLENS_PYROSCOPE_URL": "http://p:4040", "TASKLENS_PROFILE_MODE": "off"}) is None
    assert site.settings({
        "TASKLENS_PYROSCOPE_URL": "https://u:p@p.example.net/", "TASKLENS_PYROSCOPE_TENANT": "t1",
        "TASKLENS_PROFILE_RATE": "50", "TASKLENS_PROFILE_WINDOW": "15",
    }) == {"server_address": "https://p.example.net", "basic_auth_username": "u", "basic_auth_password": "p",
           "tenant_id": "t1", "sample_rate": 50, "upload_interval": 15}
    # bad numbers never break the worker: the defaults apply
    assert site.settings({"TASKLENS_PYROSCOPE_URL": "http://p", "TASKLENS_PROFILE_RATE": "fast",
                          "TASKLENS_PROFILE_WINDOW": "-1", "TASKLENS_PYROSCOPE_USER": "explicit"}) == {
        "server_address": "http://p", "basic_auth_username": "explicit", "basic_auth_password": "",
        "tenant_id": "", "sample_rate": 100, "upload_interval": 10}


@pytest.mark.parametrize("name", ["PROFILE_RATE", "PROFILE_WINDOW"])
@pytest.mark.parametrize("value", ["inf", "nan", "1e300", "0", "-5", "1001", "3601", " ", "0x10"])
def test_numbers_out_of_the_sidecars_range_are_refused_by_the_bootstrap_with_a_warning(name, value, caplog):
    """The bootstrap runs in the worker and cannot import the sidecar's settings: it keeps its own
    copy of their ranges, which must be the sidecar's; out of range, the default and one warning."""
    from dataclasses import fields

    from agent.config import Config

    setting = next(f for f in fields(Config) if f.name == name.lower())
    low, high, _ = setting.metadata["bounds"]
    assert site.NUMBERS[name] == (setting.default, low, high)
    with caplog.at_level("WARNING", logger=site.LOGGER_NAME):
        got = site.settings({"TASKLENS_PYROSCOPE_URL": "http://p", f"TASKLENS_{name}": value})
    key = {"PROFILE_RATE": "sample_rate", "PROFILE_WINDOW": "upload_interval"}[name]
    blank = not value.strip()
    in_range = not blank and value != "0x10" and low <= float(value) <= high
    assert got is not None and got[key] == (int(float(value)) if in_range else setting.default)
    assert bool(caplog.records) == (not in_range and not blank)
    if caplog.records:
        assert f"TASKLENS_{name}" in caplog.text and "is ignored" in caplog.text


def test_options_an_older_pyroscope_io_does_not_take_are_left_out():
    def configure_0_8(application_name=None, server_address="", tags=None, sample_rate=100):
        pass

    def configure_any(**kwargs):
        pass

    options = {"application_name": "a", "server_address": "http://p", "mem_enabled": True, "upload_interval": 10}
    assert site._supported(configure_0_8, options) == {"application_name": "a", "server_address": "http://p"}
    assert site._supported(configure_any, options) == options


# --- the process's own labels win over task tags of the same name ---------------------------------

OWN_TAGS = {"TASKLENS_TAGS": "process:x,container_name:y,team:pay", "TASKLENS_SERVICE": "orders"}


def test_own_labels_win_over_tags_of_the_same_name():
    own = [("container_name", "worker"), ("process", "worker.py")]
    assert site.labels([("process", "x"), ("team", "pay"), ("container-name", "y")], own) == {
        "team": "pay", "container_name": "worker", "process": "worker.py"}


def test_sidecar_mode_labels_each_process_whatever_the_task_tags_say():
    from agent.config import Config
    from agent.hub import Hub
    from integrations.profilers.procs import Target
    from integrations.profilers.pyspy import PySpyProfiler
    from tests.integrations.profilers.support import task_json

    identity = task_identity(load(OWN_TAGS), task_json(), {})
    docker_id, tags = next(iter(identity.containers.items()))
    profiler = PySpyProfiler(Config(pyroscope_url="http://127.0.0.1:9"), Hub(identity), py_spy="")
    got = [profiler.labels_for(Target(pid, 1.0, name, f"python {name}", f"0::/ecs/task/{docker_id}",
                                      "/usr/bin/python3", ("python", name)))
           for pid, name in ((10, "worker.py"), (11, "beat.py"))]
    assert [(g["process"], g["container_name"], g["team"]) for g in got] == [
        ("worker.py", dict(tags)["container_name"], "pay"), ("beat.py", dict(tags)["container_name"], "pay")]


def test_bootstrap_labels_its_own_process_whatever_the_task_tags_say(monkeypatch):
    from tests.integrations.profilers.support import task_json

    monkeypatch.setattr(site, "_own_cmdline", lambda: ["/usr/bin/python3", "/app/worker.py"])
    documents = {"http://169.254.170.2/v4/c/task": task_json(), "http://169.254.170.2/v4/c": {"Name": "worker"}}
    monkeypatch.setattr(site, "_fetch_json", lambda url, timeout: documents[url])
    environ = dict(OWN_TAGS, ECS_CONTAINER_METADATA_URI_V4="http://169.254.170.2/v4/c")
    _, labels = site.resolve_labels(environ)
    assert (labels["process"], labels["container_name"], labels["team"]) == ("worker.py", "worker", "pay")
    # without metadata the container is unknown: the task tag stays, the process is still its own
    _, labels = site.resolve_labels(OWN_TAGS)
    assert (labels["process"], labels["container_name"]) == ("worker.py", "y")


@pytest.mark.parametrize("extra", [0, 19, 20, 25, 100])
def test_a_profile_never_carries_more_labels_than_pyroscope_takes(extra: int) -> None:
    """TASKLENS_TAGS takes up to 100 tags; Grafana Pyroscope refuses a series of more than 30 label names
    (what `/ingest` adds among them), so with 19 extra tags every profile was refused. The
    process's own labels and the task's identity are kept first; the last extra tags are left out."""
    from integrations.profilers.ingest import profile_name
    from tests.integrations.profilers.pyroscope_fake import parse_key
    from tests.integrations.profilers.support import task_json

    tags = ",".join(f"t{i}:v{i}" for i in range(extra))
    identity = task_identity(load({"TASKLENS_TAGS": tags} if tags else {}), task_json(), {})
    own = [("container_name", "worker"), ("process", "worker.py")]
    labels = site.labels([kv for kv in identity.tags if kv[0] != "service"], own)
    _, _, parsed = parse_key(profile_name(identity.service, labels))  # raises past the server's limit
    assert parsed["process"] == "worker.py" and parsed["container_name"] == "worker"
    assert parsed["task_id"] == dict(identity.tags)["task_id"]
    kept = [i for i in range(extra) if f"t{i}" in parsed]
    assert kept == list(range(len(kept)))  # the first extra tags, in order
