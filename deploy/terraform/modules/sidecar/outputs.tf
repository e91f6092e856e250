output "container_definition" {
  description = "The sidecar's container definition (ECS shape): add it to the task's containerDefinitions."
  value       = local.container_definition

  precondition {
    condition     = alltrue([for q in local.sqs_queues : q.arn != null || length(q.full) > 0 || var.aws_account_id != ""])
    error_message = "An SQS queue named without its account (sqs://<name>?region=...) needs aws_account_id or an explicit arn."
  }
  precondition {
    condition     = alltrue([for name in local.password_envs : contains(keys(var.queue_secrets), name)])
    error_message = "Each password_env=NAME of a queue URL needs NAME in queue_secrets (the secret holding the password)."
  }
  precondition {
    condition     = var.memory == null ? true : var.memory > var.memory_reservation
    error_message = "memory (the hard limit) must be above memory_reservation: ECS refuses a container definition otherwise."
  }
  precondition {
    condition     = var.profiling.mode != "off" || var.profiling.url == null
    error_message = "profiling.url is set but profiling.mode is off: set mode to sidecar or bootstrap."
  }
}

output "volumes" {
  description = "Task volumes the sidecar needs (add to the task definition's volumes)."
  value       = var.statsd.socket ? [{ name = local.socket_volume }] : []
}

output "pid_mode" {
  description = "The task's pidMode: \"task\" when profiling in sidecar mode (py-spy sees the worker), else null."
  value       = local.profile_sidecar ? "task" : null
}

output "task_role_statements" {
  description = "IAM policy statements for the task role (queue depth reads)."
  value       = local.task_role_statements
}

output "execution_role_statements" {
  description = "IAM policy statements for the execution role (reading the secrets injected into the containers)."
  value       = local.execution_role_statements
}

output "worker" {
  description = "What the worker container needs: environment, secrets, mountPoints, volumesFrom, dependsOn (opt-in) and links (bridge)."
  value = {
    environment  = [for k in sort(keys(local.worker_environment)) : { name = k, value = local.worker_environment[k] }]
    secrets      = local.profile_bootstrap ? local.profiling_secrets : []
    mount_points = local.socket_mounts
    volumes_from = local.profile_bootstrap ? [{ sourceContainer = var.container_name, readOnly = true }] : []
    depends_on   = [{ containerName = var.container_name, condition = "HEALTHY" }]
    links        = var.network_mode == "bridge" ? [var.container_name] : []
  }
}

output "metrics_port" {
  description = "Port of the sidecar's /metrics (Prometheus scrape target)."
  value       = 9102
}

output "ingress" {
  description = "Inbound rules the task's security group needs for the sidecar: 9102/tcp from the scraper when prometheus.scrape is on, else none."
  value       = var.prometheus.scrape ? [{ port = 9102, protocol = "tcp", purpose = "Prometheus scrape of /metrics" }] : []
}
