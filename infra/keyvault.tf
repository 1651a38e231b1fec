# Key Vault with the hub's secrets. Each secret variable that is not empty becomes the Key Vault
# secret icahub-<name>; its app setting is a Key Vault reference to the secret's versionless URI,
# so the app reads the latest version: rotation is a new version plus a restart (docs/deploy.md
# "Rotating secrets"). An empty variable creates no secret and its app setting is "" (the hub
# treats an empty value as unset), so the setting's key is always there.

resource "azurerm_key_vault" "hub" {
  #checkov:skip=CKV_AZURE_109:The app resolves Key Vault references from the platform's shared outbound addresses (no VNet integration here), which a default-deny firewall would block; access is RBAC-only (Key Vault Secrets User for the app, Officer for Terraform and operators). See README "Network isolation".
  #checkov:skip=CKV_AZURE_189:Same reason as CKV_AZURE_109: public network access is needed for Key Vault references without VNet integration.
  #checkov:skip=CKV2_AZURE_32:A private endpoint needs VNet integration of the Flex app, which this deployment does not create.
  name                = local.key_vault_name
  location            = azurerm_resource_group.hub.location
  resource_group_name = azurerm_resource_group.hub.name
  tenant_id           = data.azurerm_client_config.current.tenant_id
  sku_name            = "standard"

  # `enable_rbac_authorization` is accepted by every 4.x release (later ones deprecate it in
  # favour of `rbac_authorization_enabled`, which 5.0 requires).
  enable_rbac_authorization     = true
  purge_protection_enabled      = true
  soft_delete_retention_days    = 90
  public_network_access_enabled = true

  network_acls {
    default_action = "Allow"
    bypass         = "AzureServices"
  }

  tags = local.tags
}

locals {
  # Key Vault secret name suffix => value. The names are the app settings without ICAHUB_, in
  # kebab case (Key Vault names allow letters, digits and dashes).
  hub_secrets = {
    "webhook-secrets"               = var.webhook_secrets
    "mattermost-webhook-url"        = var.mattermost_webhook_url
    "mattermost-webhooks"           = var.mattermost_webhooks
    "mattermost-action-secrets"     = var.mattermost_action_secrets
    "mattermost-token"              = var.mattermost_token
    "pagerduty-routing-key"         = var.pagerduty_routing_key
    "pagerduty-routing-keys"        = var.pagerduty_routing_keys
    "control-plane-token"           = var.control_plane_token
    "control-plane-signing-secrets" = var.control_plane_signing_secrets
    "azdo-hook-password"            = var.azdo_hook_password
    "azdo-hook-secret"              = var.azdo_hook_secret
  }

  # Which secrets are set. Only whether each is empty is revealed (nonsensitive), never a value;
  # for_each needs a known, non-sensitive set of keys.
  hub_secrets_set = toset([for name, value in local.hub_secrets : name if nonsensitive(value != "")])

  # App setting value of each secret: a Key Vault reference, or "" when unset.
  secret_refs_set = {
    for name, secret in azurerm_key_vault_secret.hub :
    name => "@Microsoft.KeyVault(SecretUri=${secret.versionless_id})"
  }
  secret_ref = { for name in keys(local.hub_secrets) : name => lookup(local.secret_refs_set, name, "") }
}

resource "azurerm_key_vault_secret" "hub" {
  #checkov:skip=CKV_AZURE_41:No expiry: the app reads these through Key Vault references, and an expired secret would silently turn a sink (or the Azure DevOps hook credentials) off. Rotation is an explicit procedure instead (docs/deploy.md "Rotating secrets").
  for_each = local.hub_secrets_set

  name         = "icahub-${each.key}"
  value        = local.hub_secrets[each.key]
  key_vault_id = azurerm_key_vault.hub.id
  content_type = "text/plain"
  tags         = local.tags

  # The RBAC vault lets Terraform write only once its role is in place.
  depends_on = [azurerm_role_assignment.terraform_kv_secrets_officer]
}
