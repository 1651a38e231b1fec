//! `POST /api/v1/alertmanager`: Prometheus Alertmanager webhooks (version 4), many alerts a request.

use super::{accept, ctx, json_body, with_app};
use crate::ingest;
use crate::startup::App;
use std::sync::Arc;
use warp::reply::Response;
use warp::{Filter, Rejection};

pub fn route(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "v1" / "alertmanager")
        .and(warp::post())
        .and(super::auth::caller(app.clone()))
        .and(ctx())
        .and(json_body(app.config.max_body_bytes))
        .and(with_app(app))
        .then(|caller, ctx, body, app| {
            accept(
                caller,
                "alertmanager",
                ctx,
                body,
                app,
                ingest::alertmanager_delivery,
            )
        })
}
