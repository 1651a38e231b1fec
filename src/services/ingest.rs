//! The path every alert takes once its body is JSON: parse it into normalized alerts, store the
//! delivery durably, count it and wake the dispatcher for the streams that got outbox rows.
//!
//! Decoding the request body and building the 202 body are HTTP's job ([`crate::http::body`]);
//! this module answers domain types ([`Delivery`], [`EventOutcome`]) or a [`ServiceError`].

use super::{Deps, ServiceError};
use crate::domain::alert::Source;
use crate::domain::incident::{stream_key, IncidentAction};
use crate::domain::routing::Routing;
use crate::domain::{alertmanager, azure_monitor};
use crate::storage::{new_event_id, Delivery, DeliveryAlert, EventOutcome, StoreError};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::time::Duration;

/// Which request brought a delivery, kept with it for the record.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub request_id: &'a str,
    pub invocation_id: Option<&'a str>,
}

/// An Azure Monitor action-group body (any schema), already JSON (`value`, from the text
/// `raw_body`), as a delivery of one alert.
pub fn azure_monitor_delivery(
    origin: Origin<'_>,
    value: &Value,
    raw_body: &str,
    now: DateTime<Utc>,
) -> Result<Delivery, ServiceError> {
    let alert = azure_monitor::parse(value, raw_body.as_bytes())?;
    Ok(Delivery {
        request_id: origin.request_id.to_string(),
        invocation_id: origin.invocation_id.map(str::to_string),
        source: Source::AzureMonitor,
        received_at: now,
        raw_body: raw_body.to_string(),
        alerts: vec![DeliveryAlert {
            event_id: new_event_id(stream_key(&alert), now),
            alert,
            raw_alert: None,
        }],
    })
}

/// An Alertmanager webhook body, already JSON (`value`, from the text `raw_body`), as a delivery
/// of its alerts.
pub fn alertmanager_delivery(
    origin: Origin<'_>,
    value: &Value,
    raw_body: &str,
    now: DateTime<Utc>,
) -> Result<Delivery, ServiceError> {
    let parsed = alertmanager::parse(value)?;
    let single = parsed.len() == 1;
    Ok(Delivery {
        request_id: origin.request_id.to_string(),
        invocation_id: origin.invocation_id.map(str::to_string),
        source: Source::Alertmanager,
        received_at: now,
        raw_body: raw_body.to_string(),
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

/// A failed ingest write. Contention is on the incident the alert opens or attaches to; it keeps
/// the 5 s `Retry-After` alert senders have always been given.
fn store_failed(e: StoreError) -> ServiceError {
    match e {
        // Logged where it becomes an answer (`From<ServiceError> for ApiError`).
        StoreError::Contention(_) => ServiceError::Busy {
            message: "too many concurrent updates of this incident; retry".into(),
            retry_after: 5,
        },
        e => ServiceError::storage("the event was not stored")(e),
    }
}

/// Store a delivery, routed by `routing`, within `timeout` (a repeat is deduplicated, so a
/// sender may retry a timed-out write). New events are counted, and the dispatcher is woken for
/// every stream that got outbox rows (the fast path; the caller's answer does not wait for it).
pub async fn store(
    deps: &Deps,
    routing: &Routing,
    timeout: Duration,
    delivery: &Delivery,
) -> Result<Vec<EventOutcome>, ServiceError> {
    let outcomes =
        match tokio::time::timeout(timeout, deps.store.ingest(delivery, routing)).await {
            Ok(Ok(outcomes)) => outcomes,
            Ok(Err(e)) => return Err(store_failed(e)),
            Err(_) => return Err(ServiceError::Unavailable {
                message:
                    "storage did not confirm the write in time; retry (a repeat is deduplicated)"
                        .into(),
                retry_after: 5,
            }),
        };
    let source = delivery.source.as_str();
    for o in outcomes.iter().filter(|o| !o.duplicate) {
        deps.metrics.event_ingested(source);
        match o.action {
            IncidentAction::Opened => deps.metrics.incident_opened(source),
            IncidentAction::Resolved => deps.metrics.incident_resolved(source),
            IncidentAction::Attached | IncidentAction::None => {}
        }
    }
    for (da, o) in delivery.alerts.iter().zip(&outcomes) {
        if o.outbox_rows > 0 {
            deps.notify.kick(stream_key(&da.alert).to_string());
        }
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contention_names_the_incident_and_other_failures_what_was_not_done() {
        match store_failed(StoreError::Contention("expectation failed".into())) {
            ServiceError::Busy {
                message,
                retry_after,
            } => {
                assert!(message.contains("this incident"), "{message}");
                assert_eq!(retry_after, 5);
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        assert!(matches!(
            store_failed(StoreError::Corrupt("x".into())),
            ServiceError::Storage {
                what: "the event was not stored",
                ..
            }
        ));
    }
}
