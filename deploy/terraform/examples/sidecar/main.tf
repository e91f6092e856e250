# The "add the sidecar to my own task definition" shape: the sidecar module returns the container
# definition, volumes, pidMode and IAM statements; the rest of the task stays yours.

data "aws_caller_identity" "current" {}

# Fargate, with sidecar profiling (pidMode task + SYS_PTRACE).
module "tasklens_fargate" {
  source = "../../modules/sidecar"

  service         = "billing-worker"
  env             = "prod"
  service_version = "3.2.0"
  queues          = [{ url = "sqs://billing?region=eu-west-1&cloudwatch_age=true" }]
  aws_account_id  = data.aws_caller_identity.current.account_id
  datadog         = { api_key_secret_arn = var.datadog_api_key_secret_arn }
  profiling       = { mode = "sidecar", url = "https://profiles.example.com", tenant = "billing" }
}

resource "aws_ecs_task_definition" "billing" {
  family                   = "billing-worker"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = "512"
  memory                   = "1024"
  pid_mode                 = module.tasklens_fargate.pid_mode
  task_role_arn            = var.task_role_arn
  execution_role_arn       = var.execution_role_arn

  container_definitions = jsonencode([
    {
      name                   = "billing-worker"
      image                  = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/billing-worker:3.2.0"
      essential              = true
      readonlyRootFilesystem = true
      environment            = module.tasklens_fargate.worker.environment
      dependsOn              = module.tasklens_fargate.worker.depends_on
    },
    module.tasklens_fargate.container_definition,
  ])
}

# EC2 with bridge networking, in-process profiling (no SYS_PTRACE) and the StatsD Unix socket.
module "tasklens_ec2" {
  source = "../../modules/sidecar"

  service      = "reports-worker"
  env          = "prod"
  network_mode = "bridge"
  queues       = [{ url = "amqp://mq.internal:5672/%2F?queue=reports" }]
  statsd       = { socket = true }
  profiling    = { mode = "bootstrap", url = "https://profiles.example.com" }
}

resource "aws_ecs_task_definition" "reports" {
  family                   = "reports-worker"
  requires_compatibilities = ["EC2"]
  network_mode             = "bridge"
  task_role_arn            = var.task_role_arn
  execution_role_arn       = var.execution_role_arn

  container_definitions = jsonencode([
    {
      name                   = "reports-worker"
      image                  = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/reports-worker:1.0.0"
      essential              = true
      memory                 = 512
      readonlyRootFilesystem = true
      environment            = module.tasklens_ec2.worker.environment
      mountPoints            = module.tasklens_ec2.worker.mount_points
      volumesFrom            = module.tasklens_ec2.worker.volumes_from
      links                  = module.tasklens_ec2.worker.links
    },
    module.tasklens_ec2.container_definition,
  ])

  dynamic "volume" {
    for_each = module.tasklens_ec2.volumes
    content {
      name = volume.value.name
    }
  }
}

# The sidecar's permissions, added to the roles you already have.
resource "aws_iam_role_policy" "tasklens_task" {
  name = "tasklens"
  role = var.task_role_name
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = concat(module.tasklens_fargate.task_role_statements, module.tasklens_ec2.task_role_statements)
  })
}

resource "aws_iam_role_policy" "tasklens_execution" {
  name = "tasklens-secrets"
  role = var.execution_role_name
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = module.tasklens_fargate.execution_role_statements
  })
}
