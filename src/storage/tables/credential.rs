//! Managed identity tokens for Table Storage (no account key): the hub asks the platform's
//! identity endpoint for a `https://storage.azure.com/` token and sends it as `Authorization:
//! Bearer`. Written here because `azure_identity` 0.21 cannot name a user-assigned identity on
//! App Service / Azure Functions (its client-id option is crate-private).
//!
//! Two endpoints, as Microsoft documents them:
//! - App Service and Azure Functions (Flex Consumption included): `IDENTITY_ENDPOINT` with the
//!   `X-IDENTITY-HEADER: $IDENTITY_HEADER` secret, `api-version=2019-08-01`, `client_id=` for a
//!   user-assigned identity; the answer's `expires_on` is Unix seconds (a string).
//! - Elsewhere (VMs, AKS node identity): IMDS at `169.254.169.254` with `Metadata: true`.
//!
//! For operators at a workstation (`ICAHUB_TABLES_CREDENTIAL=azure_cli`) the token is the signed-in
//! Azure CLI user's: `az account get-access-token --resource https://storage.azure.com/`.
//!
//! Tokens are cached and fetched again five minutes before they expire; the token is never
//! logged (the `Debug` output shows neither it nor the header secret).

use azure_core::auth::{AccessToken, TokenCredential};
use azure_core::error::{Error, ErrorKind};
use std::time::Duration;
use time::OffsetDateTime;

const APP_SERVICE_API_VERSION: &str = "2019-08-01";
const IMDS_URL: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
const IMDS_API_VERSION: &str = "2018-02-01";
/// Fetch a new token this long before the cached one expires (or at half its life, if that is
/// sooner, for short-lived tokens).
const REFRESH_MARGIN: time::Duration = time::Duration::minutes(5);
/// A cached token is still used when a refresh fails, until this close to its expiry.
const EXPIRY_SKEW: time::Duration = time::Duration::seconds(30);
/// The longest wait for `az account get-access-token`.
const AZ_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the token comes from.
#[derive(Clone)]
enum Source {
    AppService { endpoint: String, secret: String },
    Imds,
    AzureCli,
}

pub struct ManagedIdentityCredential {
    http: reqwest::Client,
    source: Source,
    client_id: Option<String>,
    /// The token, and when to fetch the next one.
    cache: tokio::sync::Mutex<Option<(AccessToken, OffsetDateTime)>>,
}

impl std::fmt::Debug for ManagedIdentityCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedIdentityCredential")
            .field(
                "source",
                &match &self.source {
                    Source::AppService { endpoint, .. } => endpoint.as_str(),
                    Source::Imds => "imds",
                    Source::AzureCli => "azure_cli",
                },
            )
            .field("client_id", &self.client_id)
            .finish()
    }
}

