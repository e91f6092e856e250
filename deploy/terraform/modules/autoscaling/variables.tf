variable "cluster" {
  description = "ECS cluster name or ARN (its name is the sidecar's ecs_cluster tag)."
  type        = string
}

variable "service" {
  description = "ECS service name, which is also the sidecar's service tag (TASKLENS_SERVICE)."
  type        = string
}

variable "queue_url" {
  description = "The worker's tasklens queue URL (docs/queues.md); its queue tag names the scaling metric."
  type        = string
  default     = null
}

variable "autoscaling" {
  description = <<-EOT
    Target tracking on the queue's backlog per running task (docs/scaling.md). min/max: task counts
    (min = 0 only for SQS, which wakes the service from its own metric). backlog_per_task: the target, i.e. the
    acceptable latency divided by the time one task takes per message. queue: the queue tag, derived
    from queue_url when not given. Cooldowns in seconds. scale_in_protection: a busy rule
    (TASKLENS_SCALE_IN_PROTECTION, e.g. "cpu>20%" or "jobs.in_progress>0"); scale_in_idle: seconds
    idle before release; protection_expires_minutes: the protection's expiry, renewed while busy.
  EOT
  type = object({
    min                        = number
    max                        = number
    backlog_per_task           = number
    queue                      = optional(string)
    scale_out_cooldown         = optional(number, 60)
    scale_in_cooldown          = optional(number, 300)
    disable_scale_in           = optional(bool, false)
    namespace                  = optional(string, "tasklens")
    scale_in_protection        = optional(string)
    scale_in_idle              = optional(number, 60)
    protection_expires_minutes = optional(number, 30)
  })

  validation {
    condition     = var.autoscaling.min >= 0 && floor(var.autoscaling.min) == var.autoscaling.min
    error_message = "autoscaling.min must be a whole number >= 0."
  }
  validation {
    condition     = var.autoscaling.max >= var.autoscaling.min && floor(var.autoscaling.max) == var.autoscaling.max
    error_message = "autoscaling.max must be a whole number >= autoscaling.min."
  }
  validation {
    condition     = var.autoscaling.backlog_per_task > 0
    error_message = "autoscaling.backlog_per_task must be > 0 (acceptable latency / seconds per message)."
  }
  validation {
    condition     = var.autoscaling.scale_out_cooldown >= 0 && var.autoscaling.scale_in_cooldown >= 0
    error_message = "autoscaling cooldowns are seconds >= 0."
  }
  validation {
    condition     = var.autoscaling.scale_in_idle >= 0.001 && var.autoscaling.scale_in_idle <= 604800 && var.autoscaling.protection_expires_minutes >= 1 && var.autoscaling.protection_expires_minutes <= 2880 && floor(var.autoscaling.protection_expires_minutes) == var.autoscaling.protection_expires_minutes
    error_message = "autoscaling.scale_in_idle must be seconds from 0.001 to 604800 (7 days) and protection_expires_minutes a whole number from 1 to 2880."
  }
  validation {
    # the sidecar's rule (agent/config.py, parse_cloudwatch_namespace), less the spaces it strips:
    # the policy must read the very namespace the sidecar writes to
    condition = (can(regex("^[ -~]{1,255}$", var.autoscaling.namespace)) && trimspace(var.autoscaling.namespace) == var.autoscaling.namespace
    && !startswith(var.autoscaling.namespace, ":") && !startswith(var.autoscaling.namespace, "AWS/"))
    error_message = "autoscaling.namespace must be a CloudWatch namespace: 1-255 printable ASCII characters, no leading or trailing space, not starting with ':' nor with 'AWS/' (reserved for AWS services)."
  }
  validation {
    # the sidecar's grammar (agent/scaling/busy.py), term by term; the sidecar checks it again at start.
    # Terms are split at `,` (not inside cpu[...]) and at ` or `; an empty one (`cpu>20%,`, `a>0,,b>0`)
    # is refused: the terms found, joined again, must be the whole text; ` or ` splits inside cpu[...] too
    condition = var.autoscaling.scale_in_protection == null ? true : (
      !can(regex("\\[[^\\]]*\\sor\\s", var.autoscaling.scale_in_protection)) &&
      join(",", regexall("(?:[^,\\[]|\\[[^\\]]*\\])+", replace(trimspace(var.autoscaling.scale_in_protection), "/\\s+or\\s+/", ","))) == replace(trimspace(var.autoscaling.scale_in_protection), "/\\s+or\\s+/", ",")
      && alltrue([
        for term in regexall("(?:[^,\\[]|\\[[^\\]]*\\])+", replace(trimspace(var.autoscaling.scale_in_protection), "/\\s+or\\s+/", ",")) :
        can(regex("^\\s*(cpu(\\[\\s*(,\\s*)*[A-Za-z0-9][A-Za-z0-9_-]{0,254}(\\s*,[\\s,]*[A-Za-z0-9][A-Za-z0-9_-]{0,254})*[\\s,]*\\])?\\s*>=?\\s*[0-9]+(\\.[0-9]+)?\\s*%|[A-Za-z_][A-Za-z0-9_.]*(\\s*-\\s*[A-Za-z_][A-Za-z0-9_.]*)?\\s*>=?\\s*-?[0-9]+(\\.[0-9]+)?)\\s*$", term)) && (can(regex("%\\s*$", term)) || !can(regex("^\\s*cpu[\\s>\\[]", term)))
        # a term that holds at 0 (a metric never seen) would protect the task for good: > below 0, >= at or below 0
        && !can(regex(">\\s*-[0-9.]*[1-9]", term)) && !can(regex(">=\\s*(-|0+(\\.0+)?\\s*%?\\s*$)", term))
    ]))
    error_message = "autoscaling.scale_in_protection must be a busy rule: cpu>N%, <statsd gauge>>N or <started>-<finished>>N, joined by ' or ' (docs/scaling.md)."
  }
}

variable "aws_partition" {
  description = "ARN partition of the task ARNs the sidecar may protect, when `cluster` is a name (`aws-cn`, `aws-us-gov`); an ARN brings its own."
  type        = string
  default     = "aws"
}
