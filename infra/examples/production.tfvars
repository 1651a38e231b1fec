# Example production settings (placeholder values: replace every <...>). No secrets here: the
# sensitive variables come from the environment, e.g.
#
#   export TF_VAR_mattermost_webhook_url='https://chat.example.com/hooks/…'
#   export TF_VAR_mattermost_action_secrets="$(openssl rand -hex 32)"
#   export TF_VAR_mattermost_token='…'
#   export TF_VAR_pagerduty_routing_key='<32-character integration key>'
#   export TF_VAR_control_plane_token='…'
#   export TF_VAR_control_plane_signing_secrets="whsec_$(openssl rand -base64 32)"
#   export TF_VAR_azdo_hook_password="$(openssl rand -base64 32)"
#   export TF_VAR_azdo_hook_secret="$(openssl rand -base64 32)"
#   export TF_VAR_webhook_secrets="monitoring=whsec_$(openssl rand -base64 32)"
#   export TF_VAR_alert_api_key='icak_…'        # icahub keys issue --identity azure-monitor
#
# terraform apply -var-file=examples/production.tfvars

subscription_id = "00000000-0000-0000-0000-000000000000"
location        = "westeurope"
name            = "icahub-prod"

# Globally unique names: choose them once, they cannot change without recreating the resource.
function_app_name    = "icahub-prod-contoso"
storage_account_name = "sticahubprodcontoso"
key_vault_name       = "kv-icahub-prod-contoso"

tags = {
  environment = "production"
  owner       = "platform-team@contoso.com"
  cost_center = "4711"
}

# Scale and availability
instance_memory_mb       = 2048
maximum_instance_count   = 10
always_ready_instances   = 1 # one warm instance: no cold start inside Azure Monitor's ~10 s
storage_replication_type = "GZRS"
zone_redundant           = false # true where Flex Consumption offers availability zones
log_retention_days       = 90

# Operators (Entra object ids of users or groups): table data access for the icahub CLI and
# Key Vault Secrets Officer for rotation.
operator_object_ids = ["11111111-1111-1111-1111-111111111111"]

# Action group: Basic credentials (TF_VAR_alert_api_key) by default. For the Entra secure
# webhook instead, describe the app registration and configure the hub to accept its tokens:
# action_group_aad_auth = {
#   object_id      = "22222222-2222-2222-2222-222222222222"
#   identifier_uri = "api://icahub-prod"
#   tenant_id      = "33333333-3333-3333-3333-333333333333"
# }
# entra_tenant_id = "33333333-3333-3333-3333-333333333333"
# entra_audiences = "api://icahub-prod"
action_group_email             = "oncall@contoso.com"
storage_availability_threshold = 99

# Hub settings (docs/configuration.md); everything not named keeps the hub's default.
mattermost_url      = "https://chat.contoso.com"
mattermost_username = "icahub"
approval_channel    = "deploy-approvals"
finance_channel     = "finance-reviews"
escalation_channel  = "platform-oncall"

control_plane_url = "https://ica.contoso.com"

azdo_hook_username = "azure-devops"
azdo_plan_hosts    = "dev.azure.com,*.dev.azure.com,*.visualstudio.com"
azdo_organizations = ["contoso"]
budget_projects    = { "payments-*" = "payments" }

production_targets    = "production,prod,prod-*,production-*"
finance_threshold_usd = 5000
approval_expiry_secs  = 14400

routing = <<-JSON
  {"rules": [
    {"name": "page-sev0-sev1", "match": {"min_severity": "high"}, "sinks": ["pagerduty", "mattermost"]},
    {"name": "chat", "sinks": ["mattermost"]},
    {"name": "ledger", "sinks": ["control_plane"]}
  ]}
JSON

log_filter = "info"
