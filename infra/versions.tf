terraform {
  required_version = ">= 1.6"

  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # 4.x: azurerm_function_app_flex_consumption with runtime "custom" (4.43 and later fix updates
      # of maximum_instance_count and instance_memory_in_mb), ARM-plane storage containers
      # (storage_account_id), the `storage.data_plane_available` feature.
      version = ">= 4.43, < 5.0"
    }
  }

  # State holds every secret given to this configuration (the Key Vault secrets, the API key in the
  # action group URL): keep it in a backend with encryption at rest and access control, e.g.
  #   backend "azurerm" {}   # + terraform init -backend-config=...
  # (see README.md, "State").
}

provider "azurerm" {
  subscription_id = var.subscription_id

  # The storage account has shared keys disabled: whatever the provider does on the storage data
  # plane must use Entra ID, and with `data_plane_available = false` it does nothing there at all
  # (containers are created through Azure Resource Manager), so the identity running Terraform
  # needs no storage data role.
  storage_use_azuread = true

  features {
    key_vault {
      # Purge protection is on: a destroyed vault stays soft-deleted for its retention period and
      # a re-apply recovers it instead of failing on the name.
      purge_soft_delete_on_destroy    = false
      recover_soft_deleted_key_vaults = true
      # Same for secrets.
      purge_soft_deleted_secrets_on_destroy = false
      recover_soft_deleted_secrets          = true
    }
    storage {
      data_plane_available = false
    }
    resource_group {
      prevent_deletion_if_contains_resources = true
    }
  }
}
