output "orders_worker_rules" {
  description = "The Prometheus rules that came with the orders worker."
  value       = module.orders_worker.prometheus_rules_yaml
}

output "orders_worker_dashboard" {
  description = "The orders worker's Datadog dashboard."
  value       = module.orders_worker_datadog.dashboard_url
}
