//! `POST /dispatch`: the `dispatch` timer function (every minute, functions/dispatch). The host
//! sends the Data/Metadata envelope to `/<FunctionName>` (no `/api`); we run the periodic job
//! ([`crate::jobs::tick`]: audit checkpoint, approval sweep, outbox drain) and answer the host's
//! response envelope with what it did. Any 2xx with that shape is success to the host.

use super::with_app;
use crate::domain::json::StrictError;
use crate::error::{json_response, ApiError};
use crate::functions_host::{InvocationRequest, InvocationResponse};
use crate::ingest::RequestCtx;
use crate::startup::App;
use bytes::Bytes;
use std::sync::Arc;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

/// The largest invocation envelope taken (a timer's is a few hundred bytes); larger is 413.
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;

/// A drain stops taking new rows after this, well inside the one-minute schedule.
pub use crate::jobs::DRAIN_BUDGET;

pub fn route(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("dispatch")
        .and(warp::post())
        .and(super::any_body(MAX_ENVELOPE_BYTES))
        .and(super::ctx())
        .and(with_app(app))
        .then(handle)
}

async fn handle(body: Bytes, ctx: RequestCtx, app: Arc<App>) -> Response {
    let request_id = ctx.request_id;
    let envelope = match InvocationRequest::from_body(&body) {
        Ok(e) => e,
        Err(e) => {
            let message = format!("not a Functions host invocation envelope: {e}");
            return match e {
                StrictError::Duplicate { path, .. } => ApiError::BadRequest {
                    code: "duplicate_key",
                    field: Some(path),
                    message,
                },
                StrictError::Syntax(_) => ApiError::bad_request(Some("$".into()), message),
            }
            .into_response(&request_id);
        }
    };
    let past_due = envelope.timer().is_some_and(|t| t.is_past_due);
    let tick = crate::jobs::tick(&app).await;
    let sweep = match tick.sweep {
        Ok(r) => format!(
            "approvals: checked {}, expired {}, reminded {}",
            r.checked, r.expired, r.reminded
        ),
        Err(e) => format!("approvals: sweep failed ({e})"),
    };
    match tick.drain {
        Ok(report) => {
            let line = format!(
                "outbox drain: delivered {}, retried {}, dead {}, deferred {}, skipped {}{}",
                report.delivered,
                report.retried,
                report.dead,
                report.deferred,
                report.skipped,
                if past_due {
                    " (timer was past due)"
                } else {
                    ""
                }
            );
            // No `$return` binding: ReturnValue stays null (the host would try to base64-decode a
            // string there).
            let resp = InvocationResponse {
                logs: [
                    Some(sweep),
                    Some(line),
                    tick.checkpoint.map(|k| format!("audit checkpoint {k}")),
                ]
                .into_iter()
                .flatten()
                .collect(),
                ..Default::default()
            };
            json_response(
                StatusCode::OK,
                &serde_json::to_value(resp).unwrap_or_default(),
                &request_id,
            )
        }
        // A failed invocation is logged by the host and retried on the next tick.
        Err(e) => crate::error::ApiError::from(crate::services::ServiceError::storage(
            "the outbox was not drained",
        )(e))
        .into_response(&request_id),
    }
}
