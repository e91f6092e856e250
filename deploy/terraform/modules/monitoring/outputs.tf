output "prometheus_rules_yaml" {
  description = "Prometheus alert rules for this worker (a rule file; e.g. for aws_prometheus_rule_group_namespace); without TasklensSidecarDown, which is the fleet's (README)."
  value       = yamlencode(local.scoped_rules)
}

output "grafana_dashboard_json" {
  description = "The Grafana dashboard, opened on this worker."
  value       = jsonencode(local.grafana_scoped)
}

output "datadog_dashboard_json" {
  description = "The Datadog dashboard (for datadog_dashboard_json), opened on this worker."
  value       = jsonencode(local.datadog_scoped)
}

output "datadog_monitors" {
  description = "Datadog monitor definitions scoped to this worker (API shape)."
  value       = local.monitors
}
