variable "service" {
  description = "Service name: the sidecar's TASKLENS_SERVICE, the worker's DD_SERVICE and the `service` tag of every series."
  type        = string

  validation {
    condition     = can(regex("^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$", var.service))
    error_message = "service must be 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit."
  }
}

variable "env" {
  description = "Environment tag (TASKLENS_ENV); empty to leave it out."
  type        = string
  default     = ""

  validation {
    # what the sidecar's parse_name takes (agent/config.py; tests/deploy compares): once stripped of
    # the whitespace Python strips ([\p{Z}\t-\r\x1c-\x1f\x85]), no control character, at most 200
    condition     = can(regex("^[\\p{Z}\\t-\\r\\x1c-\\x1f\\x85]*[^\\p{Cc}]{0,200}[\\p{Z}\\t-\\r\\x1c-\\x1f\\x85]*$", var.env))
    error_message = "env must be at most 200 characters without control characters (tab, newline...), leading and trailing whitespace aside: the sidecar refuses anything else at start."
  }
}

variable "service_version" {
  description = "Version tag (TASKLENS_VERSION), usually the worker's image tag; empty to leave it out."
  type        = string
  default     = ""

  validation {
    # what the sidecar's parse_name takes (agent/config.py; tests/deploy compares): once stripped of
    # the whitespace Python strips ([\p{Z}\t-\r\x1c-\x1f\x85]), no control character, at most 200
    condition     = can(regex("^[\\p{Z}\\t-\\r\\x1c-\\x1f\\x85]*[^\\p{Cc}]{0,200}[\\p{Z}\\t-\\r\\x1c-\\x1f\\x85]*$", var.service_version))
    error_message = "service_version must be at most 200 characters without control characters (tab, newline...), leading and trailing whitespace aside: the sidecar refuses anything else at start."
  }
}

variable "image" {
  description = "The tasklens image (built from deploy/docker/Dockerfile)."
  type        = string
  default     = "tasklens/tasklens:0.1.0"
}

variable "container_name" {
  description = "Name of the sidecar container in the task."
  type        = string
  default     = "tasklens"

  validation {
    condition     = can(regex("^[a-zA-Z0-9_-]{1,255}$", var.container_name))
    error_message = "container_name must be 1-255 letters, digits, '_' or '-' (an ECS container name)."
  }
}

variable "essential" {
  description = "Stop the task when the sidecar stops. Off by default: a crashing observer must not kill the worker."
  type        = bool
  default     = false
}

variable "cpu" {
  description = "CPU units reserved for the sidecar."
  type        = number
  default     = 32

  validation {
    condition     = var.cpu >= 0 && var.cpu <= 1024 && floor(var.cpu) == var.cpu
    error_message = "cpu must be a whole number of units between 0 and 1024."
  }
}

variable "memory_reservation" {
  description = "Soft memory reservation for the sidecar, MiB (it fits in 32-64)."
  type        = number
  default     = 48

  validation {
    condition     = var.memory_reservation >= 32 && var.memory_reservation <= 512 && floor(var.memory_reservation) == var.memory_reservation
    error_message = "memory_reservation must be a whole number of MiB between 32 and 512."
  }
}

variable "memory" {
  description = "Optional hard memory limit for the sidecar, MiB (null: none); above memory_reservation."
  type        = number
  default     = null

  validation {
    condition     = var.memory == null ? true : floor(var.memory) == var.memory
    error_message = "memory must be a whole number of MiB."
  }
}

variable "network_mode" {
  description = "The task's network mode: how the worker reaches the sidecar (127.0.0.1 in awsvpc/host, where StatsD binds loopback only; a link in bridge)."
  type        = string
  default     = "awsvpc"

  validation {
    condition     = contains(["awsvpc", "bridge", "host"], var.network_mode)
    error_message = "network_mode must be awsvpc, bridge or host."
  }
}

variable "prometheus" {
  description = "Prometheus scraping of /metrics from outside the task: `scrape = true` listens on 0.0.0.0:9102 and maps the port (the task's security group must then allow 9102/tcp from the scraper only). Off, HTTP listens on 127.0.0.1 (the health check runs inside the container)."
  type = object({
    scrape = optional(bool, false)
  })
  default = {}
}

