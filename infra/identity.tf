# The app runs with two identities:
#   - a user-assigned identity (this file) for storage and telemetry: the hub's tables
#     (ICAHUB_TABLES_CLIENT_ID), the host's storage (AzureWebJobsStorage__clientId), the deployment
#     package (storage_user_assigned_identity_id), Application Insights
#     (APPLICATIONINSIGHTS_AUTHENTICATION_STRING). It exists before the app, so its roles are in
#     place when the app first starts.
#   - the app's system-assigned identity, for Key Vault references only: App Service resolves
#     @Microsoft.KeyVault(...) settings with the system-assigned identity unless the site's
#     keyVaultReferenceIdentity names another, and azurerm_function_app_flex_consumption has no
#     key_vault_reference_identity_id argument (hashicorp/terraform-provider-azurerm#28928, PR #31439).

resource "azurerm_user_assigned_identity" "hub" {
  name                = "id-${var.name}"
  resource_group_name = azurerm_resource_group.hub.name
  location            = azurerm_resource_group.hub.location
  tags                = local.tags
}

# --- Storage: the hub's tables, the host's storage, the deployment package ----------------------

# The hub's tables (and the host's diagnostic events, which Microsoft documents as needing it).
resource "azurerm_role_assignment" "hub_tables" {
  scope                            = azurerm_storage_account.hub.id
  role_definition_name             = "Storage Table Data Contributor"
  principal_id                     = azurerm_user_assigned_identity.hub.principal_id
  principal_type                   = "ServicePrincipal"
  skip_service_principal_aad_check = true
  description                      = "icahub: the hub's tables (ICAHUB_TABLES_ENDPOINT) and the host's diagnostic events"
}

# Identity-based AzureWebJobsStorage: Microsoft's "Connecting to host storage with an identity"
# lists Storage Blob Data Owner as what the host itself needs (key store, timer trigger locks);
# it also covers writing and reading the deployment package container. Storage Queue Data
# Contributor is only needed for blob triggers and queue-based extensions, which icahub does not
# use (HTTP and timer triggers only), so it is not granted.
resource "azurerm_role_assignment" "host_blobs" {
  scope                            = azurerm_storage_account.hub.id
  role_definition_name             = "Storage Blob Data Owner"
  principal_id                     = azurerm_user_assigned_identity.hub.principal_id
  principal_type                   = "ServicePrincipal"
  skip_service_principal_aad_check = true
  description                      = "icahub: Functions host storage (AzureWebJobsStorage__*) and the Flex deployment package"
}

# --- Telemetry ----------------------------------------------------------------------------------

resource "azurerm_role_assignment" "app_insights_publisher" {
  count                            = var.app_insights_entra_auth ? 1 : 0
  scope                            = azurerm_application_insights.hub.id
  role_definition_name             = "Monitoring Metrics Publisher"
  principal_id                     = azurerm_user_assigned_identity.hub.principal_id
  principal_type                   = "ServicePrincipal"
  skip_service_principal_aad_check = true
  description                      = "icahub: Entra-authenticated telemetry (APPLICATIONINSIGHTS_AUTHENTICATION_STRING)"
}

# --- Key Vault ----------------------------------------------------------------------------------

# Key Vault references are resolved with the app's system-assigned identity (see the top of this
# file).
resource "azurerm_role_assignment" "app_kv_secrets_user" {
  scope                            = azurerm_key_vault.hub.id
  role_definition_name             = "Key Vault Secrets User"
  principal_id                     = azurerm_function_app_flex_consumption.hub.identity[0].principal_id
  principal_type                   = "ServicePrincipal"
  skip_service_principal_aad_check = true
  description                      = "icahub: Key Vault references in the app settings"
}

# The user-assigned identity reads the secrets too: what key_vault_reference_identity_id will
# need once the provider has it, and what lets an operator VM that carries this identity run
# `icahub doctor` with the app's real settings (docs/deploy.md).
resource "azurerm_role_assignment" "identity_kv_secrets_user" {
  scope                            = azurerm_key_vault.hub.id
  role_definition_name             = "Key Vault Secrets User"
  principal_id                     = azurerm_user_assigned_identity.hub.principal_id
  principal_type                   = "ServicePrincipal"
  skip_service_principal_aad_check = true
  description                      = "icahub: the user-assigned identity reads the hub's secrets"
}

# Whoever runs Terraform writes the secrets (RBAC vault: no access policies).
resource "azurerm_role_assignment" "terraform_kv_secrets_officer" {
  scope                = azurerm_key_vault.hub.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = data.azurerm_client_config.current.object_id
  description          = "icahub: Terraform writes the hub's secrets"
}

# --- Operators ----------------------------------------------------------------------------------

resource "azurerm_role_assignment" "operator_tables" {
  for_each             = toset(var.operator_object_ids)
  scope                = azurerm_storage_account.hub.id
  role_definition_name = "Storage Table Data Contributor"
  principal_id         = each.value
  description          = "icahub operator: icahub keys/roles/outbox/audit commands against the deployed tables"
}

resource "azurerm_role_assignment" "operator_kv_secrets_officer" {
  for_each             = toset(var.operator_object_ids)
  scope                = azurerm_key_vault.hub.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = each.value
  description          = "icahub operator: secret rotation (az keyvault secret set)"
}
