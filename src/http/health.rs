//! `/` (the Functions host's readiness probe: any answer counts) and `GET /api/healthz`.

use super::with_app;
use crate::error::json_response;
use crate::startup::App;
use serde_json::json;
use std::sync::Arc;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

/// Any method on `/` answers 200: the host only needs a response to know we are up.
pub fn readiness() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path::end().map(|| json_response(StatusCode::OK, &json!({"status": "ok"}), "-"))
}

/// Liveness: the process answers. Cheap, never touches storage.
pub fn healthz(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "healthz")
        .and(warp::get())
        .and(with_app(app))
        .map(|app: Arc<App>| {
            json_response(
                StatusCode::OK,
                &json!({"status": "ok", "storage": app.store.backend(), "version": env!("CARGO_PKG_VERSION")}),
                "-",
            )
        })
}
