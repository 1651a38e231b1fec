//! `POST /api/v1/azdo/hooks`: Azure DevOps service hooks (Web Hooks consumer) become run-ledger
//! records (`domain::azdo` reads them, the ledger service [`crate::services::runs`] writes them,
//! this module builds the answer).
//!
//! Who may post: the hook's own credentials from `ICAHUB_AZDO_HOOK_*` (basic auth, checked first
//! because a Basic password is otherwise taken for an API key; or a secret header), compared in
//! constant time, recorded as `azure-devops`; or an icahub API key of a devops or admin identity.
//! Azure DevOps restricts a subscription after repeated failures, so everything that is not the
//! sender's mistake is 2xx (unknown event types, redeliveries, finished runs) and only a storage
//! outage is 503.

use super::body::{decode_json, RequestCtx};
use super::{ctx, json_body, with_app};
use crate::config::AzdoHookAuth;
use crate::domain::azdo::{self, Hook, Parsed};
use crate::domain::identity::Role;
use crate::domain::run::{RunEventIn, RunFinish};
use crate::error::{json_response, ApiError};
use crate::identity::Caller;
use crate::services::runs::{Appended, Closed};
use crate::startup::App;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

/// The identity of records written on the hook's own credentials.
pub const HOOK_IDENTITY: &str = "azure-devops";

pub fn route(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "v1" / "azdo" / "hooks")
        .and(warp::post())
        .and(hook_caller(app.clone()))
        .and(ctx())
        .and(json_body(app.config.max_body_bytes))
        .and(with_app(app))
        .then(handle)
}

/// The caller, or a 401/403 JSON error (the refusal is logged, never the credentials).
fn hook_caller(app: Arc<App>) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    warp::header::headers_cloned().and_then(move |headers: HeaderMap| {
        let app = app.clone();
        async move {
            authenticate(&app, &headers).await.map_err(|e| {
                if e.status().is_client_error() {
                    super::auth::refused(
                        &app,
                        "azdo_hook_credentials",
                        "azdo_hooks",
                        &e.to_string(),
                    );
                }
                warp::reject::custom(e)
            })
        }
    })
}

fn hook_identity() -> Caller {
    Caller {
        name: HOOK_IDENTITY.into(),
        roles: vec![Role::Devops],
    }
}

/// Equal, in time that depends on neither value (both are hashed first, so not even on length).
fn same(presented: &[u8], expected: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(presented), Sha256::digest(expected));
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// User name and password of `Authorization: Basic …`. Public for the fuzz targets (`fuzz/`).
pub fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// An API key: a Bearer token or a Basic password.
pub fn api_key(header: &str) -> Option<String> {
    if let Some((_, password)) = basic_credentials(header) {
        return Some(password);
    }
    let (scheme, rest) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim().to_string())
}

/// What to send (and to configure) when a request brings no usable credentials.
fn how_to_authenticate(h: &AzdoHookAuth) -> String {
    let key = "or an icahub API key of a devops identity (Bearer, or as the basic auth password)";
    match (&h.basic, &h.secret) {
        (None, None) => format!(
            "no hook credentials are configured: set ICAHUB_AZDO_HOOK_USERNAME and \
             ICAHUB_AZDO_HOOK_PASSWORD (the subscription's basic auth), or ICAHUB_AZDO_HOOK_SECRET \
             (sent in the {} header, one of the subscription's HTTP headers); {key}",
            h.header
        ),
        _ => {
            let mut ways = Vec::new();
            if h.basic.is_some() {
                ways.push(
                    "the basic auth of ICAHUB_AZDO_HOOK_USERNAME/ICAHUB_AZDO_HOOK_PASSWORD"
                        .to_string(),
                );
            }
            if h.secret.is_some() {
                ways.push(format!(
                    "the {} header with ICAHUB_AZDO_HOOK_SECRET",
                    h.header
                ));
            }
            format!("send {}, {key}", ways.join(" or "))
        }
    }
}

