# Target tracking on backlog per running task, with the running tasks counted by CloudWatch:
#   backlog_per_task = Average(queue_backlog_smoothed) / SampleCount(tasklens_scaling_task_heartbeat)
# Every sidecar of the service reports the same queue's smoothed backlog (so: the average over the
# tasks) and one heartbeat a minute (so: the count of heartbeats is the count of running tasks).
# The names and dimensions are those the sidecar emits (agent/scaling/__init__.py; the tests compare).

locals {
  cluster_name = element(split("/", var.cluster), length(split("/", var.cluster)) - 1)

  # The queue tag the sidecar derives from the URL (integrations/queues/*: `name=`, else per broker).
  url      = var.queue_url == null ? "" : trimspace(var.queue_url)
  scheme   = lower(try(regex("^([A-Za-z][A-Za-z0-9+.-]*)://", local.url)[0], ""))
  location = try(regex("^[^:]+://([^?#]*)", local.url)[0], "")
  netloc   = try(regex("^([^/]*)", local.location)[0], "")
  path     = trim(substr(local.location, length(local.netloc), -1), "/")
  params   = { for m in regexall("[?&]([^=&#]+)=([^&#]*)", local.url) : m[0] => m[1]... }
  param    = { for k, v in local.params : k => v[length(v) - 1] } # the last one wins, as in the sidecar
  by_scheme = {
    sqs        = local.path != "" ? element(split("/", local.path), length(split("/", local.path)) - 1) : local.netloc
    amqp       = lookup(local.param, "queue", "")
    amqps      = lookup(local.param, "queue", "")
    redis      = coalesce(lookup(local.param, "list", ""), lookup(local.param, "celery", ""), lookup(local.param, "rq", ""), lookup(local.param, "stream", ""), "-")
    rediss     = coalesce(lookup(local.param, "list", ""), lookup(local.param, "celery", ""), lookup(local.param, "rq", ""), lookup(local.param, "stream", ""), "-")
    nats       = lookup(local.param, "stream", "")
    beanstalk  = local.path != "" ? local.path : "default"
    beanstalkd = local.path != "" ? local.path : "default"
    postgres   = local.path != "" ? local.path : "postgres"
    postgresql = local.path != "" ? local.path : "postgres"
  }
  derived_queue = lookup(local.param, "name", "") != "" ? local.param["name"] : lookup(local.by_scheme, local.scheme, "")
  queue         = var.autoscaling.queue != null ? var.autoscaling.queue : local.derived_queue

  # Scale from zero (SQS only): at 0 tasks there is no heartbeat, so the policy's metric has no data;
  # SQS's own metric still counts the waiting messages. The alarm is "messages wait and no task
  # runs" and adds one task (an alarm with a scaling action invokes it every minute while in ALARM:
  # adding one, never setting a count, cannot undo what target tracking did if a heartbeat minute
  # arrives late). The QueueName is the SQS name, whatever `name=` says.
  sqs_queue_name  = local.scheme == "sqs" ? local.by_scheme["sqs"] : null
  scale_from_zero = var.autoscaling.min == 0 && local.sqs_queue_name != null
  wake = local.scale_from_zero ? {
    alarm = {
      evaluation_periods  = 1
      threshold           = 0
      comparison_operator = "GreaterThanThreshold"
      metrics = [
        {
          id          = "waiting"
          expression  = null
          return_data = false
          metric      = { namespace = "AWS/SQS", metric_name = "ApproximateNumberOfMessagesVisible", dimensions = { QueueName = local.sqs_queue_name }, stat = "Maximum", period = 60 }
        },
        {
          id          = "tasks"
          expression  = null
          return_data = false
          metric      = { namespace = var.autoscaling.namespace, metric_name = "tasklens_scaling_task_heartbeat", dimensions = { ecs_cluster = local.cluster_name, service = var.service }, stat = "SampleCount", period = 60 }
        },
        {
          id          = "wake"
          expression  = "IF(waiting > 0 AND FILL(tasks, 0) == 0, 1, 0)"
          return_data = true
          metric      = null
        },
      ]
    }
    step = {
      adjustment_type = "ChangeInCapacity"
      cooldown        = var.autoscaling.scale_out_cooldown
      adjustments     = [{ metric_interval_lower_bound = 0, scaling_adjustment = 1 }]
    }
  } : null

  namespace = var.autoscaling.namespace
  backlog   = "queue_backlog_smoothed"
  heartbeat = "tasklens_scaling_task_heartbeat"
  service_dimensions = [
    { name = "ecs_cluster", value = local.cluster_name },
    { name = "service", value = var.service },
  ]

  metrics = [
    {
      id          = "backlog"
      label       = "${local.backlog} (average over the tasks)"
      expression  = null
      return_data = false
      metric_stat = {
        namespace   = local.namespace
        metric_name = local.backlog
        dimensions  = concat(local.service_dimensions, [{ name = "queue", value = local.queue }])
        stat        = "Average"
      }
    },
    {
      id          = "tasks"
      label       = "running tasks (heartbeats per minute)"
      expression  = null
      return_data = false
      metric_stat = {
        namespace   = local.namespace
        metric_name = local.heartbeat
        dimensions  = local.service_dimensions
        stat        = "SampleCount"
      }
    },
    {
      id          = "backlog_per_task"
      label       = "queue_backlog_per_task_smoothed"
      expression  = "backlog / tasks"
      return_data = true
      metric_stat = null
    },
  ]

  protection = var.autoscaling.scale_in_protection != null
  sidecar_environment = merge(
    {
      TASKLENS_CLOUDWATCH            = "emf"
      TASKLENS_CLOUDWATCH_NAMESPACE  = local.namespace
      TASKLENS_CLOUDWATCH_DIMENSIONS = "ecs_cluster,service,queue"
      TASKLENS_SCALING_TARGET        = tostring(var.autoscaling.backlog_per_task)
      TASKLENS_SCALING_MAX_TASKS     = tostring(var.autoscaling.max)
    },
    local.protection ? {
      TASKLENS_SCALE_IN_PROTECTION      = var.autoscaling.scale_in_protection
      TASKLENS_SCALE_IN_IDLE            = tostring(var.autoscaling.scale_in_idle)
      TASKLENS_SCALE_IN_EXPIRES_MINUTES = tostring(var.autoscaling.protection_expires_minutes)
    } : {},
  )

  # The agent calls ECS with the task role: the sidecar needs these to protect its own task.
  task_arns = can(regex("^arn:", var.cluster)) ? "${replace(var.cluster, ":cluster/", ":task/")}/*" : "arn:${var.aws_partition}:ecs:*:*:task/${local.cluster_name}/*"
  task_role_statements = local.protection ? [{
    Sid      = "TasklensScaleInProtection"
    Effect   = "Allow"
    Action   = ["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"]
    Resource = [local.task_arns]
  }] : []
}
