//! `ICAHUB_ENTRA_*`: which Microsoft Entra ID tokens the hub accepts. The verifier that uses
//! these settings is [`crate::auth::entra`].

use crate::domain::bounded;
use crate::domain::identity::Role;
use std::collections::BTreeMap;
use std::time::Duration;

/// The JWKS is fetched again on an unknown `kid` at most this often.
pub const REFRESH_FLOOR: Duration = Duration::from_secs(30);
/// The Azure Monitor secure webhook's app role, mapped to [`Role::AlertSender`] by default.
pub const ACTION_GROUP_ROLE: &str = "ActionGroupsSecureWebhook";

#[derive(Debug, Clone, PartialEq)]
pub struct EntraConfig {
    pub tenant_id: String,
    /// Accepted `aud` values: the app's identifier URI and/or client id.
    pub audiences: Vec<String>,
    /// `https://login.microsoftonline.com` unless overridden (sovereign clouds, tests).
    pub authority: String,
    /// App role value (case-insensitive) → icahub roles, besides the default mapping.
    pub role_map: BTreeMap<String, Vec<Role>>,
    /// The JWKS is fetched again on an unknown `kid` at most this often ([`REFRESH_FLOOR`]).
    pub refresh_floor: Duration,
}

impl EntraConfig {
    /// `None` unless `ICAHUB_ENTRA_TENANT_ID` is set.
    pub fn from_lookup(
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<EntraConfig>, String> {
        let Some(tenant_id) = get("ICAHUB_ENTRA_TENANT_ID") else {
            return Ok(None);
        };
        if tenant_id.is_empty()
            || tenant_id.len() > 64
            || !tenant_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err("ICAHUB_ENTRA_TENANT_ID must be the tenant id (a GUID)".into());
        }
        let audiences: Vec<String> = get("ICAHUB_ENTRA_AUDIENCES")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if audiences.is_empty() {
            return Err("ICAHUB_ENTRA_TENANT_ID is set, so ICAHUB_ENTRA_AUDIENCES must list the accepted token audiences (the app's identifier URI and/or client id)".into());
        }
        let authority = get("ICAHUB_ENTRA_AUTHORITY")
            .unwrap_or_else(|| "https://login.microsoftonline.com".into())
            .trim_end_matches('/')
            .to_string();
        check_authority(&authority)?;
        let mut role_map: BTreeMap<String, Vec<Role>> = BTreeMap::new();
        role_map.insert(
            ACTION_GROUP_ROLE.to_ascii_lowercase(),
            vec![Role::AlertSender],
        );
        if let Some(json) = get("ICAHUB_ENTRA_ROLE_MAP") {
            let v: BTreeMap<String, serde_json::Value> =
                serde_json::from_str(&json).map_err(|_| {
                    "ICAHUB_ENTRA_ROLE_MAP must be a JSON object of app role to icahub role(s)"
                        .to_string()
                })?;
            for (app_role, target) in v {
                let roles =
                    super::webhooks::parse_roles("", "", &super::webhooks::role_names(target))
                        .map_err(|_| {
                            format!(
                                "ICAHUB_ENTRA_ROLE_MAP: {app_role:?} must map to icahub roles ({})",
                                Role::ALL.map(|r| r.as_str()).join(", ")
                            )
                        })?;
                role_map.insert(app_role.to_ascii_lowercase(), roles);
            }
        }
        Ok(Some(EntraConfig {
            tenant_id,
            audiences,
            authority,
            role_map,
            refresh_floor: REFRESH_FLOOR,
        }))
    }
}

/// `ICAHUB_ENTRA_AUTHORITY` parsed as a URL, not read by prefix (`http://127.0.0.1.evil.example`
/// starts like a loopback address): https, or plain http only to a loopback host (a local test
/// stand-in), with no credentials, query or fragment. The signing keys come from there, so
/// whoever answers it decides which tokens are valid.
pub fn check_authority(authority: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "ICAHUB_ENTRA_AUTHORITY={:?} {why}: it must be an https URL such as \
             https://login.microsoftonline.com (plain http only to 127.0.0.0/8, ::1 or localhost)",
            bounded::truncate(authority, 100)
        ))
    };
    let Ok(url) = url::Url::parse(authority) else {
        return bad("is not a URL");
    };
    if !url.username().is_empty() || url.password().is_some() {
        return bad("carries credentials");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return bad("has a query or fragment");
    }
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if crate::config::is_loopback(&url) => Ok(()),
        "http" => bad("is plain http to a host that is not this machine"),
        _ => bad("is not https"),
    }
}
