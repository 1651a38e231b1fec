# Monitoring: Log Analytics + workspace-based Application Insights (the host's telemetry and the
# hub's JSON logs), storage and Key Vault logs, and the Azure Monitor action group that sends
# alerts to the hub (POST /api/v1/azdev/alert, common alert schema), with one example alert.

resource "azurerm_log_analytics_workspace" "hub" {
  name                = "log-${var.name}"
  location            = azurerm_resource_group.hub.location
  resource_group_name = azurerm_resource_group.hub.name
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  tags                = local.tags
}

resource "azurerm_application_insights" "hub" {
  name                = "appi-${var.name}"
  location            = azurerm_resource_group.hub.location
  resource_group_name = azurerm_resource_group.hub.name
  workspace_id        = azurerm_log_analytics_workspace.hub.id
  application_type    = "other"

  # Entra-only ingestion: the connection string alone no longer lets anyone send telemetry.
  local_authentication_disabled = var.app_insights_entra_auth

  tags = local.tags
}

# --- Storage and Key Vault logs ---------------------------------------------------------------

# Read, write and delete logs of each storage service the hub and the host use (what checkov's
# storage logging checks ask for; azurerm_log_analytics_storage_insights would need an account key).
resource "azurerm_monitor_diagnostic_setting" "storage" {
  for_each = toset(["blobServices", "tableServices", "queueServices"])

  name                       = "diag-${var.name}-${each.key}"
  target_resource_id         = "${azurerm_storage_account.hub.id}/${each.key}/default"
  log_analytics_workspace_id = azurerm_log_analytics_workspace.hub.id

  enabled_log {
    category_group = "allLogs"
  }
}

# Who read which secret, when.
resource "azurerm_monitor_diagnostic_setting" "key_vault" {
  name                       = "diag-${var.name}-kv"
  target_resource_id         = azurerm_key_vault.hub.id
  log_analytics_workspace_id = azurerm_log_analytics_workspace.hub.id

  enabled_log {
    category_group = "audit"
  }
}

# --- Action group -----------------------------------------------------------------------------

# The Functions key for ?code= (the alert function is authLevel "function"): the host's `default`
# function key, unless alert_function_key is given. The data source calls the host's key API and
# retries until the host answers; on a brand-new app that has no package yet this can fail, see
# docs/deploy.md ("First apply").
data "azurerm_function_app_host_keys" "hub" {
  count               = nonsensitive(var.alert_function_key == "") ? 1 : 0
  name                = azurerm_function_app_flex_consumption.hub.name
  resource_group_name = azurerm_resource_group.hub.name

  depends_on = [
    azurerm_function_app_flex_consumption.hub,
    azurerm_role_assignment.host_blobs, # the host keeps its keys in blob storage
  ]
}

locals {
  alert_path       = "/api/v1/azdev/alert"
  alert_url_public = "https://${azurerm_function_app_flex_consumption.hub.default_hostname}${local.alert_path}"

  alert_function_key = var.alert_function_key != "" ? var.alert_function_key : one(data.azurerm_function_app_host_keys.hub[*].default_function_key)

  # Entra auth (secure webhook): the token authenticates the sender to the hub; no Basic
  # credentials (the secure webhook does not allow them). Otherwise the hub's API key rides in the
  # URL as the Basic password (an action group webhook cannot add headers). Either way the
  # Functions host wants its key as ?code=.
  alert_userinfo    = var.action_group_aad_auth == null && nonsensitive(var.alert_api_key != "") ? "icahub:${urlencode(var.alert_api_key)}@" : ""
  alert_service_uri = "https://${local.alert_userinfo}${azurerm_function_app_flex_consumption.hub.default_hostname}${local.alert_path}?code=${urlencode(local.alert_function_key)}"
}

resource "azurerm_monitor_action_group" "hub" {
  name                = "ag-${var.name}"
  resource_group_name = azurerm_resource_group.hub.name
  short_name          = var.action_group_short_name

  webhook_receiver {
    name                    = "icahub"
    service_uri             = local.alert_service_uri
    use_common_alert_schema = true

    dynamic "aad_auth" {
      for_each = var.action_group_aad_auth == null ? [] : [var.action_group_aad_auth]
      content {
        object_id      = aad_auth.value.object_id
        identifier_uri = aad_auth.value.identifier_uri
        tenant_id      = coalesce(aad_auth.value.tenant_id, data.azurerm_client_config.current.tenant_id)
      }
    }
  }

  dynamic "email_receiver" {
    for_each = var.action_group_email == "" ? [] : [var.action_group_email]
    content {
      name                    = "email"
      email_address           = email_receiver.value
      use_common_alert_schema = true
    }
  }

  tags = local.tags
}

# The API key is issued by the deployed hub (`icahub keys issue`), so the first apply runs
# without it; warn until it is there (docs/deploy.md: issue it, then apply again).
check "alert_credentials" {
  assert {
    condition     = var.action_group_aad_auth != null || nonsensitive(var.alert_api_key != "")
    error_message = "The action group's webhook carries no credentials yet, so the hub answers it with 401: issue an API key (icahub keys issue --identity azure-monitor), export TF_VAR_alert_api_key and apply again, or set action_group_aad_auth."
  }
}

# --- Example metric alert ---------------------------------------------------------------------

# The hub's storage availability: below the threshold the hub answers 503 and its sinks stall.
# Copy this block for the resources the hub should watch; every alert wired to the action group
# becomes an incident in the hub.
resource "azurerm_monitor_metric_alert" "storage_availability" {
  name                = "alert-${var.name}-storage-availability"
  resource_group_name = azurerm_resource_group.hub.name
  scopes              = [azurerm_storage_account.hub.id]
  description         = "Availability of the icahub storage account (tables, host storage) fell below ${var.storage_availability_threshold}%."
  severity            = 1
  frequency           = "PT1M"
  window_size         = "PT5M"
  auto_mitigate       = true

  criteria {
    metric_namespace = "Microsoft.Storage/storageAccounts"
    metric_name      = "Availability"
    aggregation      = "Average"
    operator         = "LessThan"
    threshold        = var.storage_availability_threshold
  }

  action {
    action_group_id = azurerm_monitor_action_group.hub.id
  }

  tags = local.tags
}
