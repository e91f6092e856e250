# A worker's task definition with the tasklens sidecar, its IAM roles and its log group.

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

resource "aws_cloudwatch_log_group" "this" {
  # checkov:skip=CKV_AWS_338:retention is the caller's choice (log_retention_days, 30 by default): a year of worker logs is a cost most workers do not need
  name              = "/ecs/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_id
  tags              = var.tags
}

module "definition" {
  source = "../task-definition"

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
  region                   = data.aws_region.current.name
  account_id               = data.aws_caller_identity.current.account_id
  log_group                = aws_cloudwatch_log_group.this.name
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${data.aws_partition.current.partition}:ecs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:*"]
    }
  }
}

resource "aws_iam_role" "task" {
  name                 = "${var.name}-task"
  assume_role_policy   = data.aws_iam_policy_document.assume.json
  permissions_boundary = var.permissions_boundary
  tags                 = var.tags
}

resource "aws_iam_role_policy" "task" {
  count = length(module.definition.task_role_statements) + length(var.task_role_statements) > 0 ? 1 : 0
  name  = "${var.name}-task"
  role  = aws_iam_role.task.id
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = concat(module.definition.task_role_statements, var.task_role_statements)
  })
}

resource "aws_iam_role" "execution" {
  name                 = "${var.name}-execution"
  assume_role_policy   = data.aws_iam_policy_document.assume.json
  permissions_boundary = var.permissions_boundary
  tags                 = var.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

resource "aws_iam_role_policy" "execution_secrets" {
  count = length(module.definition.execution_role_statements) > 0 ? 1 : 0
  name  = "${var.name}-secrets"
  role  = aws_iam_role.execution.id
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = module.definition.execution_role_statements
  })
}

resource "aws_ecs_task_definition" "this" {
  family                   = module.definition.task_definition.family
  network_mode             = module.definition.task_definition.networkMode
  requires_compatibilities = module.definition.task_definition.requiresCompatibilities
  cpu                      = module.definition.task_definition.cpu
  memory                   = module.definition.task_definition.memory
  pid_mode                 = lookup(module.definition.task_definition, "pidMode", null)
  container_definitions    = module.definition.container_definitions_json
  task_role_arn            = aws_iam_role.task.arn
  execution_role_arn       = aws_iam_role.execution.arn
  tags                     = var.tags

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  dynamic "volume" {
    for_each = module.definition.task_definition.volumes
    content {
      name = volume.value.name
    }
  }
}
