//! `POST /api/v1/azdo/check`: the Azure Pipelines "Invoke Azure Function" check in callback mode
//! (docs/protocols.md §4). The check sends its callback details as headers (`PlanUrl`, `ProjectId`,
//! `HubName`, `PlanId`, `JobId`, `TimelineId`, `TaskInstanceId`, `AuthToken`, optionally
//! `BuildId`) and the approval request as its body; we create the approval (or find the run's
//! open one) and answer **200** at once. The decision reaches Azure DevOps later, as a
//! `TaskCompleted` event through the outbox ([`crate::sinks::azure_devops`]).
//!
//! Nothing on this path calls out: Azure DevOps wants its answer within 3 seconds, and the create
//! is a few store round trips. The function key the check puts in `?code=` is the Functions
//! host's business; the query string is ignored here (the check's URL may end in `&`).

use super::{auth, ctx, with_app};
use crate::auth_methods::RouteGroup;
use crate::domain::alert::PayloadError;
use crate::domain::approval::{ApprovalRequest, Policy};
use crate::domain::check::{CheckCallback, PlanHosts};
use crate::domain::identity::Role;
use crate::error::{json_response, ApiError};
use crate::identity::Caller;
use crate::ingest::{decode_json, RequestCtx};
use crate::services::approvals::{view, Origin};
use crate::sinks::azure_devops::{events_url, DEFAULT_API_VERSION};
use crate::sinks::SendError;
use crate::startup::App;
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

pub fn route(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "v1" / "azdo" / "check")
        .and(warp::post())
        .and(auth::caller_and_body(
            app.clone(),
            RouteGroup::Approvals,
            auth::Body::OptionalJson,
        ))
        .and(ctx())
        .and(warp::header::headers_cloned())
        .and(with_app(app))
        .then(handle)
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name.to_ascii_lowercase().as_str())
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// The approval request: the body's fields, `run_id` defaulting to `BuildId` (the id the hook
/// script sends as `$BUILD_BUILDID`), else `PlanId`.
fn request_body(body: &[u8], check: &CheckCallback) -> Result<Value, ApiError> {
    let mut v = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        decode_json(body)?.0
    };
    let has_run_id = match v.get("run_id") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(_) => true, // parse_request names the wrong type
    };
    if !has_run_id {
        v["run_id"] = json!(check.build_id.as_deref().unwrap_or(&check.plan_id));
    }
    Ok(v)
}

/// Everything this route reads from the request, before any store call: the check's headers
/// (validated against `hosts`) and the approval request in the body. Pure, so it can be fuzzed
/// and tested on its own (`fuzz/`, `tests/fuzz_regressions.rs`).
pub fn parse_check(
    headers: &HeaderMap,
    body: &[u8],
    hosts: &PlanHosts,
    policy: &Policy,
) -> Result<(CheckCallback, ApprovalRequest), ApiError> {
    let check =
        CheckCallback::from_headers(|name| header(headers, name), hosts).map_err(ApiError::from)?;
    // The decision goes back to this URL: a check we could never answer is refused now rather
    // than left waiting for its timeout (a host no URL parser accepts, such as `xn--.…`).
    if let Err(e) = events_url(&check, DEFAULT_API_VERSION, hosts) {
        let why = match e {
            SendError::Permanent { error } => error,
            other => other.to_string(),
        };
        return Err(ApiError::from(PayloadError::new(
            "header:PlanUrl",
            format!("PlanUrl cannot be called back: {why}"),
        )));
    }
    let v = request_body(body, &check)?;
    let req = crate::domain::approval::parse_request(&v, policy).map_err(ApiError::from)?;
    Ok((check, req))
}

#[tracing::instrument(skip_all, fields(route = "azdo_check", request_id = %ctx.request_id, caller = %caller.name))]
async fn handle(
    caller: Caller,
    body: Bytes,
    ctx: RequestCtx,
    headers: HeaderMap,
    app: Arc<App>,
) -> Response {
    let started = std::time::Instant::now();
    let result = async {
        if !caller.has(Role::Devops) && !caller.has(Role::Admin) {
            return Err(ApiError::Forbidden(format!(
                "{} needs the devops role to request an approval",
                caller.name
            )));
        }
        let (check, req) = parse_check(
            &headers,
            &body,
            &app.config.azdo_plan_hosts,
            &app.config.approvals.policy,
        )?;
        let orgs = &app.config.azdo_organizations;
        let org = check.organization();
        if !orgs.allows(&org) {
            return Err(ApiError::Forbidden(if orgs.is_empty() {
                format!("this hub answers no Azure DevOps organization's checks: set ICAHUB_AZDO_ORGANIZATIONS (the check came from {org:?})")
            } else {
                format!(
                    "the check came from the Azure DevOps organization {org:?}, which ICAHUB_AZDO_ORGANIZATIONS ({}) does not list",
                    orgs.list()
                )
            }));
        }
        let now = app.clock.now();
        let origin = Origin {
            source: Some("azdo_check".into()),
            check: Some(check.clone()),
        };
        let (created, found) = app.approvals.create(&caller, req, origin, now).await?;
        let view = view(&found.approval, now);
        let id = view["approval_id"].as_str().unwrap_or_default().to_string();
        let (status, expires_at, reason) = if created {
            (
                view["status"].clone(),
                view["expires_at"].clone(),
                view["reason"].clone(),
            )
        } else {
            // The run already has a request for this target: it answers this check from now on.
            let a = app.approvals.attach_check(&id, &check, now).await?;
            (json!(a.status), json!(a.expires_at), json!(a.reason))
        };
        Ok(json!({
            "success": true,
            "approval_id": id,
            "status": status,
            "created": created,
            "expires_at": expires_at,
            "reason": reason,
            "task_instance_id": check.task_instance_id,
        }))
    }
    .await;
    match result {
        Ok(v) => {
            tracing::info!(
                approval_id = v["approval_id"].as_str().unwrap_or_default(),
                status = v["status"].as_str().unwrap_or_default(),
                created = v["created"].as_bool().unwrap_or_default(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "check request accepted"
            );
            json_response(StatusCode::OK, &v, &ctx.request_id)
        }
        Err(e) => {
            tracing::info!(status = e.status().as_u16(), error = %e, "check request refused");
            e.into_response(&ctx.request_id)
        }
    }
}
