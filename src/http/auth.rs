//! Who is calling: an API key as `Authorization: Bearer icak_…`, or as the password of Basic
//! auth (what Azure Monitor webhooks can send, credentials in the URL), a Microsoft Entra ID
//! token as `Authorization: Bearer <JWT>` (see [`crate::entra`]), or a Standard Webhooks
//! signature over the raw body (see [`super::verify`]), each where the route's group accepts it
//! ([`crate::auth_methods`], `ICAHUB_AUTH_METHODS`). Every refusal is logged and recorded in the
//! store's `security` audit entries. With `ICAHUB_AUTH=off` (local development only) every caller
//! is `anonymous`.

use super::verify;
use crate::auth_methods::{Method, RouteGroup};
use crate::error::ApiError;
use crate::identity::Caller;
use crate::startup::App;
use base64::Engine;
use bytes::Bytes;
use std::sync::Arc;
use warp::http::HeaderMap;
use warp::{Filter, Rejection};

/// What a request's body must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `Content-Type` JSON required ([`super::json_body`]).
    Json,
    /// JSON, or no `Content-Type` at all ([`super::optional_json_body`]).
    OptionalJson,
}

/// The authenticated caller of a route of `group` without a body (reads), or a 401 JSON error
/// (the refusal is logged and audited).
pub fn caller(
    app: Arc<App>,
    group: RouteGroup,
) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(warp::header::headers_cloned())
        .and_then(move |h: Option<String>, headers: HeaderMap| {
            let app = app.clone();
            async move {
                let caller = match authenticate(&app, group, h.as_deref(), &headers).await? {
                    Pending::Caller(c) => c,
                    // A request without a body signs an empty one.
                    Pending::Signed(s) => signed_caller(&app, group, &s, &[])?,
                };
                permitted(group, caller)
            }
        })
}

/// The authenticated caller and the raw body of a route of `group` with a body. API keys and
/// Entra ID tokens are checked before the body is read (as before signatures existed); a signed
/// request has its headers checked first, then its signature over the raw bytes, then its
/// `webhook-id` against the replay cache. Refusals are 401 JSON errors, logged and audited.
pub fn caller_and_body(
    app: Arc<App>,
    group: RouteGroup,
    body: Body,
) -> impl Filter<Extract = (Caller, Bytes), Error = Rejection> + Clone {
    let limit = app.config.max_body_bytes;
    let after_body = app.clone();
    warp::header::optional::<String>("authorization")
        .and(warp::header::headers_cloned())
        .and_then(move |h: Option<String>, headers: HeaderMap| {
            let app = app.clone();
            async move { authenticate(&app, group, h.as_deref(), &headers).await }
        })
        .and(super::body_filter(
            limit,
            if body == Body::Json {
                super::Accept::Json
            } else {
                super::Accept::JsonOrNone
            },
        ))
        .and_then(move |pending: Pending, bytes: Bytes| {
            let app = after_body.clone();
            async move {
                let caller = match pending {
                    Pending::Caller(c) => c,
                    Pending::Signed(s) => signed_caller(&app, group, &s, &bytes)?,
                };
                Ok::<_, Rejection>((permitted(group, caller)?, bytes))
            }
        })
        .untuple_one()
}

/// 403 unless the caller holds one of the roles its route group needs
/// ([`RouteGroup::roles`]): an authenticated credential is not yet a permission. Routes whose
/// groups need no particular role check their own (ledger: devops; approvals: per action).
fn permitted(group: RouteGroup, caller: Caller) -> Result<Caller, Rejection> {
    let Some(roles) = group.roles() else {
        return Ok(caller);
    };
    if roles.iter().any(|r| caller.has(*r)) {
        return Ok(caller);
    }
    tracing::info!(target: "icahub::auth", caller = %caller.name, %group, "refused: role missing");
    Err(warp::reject::custom(ApiError::Forbidden(format!(
        "{} holds none of the roles {group} routes need: {} (grant one with `icahub roles grant {} <role>`)",
        caller.name,
        roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "),
        caller.name
    ))))
}

/// A caller known from the headers, or a signed request whose body is still to be verified.
enum Pending {
    Caller(Caller),
    Signed(verify::Signed),
}

/// How to present each method (for refusals).
fn how(m: Method) -> &'static str {
    match m {
        Method::ApiKey => "an API key (Authorization: Bearer icak_…, or as the Basic auth password; issue one with `icahub keys issue`)",
        Method::Entra => "a Microsoft Entra ID token (Authorization: Bearer <JWT>)",
        Method::WebhookSignature => "a Standard Webhooks signature (webhook-id, webhook-timestamp, webhook-signature)",
    }
}

