output "dashboard_url" {
  description = "Path of the dashboard in Datadog."
  value       = var.dashboard ? datadog_dashboard_json.worker[0].url : null
}

output "monitor_ids" {
  description = "Monitor name -> id."
  value       = { for name, m in datadog_monitor.worker : name => m.id }
}
