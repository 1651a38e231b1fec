//! `icahub doctor`: check the configuration, storage access and each sink's reachability, and say
//! in plain words what is wrong. Nothing is posted to a sink: Mattermost is asked for its
//! `/api/v4/system/ping` (and `/api/v4/users/me` with the token), PagerDuty's Events API has no
//! test call, so its host is reached with a GET and the routing keys are checked for shape, and
//! the control plane gets a GET (refused as a method, after authentication) with the token.
//!
//! Secrets never appear in the output: webhooks are named, not shown (their URL is the secret),
//! and network errors are printed without their URL.

use crate::config::{Config, StorageConfig, VARS};
use crate::sinks::Sinks;
use clap::Args;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 when nothing failed (warnings allowed), 1 otherwise.\n\
Run it with the hub's settings in the environment: locally, or against a deployment from a \
workstation with ICAHUB_TABLES_CREDENTIAL=azure_cli (docs/deploy.md, step 6)."
)]
pub struct DoctorArgs {
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
    /// Longest wait for each network check, in seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was checked: `config`, `storage`, `mattermost`, ...
    pub check: String,
    pub level: Level,
    pub message: String,
}

fn finding(check: &str, level: Level, message: impl Into<String>) -> Finding {
    Finding {
        check: check.into(),
        level,
        message: message.into(),
    }
}

pub async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let get = |k: &str| std::env::var(k).ok();
    let findings = diagnose(&get, Duration::from_secs(args.timeout.max(1))).await;
    let failed = findings.iter().filter(|f| f.level == Level::Fail).count();
    let warned = findings.iter().filter(|f| f.level == Level::Warn).count();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        for f in &findings {
            let tag = match f.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            println!("{tag}  {:<14} {}", f.check, f.message);
        }
        println!();
        match (failed, warned) {
            (0, 0) => println!("everything checked is fine"),
            (0, w) => println!("no failures, {w} warning(s)"),
            (f, w) => println!("{f} problem(s) to fix, {w} warning(s)"),
        }
    }
    if failed > 0 {
        anyhow::bail!("icahub doctor found {failed} problem(s)");
    }
    Ok(())
}

