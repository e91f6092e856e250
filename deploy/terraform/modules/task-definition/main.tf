# The complete RegisterTaskDefinition input for a worker and its tasklens sidecar, without provider:
# the `task` module feeds it to aws_ecs_task_definition, the tests to botocore's validator.

locals {
  # The task sizes Fargate takes: CPU units -> memory MiB (RegisterTaskDefinition, `memory`).
  fargate_memory = {
    "256"   = [512, 1024, 2048]
    "512"   = range(1024, 4097, 1024)
    "1024"  = range(2048, 8193, 1024)
    "2048"  = range(4096, 16385, 1024)
    "4096"  = range(8192, 30721, 1024)
    "8192"  = range(16384, 61441, 4096)
    "16384" = range(32768, 122881, 8192)
  }

  image_tag       = try(regex(":([^:/@]+)$", split("@", var.image)[0])[0], "latest")
  service_version = coalesce(var.service_version, local.image_tag)

  log_configuration = { for c in ["worker", "tasklens"] : c => var.log_group == null ? null : {
    logDriver = "awslogs"
    options = {
      awslogs-group         = var.log_group
      awslogs-region        = var.region
      awslogs-stream-prefix = c
    }
  } }
}

module "sidecar" {
  source = "../sidecar"

  service            = var.name
  env                = var.env
  service_version    = local.service_version
  image              = var.sidecar.image
  essential          = var.sidecar.essential
  cpu                = var.sidecar.cpu
  memory_reservation = var.sidecar.memory_reservation
  network_mode       = var.network_mode
  queues             = var.queue == null ? [] : [{ url = var.queue, arn = var.queue_arn }]
  aws_account_id     = var.account_id
  aws_region         = var.region
  statsd             = var.sidecar.statsd
  prometheus         = var.sidecar.prometheus
  datadog            = var.sidecar.datadog
  profiling          = var.sidecar.profiling
  tags               = var.sidecar.tags
  environment        = var.sidecar.environment
  queue_secrets      = var.sidecar.queue_secrets
  log_configuration  = local.log_configuration["tasklens"]
}

locals {
  suggested = { for e in module.sidecar.worker.environment : e.name => e.value }
  # the worker's own settings win over what the sidecar suggests (e.g. DD_AGENT_HOST); but a PYTHONPATH
  # of its own goes after the profiling bootstrap's, which must be on it (docs/profiling.md)
  worker_env = merge(local.suggested, var.environment,
    lookup(local.suggested, "PYTHONPATH", "") != "" && lookup(var.environment, "PYTHONPATH", "") != "" ? {
      PYTHONPATH = "${local.suggested["PYTHONPATH"]}:${var.environment["PYTHONPATH"]}"
  } : {})
  worker_secrets = merge(
    { for s in module.sidecar.worker.secrets : s.name => s.valueFrom },
    var.secrets,
  )

  worker_secret_arns = {
    for service in ["secretsmanager", "ssm"] : service => distinct([
      for arn in values(var.secrets) : arn if can(regex("^arn:[^:]+:${service}:", arn))
    ])
  }

  worker = merge(
    {
      name                   = var.name
      image                  = var.image
      essential              = true
      readonlyRootFilesystem = var.readonly_root_filesystem
      environment            = [for k in sort(keys(local.worker_env)) : { name = k, value = local.worker_env[k] }]
      secrets                = [for k in sort(keys(local.worker_secrets)) : { name = k, valueFrom = local.worker_secrets[k] }]
      mountPoints            = module.sidecar.worker.mount_points
      volumesFrom            = module.sidecar.worker.volumes_from
      dependsOn              = var.sidecar.wait_for_sidecar ? module.sidecar.worker.depends_on : []
      portMappings           = var.port == null ? [] : [{ containerPort = var.port, protocol = "tcp" }]
    },
    length(module.sidecar.worker.links) > 0 ? { links = module.sidecar.worker.links } : {},
    var.command == null ? {} : { command = var.command },
    var.log_group == null ? {} : { logConfiguration = local.log_configuration["worker"] },
  )

  task_definition = merge(
    {
      family                  = var.name
      networkMode             = var.network_mode
      requiresCompatibilities = [var.launch_type]
      cpu                     = tostring(var.cpu)
      memory                  = tostring(var.memory)
      containerDefinitions    = [local.worker, module.sidecar.container_definition]
      volumes                 = module.sidecar.volumes
      runtimePlatform         = { operatingSystemFamily = "LINUX", cpuArchitecture = var.cpu_architecture }
    },
    module.sidecar.pid_mode == null ? {} : { pidMode = module.sidecar.pid_mode },
  )
}
