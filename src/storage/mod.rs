//! Durable storage: one [`Store`] supertrait over small capability traits ([`IncidentStore`],
//! [`OutboxStore`], [`DocStore`], [`AuditStore`], [`SecretStore`]), two backends (`embedded`:
//! SQLite on local disk; `tables`: Azure Table Storage), the ingest recipe written once as a
//! pure plan ([`plan`]), [`open()`] as the one place a backend is chosen, and a conformance suite
//! (`conformance`, built for tests only) that both backends must pass. `docs/storage.md` says
//! what each backend guarantees and how to add one.
//!
//! A backend's one write path is [`IncidentStore::ingest`]: for each alert of a delivery it
//! checks the dedup key, reads the stream head, and persists what [`plan::plan_alert`] planned
//! (event, dedup marker, incidents, outbox rows, chain entries, head) **atomically** (one
//! SQLite savepoint, one entity-group transaction per stream partition in Table Storage). It returns only once that is
//! durable. Concurrent writers (threads, processes, hub instances) are safe: SQLite serializes
//! writers, Table Storage uses ETags and retries on conflict.
//!
//! **Secrets** ([`SecretStore::secret_put`], [`SecretStore::secret_get`], [`SecretStore::secret_delete`]) are the
//! one kind of data kept apart from everything else: values the hub must hold for a while but
//! must never publish, today the Azure DevOps check's job token (`AuthToken`). They are not
//! records: never chained in the audit trail (so never in `audit query`, `audit export` or
//! `audit archive`), never in an outbox payload (rows carry the secret's key), and left out of
//! `icahub backup`. Embedded: the `secrets` table of the database, scrubbed from the backup copy.
//! Table Storage: partition [`SECRETS_PARTITION`] of the `<prefix>requests` table, which holds
//! no chained data and which the backup skips (see [`tables`]).

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod open;
pub mod plan;
pub mod sqlite;
pub mod tables;

pub use open::{open, restore, OpenMode, Restored, Settings};

/// Every capability trait, for calling their methods on a concrete backend
/// (`use icahub::storage::prelude::*`); on `dyn Store` they are callable without it.
pub mod prelude {
    pub use super::{AuditStore, DocStore, IncidentStore, OutboxStore, SecretStore, Store};
}

use crate::domain::alert::{NormalizedAlert, Severity, Source};
pub use crate::domain::event::StoredEvent;
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
    /// Outbox rows written with this event (0 for duplicates).
    #[serde(default)]
    pub outbox_rows: u32,
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
    /// The dispatcher holding this row, and until when: nobody else sends it meanwhile.
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// The backend's concurrency token for this row (Table Storage ETag); opaque.
    #[serde(skip)]
    pub version: Option<String>,
}

impl OutboxRow {
    /// `OUT-<stream>-<seq>`: what operators type in `icahub outbox show|redrive`.
    pub fn id(&self) -> String {
        outbox_id(&self.stream, self.seq)
    }
}

pub fn outbox_id(stream: &str, seq: u64) -> String {
    format!("OUT-{stream}-{seq}")
}

/// Parse `OUT-<stream>-<seq>` into its parts.
pub fn parse_outbox_id(id: &str) -> Option<(String, u64)> {
    let rest = id.strip_prefix("OUT-")?;
    let (stream, seq) = rest.rsplit_once('-')?;
    let ok = !stream.is_empty() && stream.bytes().all(|b| b.is_ascii_alphanumeric());
    Some((stream.to_string(), seq.parse().ok()?)).filter(|_| ok)
}

/// How a delivery attempt ended; applied only by the lease holder.
#[derive(Debug, Clone, PartialEq)]
pub enum Settle {
    /// The sink confirmed it.
    Delivered { at: DateTime<Utc> },
    /// Failed, worth another attempt then (counts as an attempt).
    Retry {
        next_attempt_at: DateTime<Utc>,
        error: String,
    },
    /// Permanent failure or given up: a dead letter, kept with its last error (counts as an attempt).
    Dead { error: String },
    /// Not attempted (our own rate limit): try again then, attempts unchanged.
    Defer { next_attempt_at: DateTime<Utc> },
}

/// One sink's outbox figures ([`OutboxStore::outbox_stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    pub pending: u64,
    /// Pending rows whose next attempt is due.
    pub due: u64,
    /// When the oldest pending row was created.
    pub oldest_pending: Option<DateTime<Utc>>,
    pub dead: u64,
}