/// Every check, over any lookup of settings (tests pass their own).
pub async fn diagnose(get: &dyn Fn(&str) -> Option<String>, timeout: Duration) -> Vec<Finding> {
    let get = |k: &str| {
        get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let mut out = Vec::new();

    // Key Vault references the platform could not resolve stay as their literal text.
    let mut unresolved = false;
    for (name, _, _) in VARS {
        if let Some(v) = get(name) {
            if v.starts_with("@Microsoft.KeyVault(") {
                unresolved = true;
                out.push(finding(
                    "key_vault",
                    Level::Fail,
                    format!(
                        "{name} is a Key Vault reference the platform did not resolve: the \
                         identity that resolves references (infra/: the app's system-assigned \
                         identity) needs the \"Key Vault Secrets User\" role on the vault, the \
                         secret must exist, and the app must restart after a role change \
                         (docs/deploy.md, step 4)"
                    ),
                ));
            }
        }
    }
    if !unresolved {
        out.push(finding(
            "key_vault",
            Level::Ok,
            "no unresolved Key Vault reference among the hub's settings",
        ));
    }

    // The sinks' settings are checked on their own ("sinks" below), so that a bad one does not
    // keep the storage from being checked.
    let core = |k: &str| {
        if crate::config::sinks::VARS.contains(&k) {
            None
        } else {
            get(k)
        }
    };
    let config = match Config::from_lookup(core, None) {
        Ok(c) => {
            out.push(finding(
                "config",
                Level::Ok,
                format!(
                    "settings are valid: storage {}, authentication {}, {}",
                    describe_storage(&c.storage),
                    if c.auth_required { "required" } else { "OFF" },
                    if c.under_functions_host {
                        "under the Functions host"
                    } else {
                        "outside the Functions host"
                    }
                ),
            ));
            if !c.auth_required {
                out.push(finding(
                    "config",
                    Level::Warn,
                    "ICAHUB_AUTH=off: every caller is an anonymous admin (local development only)",
                ));
            }
            Some(c)
        }
        Err(e) => {
            out.push(finding("config", Level::Fail, e.0));
            None
        }
    };

    match Sinks::from_lookup(&get) {
        Ok(sinks) => {
            let configured: Vec<&str> = [
                crate::domain::routing::Sink::Mattermost,
                crate::domain::routing::Sink::Pagerduty,
                crate::domain::routing::Sink::ControlPlane,
            ]
            .into_iter()
            .filter(|s| sinks.get(*s).is_some())
            .map(|s| s.as_str())
            .collect();
            if configured.is_empty() {
                out.push(finding(
                    "sinks",
                    Level::Warn,
                    "no sink is configured (Mattermost, PagerDuty, control plane): incidents and \
                     approvals are stored but reach nobody",
                ));
            } else {
                out.push(finding(
                    "sinks",
                    Level::Ok,
                    format!("configured: {}", configured.join(", ")),
                ));
            }
        }
        Err(e) => out.push(finding("sinks", Level::Fail, e)),
    }

    if let Some(config) = &config {
        out.extend(check_storage(config, timeout).await);
    } else {
        out.push(finding(
            "storage",
            Level::Warn,
            "not checked: fix the configuration first",
        ));
    }

    let http = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("icahub-doctor/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the TLS backend initializes");
    out.extend(check_mattermost(&get, &http).await);
    out.extend(check_pagerduty(&get, &http).await);
    out.extend(check_control_plane(&get, &http).await);
    out.extend(check_entra(&get, &http).await);
    out
}

fn describe_storage(s: &StorageConfig) -> String {
    match s {
        StorageConfig::Embedded { dir } => format!("embedded ({})", dir.display()),
        StorageConfig::Tables { table_prefix, .. } => {
            format!("Azure Table Storage by connection string (prefix {table_prefix})")
        }
        StorageConfig::TablesIdentity {
            endpoint,
            azure_cli: true,
            table_prefix,
            ..
        } => format!(
            "Azure Table Storage at {endpoint} as the signed-in Azure CLI user (prefix {table_prefix})"
        ),
        StorageConfig::TablesIdentity {
            endpoint,
            client_id,
            table_prefix,
            ..
        } => format!(
            "Azure Table Storage at {endpoint} with the {} managed identity (prefix {table_prefix})",
            match client_id {
                Some(id) => format!("user-assigned {id}"),
                None => "system-assigned".into(),
            }
        ),
    }
}

async fn check_storage(config: &Config, timeout: Duration) -> Vec<Finding> {
    let started = Instant::now();
    let store = match tokio::time::timeout(timeout, crate::startup::open_existing_store(config))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let msg = format!("{e:#}");
            let hint = if msg.contains("403") || msg.contains("credentials") {
                " (for a managed identity: it needs the \"Storage Table Data Contributor\" role \
                 on the account)"
            } else {
                ""
            };
            return vec![finding("storage", Level::Fail, format!("{msg}{hint}"))];
        }
        Err(_) => {
            return vec![finding(
                "storage",
                Level::Fail,
                format!(
                    "no answer within {} s: is the endpoint right and reachable from here?",
                    timeout.as_secs()
                ),
            )]
        }
    };
    match tokio::time::timeout(timeout, store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return vec![finding("storage", Level::Fail, e.to_string())],
        Err(_) => {
            return vec![finding(
                "storage",
                Level::Fail,
                format!("opened, but a read took over {} s", timeout.as_secs()),
            )]
        }
    }
    let mut out = vec![finding(
        "storage",
        Level::Ok,
        format!(
            "reachable: {} ({} ms)",
            store.location(),
            started.elapsed().as_millis()
        ),
    )];
    let stats = tokio::time::timeout(timeout, store.outbox_stats(chrono::Utc::now()))
        .await
        .unwrap_or_else(|_| {
            Err(crate::storage::StoreError::Unavailable(format!(
                "no answer within {} s",
                timeout.as_secs()
            )))
        });
    match stats {
        Ok(stats) => {
            let dead: u64 = stats.values().map(|s| s.dead).sum();
            let oldest = stats
                .iter()
                .filter_map(|(sink, s)| s.oldest_pending.map(|t| (sink, t)))
                .min_by_key(|(_, t)| *t);
            if dead == 0 {
                out.push(finding("outbox", Level::Ok, "no dead letters"));
            } else {
                out.push(finding(
                    "outbox",
                    Level::Warn,
                    format!(
                        "{dead} dead letter(s): see `icahub outbox list --dead`, fix the cause, \
                         then `icahub outbox redrive --all-dead`"
                    ),
                ));
            }
            if let Some((sink, t)) = oldest {
                let age = (chrono::Utc::now() - t).num_seconds();
                if age > 900 {
                    out.push(finding(
                        "outbox",
                        Level::Warn,
                        format!(
                            "the oldest pending {sink} delivery is {} min old: that sink has \
                             been failing (`icahub outbox list --sink {sink}` shows the errors)",
                            age / 60
                        ),
                    ));
                }
            }
        }
        Err(e) => out.push(finding(
            "outbox",
            Level::Warn,
            format!("could not read: {e}"),
        )),
    }
    out
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    let host = u.host_str()?;
    Some(match u.port() {
        Some(p) => format!("{}://{host}:{p}", u.scheme()),
        None => format!("{}://{host}", u.scheme()),
    })
}

