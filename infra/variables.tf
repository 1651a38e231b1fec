# Inputs of the icahub deployment. Three groups:
#   1. Azure: where and under which names the resources are created, sizes, monitoring.
#   2. The hub's settings (docs/configuration.md): one variable per ICAHUB_* app setting, named
#      like the setting without the prefix, with the hub's own default ("" = unset: the hub treats
#      an empty value as unset).
#   3. Secrets (sensitive = true): stored in Key Vault, the app setting is a Key Vault reference.
#      Never put them in a .tfvars file: pass them as TF_VAR_<name> environment variables.

# ---------------------------------------------------------------------------------------------
# 1. Azure
# ---------------------------------------------------------------------------------------------

variable "subscription_id" {
  description = "Azure subscription to deploy into. null: the provider's ARM_SUBSCRIPTION_ID environment variable."
  type        = string
  default     = null
}

variable "location" {
  description = "Azure region of every resource. It must offer the Flex Consumption plan: `az functionapp list-flexconsumption-locations -o table`."
  type        = string
}

variable "name" {
  description = "Base name (letters, digits, dashes) from which the resource names are derived, e.g. `icahub-prod`."
  type        = string
  default     = "icahub"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 lower-case letters, digits and dashes, starting with a letter."
  }
}

variable "tags" {
  description = "Tags put on every resource."
  type        = map(string)
  default     = {}
}

variable "resource_group_name" {
  description = "Name of the resource group to create. Empty: rg-<name>."
  type        = string
  default     = ""
}

variable "function_app_name" {
  description = "Name of the Function App (globally unique: it is the <name>.azurewebsites.net host). Empty: <name>. At most 32 characters (host ID collisions)."
  type        = string
  default     = ""

  validation {
    condition     = var.function_app_name == "" || can(regex("^[a-z0-9][a-z0-9-]{0,30}[a-z0-9]$", var.function_app_name))
    error_message = "function_app_name must be 2-32 lower-case letters, digits and dashes, not starting or ending with a dash."
  }
}

variable "storage_account_name" {
  description = "Name of the storage account (globally unique, 3-24 lower-case letters and digits). Empty: st<name without dashes>, cut to 24."
  type        = string
  default     = ""

  validation {
    condition     = var.storage_account_name == "" || can(regex("^[a-z0-9]{3,24}$", var.storage_account_name))
    error_message = "storage_account_name must be 3-24 lower-case letters and digits."
  }
}

variable "key_vault_name" {
  description = "Name of the Key Vault (globally unique, 3-24 letters, digits and dashes). Empty: kv-<name>, cut to 24. A deleted vault keeps its name for the soft-delete retention period."
  type        = string
  default     = ""

  validation {
    condition     = var.key_vault_name == "" || can(regex("^[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$", var.key_vault_name))
    error_message = "key_vault_name must be 3-24 letters, digits and dashes, starting with a letter."
  }
}

variable "storage_replication_type" {
  description = "Replication of the storage account (the hub's tables: events, incidents, runs, approvals and their audit chains; the host's keys and locks; the deployment package). GZRS where the region offers it; ZRS or LRS otherwise (checkov CKV_AZURE_206 then needs a skip)."
  type        = string
  default     = "GZRS"

  validation {
    condition     = contains(["LRS", "ZRS", "GRS", "RAGRS", "GZRS", "RAGZRS"], var.storage_replication_type)
    error_message = "storage_replication_type must be one of LRS, ZRS, GRS, RAGRS, GZRS, RAGZRS."
  }
}

variable "blob_soft_delete_days" {
  description = "Days a deleted blob or container (deployment packages, the host's key blobs) stays recoverable."
  type        = number
  default     = 14
}

variable "instance_memory_mb" {
  description = "Memory of each Flex Consumption instance, in MB: 512, 2048 or 4096 (the hub needs little; 2048 is the plan's default)."
  type        = number
  default     = 2048

  validation {
    condition     = contains([512, 2048, 4096], var.instance_memory_mb)
    error_message = "instance_memory_mb must be 512, 2048 or 4096."
  }
}

