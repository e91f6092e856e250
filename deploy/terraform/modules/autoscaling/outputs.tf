output "resource_id" {
  description = "The scalable target's resource id: service/<cluster>/<service>."
  value       = "service/${local.cluster_name}/${var.service}"
}

output "queue" {
  description = "The queue tag the scaling metric selects."
  value       = local.queue

  precondition {
    condition     = local.queue != "" && local.queue != "-"
    error_message = "The queue's name cannot be derived from queue_url: set autoscaling.queue (the sidecar's queue tag)."
  }
  precondition {
    condition     = var.autoscaling.min >= 1 || local.sqs_queue_name != null
    error_message = "autoscaling.min = 0 works only for an SQS queue (AWS/SQS metrics exist at 0 tasks); other brokers need min >= 1 (docs/scaling.md, scale from zero)."
  }
  precondition {
    condition     = !can(regex("[%+]", local.queue))
    error_message = "The derived queue name has percent-escapes: set autoscaling.queue to the decoded name."
  }
}

output "target_tracking" {
  description = "The target-tracking configuration: target_value, cooldowns, disable_scale_in and the metric math (metrics: id, label, expression, return_data, metric_stat)."
  value = {
    target_value       = var.autoscaling.backlog_per_task
    scale_out_cooldown = var.autoscaling.scale_out_cooldown
    scale_in_cooldown  = var.autoscaling.scale_in_cooldown
    disable_scale_in   = var.autoscaling.disable_scale_in
    metrics            = local.metrics
  }
}

output "scale_from_zero" {
  description = "With min = 0 on an SQS queue: the CloudWatch alarm (messages visible in AWS/SQS and no heartbeat) and the step policy (+1 task) that wake the service; null otherwise."
  value       = local.wake
}

output "sidecar_environment" {
  description = "Settings for the sidecar: EMF to CloudWatch with the policy's namespace and dimensions, and scale-in protection."
  value       = local.sidecar_environment
}

output "task_role_statements" {
  description = "IAM statements (IAM JSON shape) the task role needs for scale-in protection."
  value       = local.task_role_statements
}
