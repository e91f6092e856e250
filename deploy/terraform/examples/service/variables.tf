variable "private_subnets" {
  description = "Subnets of the Fargate tasks."
  type        = list(string)
}

variable "security_group_id" {
  description = "Security group of the Fargate tasks."
  type        = string
}

variable "datadog_api_key_secret_arn" {
  description = "Secrets Manager ARN of the Datadog API key the sidecars export with."
  type        = string
}

variable "amp_workspace_id" {
  description = "Amazon Managed Service for Prometheus workspace for the alert rules."
  type        = string
  default     = null
}