impl OutboxStats {
    /// Every sink, with nothing counted yet.
    pub fn empty_per_sink() -> std::collections::BTreeMap<&'static str, OutboxStats> {
        Sink::ALL
            .iter()
            .map(|s| (s.as_str(), OutboxStats::default()))
            .collect()
    }

    /// Seconds since the oldest pending row was created (`None`: nothing pending).
    pub fn oldest_age_secs(&self, now: DateTime<Utc>) -> Option<u64> {
        self.oldest_pending
            .map(|t| (now - t).num_seconds().max(0) as u64)
    }

    pub fn add_pending(&mut self, due: bool, created_at: DateTime<Utc>) {
        self.pending += 1;
        if due {
            self.due += 1;
        }
        self.oldest_pending = Some(
            self.oldest_pending
                .map_or(created_at, |o| o.min(created_at)),
        );
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxFilter {
    pub status: Option<OutboxStatus>,
    pub sink: Option<Sink>,
    pub limit: usize,
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

/// A store: every capability below, plus what operators and health checks use. Services and
/// the HTTP layer hold an `Arc<dyn Store>`; the capabilities' methods are callable on it. A
/// backend implements each capability trait and this one (see `docs/storage.md`).
#[async_trait]
pub trait Store:
    IncidentStore + OutboxStore + DocStore + AuditStore + SecretStore + Send + Sync + 'static
{
    /// `embedded` or `azure_tables`.
    fn backend(&self) -> &'static str;
    /// Where the data lives: a directory, or a Table Storage endpoint and table prefix.
    fn location(&self) -> String;
    /// A cheap round trip to check the storage answers.
    async fn ping(&self) -> Result<()>;
    /// Write a copy of the whole store, secrets left out, to the new file `to` (`icahub
    /// backup`; refused if `to` exists). `progress` is told the entities read so far, by the
    /// backends that count them.
    async fn backup(
        &self,
        to: &std::path::Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<BackupWritten>;
}

/// Incidents and events: the alert write path ([`IncidentStore::ingest`]) and its reads.
#[async_trait]
pub trait IncidentStore: Send + Sync {
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
}

/// The outbox: what the dispatcher sends, leases, settles and operators redrive.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Rows that may be sent now, at most `limit`: for each (stream, sink) only its lowest
    /// pending row (so a stream's deliveries to one sink go out in order), and only when it is due
    /// (`next_attempt_at <= now`) and not under a live lease. `stream` restricts to one stream.
    async fn outbox_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        stream: Option<&str>,
    ) -> Result<Vec<OutboxRow>>;
    /// Take the lease on `row` (as read by `outbox_due`) until `until`, if it is still pending and
    /// nobody holds a live lease. Returns the leased row, or `None` when someone else got it.
    async fn outbox_lease(
        &self,
        row: &OutboxRow,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<OutboxRow>>;
    /// Record the outcome of a leased row and release the lease; `false` when the lease was lost
    /// (expired and taken by another dispatcher), in which case nothing is written.
    async fn outbox_settle(&self, leased: &OutboxRow, settle: &Settle) -> Result<bool>;
    async fn outbox_get(&self, stream: &str, seq: u64) -> Result<Option<OutboxRow>>;
    /// Rows by status and sink, oldest first, at most `filter.limit` (may scan).
    async fn outbox_list(&self, filter: &OutboxFilter) -> Result<Vec<OutboxRow>>;
    /// Pending, due, oldest pending and dead rows per sink (every sink present). The default
    /// lists the rows; a backend that can count without reading payloads overrides it.
    async fn outbox_stats(
        &self,
        now: DateTime<Utc>,
    ) -> Result<std::collections::BTreeMap<&'static str, OutboxStats>> {
        let all = |status| OutboxFilter {
            status: Some(status),
            sink: None,
            limit: usize::MAX >> 1,
        };
        let mut by_sink = OutboxStats::empty_per_sink();
        for r in self.outbox_list(&all(OutboxStatus::Pending)).await? {
            by_sink
                .entry(r.sink.as_str())
                .or_default()
                .add_pending(r.next_attempt_at <= now, r.created_at);
        }
        for r in self.outbox_list(&all(OutboxStatus::Dead)).await? {
            by_sink.entry(r.sink.as_str()).or_default().dead += 1;
        }
        Ok(by_sink)
    }
    /// Put a dead letter back to pending, due now, attempts reset. `false` if it is not dead.
    async fn outbox_redrive(&self, stream: &str, seq: u64, now: DateTime<Utc>) -> Result<bool>;
}

/// Documents: JSON under (partition, key), committed atomically with their outbox rows.
#[async_trait]
pub trait DocStore: Send + Sync {
    /// A document: JSON under (partition, key), with a version for optimistic concurrency.
    async fn doc_get(&self, partition: &str, key: &str) -> Result<Option<Doc>>;
    /// A partition's documents whose key starts with `prefix`, in key order.
    async fn doc_list(&self, partition: &str, prefix: &str) -> Result<Vec<Doc>>;
    /// Write documents of one partition and their outbox rows atomically, if every expectation
    /// holds; `Ok(false)` (nothing written) when one does not: re-read and try again.
    async fn doc_commit(&self, commit: &DocCommit) -> Result<bool>;
}

/// The audit chains read back (see [`crate::domain::audit_chain`]): for the verifier, the
/// export and checkpoints. Backends append entries in the same write as each record.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Every partition with an audit chain or records, in name order (see [`crate::domain::audit_chain`]).
    async fn audit_partitions(&self) -> Result<Vec<String>>;
    /// One partition's chain (in stored order), its recorded head and its current records'
    /// bodies, rebuilt from stored data, for the verifier.
    async fn audit_state(
        &self,
        partition: &str,
    ) -> Result<crate::domain::audit_chain::PartitionState>;
    /// Every partition's chain head: (partition, seq, hash).
    async fn audit_heads(&self) -> Result<Vec<(String, u64, String)>>;
    /// Chain entries after `after` = (partition, seq), ordered by (partition, seq), at most
    /// `limit`: the export reads the whole trail page by page in constant memory.
    async fn audit_page(
        &self,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<crate::domain::audit_chain::AuditEntry>>;
}

/// Secrets: values kept apart from every record (see the module docs).
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Keep `value` under `key` (see the module docs: never chained, exported or backed up),
    /// replacing any value it had. `now` is recorded as when it was stored. `key` is at most
    /// 512 printable ASCII characters without `/ \ # ?`.
    async fn secret_put(&self, key: &str, value: &str, now: DateTime<Utc>) -> Result<()>;
    /// The value under `key`, if one is held.
    async fn secret_get(&self, key: &str) -> Result<Option<String>>;
    /// Forget `key`; `true` if a value was held. Deleting an unknown key is not an error.
    async fn secret_delete(&self, key: &str) -> Result<bool>;
}

