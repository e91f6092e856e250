variable "service" {
  description = "The worker's service name (the `name` given to the service or task module)."
  type        = string
}

variable "env" {
  description = "Environment; empty for all."
  type        = string
  default     = ""
}

variable "notify" {
  description = "Notification handles appended to every monitor message, e.g. [\"@slack-payments\"]."
  type        = list(string)
  default     = []
}

variable "dashboard" {
  description = "Create the per-worker dashboard."
  type        = bool
  default     = true
}
