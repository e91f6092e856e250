variable "task_role_arn" {
  description = "The worker's existing task role (the sidecar's statements are added to it below)."
  type        = string
}

variable "task_role_name" {
  description = "Name of that role."
  type        = string
}

variable "execution_role_arn" {
  description = "The existing execution role."
  type        = string
}

variable "execution_role_name" {
  description = "Name of that role."
  type        = string
}

variable "datadog_api_key_secret_arn" {
  description = "Secrets Manager ARN of the Datadog API key."
  type        = string
}