/// What [`Store::backup`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupWritten {
    /// Entities written (Table Storage); `None` for a database snapshot (embedded).
    pub entities: Option<u64>,
}

/// The Table Storage partition (of `<prefix>requests`) that holds the secrets.
pub const SECRETS_PARTITION: &str = "secrets";

/// A secret's key is safe for both backends (a Table Storage RowKey, an SQLite text key).
pub fn valid_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 512
        && key
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'\\' | b'#' | b'?'))
}

pub(crate) fn check_secret_key(key: &str) -> Result<()> {
    if valid_secret_key(key) {
        Ok(())
    } else {
        Err(StoreError::Config(format!(
            "secret key {:?} is not usable (1-512 printable ASCII characters, no / \\ # ?)",
            key.chars().take(80).collect::<String>()
        )))
    }
}

/// A stored document. `version` is opaque (a counter, or an ETag).
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub key: String,
    pub value: serde_json::Value,
    pub version: String,
}

/// What a write expects to find.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// The document must not exist yet.
    Absent,
    /// The document must still be at this version.
    Version(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DocWrite {
    pub key: String,
    pub value: serde_json::Value,
    pub expect: Expect,
}

/// One atomic write to one partition: documents, plus outbox rows in that partition's stream.
#[derive(Debug, Clone, PartialEq)]
pub struct DocCommit {
    /// Letters and digits only, at most 63 (a Table Storage partition and outbox stream name).
    pub partition: String,
    pub writes: Vec<DocWrite>,
    pub outbox: Vec<crate::domain::routing::OutboxDraft>,
    /// The record the outbox rows belong to (shown as `event_id` on them).
    pub record_id: String,
    pub now: DateTime<Utc>,
}

/// A partition name is safe for both backends and for outbox ids.
pub fn valid_partition(p: &str) -> bool {
    !p.is_empty() && p.len() <= 63 && p.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A new event id for an alert of stream `stream`: `EVT-<stream>-<UTC yyyymmddHHMMSSffffff><8 hex>`,
/// so ids sort by time within a stream and name the partition they live in.
pub fn new_event_id(stream: &str, now: DateTime<Utc>) -> String {
    let rand = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("EVT-{stream}-{}{rand}", now.format("%Y%m%d%H%M%S%6f"))
}
