//! PagerDuty Events API v2 (docs/protocols.md §6): `incident.opened` triggers an alert,
//! `incident.resolved` resolves it. Both use the incident id as `dedup_key` and the same routing
//! key (the one named by `route.pagerduty_key`, `default` when unnamed), so PagerDuty pairs them.
//!
//! `incident.updated` is deliberately not sent: a repeat trigger with the same `dedup_key` only
//! adds noise to an alert PagerDuty already has open. It is reported delivered
//! ([`Delivered::NOT_SENT`]) without a request.
//!
//! PagerDuty accepts about 120 events a minute per routing key and answers 429 beyond that. A
//! token bucket per routing key ([`RateLimiter`], `ICAHUB_PAGERDUTY_RATE_PER_MINUTE`) keeps us
//! below it: when empty, [`SendError::Throttled`] says how long to wait and nothing is sent.

use super::{
    classify_at, from_reqwest, http_link, incident_payload, prefix, route_field, short_target,
    truncate, Delivered, SendError, SinkClient, DEFAULT_ROUTE,
};
use crate::clock::Clock;
use crate::config::Secret;
use crate::domain::alert::Severity;
use crate::domain::routing::Sink;
use crate::storage::OutboxRow;
use async_trait::async_trait;
use chrono::SecondsFormat;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::config::sinks::{PagerDutySink, DEFAULT_EVENTS_URL, DEFAULT_RATE_PER_MINUTE};
pub const MAX_SUMMARY_CHARS: usize = 1024;
pub const MAX_DEDUP_KEY_CHARS: usize = 255;
/// PagerDuty's advice after a 429 without `Retry-After`: wait 30 s.
const RATE_LIMITED_WAIT: Duration = Duration::from_secs(30);

/// PagerDuty's severity for ours.
pub fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::High => "error",
        Severity::Medium | Severity::Low => "warning",
        Severity::Info => "info",
    }
}

/// The incident's `dedup_key`: its id, or (for an id over 255 characters, which ids are not
/// today) the id's SHA-256, so that trigger and resolve always agree.
pub fn dedup_key(incident_id: &str) -> String {
    if incident_id.chars().count() <= MAX_DEDUP_KEY_CHARS {
        incident_id.to_string()
    } else {
        hex::encode(Sha256::digest(incident_id.as_bytes()))
    }
}

/// The event body for `row` sent with `routing_key`; `None` for `incident.updated` (not sent).
/// Any kind other than `incident.*` is [`SendError::Permanent`].
pub fn render(row: &OutboxRow, routing_key: &str) -> Result<Option<Value>, SendError> {
    let action = match row.kind.as_str() {
        "incident.opened" => "trigger",
        "incident.resolved" => "resolve",
        "incident.updated" => return Ok(None),
        other => {
            return Err(SendError::permanent(format!(
                "pagerduty: no event for kind {other:?}"
            )))
        }
    };
    let (inc, alert) = incident_payload(row)?;
    let mut body = Map::new();
    body.insert("routing_key".into(), json!(routing_key));
    body.insert("event_action".into(), json!(action));
    body.insert("dedup_key".into(), json!(dedup_key(&inc.id)));
    if action == "resolve" {
        return Ok(Some(Value::Object(body)));
    }

    let sev = inc.severity.as_str().to_ascii_uppercase();
    let summary = if inc.targets.is_empty() {
        format!("[{sev}] {}", inc.title)
    } else {
        format!(
            "[{sev}] {} on {}",
            inc.title,
            super::short_targets(&inc.targets)
        )
    };
    let mut payload = Map::new();
    payload.insert(
        "summary".into(),
        json!(truncate(&summary, MAX_SUMMARY_CHARS)),
    );
    let source = inc.targets.first().cloned().unwrap_or(inc.title.clone());
    payload.insert("source".into(), json!(source));
    payload.insert("severity".into(), json!(severity(inc.severity)));
    payload.insert(
        "timestamp".into(),
        json!(inc.opened_at.to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    if let Some(t) = inc.targets.first() {
        payload.insert("component".into(), json!(short_target(t)));
    }
    if let Some(rg) = &inc.resource_group {
        payload.insert("group".into(), json!(rg));
    }
    payload.insert("class".into(), json!(alert.kind));
    let mut details = Map::new();
    details.insert("incident".into(), json!(inc.id));
    details.insert("targets".into(), json!(inc.targets));
    if let Some(rule_id) = &inc.rule_id {
        details.insert("rule_id".into(), json!(rule_id));
    }
    if let Some(d) = inc.description.as_deref().filter(|d| !d.trim().is_empty()) {
        details.insert("description".into(), json!(d));
    }
    details.insert("source".into(), json!(inc.source.as_str()));
    details.insert("details".into(), json!(alert.details));
    payload.insert("custom_details".into(), Value::Object(details));
    body.insert("payload".into(), Value::Object(payload));
    body.insert("client".into(), json!("icahub"));
    if let Some(link) = http_link(inc.link.as_deref()).or(http_link(alert.link.as_deref())) {
        if link.starts_with("https://") {
            body.insert("client_url".into(), json!(link));
        }
        body.insert(
            "links".into(),
            json!([{ "href": link, "text": "Alert details" }]),
        );
    }
    Ok(Some(Value::Object(body)))
}

/// A token bucket per routing key: `per_minute` events, refilled continuously.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        RateLimiter {
            per_minute: per_minute.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one token for `key`, or say how long until one is available.
    pub fn try_acquire(&self, key: &str) -> Result<(), Duration> {
        self.try_acquire_at(key, Instant::now())
    }

    pub fn try_acquire_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let cap = f64::from(self.per_minute);
        let per_sec = cap / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.entry(key.to_string()).or_insert((cap, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * per_sec).min(cap);
        *last = now.max(*last);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / per_sec))
        }
    }
}

