variable "service" {
  description = "The worker's service name: every query and alert is scoped to it."
  type        = string
}

variable "env" {
  description = "Environment; empty for all."
  type        = string
  default     = ""
}

variable "notify" {
  description = "Datadog notification handles appended to every monitor message, e.g. [\"@slack-payments\"]."
  type        = list(string)
  default     = []
}
