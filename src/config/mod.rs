//! Configuration: read once from the environment into typed values, validated at start.
//! Every variable the hub reads is listed in [`VARS`] with its default;
//! docs/configuration.md documents each once (tests/configuration_doc.rs holds the two together).

pub mod approvals;
pub mod auth_methods;
pub mod entra;
pub mod retry;
pub mod sinks;
pub mod webhooks;

use crate::domain::routing::Routing;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::secret::Secret;
pub use retry::RetryPolicy;

/// (name, default, meaning) of every environment variable the hub reads.
pub const VARS: &[(&str, &str, &str)] = &[
    ("FUNCTIONS_CUSTOMHANDLER_PORT", "unset", "Port the Functions host assigns; set only under the host, and then the hub must use Table Storage"),
    ("ICAHUB_STORAGE", "auto", "`auto` (Table Storage when ICAHUB_TABLES_ENDPOINT or a connection string is set, else embedded), `embedded` or `tables`"),
    ("ICAHUB_TABLES_CONNECTION_STRING", "unset", "Azure Table Storage connection string (`UseDevelopmentStorage=true` or a full one)"),
    ("AzureWebJobsStorage", "unset", "Used for Table Storage when ICAHUB_TABLES_CONNECTION_STRING is not set"),
    ("ICAHUB_TABLES_ENDPOINT", "unset", "Table service URL (https://<account>.table.core.windows.net): Table Storage with the app's managed identity, no key (instead of a connection string)"),
    ("ICAHUB_TABLES_CLIENT_ID", "unset (system-assigned identity)", "Client id of the user-assigned managed identity used with ICAHUB_TABLES_ENDPOINT"),
    ("ICAHUB_TABLES_CREDENTIAL", "managed_identity", "With ICAHUB_TABLES_ENDPOINT: `managed_identity` (the app's), or `azure_cli` (the signed-in `az login` user, for operator commands at a workstation)"),
    ("ICAHUB_TABLE_PREFIX", "icahub", "Prefix of the hub's table names (letters and digits)"),
    ("ICAHUB_DATA_DIR", "./data", "Directory of the embedded store"),
    ("ICAHUB_MAX_BODY_BYTES", "524288", "Largest accepted request body; larger gets 413 (at most 900000 so a body fits one Table entity)"),
    ("ICAHUB_HEADER_TIMEOUT_SECS", "10", "A connection whose request head (start line and headers) has not arrived within this is closed"),
    ("ICAHUB_BODY_TIMEOUT_SECS", "30", "A request whose body has not arrived within this of its head gets 408"),
    ("ICAHUB_IDLE_TIMEOUT_SECS", "60", "A connection with no request in flight and no traffic for this long is closed (keep-alive, or one that never sends)"),
    ("ICAHUB_MAX_CONNECTIONS", "256", "Most connections served at once; more wait in the listen backlog until one closes (keep it under the process's file descriptor limit)"),
    ("ICAHUB_STORE_TIMEOUT_MS", "8000", "How long a request waits for durable storage before answering 503 with Retry-After"),
    ("ICAHUB_CONTROL_PLANE_URL", "unset", "Control-plane base URL; when set, every alert and incident change gets a control-plane outbox row"),
    ("ICAHUB_MATTERMOST_WEBHOOK_URL", "unset", "Mattermost incoming webhook; when set, incident openings and resolutions get Mattermost outbox rows"),
    ("ICAHUB_PUBLIC_URL", "unset", "The hub's external base URL (e.g. https://icahub.azurewebsites.net); Mattermost approval buttons call <it>/api/v1/mattermost/actions, so without it approval messages carry no buttons"),
    ("ICAHUB_MATTERMOST_ACTION_SECRETS", "unset", "Comma-separated secrets (32+ characters each) signing the approval buttons' tokens: the first signs, any verifies (rotation); buttons need this and ICAHUB_PUBLIC_URL"),
    ("ICAHUB_MATTERMOST_URL", "unset", "Mattermost server URL (with ICAHUB_MATTERMOST_TOKEN): resolves `roles link-mattermost` names to user ids, checks that whoever clicks an approval button exists, is active and is a member of the channel, and opens the rejection dialog"),
    ("ICAHUB_MATTERMOST_TOKEN", "unset", "Mattermost bot or personal access token used with ICAHUB_MATTERMOST_URL"),
    ("ICAHUB_MATTERMOST_CHECK_TTL_SECS", "60", "How long the answer to a clicker's check (user active, channel member) is reused, per user and channel, 0-3600 (0: ask every time)"),
    ("ICAHUB_MATTERMOST_WEBHOOKS", "unset", "More Mattermost incoming webhooks for routing rules, as a JSON object of name to URL (secrets: the URL is the credential)"),
    ("ICAHUB_MATTERMOST_USERNAME", "icahub", "Post as this user name (the Mattermost server must allow overrides)"),
    ("ICAHUB_MATTERMOST_ICON_URL", "unset", "Post with this icon"),
    ("ICAHUB_PAGERDUTY_ROUTING_KEY", "unset", "PagerDuty Events v2 routing key; when set, critical and high incidents get PagerDuty outbox rows"),
    ("ICAHUB_PAGERDUTY_ROUTING_KEYS", "unset", "More PagerDuty routing keys for routing rules, as a JSON object of name to 32-character key"),
    ("ICAHUB_PAGERDUTY_EVENTS_URL", "https://events.pagerduty.com/v2/enqueue", "PagerDuty Events API v2 endpoint"),
    ("ICAHUB_PAGERDUTY_RATE_PER_MINUTE", "100", "Client-side limit of events per minute and routing key (PagerDuty allows about 120)"),
    ("ICAHUB_CONTROL_PLANE_TOKEN", "unset", "Bearer token for the control plane (a secret)"),
    ("ICAHUB_CONTROL_PLANE_SIGNING_SECRETS", "unset", "Comma-separated whsec_… secrets; each control-plane request carries one Standard Webhooks signature per secret (rotation)"),
    ("ICAHUB_AZDO_PLAN_HOSTS", "dev.azure.com,*.dev.azure.com,*.visualstudio.com", "Hosts an Azure DevOps check's PlanUrl may name (the hub sends the job's token there): names, *.suffix, or * for any"),
    ("ICAHUB_AZDO_ORGANIZATIONS", "unset (the check route refuses every request)", "Comma-separated Azure DevOps organizations whose Invoke Azure Function checks may create and answer approvals (fabrikam for dev.azure.com/fabrikam and fabrikam.visualstudio.com; host/collection for Azure DevOps Server)"),
    ("ICAHUB_OVERRIDE_WINDOW_SECS", "3600", "An emergency override an admin asks for must be confirmed by a second person holding override_approver within this long, or it lapses"),
    ("ICAHUB_AZDO_API_VERSION", "2.0-preview.1", "api-version of the check callback (distributedtask plan events)"),
    ("ICAHUB_ROUTING", "unset", "Routing rules as inline JSON (see docs/operations.md, Routing rules); default rules when neither this nor ICAHUB_ROUTING_FILE is set"),
    ("ICAHUB_ROUTING_FILE", "unset", "Path of a JSON file of routing rules"),
    ("ICAHUB_RETRY_FIRST_SECS", "5", "Delay before the first retry of a failed delivery; doubles each time"),
    ("ICAHUB_RETRY_MAX_SECS", "3600", "Longest delay between retries"),
    ("ICAHUB_GIVE_UP_AFTER_SECS", "86400", "A delivery still failing this long after it was created becomes a dead letter"),
    ("ICAHUB_LEASE_SECS", "60", "How long a dispatcher owns a delivery it is sending (a crashed one's deliveries wait this long)"),
    ("ICAHUB_DISPATCH_INTERVAL_SECS", "10", "Outside the Functions host, `serve` drains the outbox this often (0 = only the fast path)"),
    ("ICAHUB_AUTH", "required", "`required`: every /api/v1 request is authenticated (API key, Entra ID token or Standard Webhooks signature, as ICAHUB_AUTH_METHODS allows); `off` only for local development: every caller is an anonymous admin, a warning is logged at start, and it is refused under the Functions host"),
    ("ICAHUB_AUTH_METHODS", "api_key and entra everywhere, plus webhook_signature on alerts, ledger and approvals when ICAHUB_WEBHOOK_SECRETS is set", "JSON object of route group (alerts, ledger, approvals, read) to its accepted methods (api_key, entra, webhook_signature), e.g. {\"alerts\": [\"webhook_signature\"]}; groups it does not name keep the default"),
    ("ICAHUB_WEBHOOK_SECRETS", "unset", "Standard Webhooks senders: comma-separated name=whsec_… entries (a name given twice has two active secrets, for rotation); a sender is the caller webhook:<name>"),
    ("ICAHUB_WEBHOOK_ROLES", "alert_sender", "Roles of the signed senders: a comma-separated list for every sender, or a JSON object of sender name to role(s) (senders it does not name get alert_sender)"),
        ("ICAHUB_APPROVAL_EXPIRY_SECS", "14400", "A pending approval expires (and is escalated) this long after it was requested"),
        ("ICAHUB_APPROVAL_REMINDER_SECS", "3600", "Approvers are reminded this often while a request is pending"),
        ("ICAHUB_FINANCE_THRESHOLD_USD", "5000", "An estimate above this (USD/month) needs the business approval from the finance role, who is notified"),
        ("ICAHUB_BUDGET_MAX_UTILIZATION", "0.95", "A request that would take its project's budget utilization above this is rejected automatically"),
        ("ICAHUB_BUDGET_PROJECTS", "unset", "JSON object of pipeline name (or prefix ending in *) to the project whose budget its runs spend, e.g. {\"payments-*\": \"payments\"}; maps kept with `icahub budget map` win; otherwise a run spends its pipeline's own name"),
        ("ICAHUB_BUDGET_REQUIRED", "false", "`true`: a production approval request whose project has no budget is refused (409)"),
        ("ICAHUB_PRODUCTION_TARGETS", "production,prod,prod-*,production-*", "Deployment targets that are production (need an estimate; one deployment at a time): names, or prefixes ending in *"),
        ("ICAHUB_DEPLOYMENT_LOCK_SECS", "86400", "A production deployment lock whose run never finishes is released after this long"),
        ("ICAHUB_APPROVAL_WEBHOOK", "default", "Named Mattermost webhook (ICAHUB_MATTERMOST_WEBHOOKS) for approval requests, reminders and decisions"),
        ("ICAHUB_APPROVAL_CHANNEL", "the webhook's", "Mattermost channel for approval requests"),
        ("ICAHUB_FINANCE_CHANNEL", "ICAHUB_APPROVAL_CHANNEL", "Mattermost channel where finance is told of requests above the threshold"),
        ("ICAHUB_ESCALATION_WEBHOOK", "ICAHUB_APPROVAL_WEBHOOK", "Named Mattermost webhook expired requests are escalated to"),
        ("ICAHUB_ESCALATION_CHANNEL", "ICAHUB_APPROVAL_CHANNEL", "Mattermost channel expired requests are escalated to"),
    ("ICAHUB_AZDO_HOOK_USERNAME", "unset", "User name the Azure DevOps service hooks send as basic auth (with ICAHUB_AZDO_HOOK_PASSWORD) to POST /api/v1/azdo/hooks"),
    ("ICAHUB_AZDO_HOOK_PASSWORD", "unset", "Password of that basic auth (a secret)"),
    ("ICAHUB_AZDO_HOOK_HEADER", "X-Icahub-Hook-Secret", "Header that carries ICAHUB_AZDO_HOOK_SECRET (set in the subscription's HTTP headers as `Name:value`)"),
    ("ICAHUB_AZDO_HOOK_SECRET", "unset", "Shared secret the service hooks send in ICAHUB_AZDO_HOOK_HEADER (a secret)"),
    ("ICAHUB_ENTRA_TENANT_ID", "unset", "Accept Microsoft Entra ID bearer tokens of this tenant (managed/workload identities, the Azure Monitor secure webhook)"),
    ("ICAHUB_ENTRA_AUDIENCES", "unset", "Comma-separated accepted token audiences: the app registration's identifier URI and/or client id (required with the tenant)"),
    ("ICAHUB_ENTRA_AUTHORITY", "https://login.microsoftonline.com", "Where the tenant's OpenID configuration and signing keys are fetched (sovereign clouds)"),
    ("ICAHUB_ENTRA_ROLE_MAP", "ActionGroupsSecureWebhook → alert_sender; app roles named like icahub roles map to them", "JSON object of app role to icahub role(s), e.g. {\"Deployers\": [\"devops\"]}"),
    ("ICAHUB_AUDIT_CHECKPOINT_SECS", "3600", "How often the timer writes an audit checkpoint over every chain head (forwarded to the control plane); 0 = never"),
    ("IDENTITY_ENDPOINT", "set by the platform", "App Service / Functions managed identity endpoint (with IDENTITY_HEADER), used with ICAHUB_TABLES_ENDPOINT; IMDS when unset"),
    ("IDENTITY_HEADER", "set by the platform", "The secret header value for IDENTITY_ENDPOINT"),
    ("ICAHUB_BENCH_KEY", "unset", "`icahub bench` only: the API key it sends (instead of --key)"),
    ("ICAHUB_LOG", "info", "Log filter (tracing EnvFilter syntax, e.g. `info,icahub=debug`); RUST_LOG also works"),
    ("ICAHUB_LOG_FORMAT", "json under the Functions host, else text", "`json` or `text`"),
];