/// Check the credentials `group` accepts. The first of these that the request carries and the
/// route accepts is checked, and only that one (no falling back to another after a failure):
/// a signature (any `webhook-*` header), then the `Authorization` header (a JWT is an Entra ID
/// token, anything else an API key). Credentials of methods the route does not accept are
/// refused, naming the ones it does.
async fn authenticate(
    app: &Arc<App>,
    group: RouteGroup,
    authorization: Option<&str>,
    headers: &HeaderMap,
) -> Result<Pending, Rejection> {
    if !app.config.auth_required {
        return Ok(Pending::Caller(Caller {
            name: "anonymous".into(),
            roles: crate::domain::identity::Role::ALL.to_vec(),
        }));
    }
    let methods = &app.config.auth_methods;
    let signed = verify::is_signed(headers);
    if signed && methods.accepts(group, Method::WebhookSignature) {
        let now = app.clock.now().timestamp();
        return verify::check_headers(headers, now)
            .map(Pending::Signed)
            .map_err(|r| webhook_refused(app, group, None, r));
    }
    let mut bearer = None;
    if let Some(h) = authorization {
        let jwt = bearer_jwt(h);
        let method = match jwt {
            Some(_) => Method::Entra,
            None => Method::ApiKey,
        };
        if methods.accepts(group, method) {
            return match jwt {
                Some(token) => entra_caller(app, group, token).await,
                None => key_caller(app, group, h).await,
            }
            .map(Pending::Caller);
        }
        bearer = Some(method);
    }
    let accepted = methods.accepted(group);
    let presented: Vec<&str> = signed
        .then_some(Method::WebhookSignature)
        .into_iter()
        .chain(bearer)
        .map(Method::as_str)
        .collect();
    if presented.is_empty() {
        refused(app, "no_credentials", group.as_str(), "");
        let ways: Vec<&str> = accepted.iter().map(|m| how(*m)).collect();
        return Err(warp::reject::custom(ApiError::Unauthorized(format!(
            "credentials are required: {}",
            ways.join(", or ")
        ))));
    }
    let presented = presented.join(" and ");
    refused(app, "method_not_allowed", group.as_str(), &presented);
    Err(warp::reject::custom(ApiError::Unauthorized(format!(
        "{presented} is not accepted on {group} routes (ICAHUB_AUTH_METHODS); accepted: {}",
        methods.describe(group)
    ))))
}

/// A signed request's sender, once its signature over `body` verifies and its `webhook-id` is new.
fn signed_caller(
    app: &Arc<App>,
    group: RouteGroup,
    signed: &verify::Signed,
    body: &[u8],
) -> Result<Caller, Rejection> {
    let now = app.clock.now().timestamp();
    let senders = &app.config.webhooks;
    let i = verify::verify(senders, signed, body, now)
        .map_err(|r| webhook_refused(app, group, Some(&signed.id), r))?;
    app.replay
        .claim(i, signed, now)
        .map_err(|r| webhook_refused(app, group, Some(&signed.id), r))?;
    Ok(senders.senders[i].caller())
}

fn webhook_refused(
    app: &Arc<App>,
    group: RouteGroup,
    id: Option<&str>,
    r: verify::SignatureRefusal,
) -> Rejection {
    let detail = match id {
        Some(id) => format!(
            "webhook-id {:?}: {r}",
            crate::domain::bounded::truncate(id, 48)
        ),
        None => r.to_string(),
    };
    refused(app, r.kind(), group.as_str(), &detail);
    warp::reject::custom(match r {
        verify::SignatureRefusal::CacheFull => ApiError::Unavailable {
            message: r.to_string(),
            retry_after: 5,
        },
        r => ApiError::Unauthorized(r.to_string()),
    })
}

/// The caller of an API key in `header` (Bearer, or the Basic password).
async fn key_caller(app: &Arc<App>, group: RouteGroup, header: &str) -> Result<Caller, Rejection> {
    let Some(key) = presented_key(header) else {
        refused(
            app,
            "no_credentials",
            group.as_str(),
            "not a bearer or basic credential",
        );
        return Err(warp::reject::custom(ApiError::Unauthorized(
            "an API key is required: Authorization: Bearer icak_… (issue one with `icahub keys issue`)".into(),
        )));
    };
    match app
        .authenticator
        .authenticate(app.store.as_ref(), &key)
        .await
    {
        Ok(Some(c)) => Ok(c),
        Ok(None) => {
            refused(app, "unknown_key", group.as_str(), "");
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
async fn entra_caller(app: &Arc<App>, group: RouteGroup, token: &str) -> Result<Caller, Rejection> {
    use crate::auth::entra::EntraTokenError as TokenError;
    let Some(verifier) = &app.entra else {
        refused(app, "entra_not_configured", group.as_str(), "");
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
            refused(app, kind, group.as_str(), &e.to_string());
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

/// Partition of security audit entries: [`crate::refusals::PARTITION`].
pub use crate::refusals::PARTITION as SECURITY;

/// Log a refused attempt on `source` (a route group) and count it in the minute's summary on the
/// security audit trail ([`crate::refusals::record`]: bounded, never waiting for the store).
pub fn refused(app: &App, kind: &'static str, source: &str, detail: &str) {
    crate::refusals::record(app, kind, source, detail);
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
