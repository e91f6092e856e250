terraform {
  # No provider: renders one worker's dashboards and alerts from deploy/dashboards and deploy/alerts.
  required_version = ">= 1.3.0"
}
