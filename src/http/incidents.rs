//! The incident read API: `GET /api/v1/azdev/incident/{id}` and
//! `GET /api/v1/azdev/incidents?status=&severity=&since=&limit=`.

use super::body::RequestCtx;
use super::{ctx, with_app, Segment};
use crate::domain::alert::Severity;
use crate::domain::incident::IncidentStatus;
use crate::error::{json_response, ApiError};
use crate::services::ServiceError;
use crate::startup::App;
use crate::storage::IncidentFilter;
use chrono::{DateTime, Utc};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

pub fn get_one(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "v1" / "azdev" / "incident" / Segment)
        .and(warp::get())
        .and(super::auth::caller(
            app.clone(),
            crate::auth_methods::RouteGroup::Read,
        ))
        .and(ctx())
        .and(with_app(app))
        .then(
            |Segment(id), _caller, ctx: RequestCtx, app: Arc<App>| async move {
                match app.store.incident(&id).await {
                    Ok(Some(inc)) => json_response(StatusCode::OK, &json!(inc), &ctx.request_id),
                    Ok(None) => ApiError::NotFound(format!("no incident with id {id:?}"))
                        .into_response(&ctx.request_id),
                    Err(e) => read_failed(e).into_response(&ctx.request_id),
                }
            },
        )
}

/// A failed read of the incidents (reads contend with nobody).
fn read_failed(e: crate::storage::StoreError) -> ApiError {
    ServiceError::storage("the incidents were not read")(e).into()
}

pub fn list(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "v1" / "azdev" / "incidents")
        .and(warp::get())
        .and(super::auth::caller(
            app.clone(),
            crate::auth_methods::RouteGroup::Read,
        ))
        .and(warp::query::<HashMap<String, String>>())
        .and(ctx())
        .and(with_app(app))
        .then(
            |_caller, q: HashMap<String, String>, ctx: RequestCtx, app: Arc<App>| async move {
                let filter = match parse_filter(&q) {
                    Ok(f) => f,
                    Err(e) => return e.into_response(&ctx.request_id),
                };
                match app.store.incidents(&filter).await {
                    Ok(list) => json_response(
                        StatusCode::OK,
                        &json!({ "count": list.len(), "limit": filter.limit, "incidents": list }),
                        &ctx.request_id,
                    ),
                    Err(e) => read_failed(e).into_response(&ctx.request_id),
                }
            },
        )
}

/// Query parameters to a filter; each bad value is a 400 naming the parameter.
pub fn parse_filter(q: &HashMap<String, String>) -> Result<IncidentFilter, ApiError> {
    let bad = |name: &str, msg: String| ApiError::bad_request(Some(format!("query:{name}")), msg);
    let get = |k: &str| q.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
    let status = get("status")
        .map(|s| {
            IncidentStatus::parse(s)
                .ok_or_else(|| bad("status", format!("status {s:?} must be open or resolved")))
        })
        .transpose()?;
    let severity = get("severity")
        .map(|s| {
            Severity::parse(s)
                .or_else(|| Severity::from_azure(s))
                .ok_or_else(|| {
                    bad(
                        "severity",
                        format!(
                            "severity {s:?} must be critical, high, medium, low, info or Sev0-Sev4"
                        ),
                    )
                })
        })
        .transpose()?;
    let since = get("since")
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    bad(
                        "since",
                        format!("since {s:?} must be an RFC 3339 time, e.g. 2026-01-31T00:00:00Z"),
                    )
                })
        })
        .transpose()?;
    let limit = match get("limit") {
        None => DEFAULT_LIMIT,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(bad(
                    "limit",
                    format!("limit {s:?} must be a whole number from 1 to {MAX_LIMIT}"),
                ))
            }
        },
    };
    Ok(IncidentFilter {
        status,
        severity,
        since,
        limit,
    })
}
