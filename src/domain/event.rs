//! A stored event: one alert as the hub received and kept it. Storage writes and reads it;
//! the audit chain hashes its metadata ([`super::audit_chain::event_body`]).

use super::alert::{Condition, Severity, Source};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A stored event: one alert as received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub id: String,
    pub request_id: String,
    pub invocation_id: Option<String>,
    pub source: Source,
    pub schema: String,
    pub kind: String,
    pub alert_id: String,
    pub dedup_key: String,
    pub stream: String,
    pub condition: Condition,
    pub severity: Severity,
    pub incident_id: Option<String>,
    pub received_at: DateTime<Utc>,
    /// The raw JSON of this alert (the whole request body for single-alert deliveries).
    pub raw: String,
}
