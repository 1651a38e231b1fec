# One storage account for everything durable:
#   - the hub's tables (ICAHUB_TABLE_PREFIX*), reached with the user-assigned identity
#     (ICAHUB_TABLES_ENDPOINT / ICAHUB_TABLES_CLIENT_ID);
#   - the Functions host's own storage (keys in azure-webjobs-secrets, timer locks), identity-based
#     (AzureWebJobsStorage__*);
#   - the Flex Consumption deployment package (container app-package).
# Shared keys are disabled: nothing here, in the app or in Terraform holds an account key.

resource "azurerm_storage_account" "hub" {
  #checkov:skip=CKV_AZURE_35:No VNet in this deployment: the Flex Consumption app reaches storage from the platform's shared, changing outbound addresses, so a default-deny firewall would lock the hub and the host out. Access is Entra-only (shared keys disabled, RBAC per identity).
  #checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35: without VNet integration and private endpoints the app needs the public endpoint; every request must carry an Entra token of an identity with a data role.
  #checkov:skip=CKV2_AZURE_33:Private endpoints need VNet integration of the Flex app (virtual_network_subnet_id), which this deployment does not create; see README "Network isolation".
  #checkov:skip=CKV_AZURE_33:Queue service logging lives in queue_properties, a data-plane setting (the provider runs with data_plane_available = false); nothing uses queues here (HTTP and timer triggers only), and storage logs of every service go to Log Analytics through azurerm_monitor_diagnostic_setting (monitor.tf).
  #checkov:skip=CKV2_AZURE_1:Encrypted at rest with Microsoft-managed keys. A customer-managed key would make every hub write depend on a Key Vault key and its access policy staying intact; not worth that failure mode for this data, which is hash-chained for integrity anyway.
  name                     = local.storage_account_name
  resource_group_name      = azurerm_resource_group.hub.name
  location                 = azurerm_resource_group.hub.location
  account_kind             = "StorageV2"
  account_tier             = "Standard"
  account_replication_type = var.storage_replication_type

  https_traffic_only_enabled        = true
  min_tls_version                   = "TLS1_2"
  allow_nested_items_to_be_public   = false
  shared_access_key_enabled         = false
  default_to_oauth_authentication   = true
  local_user_enabled                = false
  cross_tenant_replication_enabled  = false
  infrastructure_encryption_enabled = true
  public_network_access_enabled     = true

  blob_properties {
    delete_retention_policy {
      days = var.blob_soft_delete_days
    }
    container_delete_retention_policy {
      days = var.blob_soft_delete_days
    }
  }

  tags = local.tags
}

# The Flex Consumption deployment container: `az functionapp deployment source config-zip` uploads
# the package here (through the app), the platform reads it with the user-assigned identity.
resource "azurerm_storage_container" "deployment" {
  #checkov:skip=CKV2_AZURE_21:Checkov wants azurerm_log_analytics_storage_insights, which needs a storage account key (disabled here). Blob read/write/delete logs go to Log Analytics through the diagnostic setting of the blob service (monitor.tf).
  name                  = "app-package"
  storage_account_id    = azurerm_storage_account.hub.id
  container_access_type = "private"
}
