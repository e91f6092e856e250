output "task_definition" {
  description = "The RegisterTaskDefinition input without the role ARNs (ECS API shape)."
  value       = local.task_definition

  precondition {
    # ECS refuses a task with two containers of one name
    condition     = var.name != module.sidecar.container_definition.name
    error_message = "name \"${var.name}\" is the sidecar's container name: the worker container is named after the worker, and a task's containers need distinct names. Give the worker another name."
  }
  precondition {
    condition     = var.launch_type != "FARGATE" || var.network_mode == "awsvpc"
    error_message = "Fargate tasks use network_mode awsvpc."
  }
  precondition {
    # awsvpc and host: one network namespace for both containers
    condition     = var.network_mode == "bridge" || var.port != 9102
    error_message = "port 9102 is the sidecar's HTTP port, and in awsvpc and host mode the worker shares its network namespace: give the worker another port."
  }
  precondition {
    condition     = var.launch_type != "FARGATE" || contains(lookup(local.fargate_memory, tostring(var.cpu), []), var.memory)
    error_message = "Fargate takes task cpu/memory (MiB) of 256/512-2048, 512/1024-4096, 1024/2048-8192, 2048/4096-16384 and 4096/8192-30720 (steps of 1024), 8192/16384-61440 (steps of 4096), 16384/32768-122880 (steps of 8192)."
  }
  precondition {
    condition     = var.launch_type != "EC2" || (var.cpu >= 128 && var.cpu <= 196608)
    error_message = "EC2 task cpu is 128 to 196608 units."
  }
}

output "container_definitions_json" {
  description = "The containerDefinitions as JSON, for aws_ecs_task_definition."
  value       = jsonencode(local.task_definition.containerDefinitions)
}

output "task_role_statements" {
  description = "IAM statements the task role needs (the sidecar's queue reads)."
  value       = module.sidecar.task_role_statements
}

output "execution_role_statements" {
  description = "IAM statements the execution role needs (secrets of both containers)."
  value = concat(
    module.sidecar.execution_role_statements,
    length(local.worker_secret_arns.secretsmanager) == 0 ? [] : [{
      Sid      = "WorkerReadSecrets"
      Effect   = "Allow"
      Action   = ["secretsmanager:GetSecretValue"]
      Resource = local.worker_secret_arns.secretsmanager
    }],
    length(local.worker_secret_arns.ssm) == 0 ? [] : [{
      Sid      = "WorkerReadParameters"
      Effect   = "Allow"
      Action   = ["ssm:GetParameters"]
      Resource = local.worker_secret_arns.ssm
    }],
  )
}

output "service_version" {
  description = "The version tag used (the image tag unless given)."
  value       = local.service_version
}