pub const DEFAULT_PORT: u16 = 7071;
/// The header that carries the Azure DevOps hook secret unless ICAHUB_AZDO_HOOK_HEADER says.
pub const DEFAULT_AZDO_HOOK_HEADER: &str = "x-icahub-hook-secret";
const MAX_BODY_CEILING: usize = 900_000;

#[derive(Debug, Clone, PartialEq)]
pub enum StorageConfig {
    Embedded {
        dir: PathBuf,
    },
    Tables {
        connection_string: Secret,
        table_prefix: String,
    },
    /// Table Storage with a managed identity's tokens (no key): `ICAHUB_TABLES_ENDPOINT`.
    TablesIdentity {
        /// The table service URL, `https://<account>.table.core.windows.net`.
        endpoint: String,
        /// A user-assigned identity's client id (`None`: the system-assigned identity).
        client_id: Option<String>,
        /// Tokens of the signed-in Azure CLI user instead (`ICAHUB_TABLES_CREDENTIAL=azure_cli`).
        azure_cli: bool,
        table_prefix: String,
    },
}

impl StorageConfig {
    /// `embedded` or `azure_tables`.
    pub fn backend(&self) -> &'static str {
        match self {
            StorageConfig::Embedded { .. } => "embedded",
            StorageConfig::Tables { .. } | StorageConfig::TablesIdentity { .. } => "azure_tables",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub port: u16,
    /// True when the Functions host started us (it sets FUNCTIONS_CUSTOMHANDLER_PORT).
    pub under_functions_host: bool,
    pub storage: StorageConfig,
    pub max_body_bytes: usize,
    /// Timeouts and the cap that keep slow or idle connections from holding the hub.
    pub connections: ConnectionLimits,
    pub store_timeout: Duration,
    pub routing: Routing,
    pub retry: RetryPolicy,
    /// How long a dispatcher owns a delivery it is sending.
    pub lease: Duration,
    /// `icahub serve` outside the Functions host drains the outbox this often (None: never).
    pub dispatch_interval: Option<Duration>,
    /// Require an identity (API key) on the API. Off only for local development.
    pub auth_required: bool,
    /// How often an audit checkpoint is written (None: never).
    pub audit_checkpoint_every: Option<Duration>,
    /// Microsoft Entra ID tokens, when configured.
    pub entra: Option<entra::EntraConfig>,
    /// Standard Webhooks senders and their secrets (`ICAHUB_WEBHOOK_SECRETS`).
    pub webhooks: webhooks::WebhookSenders,
    /// The methods each route group accepts (`ICAHUB_AUTH_METHODS`).
    pub auth_methods: auth_methods::AuthMethods,
    /// Approval policy and where approval notifications go.
    pub approvals: approvals::ApprovalConfig,
    /// The credentials Azure DevOps service hooks may present instead of an API key.
    pub azdo_hooks: AzdoHookAuth,
    /// Hosts an Azure DevOps check may name as its `PlanUrl` (the callback gets the job's token).
    pub azdo_plan_hosts: crate::domain::check::PlanHosts,
    /// The organizations whose checks are answered (`ICAHUB_AZDO_ORGANIZATIONS`); empty: none.
    pub azdo_organizations: crate::domain::check::Organizations,
    /// Approval buttons and the rejection dialog in Mattermost.
    pub mattermost: MattermostActions,
    /// Where the outbox delivers (`ICAHUB_MATTERMOST_*`, `ICAHUB_PAGERDUTY_*`,
    /// `ICAHUB_CONTROL_PLANE_*`, `ICAHUB_AZDO_API_VERSION`).
    pub sinks: sinks::SinkSettings,
}

/// How `POST /api/v1/azdo/hooks` recognises Azure DevOps: basic auth, a secret header, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzdoHookAuth {
    /// User name and password of the subscription's basic auth.
    pub basic: Option<(String, Secret)>,
    /// Lower-case header name that carries `secret`.
    pub header: String,
    pub secret: Option<Secret>,
}

