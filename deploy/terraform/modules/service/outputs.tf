output "service_name" {
  description = "Name of the ECS service."
  value       = aws_ecs_service.this.name
}

output "service_id" {
  description = "ARN of the ECS service."
  value       = aws_ecs_service.this.id
}

output "task_definition_arn" {
  description = "ARN of the task definition."
  value       = module.task.task_definition_arn
}

output "task_role_name" {
  description = "The worker's task role, to attach its own policies."
  value       = module.task.task_role_name
}

output "log_group_name" {
  description = "CloudWatch Logs group of the worker and the sidecar."
  value       = module.task.log_group_name
}

output "prometheus_rules_yaml" {
  description = "This worker's Prometheus alert rules (a rule file)."
  value       = module.monitoring.prometheus_rules_yaml
}

output "grafana_dashboard_json" {
  description = "This worker's Grafana dashboard (e.g. for grafana_dashboard's config_json)."
  value       = module.monitoring.grafana_dashboard_json
}

output "datadog_dashboard_json" {
  description = "This worker's Datadog dashboard."
  value       = module.monitoring.datadog_dashboard_json
}

output "datadog_monitors" {
  description = "This worker's Datadog monitors (API shape)."
  value       = module.monitoring.datadog_monitors
}

output "autoscaling_policy_arn" {
  description = "ARN of the backlog-per-task scaling policy (null without autoscaling)."
  value       = one(aws_appautoscaling_policy.backlog_per_task[*].arn)
}

output "autoscaling_alarm_arns" {
  description = "The CloudWatch alarms Application Auto Scaling manages for the policy (do not edit them)."
  value       = one(aws_appautoscaling_policy.backlog_per_task[*].alarm_arns)
}
