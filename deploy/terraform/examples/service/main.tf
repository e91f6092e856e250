# The Segment-style shape: naming a worker is enough. Each worker gets the tasklens sidecar, its IAM
# permissions, logs, alert rules; the datadog module adds its dashboard and monitors.

resource "aws_ecs_cluster" "workers" {
  name = "workers"

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_sqs_queue" "orders" {
  name                    = "orders"
  sqs_managed_sse_enabled = true
}

# Fargate: about ten lines per worker.
module "orders_worker" {
  source = "../../modules/service"

  name            = "orders-worker"
  image           = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/orders-worker:1.4.2"
  queue           = "sqs://orders?region=eu-west-1"
  environment     = { QUEUE_URL = aws_sqs_queue.orders.url }
  cluster         = aws_ecs_cluster.workers.arn
  subnets         = var.private_subnets
  security_groups = [var.security_group_id]
  env             = "prod"
  sidecar         = { datadog = { api_key_secret_arn = var.datadog_api_key_secret_arn } }
  alerts          = { prometheus_workspace_id = var.amp_workspace_id }
}

module "orders_worker_datadog" {
  source = "../../modules/datadog"

  service = module.orders_worker.service_name
  env     = "prod"
  notify  = ["@slack-payments"]
}

# EC2 (bridge network): the worker reaches the sidecar through a link; StatsD over the Unix socket.
module "thumbnail_worker" {
  source = "../../modules/service"

  name         = "thumbnail-worker"
  image        = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/thumbnail-worker:2.0.1"
  queue        = "redis://jobs.internal:6379/0?list=thumbnails"
  cluster      = aws_ecs_cluster.workers.arn
  launch_type  = "EC2"
  network_mode = "bridge"
  env          = "prod"
  memory       = 1024
  sidecar = {
    statsd           = { socket = true }
    wait_for_sidecar = true
  }
}
