//! The run ledger API: `POST /api/v1/azdev/run/start|event|finish` and
//! `GET /api/v1/azdev/run/{run_id}`. Writes need the devops (or admin) role.

use super::{auth, ctx, with_app, Segment};
use crate::auth_methods::RouteGroup;
use crate::domain::identity::Role;
use crate::error::{json_response, ApiError};
use crate::identity::Caller;
use crate::ingest::{decode_json, RequestCtx};
use crate::startup::App;
use bytes::Bytes;
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
    match op {
        Op::Start => {
            let s = crate::domain::run::parse_start(&v).map_err(ApiError::from)?;
            let (new, answer) = crate::runs::start(app, caller, s, now).await?;
            Ok((
                if new {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                answer,
            ))
        }
        Op::Event => {
            let e = crate::domain::run::parse_event(&v).map_err(ApiError::from)?;
            Ok((
                StatusCode::CREATED,
                crate::runs::event(app, caller, e, now).await?,
            ))
        }
        Op::Finish => {
            let f = crate::domain::run::parse_finish(&v).map_err(ApiError::from)?;
            Ok((
                StatusCode::OK,
                crate::runs::finish(app, caller, f, now).await?,
            ))
        }
    }
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
                match crate::runs::get(&app, &run_id).await {
                    Ok(v) => json_response(StatusCode::OK, &v, &ctx.request_id),
                    Err(e) => e.into_response(&ctx.request_id),
                }
            },
        )
}