impl Default for AzdoHookAuth {
    fn default() -> Self {
        AzdoHookAuth {
            basic: None,
            header: DEFAULT_AZDO_HOOK_HEADER.into(),
            secret: None,
        }
    }
}

impl AzdoHookAuth {
    /// Whether any hook credential is configured.
    pub fn configured(&self) -> bool {
        self.basic.is_some() || self.secret.is_some()
    }

    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<AzdoHookAuth, ConfigError> {
        let basic =
            match (
                get("ICAHUB_AZDO_HOOK_USERNAME"),
                get("ICAHUB_AZDO_HOOK_PASSWORD"),
            ) {
                (None, None) => None,
                (Some(user), Some(password)) => {
                    if user.contains(':') {
                        return Err(ConfigError(
                        "ICAHUB_AZDO_HOOK_USERNAME must not contain ':' (basic auth splits there)"
                            .into(),
                    ));
                    }
                    Some((user, Secret::new(password)))
                }
                (Some(_), None) | (None, Some(_)) => return Err(ConfigError(
                    "set both ICAHUB_AZDO_HOOK_USERNAME and ICAHUB_AZDO_HOOK_PASSWORD, or neither"
                        .into(),
                )),
            };
        let header = get("ICAHUB_AZDO_HOOK_HEADER");
        let secret = get("ICAHUB_AZDO_HOOK_SECRET").map(Secret::new);
        if header.is_some() && secret.is_none() {
            return Err(ConfigError(
                "ICAHUB_AZDO_HOOK_HEADER is set but ICAHUB_AZDO_HOOK_SECRET, the value it must \
                 carry, is not"
                    .into(),
            ));
        }
        let header = header
            .unwrap_or_else(|| DEFAULT_AZDO_HOOK_HEADER.into())
            .to_ascii_lowercase();
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if header.is_empty() || header.len() > 100 || !header.bytes().all(token) {
            return Err(ConfigError(format!(
                "ICAHUB_AZDO_HOOK_HEADER={header:?} is not an HTTP header name"
            )));
        }
        if header == "authorization" {
            return Err(ConfigError(
                "ICAHUB_AZDO_HOOK_HEADER must not be Authorization: use \
                 ICAHUB_AZDO_HOOK_USERNAME and ICAHUB_AZDO_HOOK_PASSWORD for basic auth"
                    .into(),
            ));
        }
        Ok(AzdoHookAuth {
            basic,
            header,
            secret,
        })
    }
}

