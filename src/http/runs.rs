//! The run ledger API: `POST /api/v1/azdev/run/start|event|finish` and
//! `GET /api/v1/azdev/run/{run_id}`. Writes need the devops (or admin) role. The ledger itself is
//! [`crate::services::runs`]; this module decodes the requests and builds the answers.

use super::body::{decode_json, RequestCtx};
use super::{auth, ctx, with_app, Segment};
use crate::auth_methods::RouteGroup;
use crate::domain::identity::Role;
use crate::domain::run::{FinishRecord, RunRecord};
use crate::error::{json_response, ApiError};
use crate::identity::Caller;
use crate::services::runs::{self, EventRecorded, Ledger, RunWithEvents};
use crate::services::ServiceError;
use crate::startup::App;
use crate::storage::StoreError;
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

#[derive(Clone, Copy)]
enum Op {
    Start,
    Event,
    Finish,
}

fn write_route(
    app: Arc<App>,
    name: &'static str,
    op: Op,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("api")
        .and(warp::path("v1"))
        .and(warp::path("azdev"))
        .and(warp::path("run"))
        .and(warp::path(name))
        .and(warp::path::end())
        .and(warp::post())
        .and(auth::caller_and_body(
            app.clone(),
            RouteGroup::Ledger,
            auth::Body::Json,
        ))
        .and(ctx())
        .and(with_app(app))
        .then(
            move |caller: Caller, body: Bytes, ctx: RequestCtx, app: Arc<App>| async move {
                match handle(op, &caller, &body, &app).await {
                    Ok((status, v)) => json_response(status, &v, &ctx.request_id),
                    Err(e) => e.into_response(&ctx.request_id),
                }
            },
        )
}

async fn handle(
    op: Op,
    caller: &Caller,
    body: &[u8],
    app: &App,
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    if !caller.has(Role::Devops) && !caller.has(Role::Admin) {
        return Err(ApiError::Forbidden(format!(
            "{} needs the devops role to write to the run ledger",
            caller.name
        )));
    }
    let (v, _) = decode_json(body)?;
    let now = app.clock.now();
    let ledger = ledger(app);
    match op {
        Op::Start => {
            let s = crate::domain::run::parse_start(&v).map_err(ApiError::from)?;
            let (new, record) = ledger.start(caller, s, now).await?;
            Ok((
                if new {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                start_answer(&record),
            ))
        }
        Op::Event => {
            let e = crate::domain::run::parse_event(&v).map_err(ApiError::from)?;
            let recorded = ledger.event(caller, e, now).await?;
            Ok((StatusCode::CREATED, event_answer(recorded)))
        }
        Op::Finish => {
            let f = crate::domain::run::parse_finish(&v).map_err(ApiError::from)?;
            let record = ledger.finish(caller, f, now).await?;
            Ok((StatusCode::OK, finish_answer(&record)))
        }
    }
}

/// The run ledger over this app's store, routing and approvals.
pub(crate) fn ledger(app: &App) -> Ledger<'_> {
    Ledger {
        deps: app.deps(),
        routing: &app.config.routing,
        store_timeout: app.config.store_timeout,
        on_finish: &app.approvals,
    }
}

/// `run/start`'s answer (201 new, 200 the same start again).
fn start_answer(r: &RunRecord) -> Value {
    json!({"success": true, "run_id": r.start.run_id, "record_id": r.record_id})
}

/// `run/event`'s answer; a rollback's names its incident, or says it could not be opened.
fn event_answer(recorded: EventRecorded) -> Value {
    let mut answer = json!({"success": true, "event_id": recorded.event_id});
    match recorded.rollback {
        None => {}
        Some(Ok(id)) => answer["incident_id"] = json!(id),
        Some(Err(_)) => {
            answer["incident_error"] = json!("the rollback is recorded but its incident could not be opened; it will be on the next rollback");
        }
    }
    answer
}

/// `run/finish`'s answer: the same for the first finish and its repeats.
fn finish_answer(f: &FinishRecord) -> Value {
    json!({"success": true, "audit_hash": f.audit_hash})
}

/// `GET run/{run_id}`'s answer: the run's record with its events.
fn run_answer(r: RunWithEvents) -> Result<Value, ApiError> {
    let mut v = serde_json::to_value(&r.run).map_err(|e| {
        ServiceError::storage("the run was not read")(StoreError::Corrupt(format!(
            "run record: {e}"
        )))
    })?;
    v["events"] = json!(r.events);
    Ok(v)
}

pub fn start(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    write_route(app, "start", Op::Start)
}

pub fn event(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    write_route(app, "event", Op::Event)
}

pub fn finish(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    write_route(app, "finish", Op::Finish)
}

pub fn get(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "v1" / "azdev" / "run" / Segment)
        .and(warp::get())
        .and(auth::caller(app.clone(), RouteGroup::Read))
        .and(ctx())
        .and(with_app(app))
        .then(
            |Segment(run_id), _caller: Caller, ctx: RequestCtx, app: Arc<App>| async move {
                let answer = runs::get(app.store.as_ref(), &run_id)
                    .await
                    .map_err(ApiError::from)
                    .and_then(run_answer);
                match answer {
                    Ok(v) => json_response(StatusCode::OK, &v, &ctx.request_id),
                    Err(e) => e.into_response(&ctx.request_id),
                }
            },
        )
}
