//! `POST /api/v1/alertmanager`: Prometheus Alertmanager webhooks (version 4), many alerts a request.

use super::body::{decode_json, RequestCtx};
use super::ingest_route;
use crate::error::ApiError;
use crate::services::ingest;
use crate::startup::App;
use crate::storage::Delivery;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use warp::reply::Response;
use warp::{Filter, Rejection};

pub fn route(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let path = warp::path!("api" / "v1" / "alertmanager").boxed();
    ingest_route(app, path, "alertmanager", delivery)
}

/// Decode an Alertmanager webhook body into a delivery of its alerts.
pub fn delivery(ctx: &RequestCtx, body: &[u8], now: DateTime<Utc>) -> Result<Delivery, ApiError> {
    let (value, text) = decode_json(body)?;
    Ok(ingest::alertmanager_delivery(
        ctx.origin(),
        &value,
        text,
        now,
    )?)
}
