//! Durable storage: one [`Store`] trait, two backends (`embedded`: SQLite on local disk;
//! `tables`: Azure Table Storage), and a [`conformance`] suite that both must pass.
//!
//! A backend's one write path is [`Store::ingest`]: for each alert of a delivery it checks the
//! dedup key, applies [`crate::domain::incident::plan`] to the alert's stream, and writes the event,
//! the dedup marker, the incident and the outbox rows **atomically** (one SQLite transaction, one
//! entity-group transaction per stream partition in Table Storage). It returns only once that is
//! durable. Concurrent writers (threads, processes, hub instances) are safe: SQLite serializes
//! writers, Table Storage uses ETags and retries on conflict.

pub mod conformance;
pub mod sqlite;
pub mod tables;

use crate::domain::alert::{Condition, NormalizedAlert, Severity, Source};
use crate::domain::incident::{Incident, IncidentAction, IncidentStatus};
use crate::domain::routing::{Routing, Sink};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One accepted request: its raw body and the alerts parsed from it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub request_id: String,
    /// `X-Azure-Functions-InvocationId`, when the Functions host forwarded the request.
    pub invocation_id: Option<String>,
    pub source: Source,
    pub received_at: DateTime<Utc>,
    /// The body exactly as received.
    pub raw_body: String,
    pub alerts: Vec<DeliveryAlert>,
}

#[derive(Debug, Clone)]
pub struct DeliveryAlert {
    /// Proposed id for the event if the alert is new (`EVT-<stream>-...`, see [`new_event_id`]).
    pub event_id: String,
    pub alert: NormalizedAlert,
    /// This alert's own JSON when the delivery carries several (Alertmanager); `None` means the
    /// alert is the whole body.
    pub raw_alert: Option<String>,
}

/// What happened to one alert of a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventOutcome {
    /// The stored event: the new one, or for a duplicate the one stored first.
    pub event_id: String,
    pub duplicate: bool,
    pub incident_id: Option<String>,
    pub action: IncidentAction,
}

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

/// The raw body of a request that carried several alerts (Alertmanager).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawRequest {
    pub request_id: String,
    pub source: Source,
    pub received_at: DateTime<Utc>,
    pub body: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxStatus {
    Pending,
    Delivered,
    Dead,
}

impl OutboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxStatus::Pending => "pending",
            OutboxStatus::Delivered => "delivered",
            OutboxStatus::Dead => "dead",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(OutboxStatus::Pending),
            "delivered" => Some(OutboxStatus::Delivered),
            "dead" => Some(OutboxStatus::Dead),
            _ => None,
        }
    }
}

/// One delivery to make to one sink, ordered within its stream by `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxRow {
    pub stream: String,
    pub seq: u64,
    pub sink: Sink,
    pub kind: String,
    pub idempotency_key: String,
    pub event_id: String,
    pub payload: serde_json::Value,
    pub status: OutboxStatus,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct IncidentFilter {
    pub status: Option<IncidentStatus>,
    pub severity: Option<Severity>,
    /// Incidents opened at or after this time.
    pub since: Option<DateTime<Utc>>,
    pub limit: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage could not be reached or failed in a way worth retrying: the sender gets 503.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Too many concurrent writers on one stream; retrying later will succeed.
    #[error("storage busy: {0}")]
    Contention(String),
    /// Stored data that cannot be read back (a bug or outside tampering).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The configuration cannot work (bad connection string, unwritable directory).
    #[error("storage misconfigured: {0}")]
    Config(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `embedded` or `azure_tables`.
    fn backend(&self) -> &'static str;
    /// Where the data lives: a directory, or a Table Storage endpoint and table prefix.
    fn location(&self) -> String;

    /// Store a delivery durably (see the module docs). Returns one outcome per alert, in order.
    async fn ingest(&self, delivery: &Delivery, routing: &Routing) -> Result<Vec<EventOutcome>>;

    async fn incident(&self, id: &str) -> Result<Option<Incident>>;
    /// Newest first (by `opened_at`), at most `filter.limit`.
    async fn incidents(&self, filter: &IncidentFilter) -> Result<Vec<Incident>>;
    async fn event(&self, id: &str) -> Result<Option<StoredEvent>>;
    /// Events of one stream, oldest first.
    async fn stream_events(&self, stream: &str) -> Result<Vec<StoredEvent>>;
    async fn raw_request(&self, request_id: &str) -> Result<Option<RawRequest>>;
    /// Outbox rows of one stream, in `seq` order.
    async fn stream_outbox(&self, stream: &str) -> Result<Vec<OutboxRow>>;
    /// Number of stored events (for operators and tests; may scan).
    async fn count_events(&self) -> Result<u64>;
    /// A cheap round trip to check the storage answers.
    async fn ping(&self) -> Result<()>;
}

/// A new event id for an alert of stream `stream`: `EVT-<stream>-<UTC yyyymmddHHMMSSffffff><8 hex>`,
/// so ids sort by time within a stream and name the partition they live in.
pub fn new_event_id(stream: &str, now: DateTime<Utc>) -> String {
    let rand = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("EVT-{stream}-{}{rand}", now.format("%Y%m%d%H%M%S%6f"))
}
