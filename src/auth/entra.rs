//! Microsoft Entra ID bearer tokens: managed and workload identities of pipelines, and the Azure
//! Monitor secure webhook (the "AZNS AAD Webhook" application, docs/protocols.md §2.3).
//!
//! A token is accepted only when: its header names RS256 (never `none`, never an HMAC algorithm,
//! whatever key it claims) and a `kid` found in the tenant's JWKS (discovered from the OpenID
//! configuration, cached, fetched again on an unknown `kid` at most every
//! [`REFRESH_FLOOR`]); the signature verifies; `aud` is one of the configured audiences; `iss` is
//! the tenant's (v2 or v1 form); `tid` is the tenant; `exp` and `nbf` hold with [`LEEWAY_SECS`] of
//! skew; and its `roles` claim maps to at least one icahub role.

use crate::domain::bounded;
use crate::domain::identity::Caller;
use crate::domain::identity::Role;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 60;
pub use crate::config::entra::{check_authority, EntraConfig, REFRESH_FLOOR};
/// Keys are re-fetched after this long even when every `kid` is known.
pub const KEYS_TTL: Duration = Duration::from_secs(24 * 3600);
pub use crate::config::entra::ACTION_GROUP_ROLE;

impl EntraConfig {
    /// The icahub roles of a token's app roles: the configured map, else an app role whose last
    /// dot-separated part names an icahub role (`Icahub.TechnicalApprover`, `devops`).
    pub fn map_roles(&self, app_roles: &[String]) -> Vec<Role> {
        let squash = |s: &str| s.to_ascii_lowercase().replace(['_', '-'], "");
        let mut out = Vec::new();
        for r in app_roles {
            if let Some(mapped) = self.role_map.get(&r.to_ascii_lowercase()) {
                out.extend(mapped.iter().copied());
                continue;
            }
            let last = r.rsplit('.').next().unwrap_or(r);
            if let Some(role) = Role::ALL
                .into_iter()
                .find(|x| squash(x.as_str()) == squash(last))
            {
                out.push(role);
            }
        }
        out.sort();
        out.dedup();
        out
    }

    fn issuers(&self, discovered: &str) -> Vec<String> {
        let mut v = vec![
            discovered.replace("{tenantid}", &self.tenant_id),
            format!("https://login.microsoftonline.com/{}/v2.0", self.tenant_id),
            format!("https://sts.windows.net/{}/", self.tenant_id),
        ];
        v.dedup();
        v
    }
}

/// Why a token was refused. Everything but `NoRole` (403) and `Unavailable` (503) is a 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntraTokenError {
    #[error("the bearer token is not a JWT: {0}")]
    Malformed(String),
    #[error("token algorithm {0} is not allowed (RS256 only)")]
    Algorithm(String),
    #[error("token key {0:?} is not in the tenant's signing keys")]
    UnknownKey(String),
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("the token carries no icahub role (roles claim: {0:?}); assign an app role that maps to one")]
    NoRole(Vec<String>),
    #[error("cannot fetch the tenant's signing keys: {0}")]
    Unavailable(String),
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    tid: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    upn: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    appid: Option<String>,
    #[serde(default)]
    oid: Option<String>,
    #[serde(default)]
    sub: Option<String>,
}

#[derive(Deserialize)]
struct OpenIdConfiguration {
    issuer: String,
    jwks_uri: String,
}

struct Keys {
    issuer: String,
    by_kid: HashMap<String, DecodingKey>,
    fetched_at: Instant,
}

/// Verifies tokens against one tenant; shares its key cache between requests.
pub struct EntraVerifier {
    config: EntraConfig,
    client: reqwest::Client,
    keys: tokio::sync::RwLock<Option<Keys>>,
    last_fetch: Mutex<Option<Instant>>,
    refresh: tokio::sync::Mutex<()>,
}

