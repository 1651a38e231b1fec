//! `POST /api/v1/azdev/alert`: Azure Monitor action-group webhooks, every schema.

use super::ingest_route;
use crate::ingest;
use crate::startup::App;
use std::sync::Arc;
use warp::reply::Response;
use warp::{Filter, Rejection};

pub fn route(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let path = warp::path!("api" / "v1" / "azdev" / "alert").boxed();
    ingest_route(app, path, "alert", ingest::azure_monitor_delivery)
}
