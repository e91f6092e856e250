# The tasklens sidecar as values to add to any task definition: its container definition, the task
# volumes and pidMode it needs, the IAM statements for the task and execution roles, and what the
# worker container needs to reach it (environment, mounts, dependsOn).

locals {
  socket_dir    = "/var/run/tasklens"
  socket_path   = "${local.socket_dir}/statsd.sock"
  socket_volume = "tasklens-socket"
  bootstrap_dir = "/opt/tasklens/bootstrap"

  datadog           = var.datadog.api_key_secret_arn != null
  profile_sidecar   = var.profiling.mode == "sidecar"
  profile_bootstrap = var.profiling.mode == "bootstrap"

  # Least exposure. In awsvpc and host mode the worker shares the sidecar's network namespace, so
  # StatsD listens on loopback only: nothing the security group lets in can inject metrics. Bridge
  # mode reaches the sidecar through a link, which needs the container's own interface (not the
  # host's: no port is published for it). HTTP (/metrics, /status) leaves loopback only for a
  # configured Prometheus scraper; the health check runs inside the container.
  shared_netns = var.network_mode != "bridge"
  statsd_addr  = "${local.shared_netns ? "127.0.0.1" : "0.0.0.0"}:8125"
  http_addr    = "${var.prometheus.scrape ? "0.0.0.0" : "127.0.0.1"}:9102"
  # 127.0.0.1 rather than localhost: localhost may resolve to ::1 first, where nothing listens
  statsd_host = local.shared_netns ? "127.0.0.1" : var.container_name

  # Profiling settings go where the profiler runs: the sidecar (py-spy) or the worker (bootstrap).
  profiling_env = merge(
    var.profiling.url != null ? { TASKLENS_PYROSCOPE_URL = var.profiling.url } : {},
    var.profiling.user != null ? { TASKLENS_PYROSCOPE_USER = var.profiling.user } : {},
    var.profiling.tenant != null ? { TASKLENS_PYROSCOPE_TENANT = var.profiling.tenant } : {},
  )
  profiling_secrets = var.profiling.password_secret_arn != null ? [
    { name = "TASKLENS_PYROSCOPE_PASSWORD", valueFrom = var.profiling.password_secret_arn }
  ] : []
  identity_env = merge(
    { TASKLENS_SERVICE = var.service },
    var.env != "" ? { TASKLENS_ENV = var.env } : {},
    var.service_version != "" ? { TASKLENS_VERSION = var.service_version } : {},
  )

  environment = merge(
    local.identity_env,
    {
      TASKLENS_HTTP_ADDR   = local.http_addr
      TASKLENS_STATSD_ADDR = local.statsd_addr
    },
    length(var.tags) > 0 ? { TASKLENS_TAGS = join(",", [for k, v in var.tags : "${k}:${v}"]) } : {},
    length(var.queues) > 0 ? { TASKLENS_QUEUES = join(",", [for q in var.queues : q.url]) } : {},
    var.statsd.socket ? { TASKLENS_STATSD_SOCKET = local.socket_path } : {},
    local.datadog ? { DD_SITE = var.datadog.site } : {},
    local.profile_sidecar ? merge(local.profiling_env, { TASKLENS_PROFILE_MODE = "sidecar" }) : {},
    var.environment,
  )

  secrets = concat(
    local.datadog ? [{ name = "DD_API_KEY", valueFrom = var.datadog.api_key_secret_arn }] : [],
    local.profile_sidecar ? local.profiling_secrets : [],
    [for name in sort(keys(var.queue_secrets)) : { name = name, valueFrom = var.queue_secrets[name] }],
  )

  socket_mounts = var.statsd.socket ? [
    { sourceVolume = local.socket_volume, containerPath = local.socket_dir, readOnly = false }
  ] : []

  container_definition = merge(
    {
      name                   = var.container_name
      image                  = var.image
      essential              = var.essential
      cpu                    = var.cpu
      memoryReservation      = var.memory_reservation
      user                   = "10001:10001"
      readonlyRootFilesystem = true
      # the sidecar flushes every exporter within TASKLENS_SHUTDOWN_TIMEOUT (20 s) after SIGTERM
      stopTimeout = 30
      # only the scrape port is mapped: StatsD never needs to leave the task
      portMappings = var.prometheus.scrape ? [{ containerPort = 9102, protocol = "tcp", name = "tasklens-metrics" }] : []
      # pull discovery (docs/export.md): the ECS observers of the ADOT collector and the CloudWatch agent
      # scrape the containers that carry these labels, so only a sidecar that serves a scraper has them
      dockerLabels = var.prometheus.scrape ? {
        ECS_PROMETHEUS_EXPORTER_PORT = "9102"
        ECS_PROMETHEUS_METRICS_PATH  = "/metrics"
        ECS_PROMETHEUS_JOB_NAME      = "tasklens"
      } : {}
      environment = [for k in sort(keys(local.environment)) : { name = k, value = local.environment[k] }]
      secrets     = local.secrets
      mountPoints = local.socket_mounts
      healthCheck = {
        command     = ["CMD", "tasklens", "health"]
        interval    = 15
        timeout     = 3
        retries     = 3
        startPeriod = 15
      }
      linuxParameters = merge(
        { initProcessEnabled = true },
        local.profile_sidecar ? { capabilities = { add = ["SYS_PTRACE"] } } : {},
      )
    },
    var.memory != null ? { memory = var.memory } : {},
    var.log_configuration != null ? { logConfiguration = var.log_configuration } : {},
  )

  worker_environment = merge(
    {
      DD_SERVICE        = var.service
      DD_AGENT_HOST     = local.statsd_host
      DD_DOGSTATSD_PORT = "8125"
    },
    var.env != "" ? { DD_ENV = var.env } : {},
    var.service_version != "" ? { DD_VERSION = var.service_version } : {},
    # the datadog client prefers DD_DOGSTATSD_URL over host and port
    var.statsd.socket ? { DD_DOGSTATSD_URL = "unix://${local.socket_path}" } : {},
    local.profile_bootstrap ? merge(local.profiling_env, local.bootstrap_env, { PYTHONPATH = local.bootstrap_dir }) : {},
  )
  # What the bootstrap reads (integrations/profilers/sitecustomize.py; tests/deploy compares), as the
  # sidecar has it: profiles are labelled alike in both modes. The password goes as a secret.
  bootstrap_env = {
    for k, v in local.environment : k => v if contains([
      "TASKLENS_SERVICE", "TASKLENS_ENV", "TASKLENS_VERSION", "TASKLENS_TAGS", "TASKLENS_PYROSCOPE_URL",
      "TASKLENS_PYROSCOPE_USER", "TASKLENS_PYROSCOPE_TENANT", "TASKLENS_PROFILE_MODE", "TASKLENS_PROFILE_RATE",
      "TASKLENS_PROFILE_WINDOW",
    ], k)
  }

  # --- IAM -----------------------------------------------------------------------------------
  # SQS URLs: sqs://<name>?region=R (account from var.aws_account_id) or sqs://<host>/<account>/<name>.
  sqs_queues = [
    for q in var.queues : {
      arn        = q.arn
      full       = regexall("^sqs://[^/?]+/([0-9]{12})/([^/?]+)", q.url)
      named      = regexall("^sqs://([^/?]+)", q.url)
      region     = regexall("[?&]region=([^&]+)", q.url)
      host       = regexall("^sqs://sqs\\.([a-z0-9-]+)\\.amazonaws\\.com/", q.url)
      cloudwatch = length(regexall("[?&]cloudwatch_age=(1|true|yes|on)(&|$)", lower(q.url))) > 0
    } if startswith(q.url, "sqs://")
  ]
  sqs_arns = [
    for q in local.sqs_queues : q.arn != null ? q.arn : format(
      "arn:%s:sqs:%s:%s:%s",
      var.aws_partition,
      length(q.region) > 0 ? q.region[0][0] : (length(q.host) > 0 ? q.host[0][0] : var.aws_region),
      length(q.full) > 0 ? q.full[0][0] : var.aws_account_id,
      length(q.full) > 0 ? q.full[0][1] : q.named[0][0],
    )
  ]
  sqs_cloudwatch = anytrue([for q in local.sqs_queues : q.cloudwatch])

  # variables named by password_env= in the queue URLs: each must come from queue_secrets
  password_envs = distinct(flatten([for q in var.queues : [for m in regexall("[?&]password_env=([^&]+)", q.url) : m[0]]]))

  task_role_statements = concat(
    length(local.sqs_arns) > 0 ? [{
      Sid      = "TasklensReadQueueDepth"
      Effect   = "Allow"
      Action   = ["sqs:GetQueueAttributes", "sqs:GetQueueUrl"]
      Resource = local.sqs_arns
    }] : [],
    # CloudWatch GetMetricStatistics has no resource-level permissions: "*" is the only resource.
    local.sqs_cloudwatch ? [{
      Sid      = "TasklensReadQueueAge"
      Effect   = "Allow"
      Action   = ["cloudwatch:GetMetricStatistics"]
      Resource = ["*"]
    }] : [],
  )

  secret_arns = distinct(concat(
    [for s in local.secrets : s.valueFrom],
    local.profile_bootstrap ? [for s in local.profiling_secrets : s.valueFrom] : [],
  ))
  secretsmanager_arns = [for a in local.secret_arns : a if can(regex("^arn:[^:]+:secretsmanager:", a))]
  ssm_arns            = [for a in local.secret_arns : a if can(regex("^arn:[^:]+:ssm:", a))]
  execution_role_statements = concat(
    length(local.secretsmanager_arns) > 0 ? [{
      Sid      = "TasklensReadSecrets"
      Effect   = "Allow"
      Action   = ["secretsmanager:GetSecretValue"]
      Resource = local.secretsmanager_arns
    }] : [],
    length(local.ssm_arns) > 0 ? [{
      Sid      = "TasklensReadParameters"
      Effect   = "Allow"
      Action   = ["ssm:GetParameters"]
      Resource = local.ssm_arns
    }] : [],
  )
}
