//! `/` (the Functions host's readiness probe: any answer counts), `GET /api/healthz` (alive),
//! `GET /api/readyz` (storage reachable, sinks' last results) and `GET /api/metrics`.

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

/// How long readiness waits for the store before calling it unreachable.
pub const READY_STORE_BUDGET: std::time::Duration = std::time::Duration::from_millis(1500);

/// Readiness: the store answers a ping within [`READY_STORE_BUDGET`] (else 503), and each
/// configured sink's last delivery outcome in this process. A failing sink does not make the hub
/// unready: it still takes events in and keeps them for redelivery.
pub fn readyz(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "readyz")
        .and(warp::get())
        .and(with_app(app))
        .then(|app: Arc<App>| async move {
            let started = std::time::Instant::now();
            let storage = match tokio::time::timeout(READY_STORE_BUDGET, app.store.ping()).await {
                Ok(Ok(())) => json!({"backend": app.store.backend(), "ok": true,
                    "latency_ms": started.elapsed().as_millis() as u64}),
                Ok(Err(e)) => json!({"backend": app.store.backend(), "ok": false,
                    "error": e.to_string()}),
                Err(_) => json!({"backend": app.store.backend(), "ok": false,
                    "error": format!("no answer within {} ms", READY_STORE_BUDGET.as_millis())}),
            };
            let ok = storage["ok"] == json!(true);
            let last = app.metrics.last_results();
            let mut sinks = serde_json::Map::new();
            for sink in app.dispatcher.configured_sinks() {
                let s = sink.as_str();
                sinks.insert(
                    s.to_string(),
                    match last.get(s) {
                        Some(r) => json!({"configured": true, "last": r}),
                        None => json!({"configured": true, "last": null}),
                    },
                );
            }
            let degraded: Vec<&str> = last
                .iter()
                .filter(|(s, r)| sinks.contains_key(**s) && matches!(r.outcome, "retry" | "dead"))
                .map(|(s, _)| *s)
                .collect();
            let body = json!({
                "status": if !ok { "unavailable" } else if degraded.is_empty() { "ready" } else { "degraded" },
                "storage": storage,
                "sinks": sinks,
                "failing_sinks": degraded,
                "version": env!("CARGO_PKG_VERSION"),
            });
            let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            let mut resp = json_response(code, &body, "-");
            if !ok {
                resp.headers_mut().insert(
                    warp::http::header::RETRY_AFTER,
                    warp::http::HeaderValue::from_static("5"),
                );
            }
            resp
        })
}

/// `GET /api/metrics`: the Prometheus text format (see [`crate::metrics`]).
pub fn metrics(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "metrics")
        .and(warp::get())
        .and(with_app(app))
        .then(|app: Arc<App>| async move {
            let text = app
                .metrics
                .render(app.store.clone(), app.clock.clone())
                .await;
            let mut resp = Response::new(text.into());
            resp.headers_mut().insert(
                warp::http::header::CONTENT_TYPE,
                warp::http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            resp
        })
}
