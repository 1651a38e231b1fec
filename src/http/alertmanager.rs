//! `POST /api/v1/alertmanager`: Prometheus Alertmanager webhooks (version 4), many alerts a request.

use super::ingest_route;
use crate::ingest;
use crate::startup::App;
use std::sync::Arc;
use warp::reply::Response;
use warp::{Filter, Rejection};

pub fn route(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let path = warp::path!("api" / "v1" / "alertmanager").boxed();
    ingest_route(app, path, "alertmanager", ingest::alertmanager_delivery)
}
