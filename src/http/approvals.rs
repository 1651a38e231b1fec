//! Approval gates: `POST /api/v1/azdev/approval` (devops or admin), `GET .../approval/{id}`,
//! `POST .../approval/{id}/sign` (approvers; the rules are in [`crate::domain::approval`]) and
//! `POST .../approval/{id}/override` (admin, emergency, with a reason). The work is
//! [`crate::services::approvals`]; the JSON answers are written here.

use super::{auth, ctx, with_app, Segment};
use crate::auth_methods::RouteGroup;
use crate::domain::identity::Role;
use crate::error::{json_response, ApiError};
use crate::identity::Caller;
use crate::ingest::{decode_json, RequestCtx};
use crate::services::approvals::{view, Approvers, Found, Origin, Overridden, Signed, Signer};
use crate::startup::App;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::sync::Arc;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

/// Who may sign, as the answers show it.
fn approvers_json(a: &Approvers) -> Value {
    json!({
        "technical": a.technical,
        "business": a.business,
        "business_role": a.business_role,
    })
}

/// An approval as `GET` answers it: its [`view`] and who may sign it.
fn found_json(found: &Found, now: DateTime<Utc>) -> Value {
    let mut v = view(&found.approval, now);
    v["approvers"] = approvers_json(&found.approvers);
    v
}

/// The answer to a signature.
fn signed_json(id: &str, s: &Signed) -> Value {
    let sig = &s.signature;
    json!({
        "success": true, "approval_id": id, "signature_hash": sig.signature_hash,
        "status": s.approval.status, "approval_type": sig.approval_type, "decision": sig.decision,
        "signed_by": sig.by, "signed_at": sig.at,
    })
}

/// The answer to either step of an emergency override.
fn overridden_json(id: &str, o: &Overridden) -> Value {
    match o {
        Overridden::Requested {
            approval,
            request: r,
        } => {
            json!({"success": true, "approval_id": id, "status": approval.status,
                   "requested_by": r.by, "expires_at": r.expires_at,
                   "previous_status": r.previous_status, "signature_hash": r.signature_hash,
                   "next": "a different person holding override_approver confirms with POST …/override and a reason"})
        }
        Overridden::Confirmed {
            approval,
            record: o,
        } => {
            json!({"success": true, "approval_id": id, "status": approval.status, "exception_id": o.exception_id,
                   "requested_by": o.by, "confirmed_by": o.confirmed_by,
                   "signature_hash": o.signature_hash, "previous_status": o.previous_status})
        }
    }
}

fn answer(result: Result<(StatusCode, Value), ApiError>, ctx: &RequestCtx) -> Response {
    match result {
        Ok((status, v)) => json_response(status, &v, &ctx.request_id),
        Err(e) => {
            tracing::info!(status = e.status().as_u16(), error = %e, "approval request refused");
            e.into_response(&ctx.request_id)
        }
    }
}

/// `POST /api/v1/azdev/approval`.
pub fn create(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "v1" / "azdev" / "approval")
        .and(warp::post())
        .and(auth::caller_and_body(
            app.clone(),
            RouteGroup::Approvals,
            auth::Body::Json,
        ))
        .and(ctx())
        .and(with_app(app))
        .then(
            |caller: Caller, body: Bytes, ctx: RequestCtx, app: Arc<App>| async move {
                let result = async {
                    if !caller.has(Role::Devops) && !caller.has(Role::Admin) {
                        return Err(ApiError::Forbidden(format!(
                            "{} needs the devops role to request an approval",
                            caller.name
                        )));
                    }
                    let (v, _) = decode_json(&body)?;
                    let req =
                        crate::domain::approval::parse_request(&v, &app.config.approvals.policy)
                            .map_err(ApiError::from)?;
                    let now = app.clock.now();
                    let (new, found) = app
                        .approvals
                        .create(&caller, req, Origin::default(), now)
                        .await?;
                    let mut v = found_json(&found, now);
                    v["success"] = json!(true);
                    Ok((
                        if new {
                            StatusCode::CREATED
                        } else {
                            StatusCode::OK
                        },
                        v,
                    ))
                }
                .await;
                answer(result, &ctx)
            },
        )
}

/// `GET /api/v1/azdev/approval/{id}`.
pub fn get(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "v1" / "azdev" / "approval" / Segment)
        .and(warp::get())
        .and(auth::caller(app.clone(), RouteGroup::Read))
        .and(ctx())
        .and(with_app(app))
        .then(
            |Segment(id), _caller: Caller, ctx: RequestCtx, app: Arc<App>| async move {
                let now = app.clock.now();
                let result = app
                    .approvals
                    .get(&id)
                    .await
                    .map(|found| (StatusCode::OK, found_json(&found, now)))
                    .map_err(ApiError::from);
                answer(result, &ctx)
            },
        )
}

/// `POST /api/v1/azdev/approval/{id}/sign`.
pub fn sign(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "v1" / "azdev" / "approval" / Segment / "sign")
        .and(warp::post())
        .and(auth::caller_and_body(
            app.clone(),
            RouteGroup::Approvals,
            auth::Body::Json,
        ))
        .and(ctx())
        .and(with_app(app))
        .then(
            |Segment(id), caller: Caller, body: Bytes, ctx: RequestCtx, app: Arc<App>| async move {
                let result = async {
                    let (v, _) = decode_json(&body)?;
                    let input = crate::domain::approval::parse_sign(&v).map_err(ApiError::from)?;
                    let now = app.clock.now();
                    let signed = app
                        .approvals
                        .sign(&Signer::api(&caller), &id, &input, now)
                        .await?;
                    Ok((StatusCode::OK, signed_json(&id, &signed)))
                }
                .await;
                answer(result, &ctx)
            },
        )
}

/// `POST /api/v1/azdev/approval/{id}/override`: `{"reason": "..."}`.
pub fn emergency_override(
    app: Arc<App>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "v1" / "azdev" / "approval" / Segment / "override")
        .and(warp::post())
        .and(auth::caller_and_body(
            app.clone(),
            RouteGroup::Approvals,
            auth::Body::Json,
        ))
        .and(ctx())
        .and(with_app(app))
        .then(
            |Segment(id), caller: Caller, body: Bytes, ctx: RequestCtx, app: Arc<App>| async move {
                let result = async {
                    let (v, _) = decode_json(&body)?;
                    let reason = match v.get("reason") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(_) => {
                            return Err(ApiError::bad_request(
                                Some("reason".into()),
                                "reason must be a string",
                            ))
                        }
                    };
                    let now = app.clock.now();
                    let o = app
                        .approvals
                        .emergency_override(&caller, &id, reason.as_deref(), now)
                        .await?;
                    Ok((StatusCode::OK, overridden_json(&id, &o)))
                }
                .await;
                answer(result, &ctx)
            },
        )
}