async fn authenticate(app: &App, headers: &HeaderMap) -> Result<Caller, ApiError> {
    if !app.config.auth_required {
        return Ok(Caller {
            name: "anonymous".into(),
            roles: Role::ALL.to_vec(),
        });
    }
    let hooks = &app.config.azdo_hooks;
    let authorization = headers
        .get(warp::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let (Some((user, password)), Some((want_user, want_password))) =
        (authorization.and_then(basic_credentials), &hooks.basic)
    {
        // `&`, not `&&`: both comparisons always run.
        if same(user.as_bytes(), want_user.as_bytes())
            & same(password.as_bytes(), want_password.expose().as_bytes())
        {
            return Ok(hook_identity());
        }
    }
    if let (Some(secret), Some(presented)) = (&hooks.secret, headers.get(hooks.header.as_str())) {
        if same(presented.as_bytes(), secret.expose().as_bytes()) {
            return Ok(hook_identity());
        }
        return Err(ApiError::Unauthorized(format!(
            "the {} header does not match ICAHUB_AZDO_HOOK_SECRET",
            hooks.header
        )));
    }
    let Some(key) = authorization.and_then(api_key) else {
        return Err(ApiError::Unauthorized(format!(
            "no credentials: {}",
            how_to_authenticate(hooks)
        )));
    };
    match app
        .authenticator
        .authenticate(app.store.as_ref(), &key)
        .await
    {
        Ok(Some(c)) if c.has(Role::Devops) || c.has(Role::Admin) => Ok(c),
        Ok(Some(c)) => Err(ApiError::Forbidden(format!(
            "{} needs the devops role to write to the run ledger",
            c.name
        ))),
        Ok(None) => Err(ApiError::Unauthorized(format!(
            "the credentials are neither the hook's nor a known API key: {}",
            how_to_authenticate(hooks)
        ))),
        Err(e) => {
            tracing::error!(error = %e, "authentication lookup failed");
            Err(ApiError::Unavailable {
                message: "cannot check the API key right now; retry".into(),
                retry_after: 5,
            })
        }
    }
}

#[tracing::instrument(skip_all, fields(route = "azdo_hooks", request_id = %ctx.request_id, caller = %caller.name))]
async fn handle(caller: Caller, ctx: RequestCtx, body: Bytes, app: Arc<App>) -> Response {
    match accept(&app, &caller, &body).await {
        Ok((status, mut answer)) => {
            answer["request_id"] = json!(ctx.request_id);
            json_response(status, &answer, &ctx.request_id)
        }
        Err(e) => {
            tracing::info!(status = e.status().as_u16(), error = %e, "refused");
            e.into_response(&ctx.request_id)
        }
    }
}

async fn accept(app: &App, caller: &Caller, body: &[u8]) -> Result<(StatusCode, Value), ApiError> {
    let (v, _) = decode_json(body)?;
    let now = app.clock.now();
    match azdo::parse(&v, now).map_err(ApiError::from)? {
        Parsed::Ignored { event_type, reason } => {
            tracing::info!(event_type = %clip(&event_type), reason = %reason, "service hook ignored");
            Ok((
                StatusCode::OK,
                json!({"status": "ignored", "event_type": clip(&event_type), "reason": reason}),
            ))
        }
        Parsed::Record(hook) => record(app, caller, &hook, now).await,
    }
}

fn clip(s: &str) -> String {
    crate::domain::json::truncate(s, 200)
}

/// Start the run if the ledger has not seen it, append the event once, finish a completed run.
async fn record(
    app: &App,
    caller: &Caller,
    hook: &Hook,
    now: DateTime<Utc>,
) -> Result<(StatusCode, Value), ApiError> {
    let ledger = super::runs::ledger(app);
    let from = format!("azdo:{}", hook.kind.ado_event_type());
    let started = ledger
        .ensure_started(caller, hook.start.clone(), &from, now)
        .await?;
    let event_type = hook.kind.ledger_event_type();
    let mut answer = json!({
        "run_id": hook.run_id,
        "event_type": event_type,
        "hook_id": hook.hook_id,
        "run_started": started,
    });
    let e = RunEventIn {
        run_id: hook.run_id.clone(),
        event_type: event_type.into(),
        event_data: hook.event_data.clone(),
    };
    let status = match ledger.event_once(caller, e, &hook.dedup_key, now).await? {
        Appended::New(event_id) => {
            answer["status"] = json!("recorded");
            answer["event_id"] = json!(event_id);
            StatusCode::CREATED
        }
        // A redelivery; it still finishes the run below if the first delivery did not get that far.
        Appended::Duplicate(event_id) => {
            answer["status"] = json!("duplicate");
            answer["event_id"] = json!(event_id);
            StatusCode::OK
        }
        Appended::Finished(run_status) => {
            answer["status"] = json!("already_finished");
            answer["run_status"] = json!(run_status.as_str());
            answer["message"] = json!(format!(
                "run {} is already finished ({}); a finished run is immutable, so nothing was recorded",
                hook.run_id,
                run_status.as_str()
            ));
            tracing::info!(run_id = %hook.run_id, event_type, "service hook for a finished run: nothing recorded");
            return Ok((StatusCode::OK, answer));
        }
    };
    if let Some(c) = &hook.completion {
        let f = RunFinish {
            run_id: hook.run_id.clone(),
            status: c.status,
            end_time: c.end_time,
        };
        match ledger.finish_if_open(caller, f, now).await? {
            Closed::Now(rec) => {
                answer["finished"] = json!({
                    "status": rec.status.as_str(),
                    "end_time": rec.end_time,
                    "audit_hash": rec.audit_hash,
                });
            }
            Closed::Already(rec) => answer["run_status"] = json!(rec.status.as_str()),
        }
    }
    if let Some(result) = &hook.unmapped_result {
        answer["note"] = json!(format!(
            "the run completed with result {:?}, which the ledger does not map to success, \
             failed or cancelled; it stays open",
            clip(result)
        ));
    }
    tracing::info!(run_id = %hook.run_id, event_type, outcome = answer["status"].as_str().unwrap_or(""), run_started = started, "service hook");
    Ok((status, answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_headers() {
        // "ado:s3cret"
        assert_eq!(
            basic_credentials("Basic YWRvOnMzY3JldA==").unwrap(),
            ("ado".to_string(), "s3cret".to_string())
        );
        assert_eq!(basic_credentials("Bearer x"), None);
        assert_eq!(basic_credentials("Basic !!"), None);
        assert_eq!(api_key("Basic YWRvOnMzY3JldA==").as_deref(), Some("s3cret"));
        assert_eq!(api_key("bearer icak_1").as_deref(), Some("icak_1"));
        assert_eq!(api_key("Digest x"), None);
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }

    #[test]
    fn refusals_say_what_to_configure() {
        let m = how_to_authenticate(&AzdoHookAuth::default());
        assert!(m.contains("ICAHUB_AZDO_HOOK_USERNAME") && m.contains("ICAHUB_AZDO_HOOK_SECRET"));
        let h = AzdoHookAuth {
            secret: Some(crate::config::Secret::new("s")),
            ..AzdoHookAuth::default()
        };
        assert!(how_to_authenticate(&h).contains("x-icahub-hook-secret header"));
    }
}