variable "maximum_instance_count" {
  description = "Most instances the app scales out to (1-1000). Each instance has its own Standard Webhooks replay cache (docs/authentication.md, \"Replay cache\"), and Table Storage throughput, not CPU, is the limit, so a few suffice."
  type        = number
  default     = 10

  validation {
    condition     = var.maximum_instance_count >= 1 && var.maximum_instance_count <= 1000
    error_message = "maximum_instance_count must be between 1 and 1000."
  }
}

variable "always_ready_instances" {
  description = "Always-ready instances of the HTTP trigger group (billed while idle). 0: scale to zero, the first request after idle waits for a cold start (Azure Monitor gives a webhook about 10 s)."
  type        = number
  default     = 0
}

variable "zone_redundant" {
  description = "Make the Flex Consumption plan zone redundant (only in regions where Flex Consumption supports availability zones; the storage account must then be ZRS or GZRS)."
  type        = bool
  default     = false
}

variable "log_retention_days" {
  description = "Retention of the Log Analytics workspace (Application Insights data, storage and Key Vault logs), in days (30-730)."
  type        = number
  default     = 90
}

variable "app_insights_entra_auth" {
  description = "Application Insights accepts only Entra ID-authenticated telemetry (local authentication off); the host sends it as the user-assigned identity (APPLICATIONINSIGHTS_AUTHENTICATION_STRING, role Monitoring Metrics Publisher)."
  type        = bool
  default     = true
}

variable "operator_object_ids" {
  description = "Entra object ids (users or groups) of the operators: they get Storage Table Data Contributor on the storage account (icahub keys/roles/outbox/audit commands against the deployed tables) and Key Vault Secrets Officer on the vault (secret rotation)."
  type        = list(string)
  default     = []
}

variable "action_group_short_name" {
  description = "Short name of the Azure Monitor action group (at most 12 characters, shown in SMS and e-mail)."
  type        = string
  default     = "icahub"

  validation {
    condition     = length(var.action_group_short_name) >= 1 && length(var.action_group_short_name) <= 12
    error_message = "action_group_short_name must be 1-12 characters."
  }
}

variable "action_group_email" {
  description = "Optional e-mail receiver on the action group, besides the hub's webhook (so someone hears of an alert the hub cannot take, e.g. its own storage failing). Empty: none."
  type        = string
  default     = ""
}

