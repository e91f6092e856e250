# A worker as an ECS service: the task (worker + tasklens sidecar, roles, logs), the service, and
# its alerts. Naming the worker, its image and its queue is enough.

module "task" {
  source = "../task"

  name                     = var.name
  image                    = var.image
  env                      = var.env
  service_version          = var.service_version
  port                     = var.port
  queue                    = var.queue
  queue_arn                = var.queue_arn
  environment              = var.environment
  secrets                  = var.secrets
  command                  = var.command
  cpu                      = var.cpu
  memory                   = var.memory
  launch_type              = var.launch_type
  network_mode             = var.network_mode
  cpu_architecture         = var.cpu_architecture
  readonly_root_filesystem = var.readonly_root_filesystem
  sidecar                  = local.sidecar
  log_retention_days       = var.log_retention_days
  log_kms_key_id           = var.log_kms_key_id
  task_role_statements     = concat(var.task_role_statements, local.scaling == null ? [] : local.scaling.task_role_statements)
  permissions_boundary     = var.permissions_boundary
  tags                     = var.tags
}

module "monitoring" {
  source = "../monitoring"

  service = var.name
  env     = var.env
}

resource "aws_ecs_service" "this" {
  name                    = var.name
  cluster                 = var.cluster
  task_definition         = module.task.task_definition_arn
  desired_count           = var.autoscaling == null ? var.desired_count : min(max(var.desired_count, var.autoscaling.min), var.autoscaling.max)
  launch_type             = var.launch_type
  platform_version        = var.launch_type == "FARGATE" ? var.platform_version : null
  enable_execute_command  = var.enable_execute_command
  propagate_tags          = "SERVICE"
  enable_ecs_managed_tags = true
  tags                    = var.tags

  dynamic "network_configuration" {
    for_each = var.network_mode == "awsvpc" ? [1] : []
    content {
      subnets          = var.subnets
      security_groups  = var.security_groups
      assign_public_ip = var.assign_public_ip
    }
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  lifecycle {
    # the initial count: afterwards autoscaling (or you, by hand) sets it, and an apply must not undo that
    ignore_changes = [desired_count]

    precondition {
      condition     = var.network_mode != "awsvpc" || length(var.subnets) > 0
      error_message = "awsvpc tasks need subnets."
    }
  }
}

resource "aws_prometheus_rule_group_namespace" "alerts" {
  count        = var.alerts.prometheus_workspace_id == null ? 0 : 1
  name         = "tasklens-${var.name}"
  workspace_id = var.alerts.prometheus_workspace_id
  data         = module.monitoring.prometheus_rules_yaml
}

# --- queue-driven autoscaling (docs/scaling.md) ------------------------------------------------------

module "autoscaling" {
  source = "../autoscaling"
  count  = var.autoscaling == null ? 0 : 1

  cluster       = var.cluster
  service       = var.name
  queue_url     = var.queue
  autoscaling   = var.autoscaling
  aws_partition = data.aws_partition.current.partition
}

data "aws_partition" "current" {}

locals {
  scaling = one(module.autoscaling[*])
  sidecar = local.scaling == null ? var.sidecar : merge(var.sidecar, {
    environment = merge(local.scaling.sidecar_environment, var.sidecar.environment)
  })
}

resource "aws_appautoscaling_target" "this" {
  count = local.scaling == null ? 0 : 1

  service_namespace  = "ecs"
  scalable_dimension = "ecs:service:DesiredCount"
  resource_id        = local.scaling.resource_id
  min_capacity       = var.autoscaling.min
  max_capacity       = var.autoscaling.max
  tags               = var.tags

  depends_on = [aws_ecs_service.this]
}

resource "aws_appautoscaling_policy" "backlog_per_task" {
  count = local.scaling == null ? 0 : 1

  name               = "${var.name}-backlog-per-task"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this[0].service_namespace
  resource_id        = aws_appautoscaling_target.this[0].resource_id
  scalable_dimension = aws_appautoscaling_target.this[0].scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = local.scaling.target_tracking.target_value
    scale_out_cooldown = local.scaling.target_tracking.scale_out_cooldown
    scale_in_cooldown  = local.scaling.target_tracking.scale_in_cooldown
    disable_scale_in   = local.scaling.target_tracking.disable_scale_in

    customized_metric_specification {
      dynamic "metrics" {
        for_each = local.scaling.target_tracking.metrics
        content {
          id          = metrics.value.id
          label       = metrics.value.label
          expression  = metrics.value.expression
          return_data = metrics.value.return_data

          dynamic "metric_stat" {
            for_each = metrics.value.metric_stat == null ? [] : [metrics.value.metric_stat]
            content {
              stat = metric_stat.value.stat
              metric {
                namespace   = metric_stat.value.namespace
                metric_name = metric_stat.value.metric_name
                dynamic "dimensions" {
                  for_each = metric_stat.value.dimensions
                  content {
                    name  = dimensions.value.name
                    value = dimensions.value.value
                  }
                }
              }
            }
          }
        }
      }
    }
  }

  lifecycle {
    # the policy reads the namespace and dimensions the module gives the sidecar
    precondition {
      condition     = alltrue([for k, v in local.scaling.sidecar_environment : lookup(var.sidecar.environment, k, v) == v])
      error_message = "sidecar.environment sets what autoscaling sets, to another value: ${join(", ", [for k, v in local.scaling.sidecar_environment : "${k}=${v}" if lookup(var.sidecar.environment, k, v) != v])} (the policy reads these). Set autoscaling.namespace instead of TASKLENS_CLOUDWATCH_NAMESPACE."
    }
  }
}

