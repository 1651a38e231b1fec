//! The database schema, and the migration that brings an older icahub's database up to it.

use super::*;

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS streams (
    stream        TEXT PRIMARY KEY,
    incident_seq  INTEGER NOT NULL,
    outbox_seq    INTEGER NOT NULL,
    open_incident TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id            TEXT PRIMARY KEY,
    stream        TEXT NOT NULL,
    dedup_key     TEXT NOT NULL,
    request_id    TEXT NOT NULL,
    invocation_id TEXT,
    source        TEXT NOT NULL,
    schema        TEXT NOT NULL,
    kind          TEXT NOT NULL,
    alert_id      TEXT NOT NULL,
    condition     TEXT NOT NULL,
    severity      TEXT NOT NULL,
    incident_id   TEXT,
    received_at   TEXT NOT NULL,
    raw           TEXT NOT NULL
);
-- Dedup keys are scoped to their stream, as in Table Storage where the marker lives in the stream's
-- partition: the same alert id on another rule or resource is another alert.
CREATE UNIQUE INDEX IF NOT EXISTS events_dedup ON events(stream, dedup_key);
CREATE TABLE IF NOT EXISTS incidents (
    id        TEXT PRIMARY KEY,
    stream    TEXT NOT NULL,
    status    TEXT NOT NULL,
    severity  TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    doc       TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_open_incident_per_stream ON incidents(stream) WHERE status = 'open';
CREATE INDEX IF NOT EXISTS incidents_by_opened ON incidents(opened_at);
CREATE TABLE IF NOT EXISTS outbox (
    stream          TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    sink            TEXT NOT NULL,
    kind            TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    event_id        TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    last_error      TEXT,
    lease_owner     TEXT,
    lease_until     TEXT,
    delivered_at    TEXT,
    PRIMARY KEY (stream, seq)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(status, next_attempt_at);
-- The head of each (stream, sink): the lowest pending seq.
CREATE INDEX IF NOT EXISTS outbox_heads ON outbox(status, stream, sink, seq);
CREATE TABLE IF NOT EXISTS requests (
    request_id  TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    received_at TEXT NOT NULL,
    body        TEXT NOT NULL
);
-- The audit trail: one hash chain per partition (stream or document partition), appended in the
-- same transaction as the record (see src/domain/audit_chain.rs and docs/audit.md).
CREATE TABLE IF NOT EXISTS audit (
    partition TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    key       TEXT NOT NULL,
    at        TEXT NOT NULL,
    body      TEXT NOT NULL,
    prev      TEXT NOT NULL,
    hash      TEXT NOT NULL,
    PRIMARY KEY (partition, seq)
);
CREATE TABLE IF NOT EXISTS audit_heads (
    partition TEXT PRIMARY KEY,
    seq       INTEGER NOT NULL,
    hash      TEXT NOT NULL
);
-- Secrets (the Azure DevOps check's job token): never chained, never exported, and deleted from
-- the copy `icahub backup` writes (see `SqliteStore::backup_to`).
CREATE TABLE IF NOT EXISTS secrets (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS docs (
    partition TEXT NOT NULL,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    version   INTEGER NOT NULL,
    PRIMARY KEY (partition, key)
);
"#;

/// Bring a database made by an older icahub up to [`SCHEMA`] (columns only ever get added).
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_outbox: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'",
        [],
        |r| r.get(0),
    )?;
    if !has_outbox {
        return Ok(());
    }
    let cols: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('outbox')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for col in ["lease_owner", "lease_until", "delivered_at"] {
        if !cols.iter().any(|c| c == col) {
            conn.execute_batch(&format!("ALTER TABLE outbox ADD COLUMN {col} TEXT"))?;
        }
    }
    Ok(())
}
