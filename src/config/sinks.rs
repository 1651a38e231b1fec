//! Where the outbox delivers: the settings of each sink, read from the environment with the rest
//! of [`super::Config`]. The clients that use them are in [`crate::sinks`]. Errors name the
//! variable (and the entry), never a secret.

use super::check_url;
use crate::domain::standard_webhooks::SigningKey;
use crate::secret::Secret;
use std::collections::BTreeMap;

/// The route name of the sink destination used when a routing rule names none.
pub const DEFAULT_ROUTE: &str = "default";
pub const DEFAULT_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";
pub const DEFAULT_RATE_PER_MINUTE: u32 = 100;
pub const DEFAULT_API_VERSION: &str = "2.0-preview.1";

/// The variables [`SinkSettings::from_lookup`] reads.
pub const VARS: &[&str] = &[
    "ICAHUB_MATTERMOST_WEBHOOK_URL",
    "ICAHUB_MATTERMOST_WEBHOOKS",
    "ICAHUB_MATTERMOST_USERNAME",
    "ICAHUB_MATTERMOST_ICON_URL",
    "ICAHUB_PAGERDUTY_ROUTING_KEY",
    "ICAHUB_PAGERDUTY_ROUTING_KEYS",
    "ICAHUB_PAGERDUTY_EVENTS_URL",
    "ICAHUB_PAGERDUTY_RATE_PER_MINUTE",
    "ICAHUB_CONTROL_PLANE_URL",
    "ICAHUB_CONTROL_PLANE_TOKEN",
    "ICAHUB_CONTROL_PLANE_SIGNING_SECRETS",
    "ICAHUB_AZDO_API_VERSION",
];

/// Every sink's settings; `None`: that sink is not configured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SinkSettings {
    pub mattermost: Option<MattermostSink>,
    pub pagerduty: Option<PagerDutySink>,
    pub control_plane: Option<ControlPlaneSink>,
    pub azure_devops: AzureDevopsSink,
}

/// `ICAHUB_MATTERMOST_WEBHOOK_URL`, `ICAHUB_MATTERMOST_WEBHOOKS`, `…_USERNAME`, `…_ICON_URL`.
#[derive(Debug, Clone, PartialEq)]
pub struct MattermostSink {
    /// Webhook name → URL (the URL's last segment is the hook's secret key).
    pub webhooks: BTreeMap<String, Secret>,
    pub username: String,
    pub icon_url: Option<String>,
}

/// `ICAHUB_PAGERDUTY_ROUTING_KEY(S)`, `…_EVENTS_URL`, `…_RATE_PER_MINUTE`.
#[derive(Debug, Clone, PartialEq)]
pub struct PagerDutySink {
    pub events_url: String,
    /// Route name → routing key (32 letters and digits).
    pub keys: BTreeMap<String, Secret>,
    pub rate_per_minute: u32,
}

/// `ICAHUB_CONTROL_PLANE_URL`, `…_TOKEN`, `…_SIGNING_SECRETS`.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlaneSink {
    pub base: url::Url,
    pub token: Option<Secret>,
    /// Every one signs each request (rotation).
    pub keys: Vec<SigningKey>,
}

/// `ICAHUB_AZDO_API_VERSION` (the check callback is always configured; its hosts are
/// [`super::Config::azdo_plan_hosts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AzureDevopsSink {
    pub api_version: String,
}

impl Default for AzureDevopsSink {
    fn default() -> Self {
        AzureDevopsSink {
            api_version: DEFAULT_API_VERSION.into(),
        }
    }
}

impl SinkSettings {
    /// Read every sink's variables (already trimmed, empty = unset).
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<SinkSettings, String> {
        Ok(SinkSettings {
            mattermost: MattermostSink::from_lookup(get)?,
            pagerduty: PagerDutySink::from_lookup(get)?,
            control_plane: ControlPlaneSink::from_lookup(get)?,
            azure_devops: AzureDevopsSink::from_lookup(get)?,
        })
    }
}

impl MattermostSink {
    fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let mut webhooks = BTreeMap::new();
        if let Some(map) = get("ICAHUB_MATTERMOST_WEBHOOKS") {
            for (name, url) in name_map("ICAHUB_MATTERMOST_WEBHOOKS", &map)? {
                check_url(&format!("ICAHUB_MATTERMOST_WEBHOOKS[{name:?}]"), &url)?;
                webhooks.insert(name, Secret::new(url));
            }
        }
        if let Some(url) = get("ICAHUB_MATTERMOST_WEBHOOK_URL") {
            check_url("ICAHUB_MATTERMOST_WEBHOOK_URL", &url)?;
            webhooks.insert(DEFAULT_ROUTE.to_string(), Secret::new(url));
        }
        if webhooks.is_empty() {
            return Ok(None);
        }
        let icon_url = get("ICAHUB_MATTERMOST_ICON_URL");
        if let Some(icon) = &icon_url {
            check_url("ICAHUB_MATTERMOST_ICON_URL", icon)?;
        }
        Ok(Some(MattermostSink {
            webhooks,
            username: get("ICAHUB_MATTERMOST_USERNAME").unwrap_or_else(|| "icahub".into()),
            icon_url,
        }))
    }
}

