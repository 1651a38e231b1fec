//! Approval gates: `POST /api/v1/azdev/approval` (devops or admin), `GET .../approval/{id}`,
//! `POST .../approval/{id}/sign` (approvers; the rules are in [`crate::domain::approval`]) and
//! `POST .../approval/{id}/override` (admin, emergency, with a reason).

use super::{auth, ctx, with_app, Segment};
use crate::approvals::{Origin, Signer};
use crate::auth_methods::RouteGroup;
use crate::domain::identity::Role;
use crate::error::{json_response, ApiError};
use crate::identity::Caller;
use crate::ingest::{decode_json, RequestCtx};
use crate::startup::App;
use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

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
                    let (new, v) =
                        crate::approvals::create(&app, &caller, req, Origin::default(), now)
                            .await?;
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
                let result = crate::approvals::get(&app, &id)
                    .await
                    .map(|v| (StatusCode::OK, v));
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
                    let v = crate::approvals::sign(&app, &Signer::api(&caller), &id, &input, now)
                        .await?;
                    Ok((StatusCode::OK, v))
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
                    let v = crate::approvals::emergency_override(
                        &app,
                        &caller,
                        &id,
                        reason.as_deref(),
                        now,
                    )
                    .await?;
                    Ok((StatusCode::OK, v))
                }
                .await;
                answer(result, &ctx)
            },
        )
}