# Scale from zero (SQS, min = 0): SQS's own metric wakes the service; target tracking takes over.
resource "aws_appautoscaling_policy" "wake_from_zero" {
  count = local.scaling == null ? 0 : (local.scaling.scale_from_zero == null ? 0 : 1)

  name               = "${var.name}-wake-from-zero"
  policy_type        = "StepScaling"
  service_namespace  = aws_appautoscaling_target.this[0].service_namespace
  resource_id        = aws_appautoscaling_target.this[0].resource_id
  scalable_dimension = aws_appautoscaling_target.this[0].scalable_dimension

  step_scaling_policy_configuration {
    adjustment_type = local.scaling.scale_from_zero.step.adjustment_type
    cooldown        = local.scaling.scale_from_zero.step.cooldown

    dynamic "step_adjustment" {
      for_each = local.scaling.scale_from_zero.step.adjustments
      content {
        metric_interval_lower_bound = step_adjustment.value.metric_interval_lower_bound
        scaling_adjustment          = step_adjustment.value.scaling_adjustment
      }
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "wake_from_zero" {
  count = length(aws_appautoscaling_policy.wake_from_zero)

  alarm_name          = "${var.name}-queue-waiting-no-task"
  alarm_description   = "Messages wait in the queue and no task runs: wake ${var.name} (tasklens autoscaling)."
  evaluation_periods  = local.scaling.scale_from_zero.alarm.evaluation_periods
  threshold           = local.scaling.scale_from_zero.alarm.threshold
  comparison_operator = local.scaling.scale_from_zero.alarm.comparison_operator
  alarm_actions       = [aws_appautoscaling_policy.wake_from_zero[0].arn]
  tags                = var.tags

  dynamic "metric_query" {
    for_each = local.scaling.scale_from_zero.alarm.metrics
    content {
      id          = metric_query.value.id
      expression  = metric_query.value.expression
      return_data = metric_query.value.return_data

      dynamic "metric" {
        for_each = metric_query.value.metric == null ? [] : [metric_query.value.metric]
        content {
          namespace   = metric.value.namespace
          metric_name = metric.value.metric_name
          dimensions  = metric.value.dimensions
          stat        = metric.value.stat
          period      = metric.value.period
        }
      }
    }
  }
}
