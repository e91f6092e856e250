output "task_definition_arn" {
  description = "ARN of the task definition (with revision)."
  value       = aws_ecs_task_definition.this.arn
}

output "family" {
  description = "Task definition family (the worker's name)."
  value       = aws_ecs_task_definition.this.family
}

output "task_role_arn" {
  description = "The worker's task role; attach further policies to it."
  value       = aws_iam_role.task.arn
}

output "task_role_name" {
  description = "Name of the task role."
  value       = aws_iam_role.task.name
}

output "execution_role_arn" {
  description = "The execution role (image pull, logs, secrets)."
  value       = aws_iam_role.execution.arn
}

output "log_group_name" {
  description = "CloudWatch Logs group of the worker and the sidecar."
  value       = aws_cloudwatch_log_group.this.name
}

output "service_version" {
  description = "The version tag the sidecar reports."
  value       = module.definition.service_version
}