fn net_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "no answer in time".into()
    } else if e.is_connect() {
        "cannot connect (DNS, firewall or the server is down)".into()
    } else {
        // Without the URL: a webhook's URL is its secret.
        let mut s = e.to_string();
        if let Some(u) = e.url() {
            s = s.replace(u.as_str(), "<url>");
        }
        s
    }
}

async fn check_mattermost(
    get: &dyn Fn(&str) -> Option<String>,
    http: &reqwest::Client,
) -> Vec<Finding> {
    let mut webhooks: Vec<(String, String)> = Vec::new();
    if let Some(url) = get("ICAHUB_MATTERMOST_WEBHOOK_URL") {
        webhooks.push(("default".into(), url));
    }
    if let Some(map) = get("ICAHUB_MATTERMOST_WEBHOOKS") {
        if let Ok(pairs) = crate::sinks::name_map("ICAHUB_MATTERMOST_WEBHOOKS", &map) {
            webhooks.extend(pairs);
        }
    }
    let mut out = Vec::new();
    let mut pinged = std::collections::BTreeSet::new();
    for (name, url) in &webhooks {
        let Some(origin) = origin(url) else { continue };
        if !pinged.insert(origin.clone()) {
            continue;
        }
        let check = format!("mattermost:{name}");
        match http
            .get(format!("{origin}/api/v4/system/ping"))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => out.push(finding(
                &check,
                Level::Ok,
                format!(
                    "Mattermost server {origin} answers its ping (the webhook itself is not \
                     called: that would post a message)"
                ),
            )),
            Ok(r) => out.push(finding(
                &check,
                Level::Warn,
                format!(
                    "{origin} answered HTTP {} to /api/v4/system/ping: is it a Mattermost \
                     server? (reachable, but not confirmed)",
                    r.status().as_u16()
                ),
            )),
            Err(e) => out.push(finding(
                &check,
                Level::Fail,
                format!("webhook {name}: {origin}: {}", net_error(&e)),
            )),
        }
    }
    if let (Some(server), Some(token)) =
        (get("ICAHUB_MATTERMOST_URL"), get("ICAHUB_MATTERMOST_TOKEN"))
    {
        let server = server.trim_end_matches('/');
        let api =
            crate::mattermost::api::MattermostApi::new(server, crate::config::Secret::new(token));
        use crate::mattermost::api::MmError;
        match api.me().await {
            Ok(me) => out.push(finding(
                "mattermost:api",
                Level::Ok,
                format!("ICAHUB_MATTERMOST_TOKEN is accepted by {server} (user @{}): user names can be resolved, clickers checked and the rejection dialog opened", me.username),
            )),
            Err(MmError::Refused(status)) => out.push(finding(
                "mattermost:api",
                Level::Fail,
                format!(
                    "{server} refused ICAHUB_MATTERMOST_TOKEN (HTTP {status}): make a new bot or \
                     personal access token"
                ),
            )),
            Err(MmError::Unreachable(why)) => out.push(finding(
                "mattermost:api",
                Level::Fail,
                format!("{server}: {why}; approval buttons are refused while it cannot be reached"),
            )),
            Err(e) => out.push(finding(
                "mattermost:api",
                Level::Warn,
                format!("{server}/api/v4/users/me: {e}"),
            )),
        }
    }
    out
}