/// Approval buttons in Mattermost messages and the rejection dialog: `ICAHUB_PUBLIC_URL`,
/// `ICAHUB_MATTERMOST_ACTION_SECRETS`, `ICAHUB_MATTERMOST_URL`, `ICAHUB_MATTERMOST_TOKEN`.
#[derive(Debug, Clone, PartialEq)]
pub struct MattermostActions {
    /// The hub's external base URL, without a trailing slash.
    pub public_url: Option<String>,
    /// The first signs button tokens; any verifies them.
    pub secrets: Vec<Secret>,
    /// Mattermost server URL (no trailing slash) and token: name lookups, the clicker's check,
    /// the rejection dialog.
    pub server: Option<(String, Secret)>,
    /// `ICAHUB_MATTERMOST_CHECK_TTL_SECS`: how long a clicker's check is reused.
    pub check_ttl_secs: u64,
}

impl Default for MattermostActions {
    fn default() -> Self {
        MattermostActions {
            public_url: None,
            secrets: Vec::new(),
            server: None,
            check_ttl_secs: MattermostActions::DEFAULT_CHECK_TTL_SECS,
        }
    }
}

impl MattermostActions {
    /// Where Mattermost sends button clicks and dialog submissions, below the public URL.
    pub const PATH: &'static str = "/api/v1/mattermost/actions";
    pub const DEFAULT_CHECK_TTL_SECS: u64 = 60;
    pub const MAX_CHECK_TTL_SECS: u64 = 3600;

    /// Read and check the four variables (already trimmed, empty = unset). An error names the
    /// variable and never shows a secret.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<MattermostActions, String> {
        let base_url = |var: &str| -> Result<Option<String>, String> {
            let Some(v) = get(var) else { return Ok(None) };
            let u = check_url(var, &v)?;
            if u.query().is_some() || u.fragment().is_some() {
                return Err(format!(
                    "{var} must be a base URL without a query or fragment"
                ));
            }
            Ok(Some(v.trim_end_matches('/').to_string()))
        };
        let public_url = base_url("ICAHUB_PUBLIC_URL")?;
        let mut secrets = Vec::new();
        if let Some(list) = get("ICAHUB_MATTERMOST_ACTION_SECRETS") {
            let entries = list.split(',').map(str::trim).filter(|s| !s.is_empty());
            for (i, s) in entries.enumerate() {
                if s.chars().count() < crate::domain::action_token::MIN_SECRET_CHARS {
                    return Err(format!(
                        "ICAHUB_MATTERMOST_ACTION_SECRETS: secret #{} is shorter than {} characters (use random ones, e.g. `openssl rand -base64 33`)",
                        i + 1,
                        crate::domain::action_token::MIN_SECRET_CHARS
                    ));
                }
                secrets.push(Secret::new(s));
            }
        }
        let server = match (base_url("ICAHUB_MATTERMOST_URL")?, get("ICAHUB_MATTERMOST_TOKEN")) {
            (Some(url), Some(token)) => Some((url, Secret::new(token))),
            (None, None) => None,
            _ => {
                return Err(
                    "ICAHUB_MATTERMOST_URL and ICAHUB_MATTERMOST_TOKEN go together: set both (to resolve user names, check clickers and open the rejection dialog) or neither".into(),
                )
            }
        };
        let check_ttl_secs = match get("ICAHUB_MATTERMOST_CHECK_TTL_SECS") {
            None => Self::DEFAULT_CHECK_TTL_SECS,
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= Self::MAX_CHECK_TTL_SECS)
                .ok_or_else(|| {
                    format!(
                        "ICAHUB_MATTERMOST_CHECK_TTL_SECS={v:?} must be a whole number of seconds, 0-{}",
                        Self::MAX_CHECK_TTL_SECS
                    )
                })?,
        };
        Ok(MattermostActions {
            public_url,
            secrets,
            server,
            check_ttl_secs,
        })
    }

    /// The buttons' callback URL and the token keys, when both are configured.
    pub fn buttons(&self) -> Option<(String, crate::domain::action_token::TokenKeys)> {
        let url = self.public_url.as_ref()?;
        let keys =
            crate::domain::action_token::TokenKeys::new(self.secrets.iter().map(Secret::expose))?;
        Some((format!("{url}{}", Self::PATH), keys))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// How long a connection may take to send a request, stay idle, and how many are served at once
/// ([`crate::server`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 256,
        }
    }
}