#[derive(Debug)]
pub struct PagerDutyClient {
    client: reqwest::Client,
    events_url: String,
    /// Routing key name → integration key.
    keys: BTreeMap<String, Secret>,
    limiter: RateLimiter,
    /// Dates the `Retry-After` answers.
    clock: Arc<dyn Clock>,
}

impl PagerDutyClient {
    pub fn new(
        client: reqwest::Client,
        events_url: String,
        keys: BTreeMap<String, Secret>,
        rate_per_minute: u32,
        clock: Arc<dyn Clock>,
    ) -> Self {
        PagerDutyClient {
            client,
            events_url,
            keys,
            limiter: RateLimiter::new(rate_per_minute),
            clock,
        }
    }

    /// `ICAHUB_PAGERDUTY_ROUTING_KEY` (the `default` key), `ICAHUB_PAGERDUTY_ROUTING_KEYS` (JSON
    /// object name → key; the explicit variable wins for `default`), `ICAHUB_PAGERDUTY_EVENTS_URL`
    /// (default [`DEFAULT_EVENTS_URL`]), `ICAHUB_PAGERDUTY_RATE_PER_MINUTE` (default 100).
    pub fn from_settings(
        settings: &PagerDutySink,
        client: reqwest::Client,
        clock: Arc<dyn Clock>,
    ) -> Self {
        PagerDutyClient::new(
            client,
            settings.events_url.clone(),
            settings.keys.clone(),
            settings.rate_per_minute,
            clock,
        )
    }
}

#[async_trait]
impl SinkClient for PagerDutyClient {
    fn sink(&self) -> Sink {
        Sink::Pagerduty
    }

    async fn send(&self, row: &OutboxRow) -> Result<Delivered, SendError> {
        let name = route_field(row, "pagerduty_key").unwrap_or(DEFAULT_ROUTE);
        let key = self.keys.get(name).ok_or_else(|| {
            SendError::permanent(format!(
                "pagerduty: no routing key named {name:?} is configured"
            ))
        })?;
        let Some(body) = render(row, key.expose())? else {
            return Ok(Delivered {
                status: Delivered::NOT_SENT,
            });
        };
        self.limiter
            .try_acquire(key.expose())
            .map_err(|wait| SendError::Throttled { wait })?;

        let resp = self
            .client
            .post(&self.events_url)
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body).expect("a JSON value serializes"))
            .send()
            .await
            .map_err(|e| prefix("pagerduty", from_reqwest(e)))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp
            .text()
            .await
            .map_err(|e| prefix("pagerduty", from_reqwest(e)))?;
        if status == 400 {
            return Err(SendError::permanent(format!(
                "pagerduty: HTTP 400: {}",
                describe_error(&text)
            )));
        }
        match classify_at(status, &headers, &text, self.clock.now()) {
            Ok(()) => Ok(Delivered { status }),
            Err(SendError::Retry {
                error,
                retry_after: None,
            }) if status == 429 && headers.get(RETRY_AFTER).is_none() => Err(SendError::Retry {
                error: format!("pagerduty: {error}"),
                retry_after: Some(RATE_LIMITED_WAIT),
            }),
            Err(e) => Err(prefix("pagerduty", e)),
        }
    }
}

/// `invalid event: Event object is invalid: <errors>` from PagerDuty's error object, or the
/// start of the body when it is not one.
fn describe_error(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return truncate(body.trim(), super::ERROR_BODY_CHARS);
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let errors: Vec<&str> = v
        .get("errors")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    truncate(
        &format!("{}: {}: {}", s("status"), s("message"), errors.join("; ")),
        1000,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_continuously() {
        let l = RateLimiter::new(60); // one a second
        let t0 = Instant::now();
        for _ in 0..60 {
            l.try_acquire_at("k", t0).unwrap();
        }
        let wait = l.try_acquire_at("k", t0).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        // Another key has its own bucket.
        l.try_acquire_at("other", t0).unwrap();
        let t1 = t0 + Duration::from_millis(1500);
        l.try_acquire_at("k", t1).unwrap();
        assert!(l.try_acquire_at("k", t1).is_err());
    }

    #[test]
    fn long_ids_hash_to_a_stable_key() {
        assert_eq!(
            dedup_key("INC-0123456789abcdef-1"),
            "INC-0123456789abcdef-1"
        );
        let long = "x".repeat(300);
        assert_eq!(dedup_key(&long).len(), 64);
        assert_eq!(dedup_key(&long), dedup_key(&long));
    }

    #[test]
    fn error_objects_are_described() {
        let body = r#"{"status":"invalid event","message":"Event object is invalid","errors":["Length of 'routing_key' is incorrect (should be 32 characters)"]}"#;
        assert_eq!(
            describe_error(body),
            "invalid event: Event object is invalid: Length of 'routing_key' is incorrect (should be 32 characters)"
        );
        assert_eq!(describe_error("  nope "), "nope");
    }
}
