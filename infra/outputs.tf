output "resource_group_name" {
  description = "Resource group holding everything (the -g of every az command in docs/deploy.md)."
  value       = azurerm_resource_group.hub.name
}

output "function_app_name" {
  description = "Name of the Function App (the -n of az functionapp commands)."
  value       = azurerm_function_app_flex_consumption.hub.name
}

output "default_hostname" {
  description = "Default hostname of the Function App; the hub's routes are https://<it>/api/..."
  value       = azurerm_function_app_flex_consumption.hub.default_hostname
}

output "public_url" {
  description = "ICAHUB_PUBLIC_URL as set on the app."
  value       = local.public_url
}

output "alert_webhook_url" {
  description = "Where the action group posts alerts, without credentials (the configured URI also carries the API key as Basic credentials unless Entra auth is on, and ?code=<function key>)."
  value       = local.alert_url_public
}

output "alert_webhook_service_uri" {
  description = "The action group webhook's full URI, with its credentials (Basic API key unless Entra auth, ?code=): for az monitor action-group test-notifications."
  value       = local.alert_service_uri
  sensitive   = true
}

output "action_group_id" {
  description = "Resource id of the action group: add it to the actions of any alert rule that should reach the hub."
  value       = azurerm_monitor_action_group.hub.id
}

output "key_vault_name" {
  description = "Name of the Key Vault holding the hub's secrets (az keyvault secret set --vault-name <it> --name icahub-<secret>)."
  value       = azurerm_key_vault.hub.name
}

output "key_vault_uri" {
  description = "URI of the Key Vault."
  value       = azurerm_key_vault.hub.vault_uri
}

output "key_vault_secret_names" {
  description = "Key Vault secret names created for the secrets that are set (app setting => secret name)."
  value       = { for name, secret in azurerm_key_vault_secret.hub : "ICAHUB_${upper(replace(name, "-", "_"))}" => secret.name }
}

output "identity_client_id" {
  description = "Client id of the user-assigned identity (ICAHUB_TABLES_CLIENT_ID, AzureWebJobsStorage__clientId)."
  value       = azurerm_user_assigned_identity.hub.client_id
}

output "identity_id" {
  description = "Resource id of the user-assigned identity (az vm create --assign-identity, for an operator VM)."
  value       = azurerm_user_assigned_identity.hub.id
}

output "identity_principal_id" {
  description = "Object (principal) id of the user-assigned identity."
  value       = azurerm_user_assigned_identity.hub.principal_id
}

output "app_system_identity_principal_id" {
  description = "Object id of the app's system-assigned identity (it resolves the Key Vault references)."
  value       = azurerm_function_app_flex_consumption.hub.identity[0].principal_id
}

output "storage_account_name" {
  description = "Name of the storage account (the hub's tables, the host's storage, the deployment package)."
  value       = azurerm_storage_account.hub.name
}

output "tables_endpoint" {
  description = "Table service URL (ICAHUB_TABLES_ENDPOINT): point icahub's operator commands here."
  value       = trimsuffix(azurerm_storage_account.hub.primary_table_endpoint, "/")
}

output "application_insights_connection_string" {
  description = "Connection string of Application Insights (APPLICATIONINSIGHTS_CONNECTION_STRING on the app)."
  value       = azurerm_application_insights.hub.connection_string
  sensitive   = true
}

output "log_analytics_workspace_id" {
  description = "Resource id of the Log Analytics workspace (the app's traces, storage and Key Vault logs)."
  value       = azurerm_log_analytics_workspace.hub.id
}