impl ConnectionLimits {
    fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let d = ConnectionLimits::default();
        let secs = |name: &str, default: Duration| -> Result<Duration, ConfigError> {
            let n: f64 = parse_num(get, name, default.as_secs_f64())?;
            if !(n > 0.0 && n <= 3600.0) {
                return Err(ConfigError(format!(
                    "{name} must be more than 0 and at most 3600 seconds"
                )));
            }
            Ok(Duration::from_secs_f64(n))
        };
        let max_connections = parse_num(get, "ICAHUB_MAX_CONNECTIONS", d.max_connections)?;
        if !(1..=100_000).contains(&max_connections) {
            return Err(ConfigError(
                "ICAHUB_MAX_CONNECTIONS must be between 1 and 100000".into(),
            ));
        }
        Ok(ConnectionLimits {
            header_timeout: secs("ICAHUB_HEADER_TIMEOUT_SECS", d.header_timeout)?,
            body_timeout: secs("ICAHUB_BODY_TIMEOUT_SECS", d.body_timeout)?,
            idle_timeout: secs("ICAHUB_IDLE_TIMEOUT_SECS", d.idle_timeout)?,
            max_connections,
        })
    }
}

impl Config {
    /// Read the process environment; `cli_port` is `--port` (the host's port wins over it).
    pub fn from_env(cli_port: Option<u16>) -> Result<Config, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok(), cli_port)
    }

    /// Same as [`Config::from_env`] over any lookup, so tests need not touch the environment.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        cli_port: Option<u16>,
    ) -> Result<Config, ConfigError> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let host_port = get("FUNCTIONS_CUSTOMHANDLER_PORT");
        let under_functions_host = host_port.is_some();
        let port = match host_port {
            Some(p) => p.parse().map_err(|_| {
                ConfigError(format!(
                    "FUNCTIONS_CUSTOMHANDLER_PORT={p:?} is not a port number"
                ))
            })?,
            None => cli_port.unwrap_or(DEFAULT_PORT),
        };

        let conn = get("ICAHUB_TABLES_CONNECTION_STRING").or_else(|| get("AzureWebJobsStorage"));
        let table_prefix = get("ICAHUB_TABLE_PREFIX").unwrap_or_else(|| "icahub".into());
        if !table_prefix.chars().all(|c| c.is_ascii_alphanumeric())
            || !table_prefix.starts_with(|c: char| c.is_ascii_alphabetic())
            || table_prefix.len() > 40
        {
            return Err(ConfigError(format!(
                "ICAHUB_TABLE_PREFIX={table_prefix:?} must be 1-40 letters and digits, starting with a letter"
            )));
        }
        let mode = get("ICAHUB_STORAGE").unwrap_or_else(|| "auto".into());
        let dir = PathBuf::from(get("ICAHUB_DATA_DIR").unwrap_or_else(|| "./data".into()));
        let endpoint = get("ICAHUB_TABLES_ENDPOINT");
        let client_id = get("ICAHUB_TABLES_CLIENT_ID");
        if client_id.is_some() && endpoint.is_none() {
            return Err(ConfigError(
                "ICAHUB_TABLES_CLIENT_ID is set but ICAHUB_TABLES_ENDPOINT, the table service it \
                 is for, is not"
                    .into(),
            ));
        }
        if endpoint.is_some() && get("ICAHUB_TABLES_CONNECTION_STRING").is_some() {
            return Err(ConfigError(
                "set ICAHUB_TABLES_ENDPOINT (managed identity) or ICAHUB_TABLES_CONNECTION_STRING \
                 (key or SAS), not both"
                    .into(),
            ));
        }
        let azure_cli = match get("ICAHUB_TABLES_CREDENTIAL").as_deref() {
            None | Some("managed_identity") => false,
            Some("azure_cli") => true,
            Some(other) => {
                return Err(ConfigError(format!(
                    "ICAHUB_TABLES_CREDENTIAL={other:?} must be managed_identity or azure_cli"
                )))
            }
        };
        if azure_cli && client_id.is_some() {
            return Err(ConfigError(
                "ICAHUB_TABLES_CREDENTIAL=azure_cli uses the signed-in user: unset \
                 ICAHUB_TABLES_CLIENT_ID"
                    .into(),
            ));
        }
        if get("ICAHUB_TABLES_CREDENTIAL").is_some() && endpoint.is_none() {
            return Err(ConfigError(
                "ICAHUB_TABLES_CREDENTIAL needs ICAHUB_TABLES_ENDPOINT, the table service URL"
                    .into(),
            ));
        }
        if let Some(id) = &client_id {
            if uuid::Uuid::parse_str(id).is_err() {
                return Err(ConfigError(format!(
                    "ICAHUB_TABLES_CLIENT_ID={id:?} is not a client id (a GUID)"
                )));
            }
        }
        let storage = match (mode.as_str(), endpoint, conn) {
            ("auto" | "tables", Some(e), _) => {
                // Never echo the value: a SAS pasted here by mistake would reach the logs.
                let parsed = reqwest::Url::parse(&e).ok();
                let https = parsed.as_ref().is_some_and(|u| u.scheme() == "https");
                // Plain http only to this machine (Azurite, test stand-ins): the bearer token
                // would travel in clear text.
                let local_http = parsed
                    .as_ref()
                    .is_some_and(|u| u.scheme() == "http" && is_loopback(u));
                let clean = parsed
                    .as_ref()
                    .is_some_and(|u| u.query().is_none() && u.password().is_none());
                if !(https || local_http) || !clean {
                    return Err(ConfigError(
                        "ICAHUB_TABLES_ENDPOINT must be the table service URL, \
                         https://<account>.table.core.windows.net (no query, no key; plain http \
                         only to localhost)"
                            .into(),
                    ));
                }
                StorageConfig::TablesIdentity {
                    endpoint: e,
                    client_id,
                    azure_cli,
                    table_prefix,
                }
            }
            ("auto" | "tables", None, Some(c)) => StorageConfig::Tables {
                connection_string: Secret::new(c),
                table_prefix,
            },
            ("tables", None, None) => {
                return Err(ConfigError(
                    "ICAHUB_STORAGE=tables needs ICAHUB_TABLES_ENDPOINT (managed identity), \
                     ICAHUB_TABLES_CONNECTION_STRING or AzureWebJobsStorage"
                        .into(),
                ))
            }
            ("auto" | "embedded", _, _) => StorageConfig::Embedded { dir },
            (other, _, _) => {
                return Err(ConfigError(format!(
                    "ICAHUB_STORAGE={other:?} must be auto, embedded or tables"
                )))
            }
        };
        if under_functions_host && matches!(storage, StorageConfig::Embedded { .. }) {
            return Err(ConfigError(
                "running under the Azure Functions host needs Azure Table Storage: set \
                 ICAHUB_TABLES_ENDPOINT (managed identity), ICAHUB_TABLES_CONNECTION_STRING or \
                 AzureWebJobsStorage. The embedded store keeps \
                 data on the instance's local disk, which instances do not share and the platform \
                 may discard."
                    .into(),
            ));
        }

        let max_body_bytes = parse_num(&get, "ICAHUB_MAX_BODY_BYTES", 524_288usize)?;
        if max_body_bytes == 0 || max_body_bytes > MAX_BODY_CEILING {
            return Err(ConfigError(format!(
                "ICAHUB_MAX_BODY_BYTES must be between 1 and {MAX_BODY_CEILING}"
            )));
        }
        let connections = ConnectionLimits::from_lookup(&get)?;
        let store_timeout =
            Duration::from_millis(parse_num(&get, "ICAHUB_STORE_TIMEOUT_MS", 8000u64)?);

        let rules = match (get("ICAHUB_ROUTING"), get("ICAHUB_ROUTING_FILE")) {
            (Some(_), Some(_)) => {
                return Err(ConfigError(
                    "set ICAHUB_ROUTING or ICAHUB_ROUTING_FILE, not both".into(),
                ))
            }
            (Some(json), None) => Routing::parse_rules(&json)
                .map_err(|e| ConfigError(format!("ICAHUB_ROUTING: {e}")))?,
            (None, Some(path)) => {
                let json = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError(format!("ICAHUB_ROUTING_FILE={path:?} cannot be read: {e}"))
                })?;
                Routing::parse_rules(&json)
                    .map_err(|e| ConfigError(format!("ICAHUB_ROUTING_FILE={path:?}: {e}")))?
            }
            (None, None) => Routing::default_rules(),
        };
        let routing = Routing {
            rules,
            control_plane: get("ICAHUB_CONTROL_PLANE_URL").is_some(),
            mattermost: get("ICAHUB_MATTERMOST_WEBHOOK_URL").is_some()
                || get("ICAHUB_MATTERMOST_WEBHOOKS").is_some(),
            pagerduty: get("ICAHUB_PAGERDUTY_ROUTING_KEY").is_some()
                || get("ICAHUB_PAGERDUTY_ROUTING_KEYS").is_some(),
        };

        let secs = |name: &str, default: u64| -> Result<Duration, ConfigError> {
            Ok(Duration::from_secs(parse_num(&get, name, default)?))
        };
        let retry = RetryPolicy {
            first_delay: secs("ICAHUB_RETRY_FIRST_SECS", 5)?,
            max_delay: secs("ICAHUB_RETRY_MAX_SECS", 3600)?,
            give_up_after: secs("ICAHUB_GIVE_UP_AFTER_SECS", 86_400)?,
            ..RetryPolicy::default()
        };
        if retry.first_delay.is_zero() || retry.max_delay < retry.first_delay {
            return Err(ConfigError(
                "ICAHUB_RETRY_FIRST_SECS must be at least 1 and at most ICAHUB_RETRY_MAX_SECS"
                    .into(),
            ));
        }
        let lease = secs("ICAHUB_LEASE_SECS", 60)?;
        if lease < Duration::from_secs(15) {
            return Err(ConfigError(
                "ICAHUB_LEASE_SECS must be at least 15 (longer than a sink's 10 s timeout)".into(),
            ));
        }
        let interval = secs("ICAHUB_DISPATCH_INTERVAL_SECS", 10)?;
        let dispatch_interval = (!interval.is_zero()).then_some(interval);

        let auth_required = match get("ICAHUB_AUTH").as_deref() {
            None | Some("required") => true,
            Some("off") if under_functions_host => {
                return Err(ConfigError(
                    "ICAHUB_AUTH=off is for local development only and is refused under the \
                     Azure Functions host"
                        .into(),
                ))
            }
            Some("off") => false,
            Some(other) => {
                return Err(ConfigError(format!(
                    "ICAHUB_AUTH={other:?} must be required or off"
                )))
            }
        };

        let approvals =
            approvals::ApprovalConfig::from_lookup(&|k: &str| get(k)).map_err(ConfigError)?;
        let entra = entra::EntraConfig::from_lookup(&|k: &str| get(k)).map_err(ConfigError)?;
        let webhooks =
            webhooks::WebhookSenders::from_lookup(&|k: &str| get(k)).map_err(ConfigError)?;
        let auth_methods = auth_methods::AuthMethods::parse(
            get("ICAHUB_AUTH_METHODS").as_deref(),
            entra.is_some(),
            webhooks.configured(),
        )
        .map_err(ConfigError)?;
        let azdo_hooks = AzdoHookAuth::from_lookup(&get)?;
        let azdo_plan_hosts = plan_hosts(&|k: &str| get(k)).map_err(ConfigError)?;
        let mattermost = MattermostActions::from_lookup(&|k: &str| get(k)).map_err(ConfigError)?;
        let sinks = sinks::SinkSettings::from_lookup(&|k: &str| get(k)).map_err(ConfigError)?;
        let azdo_organizations = match get("ICAHUB_AZDO_ORGANIZATIONS") {
            None => Default::default(),
            Some(v) => crate::domain::check::Organizations::parse(&v)
                .map_err(|e| ConfigError(format!("ICAHUB_AZDO_ORGANIZATIONS: {e}")))?,
        };

        let cp = secs("ICAHUB_AUDIT_CHECKPOINT_SECS", 3600)?;
        let audit_checkpoint_every = (!cp.is_zero()).then_some(cp);

        Ok(Config {
            port,
            under_functions_host,
            storage,
            max_body_bytes,
            connections,
            store_timeout,
            routing,
            retry,
            lease,
            dispatch_interval,
            auth_required,
            audit_checkpoint_every,
            entra,
            webhooks,
            auth_methods,
            approvals,
            azdo_hooks,
            azdo_plan_hosts,
            azdo_organizations,
            mattermost,
            sinks,
        })
    }

    /// A config for tests and embedding: embedded store in `dir`, port 0.
    pub fn embedded(dir: impl Into<PathBuf>) -> Config {
        Config {
            port: 0,
            under_functions_host: false,
            storage: StorageConfig::Embedded { dir: dir.into() },
            max_body_bytes: 524_288,
            connections: ConnectionLimits::default(),
            store_timeout: Duration::from_secs(8),
            routing: Routing::default(),
            retry: RetryPolicy::default(),
            lease: Duration::from_secs(60),
            dispatch_interval: None,
            auth_required: true,
            audit_checkpoint_every: None,
            entra: None,
            webhooks: Default::default(),
            auth_methods: Default::default(),
            approvals: approvals::ApprovalConfig::default(),
            azdo_hooks: AzdoHookAuth::default(),
            azdo_plan_hosts: crate::domain::check::PlanHosts::default(),
            azdo_organizations: Default::default(),
            mattermost: MattermostActions::default(),
            sinks: Default::default(),
        }
    }
}