variable "queues" {
  description = "The worker's queues, one URL each (see docs/queues.md); passwords through password_env= and queue_secrets. For SQS, `arn` overrides the ARN derived from the URL for the IAM statement."
  type = list(object({
    url = string
    arn = optional(string)
  }))
  default = []

  validation {
    condition     = alltrue([for q in var.queues : can(regex("^(sqs|amqps?|rediss?|nats|beanstalkd?|postgres(ql)?)://", q.url))])
    error_message = "Each queue url starts with sqs://, amqp(s)://, redis(s)://, nats://, beanstalk(d):// or postgres(ql)://."
  }
  validation {
    condition     = alltrue([for q in var.queues : !can(regex("://[^/@?]*:[^/@?]*@", q.url))])
    error_message = "A queue url must not carry a password in plain environment: write password_env=NAME in the URL and pass queue_secrets = { NAME = <secret ARN> }."
  }
  validation {
    # what the sidecar's SQS probe refuses at start (integrations/queues/sqs.py, location; tests/deploy
    # compares): user info (an @ in the host part: before the first /, ? or #), or a password from the
    # environment (the query's last password_env field, when not empty: the sidecar puts that password
    # in the user info). SQS credentials come from the AWS chain (the task role).
    condition = alltrue([for q in var.queues : !startswith(lower(q.url), "sqs://") || (
      !can(regex("(?i)^sqs://[^/?#]*@", q.url)) && contains(["password_env", "password_env="], try(reverse([
        for f in split("&", try(regex("^[^?#]*\\?([^#]*)", q.url)[0], "")) : f if split("=", f)[0] == "password_env"
      ])[0], "password_env"))
    )])
    error_message = "An sqs:// queue url takes no user name or password, password_env= neither: the sidecar reads SQS with the task role's credentials and refuses such a URL at start (remove password_env= and its queue_secrets entry)."
  }
  validation {
    # what else the sidecar refuses at start in an SQS URL (integrations/queues/sqs.py, check: botocore's own
    # rules; tests/deploy compares): a region= that is no host label (letters, digits, '-', not at either end,
    # not all digits, at most 63), an endpoint= or cloudwatch_endpoint= that is no http(s) URL with a host.
    # A value written percent-encoded is refused here, though the sidecar would decode it.
    condition = alltrue([for q in var.queues : !startswith(lower(q.url), "sqs://") || alltrue([
      for f in split("&", try(regex("^[^?#]*\\?([^#]*)", q.url)[0], "")) : (
        split("=", f)[0] != "region" || (
          can(regex("^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)?$", trimprefix(f, "region=")))
          && !can(regex("^[0-9]+$", trimprefix(f, "region=")))
        )
        ) && (
        !contains(["endpoint", "cloudwatch_endpoint"], split("=", f)[0]) || trimprefix(f, "${split("=", f)[0]}=") == ""
        || can(regex("(?i)^https?://([^/?#@]*@)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\\.?|\\[[0-9a-f:.]+\\])(:[0-9]{1,5})?([/?][^ ]*)?$",
        trimprefix(f, "${split("=", f)[0]}=")))
      )
    ])])
    error_message = "An sqs:// queue url's region= must be an AWS region name, and its endpoint= (cloudwatch_endpoint=) an http:// or https:// URL with a host: the sidecar refuses anything else at start."
  }
  validation {
    # aiormq reads a heartbeat= that is no whole number as 0 (no heartbeat): the sidecar refuses it at start
    condition = alltrue([for q in var.queues : !can(regex("(?i)^amqps?://", q.url)) || alltrue([
      for f in split("&", try(regex("^[^?#]*\\?([^#]*)", q.url)[0], "")) :
      split("=", f)[0] != "heartbeat" || (can(regex("^[0-9]{1,5}$", trimprefix(f, "heartbeat="))) && try(tonumber(trimprefix(f, "heartbeat=")) < 65535, false))
    ])])
    error_message = "An amqp(s):// queue url's heartbeat= must be a whole number of seconds from 0 to 65534: the sidecar refuses anything else at start."
  }
}

variable "aws_account_id" {
  description = "Account of the SQS queues named without one (sqs://<name>?region=...), for their IAM ARNs."
  type        = string
  default     = ""
}

variable "aws_region" {
  description = "Default region of SQS queues whose URL has no region."
  type        = string
  default     = "us-east-1"
}

variable "statsd" {
  description = "StatsD listener: UDP 8125 always; `socket` adds the Unix socket on a volume shared with the worker (faster, no packet loss on a full buffer)."
  type = object({
    socket = optional(bool, false)
  })
  default = {}
}

variable "datadog" {
  description = "Datadog export: on when `api_key_secret_arn` (Secrets Manager or SSM parameter ARN) is set."
  type = object({
    api_key_secret_arn = optional(string)
    site               = optional(string, "datadoghq.com")
  })
  default = {}

  validation {
    condition     = var.datadog.api_key_secret_arn == null || can(regex("^arn:", var.datadog.api_key_secret_arn))
    error_message = "datadog.api_key_secret_arn must be a Secrets Manager or SSM parameter ARN (never the key itself)."
  }
}

variable "profiling" {
  description = <<-EOT
    Continuous profiling to a Pyroscope server. mode "sidecar": py-spy in the sidecar (adds pidMode task
    and SYS_PTRACE); "bootstrap": in-process, the worker gets the bootstrap on PYTHONPATH; "off".
  EOT
  type = object({
    mode                = optional(string, "off")
    url                 = optional(string)
    user                = optional(string)
    password_secret_arn = optional(string)
    tenant              = optional(string)
  })
  default = {}

  validation {
    condition     = contains(["off", "sidecar", "bootstrap"], var.profiling.mode)
    error_message = "profiling.mode must be off, sidecar or bootstrap."
  }
  validation {
    condition     = var.profiling.mode == "off" || can(regex("^https?://[^@]+$", var.profiling.url))
    error_message = "profiling.url must be an http(s) URL without credentials (use user and password_secret_arn)."
  }
  validation {
    condition     = var.profiling.password_secret_arn == null || can(regex("^arn:", var.profiling.password_secret_arn))
    error_message = "profiling.password_secret_arn must be a Secrets Manager or SSM parameter ARN."
  }
}

