variable "name" {
  description = "Worker name: task family, container name and the `service` tag."
  type        = string

  validation {
    # the longest name made from it must fit: the IAM role "<name>-execution" (64 characters at most)
    condition     = can(regex("^[a-zA-Z0-9][a-zA-Z0-9_-]{0,53}$", var.name))
    error_message = "name must be 1-54 letters, digits, '_' or '-', starting with a letter or digit: the longest name made from it, the IAM role \"<name>-execution\", must fit IAM's 64 characters."
  }
}

variable "image" {
  description = "The worker's image; its tag becomes the `version` tag unless service_version is set."
  type        = string
}

variable "env" {
  description = "Environment tag (DD_ENV / TASKLENS_ENV)."
  type        = string
  default     = ""
}

variable "service_version" {
  description = "Version tag; default: the image tag."
  type        = string
  default     = null
}

variable "port" {
  description = "The worker's TCP port, if it listens on one (not 9102, the sidecar's, in awsvpc and host mode)."
  type        = number
  default     = null

  validation {
    condition     = var.port == null ? true : var.port >= 1 && var.port <= 65535 && floor(var.port) == var.port
    error_message = "port must be a whole number from 1 to 65535."
  }
}

variable "queue" {
  description = "The worker's queue as a tasklens queue URL (docs/queues.md), e.g. sqs://orders?region=eu-west-1."
  type        = string
  default     = null
}

variable "queue_arn" {
  description = "ARN of an SQS queue, when it cannot be derived from the URL."
  type        = string
  default     = null
}

variable "environment" {
  description = "The worker's environment variables."
  type        = map(string)
  default     = {}
}

variable "secrets" {
  description = "The worker's secrets: variable name -> Secrets Manager or SSM parameter ARN."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for arn in values(var.secrets) : can(regex("^arn:[^:]+:(secretsmanager|ssm):", arn))])
    error_message = "Each secret is the ARN of a Secrets Manager secret or an SSM parameter."
  }
}

variable "command" {
  description = "Override of the image's command."
  type        = list(string)
  default     = null
}

variable "cpu" {
  description = "Task CPU units (the sidecar takes 32 of them). Fargate: 256, 512, 1024, 2048, 4096, 8192 or 16384, with a memory it pairs with (checked at plan)."
  type        = number
  default     = 256
}

variable "memory" {
  description = "Task memory, MiB (the sidecar reserves 48). Fargate: 512-2048 with 256 CPU units, 1024-4096 with 512, 2048-8192 with 1024, 4096-16384 with 2048, 8192-30720 with 4096 (steps of 1024), 16384-61440 with 8192 (steps of 4096), 32768-122880 with 16384 (steps of 8192)."
  type        = number
  default     = 512
}

variable "launch_type" {
  description = "FARGATE or EC2."
  type        = string
  default     = "FARGATE"

  validation {
    condition     = contains(["FARGATE", "EC2"], var.launch_type)
    error_message = "launch_type must be FARGATE or EC2."
  }
}

variable "network_mode" {
  description = "awsvpc (always on Fargate), bridge or host (EC2)."
  type        = string
  default     = "awsvpc"

  validation {
    condition     = contains(["awsvpc", "bridge", "host"], var.network_mode)
    error_message = "network_mode must be awsvpc, bridge or host."
  }
}

variable "cpu_architecture" {
  description = "X86_64 or ARM64."
  type        = string
  default     = "X86_64"
}

variable "readonly_root_filesystem" {
  description = "Run the worker with a read-only root file system (the sidecar always is)."
  type        = bool
  default     = false
}

variable "sidecar" {
  description = "tasklens sidecar settings (see modules/sidecar): image, wait_for_sidecar (worker dependsOn HEALTHY), essential, statsd, prometheus (scrape from outside the task), datadog, profiling, tags, environment, queue_secrets (broker passwords for password_env=)."
  type = object({
    image              = optional(string, "tasklens/tasklens:0.1.0")
    wait_for_sidecar   = optional(bool, false)
    essential          = optional(bool, false)
    cpu                = optional(number, 32)
    memory_reservation = optional(number, 48)
    statsd             = optional(object({ socket = optional(bool, false) }), {})
    prometheus         = optional(object({ scrape = optional(bool, false) }), {})
    datadog = optional(object({
      api_key_secret_arn = optional(string)
      site               = optional(string, "datadoghq.com")
    }), {})
    profiling = optional(object({
      mode                = optional(string, "off")
      url                 = optional(string)
      user                = optional(string)
      password_secret_arn = optional(string)
      tenant              = optional(string)
    }), {})
    tags          = optional(map(string), {})
    environment   = optional(map(string), {})
    queue_secrets = optional(map(string), {})
  })
  default = {}
}

variable "log_retention_days" {
  description = "Retention of the task's CloudWatch Logs group."
  type        = number
  default     = 30
}

variable "log_kms_key_id" {
  description = "KMS key ARN to encrypt the log group (null: CloudWatch's default encryption)."
  type        = string
  default     = null
}

variable "task_role_statements" {
  description = "Extra IAM statements for the worker's own task role (IAM JSON shape: Sid, Effect, Action, Resource)."
  type        = any
  default     = []
}

variable "permissions_boundary" {
  description = "Permissions boundary ARN for both roles."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags of every AWS resource."
  type        = map(string)
  default     = {}
}