impl EntraVerifier {
    pub fn new(config: EntraConfig) -> EntraVerifier {
        EntraVerifier {
            config,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("the TLS backend initializes"),
            keys: tokio::sync::RwLock::new(None),
            last_fetch: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    pub fn config(&self) -> &EntraConfig {
        &self.config
    }

    async fn fetch(&self) -> Result<Keys, EntraTokenError> {
        let unavailable =
            |e: reqwest::Error| EntraTokenError::Unavailable(e.without_url().to_string());
        let url = format!(
            "{}/{}/v2.0/.well-known/openid-configuration",
            self.config.authority, self.config.tenant_id
        );
        let oidc: OpenIdConfiguration = self
            .client
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        let set: JwkSet = self
            .client
            .get(&oidc.jwks_uri)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            // Only RSA signing keys: an HMAC or "none" key can never verify a token here.
            if !matches!(
                jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_)
            ) {
                continue;
            }
            if let Ok(k) = DecodingKey::from_jwk(jwk) {
                by_kid.insert(kid, k);
            }
        }
        if let Ok(mut l) = self.last_fetch.lock() {
            *l = Some(Instant::now());
        }
        Ok(Keys {
            issuer: oidc.issuer,
            by_kid,
            fetched_at: Instant::now(),
        })
    }

    /// The key for `kid` and the tenant's issuer, fetching the JWKS when needed.
    async fn key(&self, kid: &str) -> Result<(DecodingKey, String), EntraTokenError> {
        {
            let keys = self.keys.read().await;
            if let Some(k) = keys.as_ref() {
                if k.fetched_at.elapsed() < KEYS_TTL {
                    if let Some(key) = k.by_kid.get(kid) {
                        return Ok((key.clone(), k.issuer.clone()));
                    }
                }
            }
        }
        let _one_at_a_time = self.refresh.lock().await;
        // Someone else may have refreshed while we waited.
        {
            let keys = self.keys.read().await;
            if let Some(k) = keys.as_ref() {
                if let Some(key) = k.by_kid.get(kid) {
                    if k.fetched_at.elapsed() < KEYS_TTL {
                        return Ok((key.clone(), k.issuer.clone()));
                    }
                }
            }
        }
        let recently = self
            .last_fetch
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|t| t.elapsed() < self.config.refresh_floor);
        let have_keys = self.keys.read().await.is_some();
        if recently && have_keys {
            return Err(unknown_key(kid));
        }
        let fresh = self.fetch().await?;
        let found = fresh
            .by_kid
            .get(kid)
            .map(|k| (k.clone(), fresh.issuer.clone()));
        *self.keys.write().await = Some(fresh);
        found.ok_or_else(|| unknown_key(kid))
    }

    /// Verify `token`; the caller it names, with its mapped roles.
    pub async fn verify(&self, token: &str) -> Result<Caller, EntraTokenError> {
        let kid = check_header(token)?;
        let (key, issuer) = self.key(&kid).await?;
        self.config.validate(token, &key, &issuer)
    }
}

impl EntraConfig {
    /// Check a token against the tenant's signing key for its `kid` and the issuer the OpenID
    /// configuration names: signature, `aud`, `iss`, `exp`/`nbf`, `tid`, then map its roles.
    /// Pure (the key is passed in), so it can be fuzzed and tested offline.
    pub fn validate(
        &self,
        token: &str,
        key: &DecodingKey,
        issuer: &str,
    ) -> Result<Caller, EntraTokenError> {
        let mut v = Validation::new(Algorithm::RS256);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_audience(&self.audiences);
        v.set_issuer(&self.issuers(issuer));
        v.set_required_spec_claims(&["exp", "aud", "iss"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            EntraTokenError::Invalid(match e.kind() {
                K::ExpiredSignature => "expired".into(),
                K::ImmatureSignature => "not valid yet (nbf)".into(),
                K::InvalidAudience => "wrong audience".into(),
                K::InvalidIssuer => "wrong issuer".into(),
                K::InvalidSignature => "bad signature".into(),
                K::MissingRequiredClaim(c) => format!("missing claim {c}"),
                other => format!("{other:?}"),
            })
        })?;
        let c = data.claims;
        if !c
            .tid
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(&self.tenant_id))
        {
            return Err(EntraTokenError::Invalid("wrong tenant (tid)".into()));
        }
        let roles = self.map_roles(&c.roles);
        if roles.is_empty() {
            // Bounded: the message is echoed to the caller and counted in the refusals.
            return Err(EntraTokenError::NoRole(
                c.roles
                    .iter()
                    .take(8)
                    .map(|r| bounded::truncate(r, 64).into_owned())
                    .collect(),
            ));
        }
        let name = c
            .preferred_username
            .or(c.upn)
            .or_else(|| c.azp.or(c.appid).map(|a| format!("app:{a}")))
            .or(c.oid)
            .or(c.sub)
            .unwrap_or_else(|| "entra:unknown".into());
        Ok(Caller { name, roles })
    }
}

