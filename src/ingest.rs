//! The path every alert takes: decode the raw body, parse it into normalized alerts, store the
//! delivery durably, and say what happened. The HTTP handlers are thin wrappers around this.

use crate::domain::alert::Source;
use crate::domain::incident::{stream_key, IncidentAction};
use crate::domain::json::StrictError;
use crate::domain::{alertmanager, azure_monitor};
use crate::error::ApiError;
use crate::startup::App;
use crate::storage::{new_event_id, Delivery, DeliveryAlert, EventOutcome, StoreError};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// Who sent a request, for the record.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub request_id: String,
    pub invocation_id: Option<String>,
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

pub fn store_error(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "storage failed");
    let message = match e {
        StoreError::Contention(_) => "too many concurrent updates of this incident; retry",
        _ => "storage is unavailable; the event was not stored, retry later",
    };
    ApiError::Unavailable {
        message: message.into(),
        retry_after: 5,
    }
}

/// Parse an Azure Monitor action-group body (any schema) into a delivery of one alert.
pub fn azure_monitor_delivery(
    ctx: &RequestCtx,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Delivery, ApiError> {
    let (value, text) = decode_json(body)?;
    let alert = azure_monitor::parse(&value, body).map_err(ApiError::from)?;
    Ok(Delivery {
        request_id: ctx.request_id.clone(),
        invocation_id: ctx.invocation_id.clone(),
        source: Source::AzureMonitor,
        received_at: now,
        raw_body: text.to_string(),
        alerts: vec![DeliveryAlert {
            event_id: new_event_id(stream_key(&alert), now),
            alert,
            raw_alert: None,
        }],
    })
}

/// Parse an Alertmanager webhook body into a delivery of its alerts.
pub fn alertmanager_delivery(
    ctx: &RequestCtx,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Delivery, ApiError> {
    let (value, text) = decode_json(body)?;
    let parsed = alertmanager::parse(&value).map_err(ApiError::from)?;
    let single = parsed.len() == 1;
    Ok(Delivery {
        request_id: ctx.request_id.clone(),
        invocation_id: ctx.invocation_id.clone(),
        source: Source::Alertmanager,
        received_at: now,
        raw_body: text.to_string(),
        alerts: parsed
            .into_iter()
            .map(|(a, raw)| DeliveryAlert {
                event_id: new_event_id(stream_key(&a), now),
                alert: a,
                // A single-alert request keeps the whole body with its one event.
                raw_alert: (!single).then_some(raw),
            })
            .collect(),
    })
}

/// Store a delivery, bounded by the configured timeout, mapping failures to 503.
pub async fn store(app: &App, delivery: &Delivery) -> Result<Vec<EventOutcome>, ApiError> {
    match tokio::time::timeout(
        app.config.store_timeout,
        app.store.ingest(delivery, &app.config.routing),
    )
    .await
    {
        Ok(Ok(outcomes)) => {
            let source = delivery.source.as_str();
            for o in outcomes.iter().filter(|o| !o.duplicate) {
                app.metrics.event_ingested(source);
                match o.action {
                    IncidentAction::Opened => app.metrics.incident_opened(source),
                    IncidentAction::Resolved => app.metrics.incident_resolved(source),
                    IncidentAction::Attached | IncidentAction::None => {}
                }
            }
            Ok(outcomes)
        }
        Ok(Err(e)) => Err(store_error(e)),
        Err(_) => Err(ApiError::Unavailable {
            message: "storage did not confirm the write in time; retry (a repeat is deduplicated)"
                .into(),
            retry_after: 5,
        }),
    }
}

/// The 202 body: one entry per alert.
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
