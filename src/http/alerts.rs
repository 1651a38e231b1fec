//! `POST /api/v1/azdev/alert`: Azure Monitor action-group webhooks, every schema.

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
    let path = warp::path!("api" / "v1" / "azdev" / "alert").boxed();
    ingest_route(app, path, "alert", delivery)
}

/// Decode an Azure Monitor action-group body (any schema) into a delivery of one alert.
pub fn delivery(ctx: &RequestCtx, body: &[u8], now: DateTime<Utc>) -> Result<Delivery, ApiError> {
    let (value, text) = decode_json(body)?;
    Ok(ingest::azure_monitor_delivery(
        ctx.origin(),
        &value,
        text,
        now,
    )?)
}