/// Whether `url` names this machine: a loopback address (127.0.0.0/8, ::1) or `localhost`, parsed
/// (never matched by prefix: `127.0.0.1.evil.example` is a domain). Where plain http is allowed.
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Check a configured URL without echoing it (it may carry a secret).
pub fn check_url(var: &str, url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|_| format!("{var} is not a valid URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("{var} must be an http(s) URL"));
    }
    Ok(parsed)
}

/// `ICAHUB_AZDO_PLAN_HOSTS`, shared by the endpoint (refuses other hosts up front) and the sink.
pub fn plan_hosts(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<crate::domain::check::PlanHosts, String> {
    match get("ICAHUB_AZDO_PLAN_HOSTS") {
        None => Ok(crate::domain::check::PlanHosts::default()),
        Some(list) => crate::domain::check::PlanHosts::parse(&list)
            .map_err(|e| format!("ICAHUB_AZDO_PLAN_HOSTS: {e}")),
    }
}

fn parse_num<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: T,
) -> Result<T, ConfigError> {
    match get(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| ConfigError(format!("{name}={v:?} is not a valid number"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)], port: Option<u16>) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned(), port)
    }

    #[test]
    fn defaults_to_embedded_on_7071() {
        let c = cfg(&[], None).unwrap();
        assert_eq!(c.port, 7071);
        assert_eq!(
            c.storage,
            StorageConfig::Embedded {
                dir: "./data".into()
            }
        );
    }

    #[test]
    fn host_port_wins_over_cli_port() {
        let c = cfg(
            &[
                ("FUNCTIONS_CUSTOMHANDLER_PORT", "5555"),
                ("AzureWebJobsStorage", "UseDevelopmentStorage=true"),
            ],
            Some(8080),
        )
        .unwrap();
        assert_eq!(c.port, 5555);
        assert!(c.under_functions_host);
        assert!(matches!(c.storage, StorageConfig::Tables { .. }));
        assert_eq!(cfg(&[], Some(8080)).unwrap().port, 8080);
    }

    #[test]
    fn the_entra_authority_is_a_url_with_http_only_to_loopback() {
        let with = |a: &str| {
            cfg(
                &[
                    ("ICAHUB_ENTRA_TENANT_ID", "t"),
                    ("ICAHUB_ENTRA_AUDIENCES", "api://icahub"),
                    ("ICAHUB_ENTRA_AUTHORITY", a),
                ],
                None,
            )
        };
        let e = with("http://127.0.0.1.evil.example").unwrap_err();
        assert!(
            e.0.contains("ICAHUB_ENTRA_AUTHORITY") && e.0.contains("not this machine"),
            "{e}"
        );
        assert!(with("http://localhost.evil.example:80").is_err());
        let c = with("http://127.0.0.1:4000/").unwrap();
        assert_eq!(c.entra.unwrap().authority, "http://127.0.0.1:4000");
        assert!(with("https://login.microsoftonline.us").is_ok());
    }

    #[test]
    fn embedded_under_host_is_refused() {
        let e = cfg(&[("FUNCTIONS_CUSTOMHANDLER_PORT", "5555")], None).unwrap_err();
        assert!(e.0.contains("Table Storage"), "{e}");
    }

    #[test]
    fn icahub_connection_string_wins_and_is_not_printed() {
        let c = cfg(
            &[
                (
                    "ICAHUB_TABLES_CONNECTION_STRING",
                    "AccountName=a;AccountKey=SECRETKEY",
                ),
                ("AzureWebJobsStorage", "UseDevelopmentStorage=true"),
            ],
            None,
        )
        .unwrap();
        let StorageConfig::Tables {
            connection_string, ..
        } = &c.storage
        else {
            panic!("expected tables")
        };
        assert!(connection_string.expose().contains("SECRETKEY"));
        assert!(!format!("{c:?}").contains("SECRETKEY"));
    }

    #[test]
    fn azdo_hook_credentials() {
        let c = cfg(&[], None).unwrap();
        assert!(!c.azdo_hooks.configured());
        assert_eq!(c.azdo_hooks.header, "x-icahub-hook-secret");
        let c = cfg(
            &[
                ("ICAHUB_AZDO_HOOK_USERNAME", "ado"),
                ("ICAHUB_AZDO_HOOK_PASSWORD", "HOOKPASS"),
                ("ICAHUB_AZDO_HOOK_HEADER", "X-Hook-Token"),
                ("ICAHUB_AZDO_HOOK_SECRET", "HOOKSECRET"),
            ],
            None,
        )
        .unwrap();
        let h = &c.azdo_hooks;
        assert!(h.configured());
        assert_eq!(h.header, "x-hook-token");
        assert_eq!(h.basic.as_ref().unwrap().1.expose(), "HOOKPASS");
        let printed = format!("{c:?}");
        assert!(!printed.contains("HOOKPASS") && !printed.contains("HOOKSECRET"));
        for bad in [
            vec![("ICAHUB_AZDO_HOOK_USERNAME", "ado")],
            vec![("ICAHUB_AZDO_HOOK_PASSWORD", "p")],
            vec![
                ("ICAHUB_AZDO_HOOK_USERNAME", "a:b"),
                ("ICAHUB_AZDO_HOOK_PASSWORD", "p"),
            ],
            vec![("ICAHUB_AZDO_HOOK_HEADER", "X-Hook")],
            vec![
                ("ICAHUB_AZDO_HOOK_HEADER", "bad header"),
                ("ICAHUB_AZDO_HOOK_SECRET", "s"),
            ],
            vec![
                ("ICAHUB_AZDO_HOOK_HEADER", "Authorization"),
                ("ICAHUB_AZDO_HOOK_SECRET", "s"),
            ],
        ] {
            let e = cfg(&bad, None).unwrap_err();
            assert!(e.0.contains("ICAHUB_AZDO_HOOK"), "{e}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        let e = cfg(&[("ICAHUB_MAX_BODY_BYTES", "lots")], None).unwrap_err();
        assert!(e.0.contains("ICAHUB_MAX_BODY_BYTES"));
        let e = cfg(&[("ICAHUB_STORAGE", "s3")], None).unwrap_err();
        assert!(e.0.contains("ICAHUB_STORAGE"));
        let e = cfg(&[("ICAHUB_TABLE_PREFIX", "bad-prefix")], None).unwrap_err();
        assert!(e.0.contains("ICAHUB_TABLE_PREFIX"));
    }

    #[test]
    fn mattermost_actions_are_checked_without_echoing_secrets() {
        let c = cfg(&[], None).unwrap();
        assert!(c.mattermost.buttons().is_none());
        let long = "s3cret-s3cret-s3cret-s3cret-s3cret-1";
        let c = cfg(
            &[
                ("ICAHUB_PUBLIC_URL", "https://icahub.example.net/"),
                (
                    "ICAHUB_MATTERMOST_ACTION_SECRETS",
                    &format!("{long}, {long}2"),
                ),
                ("ICAHUB_MATTERMOST_URL", "https://chat.example.net"),
                ("ICAHUB_MATTERMOST_TOKEN", "mm-token-SECRET"),
            ],
            None,
        )
        .unwrap();
        let (url, _) = c.mattermost.buttons().unwrap();
        assert_eq!(url, "https://icahub.example.net/api/v1/mattermost/actions");
        assert_eq!(c.mattermost.secrets.len(), 2);
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("s3cret") && !dbg.contains("mm-token-SECRET"),
            "{dbg}"
        );
        // Public URL without secrets: no buttons, no error.
        let c = cfg(&[("ICAHUB_PUBLIC_URL", "https://icahub.example.net")], None).unwrap();
        assert!(c.mattermost.buttons().is_none());

        let e = cfg(
            &[("ICAHUB_MATTERMOST_ACTION_SECRETS", "short-SECRET")],
            None,
        )
        .unwrap_err();
        assert!(e.0.contains("ICAHUB_MATTERMOST_ACTION_SECRETS") && e.0.contains("#1"));
        assert!(!e.0.contains("short-SECRET"));
        let e = cfg(
            &[(
                "ICAHUB_MATTERMOST_ACTION_SECRETS",
                &format!("{long},tiny-SECRET"),
            )],
            None,
        )
        .unwrap_err();
        assert!(e.0.contains("#2") && !e.0.contains("tiny-SECRET"), "{e}");
        let e = cfg(&[("ICAHUB_PUBLIC_URL", "icahub.example.net")], None).unwrap_err();
        assert!(e.0.contains("ICAHUB_PUBLIC_URL"));
        let e = cfg(&[("ICAHUB_PUBLIC_URL", "https://h/?code=abc")], None).unwrap_err();
        assert!(e.0.contains("ICAHUB_PUBLIC_URL") && !e.0.contains("abc"));
        let e = cfg(&[("ICAHUB_MATTERMOST_TOKEN", "mm-token-SECRET")], None).unwrap_err();
        assert!(e.0.contains("ICAHUB_MATTERMOST_URL") && !e.0.contains("mm-token-SECRET"));
    }
}