impl PagerDutySink {
    /// Keys must be 32 letters and digits, as PagerDuty's integration keys are. `None` when no
    /// key is configured.
    fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let valid = |k: &str| k.len() == 32 && k.bytes().all(|b| b.is_ascii_alphanumeric());
        let mut keys = BTreeMap::new();
        if let Some(map) = get("ICAHUB_PAGERDUTY_ROUTING_KEYS") {
            for (name, key) in name_map("ICAHUB_PAGERDUTY_ROUTING_KEYS", &map)? {
                if !valid(&key) {
                    return Err(format!(
                        "ICAHUB_PAGERDUTY_ROUTING_KEYS: key {name:?} must be 32 letters and digits"
                    ));
                }
                keys.insert(name, Secret::new(key));
            }
        }
        if let Some(key) = get("ICAHUB_PAGERDUTY_ROUTING_KEY") {
            if !valid(&key) {
                return Err("ICAHUB_PAGERDUTY_ROUTING_KEY must be 32 letters and digits".into());
            }
            keys.insert(DEFAULT_ROUTE.to_string(), Secret::new(key));
        }
        if keys.is_empty() {
            return Ok(None);
        }
        let events_url =
            get("ICAHUB_PAGERDUTY_EVENTS_URL").unwrap_or_else(|| DEFAULT_EVENTS_URL.into());
        check_url("ICAHUB_PAGERDUTY_EVENTS_URL", &events_url)?;
        let rate_per_minute = match get("ICAHUB_PAGERDUTY_RATE_PER_MINUTE") {
            None => DEFAULT_RATE_PER_MINUTE,
            Some(v) => v.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                format!("ICAHUB_PAGERDUTY_RATE_PER_MINUTE={v:?} must be a whole number >= 1")
            })?,
        };
        Ok(Some(PagerDutySink {
            events_url,
            keys,
            rate_per_minute,
        }))
    }
}

impl ControlPlaneSink {
    /// `ICAHUB_CONTROL_PLANE_URL` (its absence means no control plane), the optional bearer
    /// token, and the optional comma-separated `whsec_<base64>` signing secrets (every one signs,
    /// so a new secret can be added before the old is removed).
    fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let Some(url) = get("ICAHUB_CONTROL_PLANE_URL") else {
            return Ok(None);
        };
        let base = check_url("ICAHUB_CONTROL_PLANE_URL", &url)?;
        if base.cannot_be_a_base() || base.query().is_some() {
            return Err("ICAHUB_CONTROL_PLANE_URL must be a base URL without a query".into());
        }
        let token = get("ICAHUB_CONTROL_PLANE_TOKEN").map(Secret::new);
        if let Some(t) = &token {
            if reqwest::header::HeaderValue::from_str(&format!("Bearer {}", t.expose())).is_err() {
                return Err(
                    "ICAHUB_CONTROL_PLANE_TOKEN has characters not allowed in a header".into(),
                );
            }
        }
        let mut keys = Vec::new();
        if let Some(list) = get("ICAHUB_CONTROL_PLANE_SIGNING_SECRETS") {
            for (i, s) in list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .enumerate()
            {
                keys.push(SigningKey::parse(s).map_err(|e| {
                    format!(
                        "ICAHUB_CONTROL_PLANE_SIGNING_SECRETS: secret #{} {e}",
                        i + 1
                    )
                })?);
            }
        }
        Ok(Some(ControlPlaneSink { base, token, keys }))
    }
}

impl AzureDevopsSink {
    fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let api_version =
            get("ICAHUB_AZDO_API_VERSION").unwrap_or_else(|| DEFAULT_API_VERSION.to_string());
        if api_version.len() > 32
            || !api_version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(
                "ICAHUB_AZDO_API_VERSION must look like 2.0-preview.1 or 7.1-preview.1".into(),
            );
        }
        Ok(AzureDevopsSink { api_version })
    }
}

/// Parse a JSON object of name → string (`ICAHUB_MATTERMOST_WEBHOOKS`, ...).
pub fn name_map(var: &str, json: &str) -> Result<Vec<(String, String)>, String> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|_| format!("{var} must be a JSON object of name to string"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{var} must be a JSON object of name to string"))?;
    obj.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) if !s.trim().is_empty() => Ok((k.clone(), s.trim().to_string())),
            _ => Err(format!("{var}: entry {k:?} must be a non-empty string")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sink_variable_is_documented() {
        for v in VARS {
            assert!(super::super::VARS.iter().any(|(n, _, _)| n == v), "{v}");
        }
    }

    #[test]
    fn bad_sink_settings_fail_the_configuration_without_echoing_secrets() {
        let get =
            |k: &str| (k == "ICAHUB_PAGERDUTY_ROUTING_KEY").then(|| "not-a-key-SECRET".to_string());
        let e = crate::config::Config::from_lookup(get, None).unwrap_err();
        assert!(e.0.contains("ICAHUB_PAGERDUTY_ROUTING_KEY"), "{e}");
        assert!(!e.0.contains("SECRET"), "{e}");
    }
}
