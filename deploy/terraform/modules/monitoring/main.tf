# One source for every dashboard and alert: the files in deploy/dashboards and deploy/alerts (which
# also work on their own, for all workers at once). Here they are scoped to one worker.

locals {
  deploy_dir = "${path.module}/../../.."

  # the metric names the dashboards and alerts use (one per line, # comments)
  metric_names = [
    for line in split("\n", file("${local.deploy_dir}/dashboards/metrics.txt")) : trimspace(line)
    if trimspace(line) != "" && !startswith(trimspace(line), "#")
  ]
  selector = join(",", concat(
    ["service=\"${var.service}\""],
    var.env == "" ? [] : ["env=\"${var.env}\""],
  ))
  metric_regex   = "\\b(${join("|", local.metric_names)})\\b"
  metric_pattern = "/${local.metric_regex}/" # replace() takes a regex between slashes

  rules = yamldecode(file("${local.deploy_dir}/alerts/prometheus/tasklens.rules.yml"))
  # a rule that names none of those metrics cannot be scoped (`TasklensSidecarDown` watches `up`, which
  # has no `service` label): it is the fleet's, loaded once from the file, not once per worker
  scoped_rules = {
    groups = [for group in local.rules.groups : {
      name = "${group.name}-${var.service}"
      rules = [for rule in group.rules : merge(rule, {
        expr = replace(rule.expr, local.metric_pattern, "$${1}{${local.selector}}")
      }) if length(regexall(local.metric_regex, rule.expr)) > 0]
    }]
  }

  grafana = jsondecode(file("${local.deploy_dir}/dashboards/grafana/tasklens-worker.json"))
  grafana_scoped = merge(local.grafana, {
    uid   = substr("tasklens-${var.service}", 0, 40)
    title = "tasklens: ${var.service}"
    templating = { list = [for v in local.grafana.templating.list : merge(v, v.name != "service" ? {} : {
      current = { text = var.service, value = var.service, selected = true }
    })] }
  })

  datadog = jsondecode(file("${local.deploy_dir}/dashboards/datadog/tasklens-worker.json"))
  datadog_scoped = merge(local.datadog, {
    title = "tasklens: ${var.service}"
    template_variables = [for v in local.datadog.template_variables : merge(v, {
      default = v.name == "service" ? var.service : (v.name == "env" && var.env != "" ? var.env : v.default)
    })]
  })

  scope = join(",", concat(["service:${var.service}"], var.env == "" ? [] : ["env:${var.env}"]))
  monitors = [for m in jsondecode(file("${local.deploy_dir}/alerts/datadog/monitors.json")) : merge(m, {
    query   = replace(m.query, "{*}", "{${local.scope}}")
    message = join(" ", concat([m.message], var.notify))
    tags    = concat(m.tags, ["service:${var.service}"], var.env == "" ? [] : ["env:${var.env}"])
  })]
}
