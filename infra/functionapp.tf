# The Flex Consumption plan and the Function App that runs `icahub serve` as a custom handler
# (host.json; the package is built by scripts/package.sh and deployed with
# `az functionapp deployment source config-zip`, docs/deploy.md).

resource "azurerm_service_plan" "hub" {
  #checkov:skip=CKV_AZURE_212:worker_count does not apply to the Flex Consumption plan (FC1): it scales per app between 0 and maximum_instance_count instances; always_ready_instances keeps instances warm.
  #checkov:skip=CKV_AZURE_225:Flex Consumption zone redundancy is offered only in some regions; it is the variable zone_redundant (default false so that every Flex region works).
  name                   = "asp-${var.name}"
  resource_group_name    = azurerm_resource_group.hub.name
  location               = azurerm_resource_group.hub.location
  os_type                = "Linux"
  sku_name               = "FC1"
  zone_balancing_enabled = var.zone_redundant ? true : null
  tags                   = local.tags
}

resource "azurerm_function_app_flex_consumption" "hub" {
  name                = local.function_app_name
  resource_group_name = azurerm_resource_group.hub.name
  location            = azurerm_resource_group.hub.location
  service_plan_id     = azurerm_service_plan.hub.id

  # The custom handler: host.json starts the `icahub` binary.
  runtime_name    = "custom"
  runtime_version = "1.0"

  # Deployment package: the blob container, reached with the user-assigned identity.
  storage_container_type            = "blobContainer"
  storage_container_endpoint        = "${azurerm_storage_account.hub.primary_blob_endpoint}${azurerm_storage_container.deployment.name}"
  storage_authentication_type       = "UserAssignedIdentity"
  storage_user_assigned_identity_id = azurerm_user_assigned_identity.hub.id

  instance_memory_in_mb  = var.instance_memory_mb
  maximum_instance_count = var.maximum_instance_count

  dynamic "always_ready" {
    for_each = var.always_ready_instances > 0 ? [1] : []
    content {
      name           = "http"
      instance_count = var.always_ready_instances
    }
  }

  https_only                                     = true
  public_network_access_enabled                  = true
  client_certificate_enabled                     = false
  webdeploy_publish_basic_authentication_enabled = false # config-zip on Flex authenticates with an Entra token

  # The user-assigned identity: storage (hub tables, host, deployment) and telemetry. The
  # system-assigned one: Key Vault references, because this resource cannot set
  # key_vault_reference_identity_id (identity.tf).
  identity {
    type         = "SystemAssigned, UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.hub.id]
  }

  site_config {
    # The provider writes this as the APPLICATIONINSIGHTS_CONNECTION_STRING app setting (and
    # reads that setting back into here), so it must not be in app_settings as well.
    application_insights_connection_string = azurerm_application_insights.hub.connection_string
    minimum_tls_version                    = "1.2"
  }

  # The contract with the hub (a Rust test reads these keys): one literal object, literal keys.
  # Hub settings come from variables (variables.tf); secrets are Key Vault references
  # (keyvault.tf) or "" when unset. Not set on purpose: FUNCTIONS_CUSTOMHANDLER_PORT (the host
  # sets it), ICAHUB_TABLES_CONNECTION_STRING (key-based; the identity is used), ICAHUB_DATA_DIR
  # (embedded store, refused under the host), ICAHUB_DISPATCH_INTERVAL_SECS (the dispatch timer
  # function drains), ICAHUB_ROUTING_FILE (ICAHUB_ROUTING instead), ICAHUB_BENCH_KEY, RUST_LOG.
  app_settings = {
    # --- Functions host and platform ---------------------------------------------------------
    # Identity-based host storage with the user-assigned identity (AzureWebJobsStorage__*).
    "AzureWebJobsStorage__accountName" = azurerm_storage_account.hub.name
    "AzureWebJobsStorage__credential"  = "managedidentity"
    "AzureWebJobsStorage__clientId"    = azurerm_user_assigned_identity.hub.client_id
    # The provider always adds AzureWebJobsStorage as a key-based connection string with an EMPTY
    # AccountKey when the deployment storage uses an identity (terraform-provider-azurerm#29693,
    # #30732); a non-empty AzureWebJobsStorage would win over the AzureWebJobsStorage__* settings
    # above and the host could not reach its storage. Explicit app settings override the
    # provider's, and an empty value counts as unset for the host (and for the hub), so this
    # neutralises it. Cost: the provider does not read this key back, so every plan shows it as
    # an in-place change of app_settings (harmless; remove the line once the provider is fixed).
    "AzureWebJobsStorage" = ""
    # Telemetry with Entra ID (local authentication is off on Application Insights).
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING" = var.app_insights_entra_auth ? "ClientId=${azurerm_user_assigned_identity.hub.client_id};Authorization=AAD" : ""

    # --- Storage ----------------------------------------------------------------------------
    "ICAHUB_STORAGE"          = "tables"
    "ICAHUB_TABLES_ENDPOINT"  = trimsuffix(azurerm_storage_account.hub.primary_table_endpoint, "/")
    "ICAHUB_TABLES_CLIENT_ID" = azurerm_user_assigned_identity.hub.client_id
    "ICAHUB_TABLE_PREFIX"     = var.table_prefix
    "ICAHUB_MAX_BODY_BYTES"   = tostring(var.max_body_bytes)
    "ICAHUB_STORE_TIMEOUT_MS" = tostring(var.store_timeout_ms)

    # --- Authentication ---------------------------------------------------------------------
    "ICAHUB_AUTH"            = "required"
    "ICAHUB_AUTH_METHODS"    = var.auth_methods
    "ICAHUB_WEBHOOK_SECRETS" = local.secret_ref["webhook-secrets"]
    "ICAHUB_WEBHOOK_ROLES"   = var.webhook_roles
    "ICAHUB_ENTRA_TENANT_ID" = var.entra_tenant_id
    "ICAHUB_ENTRA_AUDIENCES" = var.entra_audiences
    "ICAHUB_ENTRA_AUTHORITY" = var.entra_authority
    "ICAHUB_ENTRA_ROLE_MAP"  = var.entra_role_map
    "ICAHUB_PUBLIC_URL"      = local.public_url

    # --- Mattermost ---------------------------------------------------------------------------
    "ICAHUB_MATTERMOST_WEBHOOK_URL"    = local.secret_ref["mattermost-webhook-url"]
    "ICAHUB_MATTERMOST_WEBHOOKS"       = local.secret_ref["mattermost-webhooks"]
    "ICAHUB_MATTERMOST_USERNAME"       = var.mattermost_username
    "ICAHUB_MATTERMOST_ICON_URL"       = var.mattermost_icon_url
    "ICAHUB_MATTERMOST_ACTION_SECRETS" = local.secret_ref["mattermost-action-secrets"]
    "ICAHUB_MATTERMOST_URL"            = var.mattermost_url
    "ICAHUB_MATTERMOST_TOKEN"          = local.secret_ref["mattermost-token"]
    "ICAHUB_MATTERMOST_CHECK_TTL_SECS" = tostring(var.mattermost_check_ttl_secs)

    # --- PagerDuty ----------------------------------------------------------------------------
    "ICAHUB_PAGERDUTY_ROUTING_KEY"     = local.secret_ref["pagerduty-routing-key"]
    "ICAHUB_PAGERDUTY_ROUTING_KEYS"    = local.secret_ref["pagerduty-routing-keys"]
    "ICAHUB_PAGERDUTY_EVENTS_URL"      = var.pagerduty_events_url
    "ICAHUB_PAGERDUTY_RATE_PER_MINUTE" = tostring(var.pagerduty_rate_per_minute)

    # --- Control plane ------------------------------------------------------------------------
    "ICAHUB_CONTROL_PLANE_URL"             = var.control_plane_url
    "ICAHUB_CONTROL_PLANE_TOKEN"           = local.secret_ref["control-plane-token"]
    "ICAHUB_CONTROL_PLANE_SIGNING_SECRETS" = local.secret_ref["control-plane-signing-secrets"]

    # --- Azure DevOps -------------------------------------------------------------------------
    "ICAHUB_AZDO_PLAN_HOSTS"    = var.azdo_plan_hosts
    "ICAHUB_AZDO_ORGANIZATIONS" = join(",", var.azdo_organizations)
    "ICAHUB_AZDO_API_VERSION"   = var.azdo_api_version
    "ICAHUB_AZDO_HOOK_USERNAME" = var.azdo_hook_username
    "ICAHUB_AZDO_HOOK_PASSWORD" = local.secret_ref["azdo-hook-password"]
    "ICAHUB_AZDO_HOOK_HEADER"   = var.azdo_hook_header
    "ICAHUB_AZDO_HOOK_SECRET"   = local.secret_ref["azdo-hook-secret"]

    # --- Routing and delivery -----------------------------------------------------------------
    "ICAHUB_ROUTING"            = var.routing
    "ICAHUB_RETRY_FIRST_SECS"   = tostring(var.retry_first_secs)
    "ICAHUB_RETRY_MAX_SECS"     = tostring(var.retry_max_secs)
    "ICAHUB_GIVE_UP_AFTER_SECS" = tostring(var.give_up_after_secs)
    "ICAHUB_LEASE_SECS"         = tostring(var.lease_secs)

    # --- Approvals ----------------------------------------------------------------------------
    "ICAHUB_APPROVAL_EXPIRY_SECS"   = tostring(var.approval_expiry_secs)
    "ICAHUB_APPROVAL_REMINDER_SECS" = tostring(var.approval_reminder_secs)
    "ICAHUB_FINANCE_THRESHOLD_USD"  = tostring(var.finance_threshold_usd)
    "ICAHUB_BUDGET_MAX_UTILIZATION" = tostring(var.budget_max_utilization)
    "ICAHUB_BUDGET_PROJECTS"        = jsonencode(var.budget_projects)
    "ICAHUB_BUDGET_REQUIRED"        = tostring(var.budget_required)
    "ICAHUB_OVERRIDE_WINDOW_SECS"   = tostring(var.override_window_secs)
    "ICAHUB_PRODUCTION_TARGETS"     = var.production_targets
    "ICAHUB_DEPLOYMENT_LOCK_SECS"   = tostring(var.deployment_lock_secs)
    "ICAHUB_APPROVAL_WEBHOOK"       = var.approval_webhook
    "ICAHUB_APPROVAL_CHANNEL"       = var.approval_channel
    "ICAHUB_FINANCE_CHANNEL"        = var.finance_channel
    "ICAHUB_ESCALATION_WEBHOOK"     = var.escalation_webhook
    "ICAHUB_ESCALATION_CHANNEL"     = var.escalation_channel

    # --- Audit and logs -----------------------------------------------------------------------
    "ICAHUB_AUDIT_CHECKPOINT_SECS" = tostring(var.audit_checkpoint_secs)
    "ICAHUB_LOG"                   = var.log_filter
    "ICAHUB_LOG_FORMAT"            = "json"
  }

  tags = local.tags

  # The host and the hub need their storage roles from the first start; role assignments take a
  # few minutes to propagate, so create them before the app.
  depends_on = [
    azurerm_role_assignment.hub_tables,
    azurerm_role_assignment.host_blobs,
    azurerm_role_assignment.app_insights_publisher,
  ]
}

# ICAHUB_PUBLIC_URL is derived from the app's name (main.tf); warn if Azure gave the app another
# default hostname (e.g. a "secure unique default hostname").
check "public_url_matches_hostname" {
  assert {
    condition     = var.public_url != "" || azurerm_function_app_flex_consumption.hub.default_hostname == local.assumed_hostname
    error_message = "The app's default hostname is not ${local.assumed_hostname}: set var.public_url to https://<its default hostname> (output default_hostname) and apply again, or Mattermost approval buttons point to the wrong host."
  }
}
