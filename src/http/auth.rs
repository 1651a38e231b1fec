//! Who is calling: an API key as `Authorization: Bearer icak_…`, or as the password of Basic
//! auth (what Azure Monitor webhooks can send, credentials in the URL), or a Microsoft Entra ID
//! token as `Authorization: Bearer <JWT>` (see [`crate::entra`]). Every refusal is logged and
//! recorded in the store's `security` audit entries. With `ICAHUB_AUTH=off`
//! (local development only) every caller is `anonymous`.

use crate::error::ApiError;
use crate::identity::Caller;
use crate::startup::App;
use base64::Engine;
use std::sync::Arc;
use warp::{Filter, Rejection};

/// The authenticated caller, or a 401 JSON error (the refusal is logged).
pub fn caller(app: Arc<App>) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization").and_then(move |h: Option<String>| {
        let app = app.clone();
        async move {
            if !app.config.auth_required {
                return Ok(Caller {
                    name: "anonymous".into(),
                    roles: crate::domain::identity::Role::ALL.to_vec(),
                });
            }
            if let Some(token) = h.as_deref().and_then(bearer_jwt) {
                return entra_caller(&app, token).await;
            }
            let Some(key) = h.as_deref().and_then(presented_key) else {
                refused(&app, "no_credentials", "");
                return Err(warp::reject::custom(ApiError::Unauthorized(
                    "an API key is required: Authorization: Bearer icak_… (issue one with `icahub keys issue`)".into(),
                )));
            };
            match app.authenticator.authenticate(app.store.as_ref(), &key).await {
                Ok(Some(c)) => Ok(c),
                Ok(None) => {
                    refused(&app, "unknown_key", "");
                    Err(warp::reject::custom(ApiError::Unauthorized(
                        "the API key is unknown or revoked".into(),
                    )))
                }
                Err(e) => {
                    tracing::error!(error = %e, "authentication lookup failed");
                    Err(warp::reject::custom(ApiError::Unavailable {
                        message: "cannot check the API key right now; retry".into(),
                        retry_after: 5,
                    }))
                }
            }
        }
    })
}

/// A bearer token that looks like a JWT (three dot-separated parts), not an icahub key.
/// Public for the fuzz targets (`fuzz/`), like [`presented_key`].
pub fn bearer_jwt(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    let rest = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer")
        && !rest.starts_with(crate::domain::identity::KEY_PREFIX)
        && rest.split('.').count() == 3)
        .then_some(rest)
}

/// Verify an Entra ID token; refusals are logged and audited.
async fn entra_caller(app: &Arc<App>, token: &str) -> Result<Caller, Rejection> {
    use crate::entra::TokenError;
    let Some(verifier) = &app.entra else {
        refused(app, "entra_not_configured", "");
        return Err(warp::reject::custom(ApiError::Unauthorized(
            "Entra ID tokens are not accepted here: set ICAHUB_ENTRA_TENANT_ID and ICAHUB_ENTRA_AUDIENCES, or send an icahub API key".into(),
        )));
    };
    match verifier.verify(token).await {
        Ok(c) => Ok(c),
        Err(e) => {
            let kind = match &e {
                TokenError::Malformed(_) => "token_malformed",
                TokenError::Algorithm(_) => "token_algorithm",
                TokenError::UnknownKey(_) => "token_unknown_key",
                TokenError::Invalid(_) => "token_invalid",
                TokenError::NoRole(_) => "token_no_role",
                TokenError::Unavailable(_) => "jwks_unavailable",
            };
            refused(app, kind, &e.to_string());
            Err(warp::reject::custom(match e {
                TokenError::NoRole(_) => ApiError::Forbidden(e.to_string()),
                TokenError::Unavailable(_) => ApiError::Unavailable {
                    message: e.to_string(),
                    retry_after: 5,
                },
                other => ApiError::Unauthorized(other.to_string()),
            }))
        }
    }
}

/// Partition of security audit entries (refused authentication attempts).
pub const SECURITY: &str = "security";

/// Log a refused attempt and record it in the store's security audit entries (in the
/// background: a flood of bad tokens must not slow the refusals down).
pub fn refused(app: &Arc<App>, kind: &'static str, detail: &str) {
    tracing::info!(target: "icahub::auth", kind, detail, "refused");
    let (store, now) = (app.store.clone(), app.clock.now());
    let entry =
        serde_json::json!({"action": "auth.refused", "kind": kind, "detail": detail, "at": now});
    tokio::spawn(async move {
        let c = crate::storage::DocCommit {
            partition: SECURITY.into(),
            writes: vec![crate::storage::DocWrite {
                key: format!(
                    "audit|{}|{}",
                    now.format("%Y%m%dT%H%M%S%.6fZ"),
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                ),
                value: entry,
                expect: crate::storage::Expect::Absent,
            }],
            outbox: Vec::new(),
            record_id: "security".into(),
            now,
        };
        if let Err(e) = store.doc_commit(&c).await {
            tracing::warn!(error = %e, "could not audit a refused attempt");
        }
    });
}

/// The key from a Bearer token or a Basic password (`Authorization` header value).
pub fn presented_key(header: &str) -> Option<String> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::presented_key;

    #[test]
    fn bearer_and_basic() {
        assert_eq!(presented_key("Bearer icak_1").as_deref(), Some("icak_1"));
        assert_eq!(presented_key("bearer  icak_1 ").as_deref(), Some("icak_1"));
        // "azmon:icak_2"
        assert_eq!(
            presented_key("Basic YXptb246aWNha18y").as_deref(),
            Some("icak_2")
        );
        assert_eq!(presented_key("Basic !!!"), None);
        assert_eq!(presented_key("Digest x"), None);
        assert_eq!(presented_key("garbage"), None);
    }
}