/// The `kid` of a token whose header names RS256; anything else is refused before any key is
/// looked up (`alg: none`, HMAC algorithms, no `kid`, not a JWT). Pure.
pub fn check_header(token: &str) -> Result<String, EntraTokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| {
        // `alg: none` (and algorithms the library does not know) fail to parse: name the
        // algorithm rather than the parser's complaint.
        match raw_alg(token) {
            Some(alg) if alg != "RS256" => EntraTokenError::Algorithm(alg),
            _ => EntraTokenError::Malformed(bounded::truncate(&e.to_string(), 120).into_owned()),
        }
    })?;
    if header.alg != Algorithm::RS256 {
        return Err(EntraTokenError::Algorithm(format!("{:?}", header.alg)));
    }
    header
        .kid
        .ok_or_else(|| EntraTokenError::Malformed("the token header has no kid".into()))
}

/// An unknown `kid`, bounded: it is the caller's, and may be 300 KB long.
fn unknown_key(kid: &str) -> EntraTokenError {
    EntraTokenError::UnknownKey(bounded::truncate(kid, 64).into_owned())
}

/// The `alg` of a token's header, read without trusting anything else.
fn raw_alg(token: &str) -> Option<String> {
    use base64::Engine;
    let head = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("alg")?.as_str().map(|s| s.chars().take(20).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(map: Option<&str>) -> EntraConfig {
        let map = map.map(str::to_string);
        EntraConfig::from_lookup(&|k| match k {
            "ICAHUB_ENTRA_TENANT_ID" => Some("11111111-2222-3333-4444-555555555555".into()),
            "ICAHUB_ENTRA_AUDIENCES" => Some("api://icahub, 6f1c".into()),
            "ICAHUB_ENTRA_ROLE_MAP" => map.clone(),
            _ => None,
        })
        .unwrap()
        .unwrap()
    }

    #[test]
    fn the_authority_is_parsed_not_matched_by_prefix() {
        for ok in [
            "https://login.microsoftonline.com",
            "https://login.microsoftonline.us/",
            "http://127.0.0.1:8080",
            "http://127.8.9.10",
            "http://[::1]:9000",
            "http://localhost:1234",
            "http://LOCALHOST",
        ] {
            assert_eq!(check_authority(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://127.0.0.1.evil.example",
            "http://127.0.0.1@evil.example",
            "http://localhost.evil.example",
            "http://login.microsoftonline.com",
            "http://10.0.0.1",
            "https://user:pw@login.microsoftonline.com",
            "https://login.microsoftonline.com?x=1",
            "ftp://127.0.0.1",
            "login.microsoftonline.com",
            "https://",
        ] {
            let e = check_authority(bad).unwrap_err();
            assert!(e.contains("ICAHUB_ENTRA_AUTHORITY"), "{bad}: {e}");
        }
    }

    #[test]
    fn app_roles_map_to_icahub_roles() {
        let c = cfg(Some(r#"{"Deployers": ["devops", "technical_approver"]}"#));
        assert_eq!(c.audiences, ["api://icahub", "6f1c"]);
        assert_eq!(
            c.map_roles(&["ActionGroupsSecureWebhook".into()]),
            [Role::AlertSender]
        );
        assert_eq!(
            c.map_roles(&["Icahub.TechnicalApprover".into(), "deployers".into()]),
            [Role::Devops, Role::TechnicalApprover]
        );
        assert_eq!(c.map_roles(&["Icahub.Reader".into()]), [Role::Reader]);
        assert!(c.map_roles(&["Contributor".into()]).is_empty());
        assert!(
            EntraConfig::from_lookup(&|k| (k == "ICAHUB_ENTRA_TENANT_ID").then(|| "t".into()))
                .is_err()
        );
        assert!(EntraConfig::from_lookup(&|_| None).unwrap().is_none());
    }
}