async fn check_pagerduty(
    get: &dyn Fn(&str) -> Option<String>,
    http: &reqwest::Client,
) -> Vec<Finding> {
    if get("ICAHUB_PAGERDUTY_ROUTING_KEY").is_none()
        && get("ICAHUB_PAGERDUTY_ROUTING_KEYS").is_none()
    {
        return Vec::new();
    }
    let url = get("ICAHUB_PAGERDUTY_EVENTS_URL")
        .unwrap_or_else(|| crate::sinks::pagerduty::DEFAULT_EVENTS_URL.into());
    let Some(origin) = origin(&url) else {
        return Vec::new();
    };
    match http.get(format!("{origin}/")).send().await {
        Ok(r) => vec![finding(
            "pagerduty",
            Level::Ok,
            format!(
                "{origin} is reachable (HTTP {}). The Events API has no test call, so no event \
                 was sent; the routing keys were checked for shape only (32 letters and digits)",
                r.status().as_u16()
            ),
        )],
        Err(e) => vec![finding(
            "pagerduty",
            Level::Fail,
            format!("{origin}: {}", net_error(&e)),
        )],
    }
}

async fn check_control_plane(
    get: &dyn Fn(&str) -> Option<String>,
    http: &reqwest::Client,
) -> Vec<Finding> {
    let Some(base) = get("ICAHUB_CONTROL_PLANE_URL") else {
        return Vec::new();
    };
    let base = base.trim_end_matches('/').to_string();
    // A GET of a route the hub POSTs to: the API authenticates it (401/403 on a bad token) and
    // then refuses the method (405), so nothing is recorded.
    let mut req = http.get(format!("{base}/api/v1/azdev/run/start"));
    if let Some(t) = get("ICAHUB_CONTROL_PLANE_TOKEN") {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(r) if matches!(r.status().as_u16(), 401 | 403) => vec![finding(
            "control_plane",
            Level::Fail,
            format!(
                "{base} refused the credentials (HTTP {}): check ICAHUB_CONTROL_PLANE_TOKEN",
                r.status().as_u16()
            ),
        )],
        Ok(r) if r.status().as_u16() == 404 => vec![finding(
            "control_plane",
            Level::Warn,
            format!(
                "{base} answered 404 for /api/v1/azdev/run/start: is ICAHUB_CONTROL_PLANE_URL \
                 the base URL of the ICA REST API?"
            ),
        )],
        Ok(r) if r.status().is_server_error() => vec![finding(
            "control_plane",
            Level::Warn,
            format!(
                "{base} answered HTTP {}: the ledger is failing",
                r.status().as_u16()
            ),
        )],
        Ok(r) => vec![finding(
            "control_plane",
            Level::Ok,
            format!(
                "{base} is reachable and did not refuse the token (HTTP {})",
                r.status().as_u16()
            ),
        )],
        Err(e) => vec![finding(
            "control_plane",
            Level::Fail,
            format!("{base}: {}", net_error(&e)),
        )],
    }
}

async fn check_entra(get: &dyn Fn(&str) -> Option<String>, http: &reqwest::Client) -> Vec<Finding> {
    let Some(tenant) = get("ICAHUB_ENTRA_TENANT_ID") else {
        return Vec::new();
    };
    let authority =
        get("ICAHUB_ENTRA_AUTHORITY").unwrap_or_else(|| "https://login.microsoftonline.com".into());
    let url = format!(
        "{}/{tenant}/v2.0/.well-known/openid-configuration",
        authority.trim_end_matches('/')
    );
    match http.get(&url).send().await {
        Ok(r) if r.status().is_success() => vec![finding(
            "entra",
            Level::Ok,
            format!("the tenant's OpenID configuration is reachable ({url})"),
        )],
        Ok(r) => vec![finding(
            "entra",
            Level::Fail,
            format!(
                "{url} answered HTTP {}: is ICAHUB_ENTRA_TENANT_ID right?",
                r.status().as_u16()
            ),
        )],
        Err(e) => vec![finding(
            "entra",
            Level::Fail,
            format!("{url}: {}", net_error(&e)),
        )],
    }
}
