//! Who is calling: an API key as `Authorization: Bearer icak_…`, or as the password of Basic
//! auth (what Azure Monitor webhooks can send, credentials in the URL). With `ICAHUB_AUTH=off`
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
            let Some(key) = h.as_deref().and_then(presented_key) else {
                tracing::info!(target: "icahub::auth", "refused: no API key");
                return Err(warp::reject::custom(ApiError::Unauthorized(
                    "an API key is required: Authorization: Bearer icak_… (issue one with `icahub keys issue`)".into(),
                )));
            };
            match app.authenticator.authenticate(app.store.as_ref(), &key).await {
                Ok(Some(c)) => Ok(c),
                Ok(None) => {
                    tracing::info!(target: "icahub::auth", "refused: unknown or revoked API key");
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

/// The key from a Bearer token or a Basic password.
fn presented_key(header: &str) -> Option<String> {
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
