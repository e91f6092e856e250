# A worker's Datadog dashboard and monitors (queue backing up, drain time, memory, CPU, sidecar
# silent). Separate from the service module because Terraform configures every provider a module
# uses, even at count = 0: the AWS-only path must not need Datadog credentials.

module "monitoring" {
  source = "../monitoring"

  service = var.service
  env     = var.env
  notify  = var.notify
}

resource "datadog_dashboard_json" "worker" {
  count     = var.dashboard ? 1 : 0
  dashboard = module.monitoring.datadog_dashboard_json
}

resource "datadog_monitor" "worker" {
  for_each = { for m in module.monitoring.datadog_monitors : m.name => m }

  name                = each.value.name
  type                = each.value.type
  query               = each.value.query
  message             = each.value.message
  priority            = each.value.priority
  tags                = each.value.tags
  include_tags        = each.value.options.include_tags
  require_full_window = each.value.options.require_full_window
  notify_no_data      = each.value.options.notify_no_data
  no_data_timeframe   = try(each.value.options.no_data_timeframe, null)

  monitor_thresholds {
    critical = each.value.options.thresholds.critical
    warning  = try(each.value.options.thresholds.warning, null)
  }
}