variable "tags" {
  description = "Extra tags on every series (TASKLENS_TAGS=k:v,k:v): at most 100, keys without ',' or ':', values without ',', each key:value at most 200 characters, keys that stay apart as Prometheus labels."
  type        = map(string)
  default     = {}

  # What the sidecar's TASKLENS_TAGS parser takes (agent/config.py, parse_tags; tests/deploy compares).
  # Each key:value is checked as env is (once stripped of whitespace, no control character, at most 200)
  # and the keys, stripped, must stay apart as Prometheus labels. The module also refuses what the
  # sidecar would read as other tags than these: `,` or `:` in a key, `,` in a value, two keys that
  # are one once stripped.
  validation {
    condition = length(var.tags) <= 100 && alltrue([
      for k, v in var.tags : can(regex("[^\\p{Z}\\t-\\r\\x1c-\\x1f\\x85]", k)) && !can(regex("[,:]", k)) && !can(regex(",", v)) &&
      can(regex("^[\\p{Z}\\t-\\r\\x1c-\\x1f\\x85]*[^\\p{Cc}]{0,200}[\\p{Z}\\t-\\r\\x1c-\\x1f\\x85]*$", "${k}:${v}"))
    ])
    error_message = "tags are key:value pairs of TASKLENS_TAGS: at most 100, keys not blank and without ',' or ':', values without ',', each key:value at most 200 characters without control characters (leading and trailing whitespace aside)."
  }
  validation {
    # the label of a key (agent/sinks/prometheus.py, label_name): `_` for each character outside
    # [a-zA-Z0-9_], `_` before a leading digit, exported_* for le, quantile and __*
    condition = length(var.tags) == length(distinct([
      for name in [
        for k in keys(var.tags) : replace(replace(replace(k, "/^[\\p{Z}\\t-\\r\\x1c-\\x1f\\x85]+|[\\p{Z}\\t-\\r\\x1c-\\x1f\\x85]+$/", ""), "/[^a-zA-Z0-9_]/", "_"), "/^[0-9]/", "_$0")
      ] : contains(["le", "quantile"], name) || startswith(name, "__") ? "exported_${replace(name, "/^_+/", "")}" : name
    ]))
    error_message = "tags: two keys make the same Prometheus label (team.name and team-name are both team_name; le and exported_le are one; so are a key and the same key with spaces around it), which the sidecar refuses at start: keep one of them."
  }
}

variable "environment" {
  description = "Further sidecar settings as TASKLENS_*, DD_* or OTEL_* variables (see `tasklens check`), e.g. TASKLENS_FLUSH_INTERVAL or OTEL_EXPORTER_OTLP_ENDPOINT. Not the secret ones: those go in queue_secrets (name -> ARN)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.environment) : can(regex("^(TASKLENS_|DD_|OTEL_)", k))])
    error_message = "environment takes the sidecar's TASKLENS_*, DD_* and OTEL_* settings."
  }
  validation {
    # the sidecar's secret settings (agent/config.py, `secret=True`; tests/deploy compares)
    condition = length(setintersection(keys(var.environment), [
      "DD_API_KEY", "TASKLENS_PYROSCOPE_PASSWORD", "TASKLENS_REMOTE_WRITE_PASSWORD", "TASKLENS_REMOTE_WRITE_BEARER_TOKEN",
      "TASKLENS_REMOTE_WRITE_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    ])) == 0
    error_message = "A secret setting must not be plain environment: pass it as an ECS secret with queue_secrets = { NAME = <secret ARN> } (datadog.api_key_secret_arn and profiling.password_secret_arn for those two)."
  }
}

variable "log_configuration" {
  description = "The sidecar's logConfiguration (ECS shape), or null for none."
  type        = any
  default     = null
}

variable "queue_secrets" {
  description = "The sidecar's secrets: variable name -> Secrets Manager or SSM parameter ARN. Broker passwords, which a queue URL names with `password_env=NAME` (docs/queues.md), and the export credentials (e.g. TASKLENS_REMOTE_WRITE_PASSWORD, OTEL_EXPORTER_OTLP_HEADERS)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for name, arn in var.queue_secrets : can(regex("^[A-Z_][A-Z0-9_]*$", name)) && can(regex("^arn:[^:]+:(secretsmanager|ssm):", arn))])
    error_message = "queue_secrets maps UPPER_CASE variable names to Secrets Manager or SSM parameter ARNs."
  }
}

variable "aws_partition" {
  description = "ARN partition of derived SQS ARNs."
  type        = string
  default     = "aws"
}