variable "action_group_aad_auth" {
  description = <<-EOT
    Entra ID (secure webhook) authentication of the action group's webhook. null: off, and the hub's API key
    (alert_api_key) goes into the URL as Basic credentials. When set: object_id is the object id of the app
    registration whose identifier URI is the token audience (it must have the ActionGroupsSecureWebhook app role
    assigned to the "AZNS AAD Webhook" service principal, docs/protocols.md §2.3), identifier_uri that audience, tenant_id
    its tenant (null: the subscription's). Set entra_tenant_id and entra_audiences accordingly.
  EOT
  type = object({
    object_id      = string
    identifier_uri = string
    tenant_id      = optional(string)
  })
  default = null
}

variable "storage_availability_threshold" {
  description = "The example metric alert fires when the storage account's availability (average over 5 minutes) falls below this percentage."
  type        = number
  default     = 99
}

# ---------------------------------------------------------------------------------------------
# 2. The hub's settings (docs/configuration.md; "" = unset, the hub's default applies)
# ---------------------------------------------------------------------------------------------

variable "table_prefix" {
  description = "ICAHUB_TABLE_PREFIX: prefix of the hub's table names (1-40 letters and digits, starting with a letter)."
  type        = string
  default     = "icahub"

  validation {
    condition     = can(regex("^[A-Za-z][A-Za-z0-9]{0,39}$", var.table_prefix))
    error_message = "table_prefix must be 1-40 letters and digits, starting with a letter."
  }
}

variable "max_body_bytes" {
  description = "ICAHUB_MAX_BODY_BYTES: largest accepted request body (at most 900000, so that a body fits one Table entity)."
  type        = number
  default     = 524288

  validation {
    condition     = var.max_body_bytes >= 1 && var.max_body_bytes <= 900000
    error_message = "max_body_bytes must be between 1 and 900000."
  }
}

variable "store_timeout_ms" {
  description = "ICAHUB_STORE_TIMEOUT_MS: longest wait for a durable write before answering 503 (Azure Monitor gives up after about 10 s)."
  type        = number
  default     = 8000
}

variable "auth_methods" {
  description = "ICAHUB_AUTH_METHODS: JSON, route group (alerts, ledger, approvals, read) to accepted methods (api_key, entra, webhook_signature). Empty: the hub's defaults."
  type        = string
  default     = ""

  validation {
    condition     = var.auth_methods == "" || can(jsondecode(var.auth_methods))
    error_message = "auth_methods must be empty or JSON."
  }
}

variable "webhook_roles" {
  description = "ICAHUB_WEBHOOK_ROLES: roles of the Standard Webhooks senders, a comma-separated list or JSON sender to role(s)."
  type        = string
  default     = "alert_sender"
}

variable "entra_tenant_id" {
  description = "ICAHUB_ENTRA_TENANT_ID: accept Entra ID tokens of this tenant. Empty: Entra tokens are not accepted."
  type        = string
  default     = ""
}

variable "entra_audiences" {
  description = "ICAHUB_ENTRA_AUDIENCES: comma-separated accepted token audiences (the app registration's identifier URI and/or client id); required with entra_tenant_id."
  type        = string
  default     = ""
}

variable "entra_authority" {
  description = "ICAHUB_ENTRA_AUTHORITY: where the tenant's OpenID configuration is fetched (sovereign clouds)."
  type        = string
  default     = "https://login.microsoftonline.com"
}

variable "entra_role_map" {
  description = "ICAHUB_ENTRA_ROLE_MAP: JSON, app role to icahub role(s), e.g. {\"Deployers\": [\"devops\"]}. Empty: the built-in mapping."
  type        = string
  default     = ""

  validation {
    condition     = var.entra_role_map == "" || can(jsondecode(var.entra_role_map))
    error_message = "entra_role_map must be empty or JSON."
  }
}

variable "public_url" {
  description = "ICAHUB_PUBLIC_URL: the hub's external base URL (Mattermost approval buttons call <it>/api/v1/mattermost/actions). Empty: https://<function_app_name>.azurewebsites.net, the default hostname of an app created through ARM (a check block warns if the app got another one)."
  type        = string
  default     = ""
}

variable "mattermost_username" {
  description = "ICAHUB_MATTERMOST_USERNAME: post as this user name (the Mattermost server must allow overrides)."
  type        = string
  default     = "icahub"
}

variable "mattermost_icon_url" {
  description = "ICAHUB_MATTERMOST_ICON_URL: post with this icon. Empty: the webhook's."
  type        = string
  default     = ""
}

variable "mattermost_url" {
  description = "ICAHUB_MATTERMOST_URL: Mattermost server URL (with mattermost_token: both or neither): checks that whoever clicks an approval button exists, is active and is in the channel, and opens the rejection dialog."
  type        = string
  default     = ""
}

variable "mattermost_check_ttl_secs" {
  description = "ICAHUB_MATTERMOST_CHECK_TTL_SECS: how long the Mattermost server's answer about a clicker (active, channel member) is reused, per user and channel (0-3600)."
  type        = number
  default     = 60

  validation {
    condition     = var.mattermost_check_ttl_secs >= 0 && var.mattermost_check_ttl_secs <= 3600
    error_message = "mattermost_check_ttl_secs must be 0-3600."
  }
}

variable "pagerduty_events_url" {
  description = "ICAHUB_PAGERDUTY_EVENTS_URL: PagerDuty Events API v2 endpoint."
  type        = string
  default     = "https://events.pagerduty.com/v2/enqueue"
}

variable "pagerduty_rate_per_minute" {
  description = "ICAHUB_PAGERDUTY_RATE_PER_MINUTE: client-side limit of events per routing key and minute."
  type        = number
  default     = 100
}

variable "control_plane_url" {
  description = "ICAHUB_CONTROL_PLANE_URL: base URL of the control-plane ledger (ICA REST API). Empty: no control-plane sink."
  type        = string
  default     = ""
}

variable "azdo_plan_hosts" {
  description = "ICAHUB_AZDO_PLAN_HOSTS: hosts an Azure DevOps check's PlanUrl may name (the callback carries the job's token): names, *.suffix, or * for any."
  type        = string
  default     = "dev.azure.com,*.dev.azure.com,*.visualstudio.com"
}

variable "azdo_organizations" {
  description = "ICAHUB_AZDO_ORGANIZATIONS: Azure DevOps organizations whose Invoke Azure Function checks may create and answer approvals (e.g. [\"contoso\"]). Empty: the check route refuses every request."
  type        = list(string)
  default     = []
}

variable "azdo_api_version" {
  description = "ICAHUB_AZDO_API_VERSION: api-version of the Azure DevOps check callback."
  type        = string
  default     = "2.0-preview.1"
}

variable "azdo_hook_username" {
  description = "ICAHUB_AZDO_HOOK_USERNAME: user name of the basic auth the Azure DevOps service hooks send (with azdo_hook_password). Empty: no basic auth."
  type        = string
  default     = ""
}

variable "azdo_hook_header" {
  description = "ICAHUB_AZDO_HOOK_HEADER: header the service hooks send azdo_hook_secret in."
  type        = string
  default     = "X-Icahub-Hook-Secret"
}

variable "routing" {
  description = "ICAHUB_ROUTING: routing rules as inline JSON (docs/operations.md, \"Routing rules\"). Empty: the default rules."
  type        = string
  default     = ""

  validation {
    condition     = var.routing == "" || can(jsondecode(var.routing))
    error_message = "routing must be empty or JSON."
  }
}

variable "retry_first_secs" {
  description = "ICAHUB_RETRY_FIRST_SECS: delay before the first retry of a failed delivery (doubles each time)."
  type        = number
  default     = 5
}

variable "retry_max_secs" {
  description = "ICAHUB_RETRY_MAX_SECS: longest delay between two delivery attempts."
  type        = number
  default     = 3600
}

variable "give_up_after_secs" {
  description = "ICAHUB_GIVE_UP_AFTER_SECS: a delivery still failing this long after it was created becomes a dead letter."
  type        = number
  default     = 86400
}

variable "lease_secs" {
  description = "ICAHUB_LEASE_SECS: how long a dispatcher owns a delivery it is sending."
  type        = number
  default     = 60
}

variable "approval_expiry_secs" {
  description = "ICAHUB_APPROVAL_EXPIRY_SECS: a pending approval expires (and is escalated) this long after the request. Also the wait before an old Mattermost action secret may be removed."
  type        = number
  default     = 14400
}

variable "approval_reminder_secs" {
  description = "ICAHUB_APPROVAL_REMINDER_SECS: approvers are reminded this often while a request is pending."
  type        = number
  default     = 3600
}

variable "finance_threshold_usd" {
  description = "ICAHUB_FINANCE_THRESHOLD_USD: above this estimate (USD/month) the business approval must come from finance."
  type        = number
  default     = 5000
}

variable "budget_max_utilization" {
  description = "ICAHUB_BUDGET_MAX_UTILIZATION: requests that would take the project's budget utilization above this are rejected."
  type        = number
  default     = 0.95
}

variable "budget_projects" {
  description = "ICAHUB_BUDGET_PROJECTS: pipeline name (or prefix ending in *) to the project whose budget its runs spend; `icahub budget map` entries win."
  type        = map(string)
  default     = {}
}

variable "budget_required" {
  description = "ICAHUB_BUDGET_REQUIRED: refuse production approval requests whose project has no budget."
  type        = bool
  default     = true
}

variable "override_window_secs" {
  description = "ICAHUB_OVERRIDE_WINDOW_SECS: an emergency override must be confirmed by a second person holding override_approver within this long."
  type        = number
  default     = 3600
}

variable "production_targets" {
  description = "ICAHUB_PRODUCTION_TARGETS: production deployment targets, names or prefixes ending in * (case-insensitive)."
  type        = string
  default     = "production,prod,prod-*,production-*"
}

variable "deployment_lock_secs" {
  description = "ICAHUB_DEPLOYMENT_LOCK_SECS: a production deployment lock whose run never finishes lapses after this."
  type        = number
  default     = 86400
}

variable "approval_webhook" {
  description = "ICAHUB_APPROVAL_WEBHOOK: named Mattermost webhook for approval messages."
  type        = string
  default     = "default"
}

variable "approval_channel" {
  description = "ICAHUB_APPROVAL_CHANNEL: Mattermost channel for approval messages. Empty: the webhook's channel."
  type        = string
  default     = ""
}

variable "finance_channel" {
  description = "ICAHUB_FINANCE_CHANNEL: where finance hears of requests above the threshold. Empty: approval_channel."
  type        = string
  default     = ""
}

variable "escalation_webhook" {
  description = "ICAHUB_ESCALATION_WEBHOOK: named webhook expired requests are escalated to. Empty: approval_webhook."
  type        = string
  default     = ""
}

variable "escalation_channel" {
  description = "ICAHUB_ESCALATION_CHANNEL: channel expired requests are escalated to. Empty: approval_channel."
  type        = string
  default     = ""
}

variable "audit_checkpoint_secs" {
  description = "ICAHUB_AUDIT_CHECKPOINT_SECS: how often the timer writes an audit checkpoint over every chain head; 0 = never."
  type        = number
  default     = 3600
}

variable "log_filter" {
  description = "ICAHUB_LOG: log filter (tracing EnvFilter syntax, e.g. info,icahub=debug)."
  type        = string
  default     = "info"
}

# ---------------------------------------------------------------------------------------------
# 3. Secrets: TF_VAR_<name>, never in a .tfvars file. Empty = unset (no Key Vault secret is
#    created and the app setting is "").
# ---------------------------------------------------------------------------------------------

variable "webhook_secrets" {
  description = "ICAHUB_WEBHOOK_SECRETS (secret): Standard Webhooks senders, comma-separated name=whsec_…; a name given twice has two active secrets (rotation)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "mattermost_webhook_url" {
  description = "ICAHUB_MATTERMOST_WEBHOOK_URL (secret): the `default` Mattermost incoming webhook URL."
  type        = string
  default     = ""
  sensitive   = true
}

variable "mattermost_webhooks" {
  description = "ICAHUB_MATTERMOST_WEBHOOKS (secret): more webhooks for routing rules, JSON name to URL."
  type        = string
  default     = ""
  sensitive   = true
}

variable "mattermost_action_secrets" {
  description = "ICAHUB_MATTERMOST_ACTION_SECRETS (secret): comma-separated secrets (32+ characters) signing the approval buttons: the first signs, any verifies."
  type        = string
  default     = ""
  sensitive   = true
}

variable "mattermost_token" {
  description = "ICAHUB_MATTERMOST_TOKEN (secret): bot or personal access token for mattermost_url."
  type        = string
  default     = ""
  sensitive   = true
}

variable "pagerduty_routing_key" {
  description = "ICAHUB_PAGERDUTY_ROUTING_KEY (secret): the `default` PagerDuty Events v2 routing (integration) key."
  type        = string
  default     = ""
  sensitive   = true
}

variable "pagerduty_routing_keys" {
  description = "ICAHUB_PAGERDUTY_ROUTING_KEYS (secret): more routing keys for rules, JSON name to key."
  type        = string
  default     = ""
  sensitive   = true
}

variable "control_plane_token" {
  description = "ICAHUB_CONTROL_PLANE_TOKEN (secret): bearer token for the control plane."
  type        = string
  default     = ""
  sensitive   = true
}

variable "control_plane_signing_secrets" {
  description = "ICAHUB_CONTROL_PLANE_SIGNING_SECRETS (secret): comma-separated whsec_… secrets; each request carries one Standard Webhooks signature per secret (rotation)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "azdo_hook_password" {
  description = "ICAHUB_AZDO_HOOK_PASSWORD (secret): password of the Azure DevOps service hooks' basic auth."
  type        = string
  default     = ""
  sensitive   = true
}

variable "azdo_hook_secret" {
  description = "ICAHUB_AZDO_HOOK_SECRET (secret): shared secret the service hooks send in azdo_hook_header."
  type        = string
  default     = ""
  sensitive   = true
}

variable "alert_api_key" {
  description = "(secret, not an app setting) icahub API key of an identity with the alert_sender role, put into the action group's webhook URL as Basic credentials (https://icahub:<key>@host/...). Needed unless action_group_aad_auth is set; the first apply runs without it (the deployed hub issues it: `icahub keys issue --identity azure-monitor`, docs/deploy.md) and a check block warns until it is set."
  type        = string
  default     = ""
  sensitive   = true
}

variable "alert_function_key" {
  description = "(secret, not an app setting) Functions key put into the action group's webhook URL as ?code=. Empty: Terraform reads the host's `default` function key (data source azurerm_function_app_host_keys, which needs the Functions host up)."
  type        = string
  default     = ""
  sensitive   = true
}