impl ManagedIdentityCredential {
    /// From the environment the platform sets (`IDENTITY_ENDPOINT` and `IDENTITY_HEADER` on App
    /// Service and Functions, else IMDS); `client_id` names a user-assigned identity.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>, client_id: Option<String>) -> Self {
        let source = match (get("IDENTITY_ENDPOINT"), get("IDENTITY_HEADER")) {
            (Some(endpoint), Some(secret)) => Source::AppService { endpoint, secret },
            _ => Source::Imds,
        };
        // Never through a proxy: the endpoint is local to the host, and the request carries
        // the identity header's secret.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("the TLS backend initializes");
        ManagedIdentityCredential {
            http,
            source,
            client_id,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// The signed-in Azure CLI user's tokens (`az login`), for operator commands.
    pub fn azure_cli() -> Self {
        let mut c = ManagedIdentityCredential::from_lookup(&|_| None, None);
        c.source = Source::AzureCli;
        c
    }

    async fn fetch_cli(&self, resource: &str) -> azure_core::Result<AccessToken> {
        let cred = |m: String| Error::message(ErrorKind::Credential, m);
        let run = tokio::process::Command::new(if cfg!(windows) { "az.cmd" } else { "az" })
            .args([
                "account",
                "get-access-token",
                "--resource",
                resource,
                "--output",
                "json",
            ])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(AZ_TIMEOUT, run)
            .await
            .map_err(|_| {
                cred(format!(
                    "`az account get-access-token` did not finish in {} s",
                    AZ_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| {
                cred(format!(
                    "cannot run the Azure CLI (`az`): {e}; install it or use another credential"
                ))
            })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let first = err
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim();
            return Err(cred(format!(
                "`az account get-access-token` failed ({first}); run `az login` first"
            )));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|_| cred("`az account get-access-token` printed no JSON".into()))?;
        let token = v["accessToken"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| cred("`az account get-access-token` gave no accessToken".into()))?;
        let expires_on = v["expires_on"]
            .as_i64()
            .or_else(|| v["expires_on"].as_str().and_then(|s| s.parse().ok()))
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
            .unwrap_or_else(|| OffsetDateTime::now_utc() + time::Duration::minutes(10));
        Ok(AccessToken::new(token.to_string(), expires_on))
    }

    async fn fetch(&self, resource: &str) -> azure_core::Result<AccessToken> {
        if matches!(self.source, Source::AzureCli) {
            return self.fetch_cli(resource).await;
        }
        let cred = |m: String| Error::message(ErrorKind::Credential, m);
        let mut query: Vec<(&str, &str)> = vec![("resource", resource)];
        if let Some(id) = &self.client_id {
            query.push(("client_id", id));
        }
        let req = match &self.source {
            Source::AppService { endpoint, secret } => {
                query.push(("api-version", APP_SERVICE_API_VERSION));
                self.http
                    .get(endpoint)
                    .header("X-IDENTITY-HEADER", secret)
                    .query(&query)
            }
            Source::Imds | Source::AzureCli => {
                query.push(("api-version", IMDS_API_VERSION));
                self.http
                    .get(IMDS_URL)
                    .header("Metadata", "true")
                    .query(&query)
            }
        };
        let resp = req.send().await.map_err(|e| {
            cred(format!(
                "the managed identity endpoint did not answer ({}); is a managed identity assigned to this app?",
                e.without_url()
            ))
        })?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        if status != 200 {
            let hint = if status == 400 || status == 404 {
                match &self.client_id {
                    Some(id) => format!(
                        "; is the user-assigned identity with client id {id} assigned to this app?"
                    ),
                    None => "; is a system-assigned identity enabled on this app?".into(),
                }
            } else {
                String::new()
            };
            return Err(cred(format!(
                "the managed identity endpoint answered HTTP {status}{hint}"
            )));
        }
        let v: serde_json::Value = serde_json::from_str(&body)
            .map_err(|_| cred("the managed identity endpoint answered with no JSON".into()))?;
        let token = v["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| cred("the managed identity answer has no access_token".into()))?;
        // `expires_on` is Unix seconds, as a string (App Service) or a number; fall back to
        // `expires_in` (seconds from now).
        let now = OffsetDateTime::now_utc();
        let expires_on = match &v["expires_on"] {
            serde_json::Value::String(s) => s.trim().parse::<i64>().ok(),
            serde_json::Value::Number(n) => n.as_i64(),
            _ => None,
        }
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
        .or_else(|| {
            let secs = match &v["expires_in"] {
                serde_json::Value::String(s) => s.trim().parse::<i64>().ok(),
                serde_json::Value::Number(n) => n.as_i64(),
                _ => None,
            }?;
            Some(now + time::Duration::seconds(secs))
        })
        .unwrap_or(now + time::Duration::minutes(10));
        Ok(AccessToken::new(token.to_string(), expires_on))
    }
}

/// `https://storage.azure.com/.default` → `https://storage.azure.com/` (the endpoint wants a
/// resource, not a scope).
fn resource_of(scopes: &[&str]) -> azure_core::Result<String> {
    match scopes {
        [one] => Ok(match one.strip_suffix(".default") {
            Some(r) => r.to_string(),
            None => one.to_string(),
        }),
        _ => Err(Error::message(
            ErrorKind::Credential,
            "a managed identity token is for exactly one resource",
        )),
    }
}

#[async_trait::async_trait]
impl TokenCredential for ManagedIdentityCredential {
    async fn get_token(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        let resource = resource_of(scopes)?;
        let mut cache = self.cache.lock().await;
        let now = OffsetDateTime::now_utc();
        if let Some((t, refresh_at)) = cache.as_ref() {
            if now < *refresh_at {
                return Ok(t.clone());
            }
        }
        match self.fetch(&resource).await {
            Ok(token) => {
                let life = token.expires_on - now;
                let margin = REFRESH_MARGIN.min(life / 2);
                *cache = Some((token.clone(), token.expires_on - margin));
                Ok(token)
            }
            // The endpoint failed, but the token we hold still works: use it, try again later.
            Err(e) => match cache.as_ref() {
                Some((t, _)) if now + EXPIRY_SKEW < t.expires_on => {
                    tracing::warn!(error = %e, "managed identity: refresh failed; using the cached token until it expires");
                    Ok(t.clone())
                }
                _ => Err(e),
            },
        }
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        *self.cache.lock().await = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use std::sync::Arc;
    use warp::Filter;

    /// An App Service identity endpoint: answers tokens of `life` seconds (0: HTTP 500), counts
    /// requests.
    async fn endpoint(life: Arc<AtomicU64>, hits: Arc<AtomicU32>) -> String {
        let route = warp::any().map(move || {
            let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
            let life = life.load(Ordering::SeqCst);
            if life == 0 {
                return warp::reply::with_status(
                    "down".to_string(),
                    warp::http::StatusCode::INTERNAL_SERVER_ERROR,
                );
            }
            let exp = OffsetDateTime::now_utc().unix_timestamp() + life as i64;
            warp::reply::with_status(
                serde_json::json!({"access_token": format!("tok-{n}"), "expires_on": exp.to_string()})
                    .to_string(),
                warp::http::StatusCode::OK,
            )
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/msi/token", listener.local_addr().unwrap());
        tokio::spawn(warp::serve(route).incoming(listener).run());
        url
    }

    async fn setup(life: u64) -> (ManagedIdentityCredential, Arc<AtomicU64>, Arc<AtomicU32>) {
        let (l, h) = (Arc::new(AtomicU64::new(life)), Arc::new(AtomicU32::new(0)));
        let url = endpoint(l.clone(), h.clone()).await;
        let get = move |k: &str| match k {
            "IDENTITY_ENDPOINT" => Some(url.clone()),
            "IDENTITY_HEADER" => Some("secret".to_string()),
            _ => None,
        };
        (
            ManagedIdentityCredential::from_lookup(&get, Some("id".into())),
            l,
            h,
        )
    }

    const SCOPE: &[&str] = &["https://storage.azure.com/.default"];

    #[tokio::test]
    async fn tokens_are_cached_until_their_refresh_time() {
        let (c, _, hits) = setup(3600).await;
        let a = c.get_token(SCOPE).await.unwrap();
        let b = c.get_token(SCOPE).await.unwrap();
        assert_eq!(a.token.secret(), b.token.secret());
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // Due for refresh: a new token is fetched.
        c.cache.lock().await.as_mut().unwrap().1 =
            OffsetDateTime::now_utc() - time::Duration::seconds(1);
        let d = c.get_token(SCOPE).await.unwrap();
        assert_eq!(d.token.secret(), "tok-2");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn short_lived_tokens_are_refreshed_at_half_their_life() {
        let (c, _, _) = setup(60).await;
        let t = c.get_token(SCOPE).await.unwrap();
        let refresh_at = c.cache.lock().await.as_ref().unwrap().1;
        let margin = t.expires_on - refresh_at;
        assert!(
            margin <= time::Duration::seconds(31) && margin >= time::Duration::seconds(29),
            "{margin}"
        );
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_a_token_that_still_works() {
        let (c, life, hits) = setup(3600).await;
        let first = c.get_token(SCOPE).await.unwrap();
        life.store(0, Ordering::SeqCst); // the endpoint goes down
        let now = OffsetDateTime::now_utc();
        c.cache.lock().await.as_mut().unwrap().1 = now - time::Duration::seconds(1);
        let again = c.get_token(SCOPE).await.unwrap();
        assert_eq!(again.token.secret(), first.token.secret());
        assert_eq!(hits.load(Ordering::SeqCst), 2, "it did try");
        // About to expire: no longer served.
        {
            let mut cache = c.cache.lock().await;
            let (t, _) = cache.as_mut().unwrap();
            t.expires_on = now + time::Duration::seconds(10);
        }
        let e = c.get_token(SCOPE).await.unwrap_err();
        assert!(e.to_string().contains("HTTP 500"), "{e}");
    }

    #[test]
    fn scopes_become_resources() {
        assert_eq!(
            resource_of(&["https://storage.azure.com/.default"]).unwrap(),
            "https://storage.azure.com/"
        );
        assert!(resource_of(&[]).is_err());
    }
}
