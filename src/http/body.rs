//! Request and response bodies shared by the routes: who sent a request ([`RequestCtx`]), the one
//! JSON decoder every route with a JSON body uses ([`decode_json`]), and the 202 body of the alert
//! routes ([`accepted_body`]).

use crate::domain::json::StrictError;
use crate::error::ApiError;
use crate::services::ingest::Origin;
use crate::storage::{Delivery, EventOutcome};
use serde_json::Value;

/// Who sent a request, for the record.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub request_id: String,
    pub invocation_id: Option<String>,
}

impl RequestCtx {
    /// The request's ids, as the ingest service keeps them with a delivery.
    pub fn origin(&self) -> Origin<'_> {
        Origin {
            request_id: &self.request_id,
            invocation_id: self.invocation_id.as_deref(),
        }
    }
}

/// Turn the body into JSON, with an error that says what is wrong and where: every route that
/// takes a JSON body parses it here, so a key twice in one object is a 400 `duplicate_key`
/// naming its path on all of them ([`crate::domain::json::parse_strict`]).
pub fn decode_json(body: &[u8]) -> Result<(Value, &str), ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request(
            Some("$".into()),
            "the request body is empty; expected a JSON object",
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::bad_request(
            Some("$".into()),
            format!(
                "the request body is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ),
        )
    })?;
    let value: Value = crate::domain::json::parse_strict(text).map_err(|e| match e {
        StrictError::Duplicate { ref path, .. } => ApiError::BadRequest {
            code: "duplicate_key",
            message: e.to_string(),
            field: Some(path.clone()),
        },
        StrictError::Syntax(e) => {
            let what = match e.classify() {
                serde_json::error::Category::Eof => "the JSON ends early (truncated body?)",
                _ => "the body is not valid JSON",
            };
            ApiError::bad_request(
                Some("$".into()),
                format!("{what}: {e} (line {}, column {})", e.line(), e.column()),
            )
        }
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            Some("$".into()),
            "the body must be a JSON object",
        ));
    }
    Ok((value, text))
}

/// The 202 body of the alert routes: one entry per alert.
pub fn accepted_body(ctx: &RequestCtx, delivery: &Delivery, outcomes: &[EventOutcome]) -> Value {
    let events: Vec<Value> = delivery
        .alerts
        .iter()
        .map(|da| &da.alert)
        .zip(outcomes)
        .map(|(a, o)| {
            serde_json::json!({
                "event_id": o.event_id,
                "duplicate": o.duplicate,
                "incident_id": o.incident_id,
                "incident_action": o.action,
                "schema": a.schema,
                "kind": a.kind,
                "condition": a.condition,
                "severity": a.severity,
            })
        })
        .collect();
    let duplicates = outcomes.iter().filter(|o| o.duplicate).count();
    serde_json::json!({
        "status": if !outcomes.is_empty() && duplicates == outcomes.len() { "duplicate" } else { "accepted" },
        "request_id": ctx.request_id,
        "accepted": outcomes.len() - duplicates,
        "duplicates": duplicates,
        "events": events,
    })
}
