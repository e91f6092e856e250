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
  sidecar                  = var.sidecar
  log_retention_days       = var.log_retention_days
  log_kms_key_id           = var.log_kms_key_id
  task_role_statements     = var.task_role_statements
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
  desired_count           = var.desired_count
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
