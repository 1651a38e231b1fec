//! The embedded store: SQLite (WAL, `synchronous=FULL`) in one file under `ICAHUB_DATA_DIR`.
//!
//! All writes go through one writer thread that takes whatever deliveries are queued, applies each
//! inside its own savepoint of one `BEGIN IMMEDIATE` transaction, commits once (one fsync for the
//! whole group) and only then answers every caller. That is group commit: each acknowledged alert
//! is fsync'd, and the fsync cost is shared by everyone who arrived while the previous one ran.
//! `BEGIN IMMEDIATE` also serializes writers from other processes on the same file, and a partial
//! unique index makes a second open incident per stream impossible at the database level.
//! Reads use a small pool of separate connections, so they never wait for the writer.

use super::plan::{self, AlertWrite, StreamHead};
use super::{
    valid_partition, AuditStore, Delivery, Doc, DocCommit, DocStore, EventOutcome, Expect,
    IncidentFilter, IncidentStore, OutboxFilter, OutboxRow, OutboxStatus, OutboxStore, RawRequest,
    Result, SecretStore, Settle, Store, StoreError, StoredEvent,
};
use crate::domain::alert::{Condition, Severity, Source};
use crate::domain::audit_chain::{self as audit, AuditEntry, PartitionState};
use crate::domain::incident::{stream_key, stream_of_id, Incident};
use crate::domain::routing::{Routing, Sink};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// The database file under the data directory.
pub(crate) const DB_FILE: &str = "icahub.db";
/// Upper bound on deliveries per group commit; keeps one transaction short.
const MAX_GROUP: usize = 512;

const SCHEMA: &str = r#"
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
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
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

/// Timestamps are stored as fixed-width RFC 3339 UTC so text order is time order.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("bad timestamp {s:?}: {e}")))
}

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

/// A unit of work for the writer thread: applied inside its own savepoint of a group commit,
/// answered only after the group's COMMIT (or its failure).
trait WriteJob: Send {
    /// Run the work; `true` keeps its savepoint, `false` rolls it back.
    fn apply(&mut self, conn: &Connection) -> bool;
    /// Deliver the result once the group's fate is known.
    fn finish(self: Box<Self>, commit: Result<()>);
}

struct Job<T, F> {
    work: Option<F>,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T> + Send,
{
    fn apply(&mut self, conn: &Connection) -> bool {
        let r = match self.work.take() {
            Some(f) => f(conn),
            None => Err(StoreError::Unavailable("write job applied twice".into())),
        };
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<()>) {
        let r = match (commit, self.result) {
            (Ok(()), Some(r)) => r,
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err(StoreError::Unavailable("write job never ran".into())),
        };
        // The caller may have gone away (client disconnected); the data is stored anyway.
        let _ = self.reply.send(r);
    }
}

type BoxedJob = Box<dyn WriteJob>;

pub struct SqliteStore {
    path: PathBuf,
    writer: mpsc::UnboundedSender<BoxedJob>,
    readers: Arc<Mutex<Vec<Connection>>>,
}

fn open_conn(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

impl SqliteStore {
    /// Open (creating if needed) the database under `dir`, and start the writer thread.
    pub fn open(dir: &Path) -> Result<SqliteStore> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Config(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(DB_FILE);
        let conn = open_conn(&path, false).map_err(|e| {
            StoreError::Config(format!("cannot open database {}: {e}", path.display()))
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|_| conn.pragma_update(None, "synchronous", "FULL"))
            .and_then(|_| conn.pragma_update(None, "mmap_size", 1_073_741_824))
            // Checkpoint every ~40 MB of WAL instead of 4 MB: hot pages (stream heads, index
            // leaves) are copied back once per checkpoint however often they changed.
            .and_then(|_| conn.pragma_update(None, "wal_autocheckpoint", 10_000))
            // A deleted secret's bytes are overwritten where that costs no extra I/O.
            .and_then(|_| conn.pragma_update(None, "secure_delete", "FAST"))
            .and_then(|_| migrate(&conn))
            .and_then(|_| conn.execute_batch(SCHEMA))
            .map_err(|e| {
                StoreError::Config(format!("cannot prepare database {}: {e}", path.display()))
            })?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("icahub-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Config(format!("cannot start writer thread: {e}")))?;
        Ok(SqliteStore {
            path,
            writer: tx,
            readers: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// A consistent copy of the whole database at `to` (`VACUUM INTO`: one read transaction, so
    /// it is a snapshot even while the hub writes), **without its secrets**: the copy's `secrets`
    /// table is emptied with `secure_delete` (freed pages zeroed) and the copy vacuumed again,
    /// with its rollback journal in memory, so no page of the file holds a secret. `to` must not
    /// exist. (The caller writes to a temporary name and links it in place only afterwards.)
    pub async fn backup_to(&self, to: &Path) -> Result<()> {
        let to = to.to_path_buf();
        self.read(move |c| {
            c.execute("VACUUM INTO ?1", [to.to_string_lossy().as_ref()])
                .map_err(db_err)?;
            scrub_secrets(&to)?;
            // VACUUM INTO does not sync its output.
            std::fs::File::open(&to)
                .and_then(|f| f.sync_all())
                .map_err(|e| StoreError::Unavailable(format!("syncing the backup: {e}")))
        })
        .await
    }

    /// Put the backup `from` in place as the database of `dir`, which must have none yet (the
    /// hub stopped or not started). The file is checked first (`PRAGMA integrity_check`, the
    /// hub's tables present) and copied under a temporary name, synced, then renamed.
    pub fn restore_into(dir: &Path, from: &Path) -> Result<u64> {
        let target = dir.join(DB_FILE);
        // The WAL and shared-memory files belong to the old database: SQLite would replay an
        // old WAL onto the restored file, so they must be gone too.
        for name in [
            DB_FILE.to_string(),
            format!("{DB_FILE}-wal"),
            format!("{DB_FILE}-shm"),
            format!("{DB_FILE}-journal"),
        ] {
            let p = dir.join(&name);
            if p.exists() {
                return Err(StoreError::Config(format!(
                    "{} already exists: restore into an empty ICAHUB_DATA_DIR (stop the hub and \
                     move icahub.db, icahub.db-wal and icahub.db-shm aside together)",
                    p.display()
                )));
            }
        }
        let bad = |m: String| StoreError::Config(format!("{}: {m}", from.display()));
        let conn = open_conn(from, true).map_err(|e| bad(format!("not a database: {e}")))?;
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| bad(format!("not a database: {e}")))?;
        if check != "ok" {
            return Err(bad(format!("integrity check failed: {check}")));
        }
        for table in ["streams", "events", "outbox", "audit", "docs"] {
            let n: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [table],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if n != 1 {
                return Err(bad(format!("not an icahub database (no table {table})")));
            }
        }
        let audit: i64 = conn
            .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
            .map_err(db_err)?;
        drop(conn);
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Config(format!("cannot create {}: {e}", dir.display())))?;
        let tmp = dir.join(format!("{DB_FILE}.restoring-{}", std::process::id()));
        let io = |e: std::io::Error| StoreError::Unavailable(format!("restoring: {e}"));
        let copied = std::fs::copy(from, &tmp)
            .and_then(|_| std::fs::File::open(&tmp))
            .and_then(|f| f.sync_all());
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        // A hard link never replaces: if a hub created icahub.db meanwhile, this fails instead
        // of swapping the file under it.
        let linked = std::fs::hard_link(&tmp, &target);
        let _ = std::fs::remove_file(&tmp);
        linked.map_err(|e| {
            StoreError::Config(format!(
                "cannot put the backup in place as {}: {e} (was a hub started meanwhile?)",
                target.display()
            ))
        })?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(audit as u64)
    }

    /// Run `f` on the writer thread inside the next group commit; answers after the COMMIT.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: BoxedJob = Box::new(Job {
            work: Some(f),
            result: None,
            reply,
        });
        self.writer
            .send(job)
            .map_err(|_| StoreError::Unavailable("the writer thread has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the writer thread has stopped".into()))?
    }

    /// Run `f` on a pooled read connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.lock().map_err(|_| poisoned())?.pop();
            let conn = match conn {
                Some(c) => c,
                None => open_conn(&path, true).map_err(db_err)?,
            };
            let out = f(&conn);
            let mut guard = pool.lock().map_err(|_| poisoned())?;
            if guard.len() < 8 {
                guard.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("reader task failed: {e}")))?
    }
}

/// Empty the `secrets` table of the database file at `path` (a backup copy) so that no page of
/// the file keeps a secret, and check that it is empty.
fn scrub_secrets(path: &Path) -> Result<()> {
    let conn = open_conn(path, false).map_err(db_err)?;
    conn.pragma_update(None, "journal_mode", "MEMORY")
        .and_then(|_| conn.pragma_update(None, "secure_delete", "ON"))
        .and_then(|_| conn.execute_batch("DELETE FROM secrets; VACUUM;"))
        .map_err(db_err)?;
    let left: i64 = conn
        .query_row("SELECT count(*) FROM secrets", [], |r| r.get(0))
        .map_err(db_err)?;
    if left != 0 {
        return Err(StoreError::Unavailable(format!(
            "the backup copy still holds {left} secret(s) after scrubbing"
        )));
    }
    Ok(())
}

fn poisoned() -> StoreError {
    StoreError::Unavailable("reader pool lock poisoned".into())
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::UnboundedReceiver<BoxedJob>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let commit = commit_group(&mut conn, &mut jobs);
        for job in jobs {
            job.finish(match &commit {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Unavailable(e.to_string())),
            });
        }
    }
}

/// Apply every job in one transaction, each in its own savepoint so one job's failure does not
/// undo the others; then commit (the one fsync).
fn commit_group(conn: &mut Connection, jobs: &mut [BoxedJob]) -> Result<()> {
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    for job in jobs.iter_mut() {
        let mut sp = tx.savepoint().map_err(db_err)?;
        if job.apply(&sp) {
            sp.commit().map_err(db_err)?;
        } else {
            // Dropping an uncommitted savepoint rolls back just this job.
            sp.rollback().map_err(db_err)?;
        }
    }
    tx.commit().map_err(db_err)
}

/// One delivery's write: for each alert, read the plan's inputs and persist what
/// [`plan::plan_alert`] says (all inside the caller's savepoint, so the delivery is atomic).
fn apply_delivery(tx: &Connection, d: &Delivery, routing: &Routing) -> Result<Vec<EventOutcome>> {
    let mut outcomes = Vec::with_capacity(d.alerts.len());
    for da in &d.alerts {
        let stream = stream_key(&da.alert).to_string();
        let existing: Option<(String, Option<String>)> = tx
            .prepare_cached(
                "SELECT id, incident_id FROM events WHERE stream = ?1 AND dedup_key = ?2",
            )
            .and_then(|mut s| {
                s.query_row([&stream, &da.alert.dedup_key], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
            })
            .map_err(db_err)?;
        if let Some((event_id, incident_id)) = existing {
            outcomes.push(plan::duplicate(event_id, incident_id));
            continue;
        }
        let (head, existed) = read_head(tx, &stream)?;
        let w = plan::plan_alert(d, da, routing, &head);
        persist_alert(tx, &w, existed && w.stream_unchanged(&head))?;
        outcomes.push(w.outcome);
    }
    if plan::keeps_raw_request(d, &outcomes) {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO requests (request_id, source, received_at, body) \
             VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut s| {
            s.execute(params![
                d.request_id,
                d.source.as_str(),
                ts(d.received_at),
                d.raw_body
            ])
        })
        .map_err(db_err)?;
    }
    Ok(outcomes)
}

/// A stream's head (sequence numbers, open incident, audit chain head), and whether its row
/// exists.
fn read_head(tx: &Connection, stream: &str) -> Result<(StreamHead, bool)> {
    let row: Option<(u64, u64, Option<String>)> = tx
        .prepare_cached(
            "SELECT incident_seq, outbox_seq, open_incident FROM streams WHERE stream = ?1",
        )
        .and_then(|mut s| {
            s.query_row([stream], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(db_err)?;
    let existed = row.is_some();
    let (incident_seq, outbox_seq, open_id) = row.unwrap_or((0, 0, None));
    let open = match open_id {
        Some(id) => load_incident(tx, &id)?,
        None => None,
    };
    let head = StreamHead {
        incident_seq,
        outbox_seq,
        open,
        audit: audit_head(tx, stream)?,
    };
    Ok((head, existed))
}

/// Write what [`plan::plan_alert`] planned; the stream row only if it changed.
fn persist_alert(tx: &Connection, w: &AlertWrite, stream_unchanged: bool) -> Result<()> {
    let e = &w.event;
    tx.prepare_cached(
        "INSERT INTO events (id, stream, dedup_key, request_id, invocation_id, source, schema, \
         kind, alert_id, condition, severity, incident_id, received_at, raw) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )
    .and_then(|mut s| {
        s.execute(params![
            e.id,
            e.stream,
            e.dedup_key,
            e.request_id,
            e.invocation_id,
            e.source.as_str(),
            e.schema,
            e.kind,
            e.alert_id,
            e.condition.as_str(),
            e.severity.as_str(),
            e.incident_id,
            ts(e.received_at),
            e.raw,
        ])
    })
    .map_err(db_err)?;
    insert_audit(tx, &w.stream, &w.audit)?;
    for inc in &w.incidents {
        let doc = serde_json::to_string(inc)
            .map_err(|e| StoreError::Corrupt(format!("incident encode: {e}")))?;
        tx.prepare_cached(
            "INSERT INTO incidents (id, stream, status, severity, opened_at, doc) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT(id) DO UPDATE SET status = excluded.status, \
             severity = excluded.severity, doc = excluded.doc",
        )
        .and_then(|mut s| {
            s.execute(params![
                inc.id,
                w.stream,
                inc.status.as_str(),
                inc.severity.as_str(),
                ts(inc.opened_at),
                doc
            ])
        })
        .map_err(db_err)?;
    }
    insert_outbox(tx, &w.outbox)?;
    if stream_unchanged {
        // An alert attached to the open incident with no outbox rows: the head row stands.
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO streams (stream, incident_seq, outbox_seq, open_incident) \
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT(stream) DO UPDATE SET \
         incident_seq = excluded.incident_seq, outbox_seq = excluded.outbox_seq, \
         open_incident = excluded.open_incident",
    )
    .and_then(|mut s| {
        s.execute(params![
            w.stream,
            w.head.incident_seq,
            w.head.outbox_seq,
            w.head.open.as_ref().map(|i| &i.id)
        ])
    })
    .map_err(db_err)?;
    Ok(())
}

fn load_incident(conn: &Connection, id: &str) -> Result<Option<Incident>> {
    let doc: Option<String> = conn
        .prepare_cached("SELECT doc FROM incidents WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .map_err(db_err)?;
    doc.map(|d| {
        serde_json::from_str(&d).map_err(|e| StoreError::Corrupt(format!("incident {id}: {e}")))
    })
    .transpose()
}

fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<[Option<String>; 14]> {
    let mut out: [Option<String>; 14] = Default::default();
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = r.get(i)?;
    }
    Ok(out)
}

const EVENT_COLS: &str = "id, request_id, invocation_id, source, schema, kind, alert_id, \
    dedup_key, stream, condition, severity, incident_id, received_at, raw";

fn decode_event(c: [Option<String>; 14]) -> Result<StoredEvent> {
    let [id, request_id, invocation_id, source, schema, kind, alert_id, dedup_key, stream, condition, severity, incident_id, received_at, raw] =
        c;
    let req = |v: Option<String>, name: &str| {
        v.ok_or_else(|| StoreError::Corrupt(format!("event column {name} is null")))
    };
    let source = req(source, "source")?;
    let condition = req(condition, "condition")?;
    let severity = req(severity, "severity")?;
    Ok(StoredEvent {
        id: req(id, "id")?,
        request_id: req(request_id, "request_id")?,
        invocation_id,
        source: Source::parse(&source)
            .ok_or_else(|| StoreError::Corrupt(format!("bad source {source}")))?,
        schema: req(schema, "schema")?,
        kind: req(kind, "kind")?,
        alert_id: req(alert_id, "alert_id")?,
        dedup_key: req(dedup_key, "dedup_key")?,
        stream: req(stream, "stream")?,
        condition: Condition::parse(&condition)
            .ok_or_else(|| StoreError::Corrupt(format!("bad condition {condition}")))?,
        severity: Severity::parse(&severity)
            .ok_or_else(|| StoreError::Corrupt(format!("bad severity {severity}")))?,
        incident_id,
        received_at: parse_ts(&req(received_at, "received_at")?)?,
        raw: req(raw, "raw")?,
    })
}

const OUTBOX_COLS: &str = "stream, seq, sink, kind, idempotency_key, event_id, payload, status, \
    attempts, next_attempt_at, created_at, last_error, lease_owner, lease_until, delivered_at";

fn outbox_row(c: &Connection, stream: &str, seq: u64) -> Result<Option<OutboxRow>> {
    let mut rows = query_outbox(
        c,
        &format!("SELECT {OUTBOX_COLS} FROM outbox WHERE stream = ?1 AND seq = ?2"),
        &[&stream, &seq],
    )?;
    Ok(rows.pop())
}

/// The due heads of the outbox (each (stream, sink)'s lowest pending row, due and not leased):
/// `?1` now, `?2` the limit, and with `one_stream` `?3` the stream. One stream's rows are read
/// through the stream index, named: left to itself the planner takes the (status,
/// next_attempt_at) index for the ORDER BY and scans every due pending row, so with a sink down
/// each fast-path delivery cost O(backlog) and ingest fell from ~4,500/s to ~200/s.
fn due_sql(one_stream: bool) -> String {
    let heads = "o.seq = (SELECT MIN(p.seq) FROM outbox p WHERE p.status = 'pending' \
                 AND p.stream = o.stream AND p.sink = o.sink) \
                 AND o.next_attempt_at <= ?1 AND (o.lease_until IS NULL OR o.lease_until <= ?1)";
    if one_stream {
        format!(
            "SELECT {OUTBOX_COLS} FROM outbox o INDEXED BY outbox_heads \
             WHERE o.status = 'pending' AND o.stream = ?3 AND {heads} \
             ORDER BY o.next_attempt_at, o.seq LIMIT ?2"
        )
    } else {
        format!(
            "SELECT {OUTBOX_COLS} FROM outbox o WHERE o.status = 'pending' AND {heads} \
             ORDER BY o.next_attempt_at, o.stream, o.seq LIMIT ?2"
        )
    }
}

fn query_outbox(
    c: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<Vec<OutboxRow>> {
    type Cols = (
        String,
        u64,
        String,
        String,
        String,
        String,
        String,
        String,
        u32,
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Cols> = c
        .prepare_cached(sql)
        .and_then(|mut s| {
            s.query_map(params, |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                    r.get(11)?,
                    r.get(12)?,
                    r.get(13)?,
                    r.get(14)?,
                ))
            })?
            .collect()
        })
        .map_err(db_err)?;
    let opt_ts = |v: Option<String>| v.map(|s| parse_ts(&s)).transpose();
    rows.into_iter()
        .map(
            |(
                stream,
                seq,
                sink,
                kind,
                key,
                event_id,
                payload,
                status,
                attempts,
                next,
                created,
                last_error,
                lease_owner,
                lease_until,
                delivered_at,
            )| {
                Ok(OutboxRow {
                    stream,
                    seq,
                    sink: Sink::parse(&sink)
                        .ok_or_else(|| StoreError::Corrupt(format!("bad sink {sink}")))?,
                    kind,
                    idempotency_key: key,
                    event_id,
                    payload: serde_json::from_str(&payload)
                        .map_err(|e| StoreError::Corrupt(format!("outbox payload: {e}")))?,
                    status: OutboxStatus::parse(&status)
                        .ok_or_else(|| StoreError::Corrupt(format!("bad status {status}")))?,
                    attempts,
                    next_attempt_at: parse_ts(&next)?,
                    created_at: parse_ts(&created)?,
                    last_error,
                    lease_owner,
                    lease_until: opt_ts(lease_until)?,
                    delivered_at: opt_ts(delivered_at)?,
                    version: None,
                })
            },
        )
        .collect()
}

/// Insert planned outbox rows (see [`plan::outbox_rows`]).
fn insert_outbox(c: &Connection, rows: &[OutboxRow]) -> Result<()> {
    for row in rows {
        let payload = serde_json::to_string(&row.payload)
            .map_err(|e| StoreError::Corrupt(format!("outbox encode: {e}")))?;
        c.prepare_cached(
            "INSERT INTO outbox (stream, seq, sink, kind, idempotency_key, event_id, payload, \
             status, attempts, next_attempt_at, created_at, last_error) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', 0, ?8, ?8, NULL)",
        )
        .and_then(|mut s| {
            s.execute(params![
                row.stream,
                row.seq,
                row.sink.as_str(),
                row.kind,
                row.idempotency_key,
                row.event_id,
                payload,
                ts(row.created_at)
            ])
        })
        .map_err(db_err)?;
    }
    Ok(())
}

/// `partition`'s audit chain head: (seq, hash).
fn audit_head(c: &Connection, partition: &str) -> Result<Option<(u64, String)>> {
    c.prepare_cached("SELECT seq, hash FROM audit_heads WHERE partition = ?1")
        .and_then(|mut s| {
            s.query_row([partition], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(db_err)
}

/// Insert planned chain entries of `partition` and move its recorded head to the last one
/// (inside the caller's transaction).
fn insert_audit(c: &Connection, partition: &str, entries: &[(AuditEntry, String)]) -> Result<()> {
    for (e, text) in entries {
        c.prepare_cached(
            "INSERT INTO audit (partition, seq, kind, key, at, body, prev, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .and_then(|mut s| {
            s.execute(params![
                e.partition,
                e.seq,
                e.kind,
                e.key,
                e.at,
                text,
                e.prev,
                e.hash
            ])
        })
        .map_err(db_err)?;
    }
    if let Some((e, _)) = entries.last() {
        c.prepare_cached(
            "INSERT INTO audit_heads (partition, seq, hash) VALUES (?1, ?2, ?3) \
             ON CONFLICT(partition) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        )
        .and_then(|mut s| s.execute(params![partition, e.seq, e.hash]))
        .map_err(db_err)?;
    }
    Ok(())
}

fn doc_commit_tx(c: &Connection, commit: &DocCommit) -> Result<bool> {
    if !valid_partition(&commit.partition) {
        return Err(StoreError::Corrupt(format!(
            "unusable partition name {:?}",
            commit.partition
        )));
    }
    for w in &commit.writes {
        let current: Option<i64> = c
            .prepare_cached("SELECT version FROM docs WHERE partition = ?1 AND key = ?2")
            .and_then(|mut s| {
                s.query_row([&commit.partition, &w.key], |r| r.get(0))
                    .optional()
            })
            .map_err(db_err)?;
        let ok = match (&w.expect, current) {
            (Expect::Absent, None) => true,
            (Expect::Version(v), Some(cur)) => v == &cur.to_string(),
            _ => false,
        };
        if !ok {
            // An error rolls this job's savepoint back, undoing this commit's earlier writes;
            // `doc_commit` turns it into `Ok(false)`.
            return Err(StoreError::Contention("expectation failed".into()));
        }
        let value = serde_json::to_string(&w.value)
            .map_err(|e| StoreError::Corrupt(format!("doc encode: {e}")))?;
        c.prepare_cached(
            "INSERT INTO docs (partition, key, value, version) VALUES (?1, ?2, ?3, 1) \
             ON CONFLICT(partition, key) DO UPDATE SET value = excluded.value, \
             version = docs.version + 1",
        )
        .and_then(|mut s| s.execute(params![commit.partition, w.key, value]))
        .map_err(db_err)?;
    }
    let seq0: u64 = c
        .prepare_cached("SELECT outbox_seq FROM streams WHERE stream = ?1")
        .and_then(|mut s| s.query_row([&commit.partition], |r| r.get(0)).optional())
        .map_err(db_err)?
        .unwrap_or(0);
    let w = plan::plan_doc_commit(commit, audit_head(c, &commit.partition)?, seq0);
    insert_audit(c, &commit.partition, &w.audit)?;
    if let Some(last) = w.outbox.last() {
        insert_outbox(c, &w.outbox)?;
        c.prepare_cached(
            "INSERT INTO streams (stream, incident_seq, outbox_seq, open_incident) \
             VALUES (?1, 0, ?2, NULL) ON CONFLICT(stream) DO UPDATE SET outbox_seq = excluded.outbox_seq",
        )
        .and_then(|mut s| s.execute(params![commit.partition, last.seq]))
        .map_err(db_err)?;
    }
    Ok(true)
}

fn doc_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn decode_doc((key, value, version): (String, String, i64)) -> Result<Doc> {
    Ok(Doc {
        value: serde_json::from_str(&value)
            .map_err(|e| StoreError::Corrupt(format!("doc {key}: {e}")))?,
        key,
        version: version.to_string(),
    })
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    async fn backup(
        &self,
        to: &Path,
        _progress: &(dyn Fn(u64) + Sync),
    ) -> Result<super::BackupWritten> {
        self.backup_to(to).await?;
        Ok(super::BackupWritten { entities: None })
    }

    async fn ping(&self) -> Result<()> {
        self.read(|c| {
            c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(|_| ())
                .map_err(db_err)
        })
        .await
    }
}

#[async_trait]
impl IncidentStore for SqliteStore {
    async fn ingest(&self, delivery: &Delivery, routing: &Routing) -> Result<Vec<EventOutcome>> {
        let (delivery, routing) = (delivery.clone(), routing.clone());
        self.write(move |c| apply_delivery(c, &delivery, &routing))
            .await
    }

    async fn incident(&self, id: &str) -> Result<Option<Incident>> {
        if stream_of_id(id).is_none() {
            return Ok(None);
        }
        let id = id.to_string();
        self.read(move |c| load_incident(c, &id)).await
    }

    async fn incidents(&self, filter: &IncidentFilter) -> Result<Vec<Incident>> {
        let f = filter.clone();
        self.read(move |c| {
            let mut sql = String::from("SELECT doc FROM incidents WHERE 1=1");
            let mut args: Vec<String> = Vec::new();
            if let Some(s) = f.status {
                args.push(s.as_str().to_string());
                sql.push_str(&format!(" AND status = ?{}", args.len()));
            }
            if let Some(s) = f.severity {
                args.push(s.as_str().to_string());
                sql.push_str(&format!(" AND severity = ?{}", args.len()));
            }
            if let Some(t) = f.since {
                args.push(ts(t));
                sql.push_str(&format!(" AND opened_at >= ?{}", args.len()));
            }
            sql.push_str(&format!(
                " ORDER BY opened_at DESC, id DESC LIMIT {}",
                f.limit
            ));
            let mut stmt = c.prepare(&sql).map_err(db_err)?;
            let docs: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(db_err)?;
            docs.iter()
                .map(|d| {
                    serde_json::from_str(d)
                        .map_err(|e| StoreError::Corrupt(format!("incident doc: {e}")))
                })
                .collect()
        })
        .await
    }

    async fn event(&self, id: &str) -> Result<Option<StoredEvent>> {
        let id = id.to_string();
        self.read(move |c| {
            let row = c
                .prepare_cached(&format!("SELECT {EVENT_COLS} FROM events WHERE id = ?1"))
                .and_then(|mut s| s.query_row([&id], event_from_row).optional())
                .map_err(db_err)?;
            row.map(decode_event).transpose()
        })
        .await
    }

    async fn stream_events(&self, stream: &str) -> Result<Vec<StoredEvent>> {
        let stream = stream.to_string();
        self.read(move |c| {
            let rows: Vec<_> = c
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLS} FROM events WHERE id > ?1 AND id < ?2 ORDER BY id"
                ))
                // Event ids are `EVT-<stream>-<time>...`, so the primary key groups a stream.
                .and_then(|mut s| {
                    let (lo, hi) = (format!("EVT-{stream}-"), format!("EVT-{stream}."));
                    s.query_map([&lo, &hi], event_from_row)?.collect()
                })
                .map_err(db_err)?;
            rows.into_iter().map(decode_event).collect()
        })
        .await
    }

    async fn raw_request(&self, request_id: &str) -> Result<Option<RawRequest>> {
        let id = request_id.to_string();
        self.read(move |c| {
            let row: Option<(String, String, String, String)> = c
                .prepare_cached(
                    "SELECT request_id, source, received_at, body FROM requests WHERE request_id = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                        .optional()
                })
                .map_err(db_err)?;
            row.map(|(request_id, source, received_at, body)| {
                Ok(RawRequest {
                    request_id,
                    source: Source::parse(&source)
                        .ok_or_else(|| StoreError::Corrupt(format!("bad source {source}")))?,
                    received_at: parse_ts(&received_at)?,
                    body,
                })
            })
            .transpose()
        })
        .await
    }

    async fn stream_outbox(&self, stream: &str) -> Result<Vec<OutboxRow>> {
        let stream = stream.to_string();
        self.read(move |c| {
            query_outbox(
                c,
                &format!("SELECT {OUTBOX_COLS} FROM outbox WHERE stream = ?1 ORDER BY seq"),
                &[&stream],
            )
        })
        .await
    }

    async fn count_events(&self) -> Result<u64> {
        self.read(|c| {
            c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
                .map_err(db_err)
        })
        .await
    }
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn outbox_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        stream: Option<&str>,
    ) -> Result<Vec<OutboxRow>> {
        let stream = stream.map(str::to_string);
        self.read(move |c| match &stream {
            Some(stream) => query_outbox(c, &due_sql(true), &[&ts(now), &(limit as i64), stream]),
            None => query_outbox(c, &due_sql(false), &[&ts(now), &(limit as i64)]),
        })
        .await
    }

    async fn outbox_lease(
        &self,
        row: &OutboxRow,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<OutboxRow>> {
        let (stream, seq, owner) = (row.stream.clone(), row.seq, owner.to_string());
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE outbox SET lease_owner = ?1, lease_until = ?2 \
                     WHERE stream = ?3 AND seq = ?4 AND status = 'pending' \
                     AND (lease_until IS NULL OR lease_until <= ?5)",
                )
                .and_then(|mut s| s.execute(params![owner, ts(until), stream, seq, ts(now)]))
                .map_err(db_err)?;
            if n == 0 {
                return Ok(None);
            }
            outbox_row(c, &stream, seq)
        })
        .await
    }

    async fn outbox_settle(&self, leased: &OutboxRow, settle: &Settle) -> Result<bool> {
        let (stream, seq) = (leased.stream.clone(), leased.seq);
        let (owner, until) = match (&leased.lease_owner, leased.lease_until) {
            (Some(o), Some(u)) => (o.clone(), ts(u)),
            _ => return Ok(false),
        };
        let settle = settle.clone();
        self.write(move |c| {
            let (set, args): (&str, Vec<Option<String>>) = match &settle {
                Settle::Delivered { at } => (
                    "status = 'delivered', delivered_at = ?5, attempts = attempts + 1, last_error = NULL",
                    vec![Some(ts(*at))],
                ),
                Settle::Retry {
                    next_attempt_at,
                    error,
                } => (
                    "next_attempt_at = ?5, last_error = ?6, attempts = attempts + 1",
                    vec![Some(ts(*next_attempt_at)), Some(error.clone())],
                ),
                Settle::Dead { error } => (
                    "status = 'dead', last_error = ?5, attempts = attempts + 1",
                    vec![Some(error.clone())],
                ),
                Settle::Defer { next_attempt_at } => {
                    ("next_attempt_at = ?5", vec![Some(ts(*next_attempt_at))])
                }
            };
            let sql = format!(
                "UPDATE outbox SET {set}, lease_owner = NULL, lease_until = NULL \
                 WHERE stream = ?1 AND seq = ?2 AND status = 'pending' \
                 AND lease_owner = ?3 AND lease_until = ?4"
            );
            let mut params: Vec<&dyn rusqlite::ToSql> = vec![&stream, &seq, &owner, &until];
            for a in &args {
                params.push(a);
            }
            let n = c
                .prepare_cached(&sql)
                .and_then(|mut s| s.execute(params.as_slice()))
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn outbox_get(&self, stream: &str, seq: u64) -> Result<Option<OutboxRow>> {
        let stream = stream.to_string();
        self.read(move |c| outbox_row(c, &stream, seq)).await
    }

    async fn outbox_list(&self, filter: &OutboxFilter) -> Result<Vec<OutboxRow>> {
        let f = filter.clone();
        self.read(move |c| {
            let sql = format!(
                "SELECT {OUTBOX_COLS} FROM outbox WHERE (?1 IS NULL OR status = ?1) \
                 AND (?2 IS NULL OR sink = ?2) ORDER BY created_at, stream, seq LIMIT ?3"
            );
            query_outbox(
                c,
                &sql,
                &[
                    &f.status.map(|s| s.as_str()),
                    &f.sink.map(|s| s.as_str()),
                    &(f.limit as i64),
                ],
            )
        })
        .await
    }

    async fn outbox_stats(
        &self,
        now: DateTime<Utc>,
    ) -> Result<std::collections::BTreeMap<&'static str, crate::storage::OutboxStats>> {
        self.read(move |c| {
            let mut by_sink = crate::storage::OutboxStats::empty_per_sink();
            let mut stmt = c
                .prepare_cached(
                    "SELECT sink, status, count(*), sum(next_attempt_at <= ?1), min(created_at) \
                     FROM outbox WHERE status IN ('pending', 'dead') GROUP BY sink, status",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([ts(now)], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                    ))
                })
                .map_err(db_err)?;
            for row in rows {
                let (sink, status, n, due, oldest) = row.map_err(db_err)?;
                let Some(sink) = Sink::parse(&sink) else {
                    continue;
                };
                let e = by_sink.entry(sink.as_str()).or_default();
                if status == "dead" {
                    e.dead = n as u64;
                } else {
                    e.pending = n as u64;
                    e.due = due.unwrap_or(0) as u64;
                    e.oldest_pending = oldest.as_deref().map(parse_ts).transpose()?;
                }
            }
            Ok(by_sink)
        })
        .await
    }

    async fn outbox_redrive(&self, stream: &str, seq: u64, now: DateTime<Utc>) -> Result<bool> {
        let stream = stream.to_string();
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?3, \
                     lease_owner = NULL, lease_until = NULL \
                     WHERE stream = ?1 AND seq = ?2 AND status = 'dead'",
                )
                .and_then(|mut s| s.execute(params![stream, seq, ts(now)]))
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }
}

#[async_trait]
impl DocStore for SqliteStore {
    async fn doc_get(&self, partition: &str, key: &str) -> Result<Option<Doc>> {
        let (p, k) = (partition.to_string(), key.to_string());
        self.read(move |c| {
            c.prepare_cached(
                "SELECT key, value, version FROM docs WHERE partition = ?1 AND key = ?2",
            )
            .and_then(|mut s| s.query_row([&p, &k], doc_from_row).optional())
            .map_err(db_err)?
            .map(decode_doc)
            .transpose()
        })
        .await
    }

    async fn doc_list(&self, partition: &str, prefix: &str) -> Result<Vec<Doc>> {
        let (p, prefix) = (partition.to_string(), prefix.to_string());
        self.read(move |c| {
            let rows: Vec<(String, String, i64)> = c
                .prepare_cached(
                    "SELECT key, value, version FROM docs WHERE partition = ?1 \
                     AND substr(key, 1, length(?2)) = ?2 ORDER BY key",
                )
                .and_then(|mut s| s.query_map([&p, &prefix], doc_from_row)?.collect())
                .map_err(db_err)?;
            rows.into_iter().map(decode_doc).collect()
        })
        .await
    }

    async fn doc_commit(&self, commit: &DocCommit) -> Result<bool> {
        let commit = commit.clone();
        match self.write(move |c| doc_commit_tx(c, &commit)).await {
            Err(StoreError::Contention(m)) if m == "expectation failed" => Ok(false),
            other => other,
        }
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn audit_partitions(&self) -> Result<Vec<String>> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT partition FROM audit_heads UNION SELECT partition FROM docs \
                 UNION SELECT stream FROM events UNION SELECT stream FROM incidents ORDER BY 1",
            )
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(db_err)
        })
        .await
    }

    async fn audit_heads(&self) -> Result<Vec<(String, u64, String)>> {
        self.read(|c| {
            c.prepare_cached("SELECT partition, seq, hash FROM audit_heads ORDER BY partition")
                .and_then(|mut s| {
                    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect()
                })
                .map_err(db_err)
        })
        .await
    }

    async fn audit_state(&self, partition: &str) -> Result<PartitionState> {
        let p = partition.to_string();
        self.read(move |c| {
            let mut st = PartitionState::default();
            let rows: Vec<(u64, String, String, String, String, String, String)> = c
                .prepare_cached(
                    "SELECT seq, kind, key, at, body, prev, hash FROM audit WHERE partition = ?1 ORDER BY rowid",
                )
                .and_then(|mut s| {
                    s.query_map([&p], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
                    })?
                    .collect()
                })
                .map_err(db_err)?;
            for (seq, kind, key, at, body, prev, hash) in rows {
                st.entries.push(AuditEntry {
                    partition: p.clone(),
                    seq,
                    kind,
                    key,
                    at,
                    body: serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
                    prev,
                    hash,
                });
            }
            st.head = c
                .prepare_cached("SELECT seq, hash FROM audit_heads WHERE partition = ?1")
                .and_then(|mut s| s.query_row([&p], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                .map_err(db_err)?;
            let docs: Vec<(String, String)> = c
                .prepare_cached("SELECT key, value FROM docs WHERE partition = ?1")
                .and_then(|mut s| s.query_map([&p], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(db_err)?;
            for (key, value) in docs {
                let v = serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value));
                st.records.insert((audit::kind::DOC.into(), key), v);
            }
            let events: Vec<[Option<String>; 14]> = c
                .prepare_cached(
                    "SELECT id, request_id, invocation_id, source, schema, kind, alert_id, \
                     dedup_key, stream, condition, severity, incident_id, received_at, raw \
                     FROM events WHERE stream = ?1",
                )
                .and_then(|mut s| s.query_map([&p], event_from_row)?.collect())
                .map_err(db_err)?;
            for cols in events {
                let id = cols[0].clone().unwrap_or_default();
                let body = match decode_event(cols) {
                    Ok(e) => audit::event_body(&e),
                    Err(e) => serde_json::json!({"unreadable": e.to_string()}),
                };
                st.records.insert((audit::kind::EVENT.into(), id), body);
            }
            let incidents: Vec<(String, String)> = c
                .prepare_cached("SELECT id, doc FROM incidents WHERE stream = ?1")
                .and_then(|mut s| s.query_map([&p], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(db_err)?;
            for (id, doc) in incidents {
                let body = match serde_json::from_str::<Incident>(&doc) {
                    Ok(i) => audit::incident_body(&i),
                    Err(_) => serde_json::Value::String(doc),
                };
                st.records.insert((audit::kind::INCIDENT.into(), id), body);
            }
            Ok(st)
        })
        .await
    }

    async fn audit_page(
        &self,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>> {
        let (p, seq) = after
            .map(|(p, s)| (p.to_string(), s as i64))
            .unwrap_or_default();
        let first = after.is_none();
        self.read(move |c| {
            let rows: Vec<(String, u64, String, String, String, String, String, String)> = c
                .prepare_cached(
                    "SELECT partition, seq, kind, key, at, body, prev, hash FROM audit \
                     WHERE ?1 OR (partition, seq) > (?2, ?3) ORDER BY partition, seq LIMIT ?4",
                )
                .and_then(|mut s| {
                    s.query_map(params![first, p, seq, limit as i64], |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                            r.get(7)?,
                        ))
                    })?
                    .collect()
                })
                .map_err(db_err)?;
            Ok(rows
                .into_iter()
                .map(
                    |(partition, seq, kind, key, at, body, prev, hash)| AuditEntry {
                        partition,
                        seq,
                        kind,
                        key,
                        at,
                        body: serde_json::from_str(&body)
                            .unwrap_or(serde_json::Value::String(body)),
                        prev,
                        hash,
                    },
                )
                .collect())
        })
        .await
    }
}

#[async_trait]
impl SecretStore for SqliteStore {
    async fn secret_put(&self, key: &str, value: &str, now: DateTime<Utc>) -> Result<()> {
        super::check_secret_key(key)?;
        let (key, value) = (key.to_string(), value.to_string());
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO secrets (key, value, created_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value, \
                 created_at = excluded.created_at",
            )
            .and_then(|mut s| s.execute(params![key, value, ts(now)]))
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn secret_get(&self, key: &str) -> Result<Option<String>> {
        if !super::valid_secret_key(key) {
            return Ok(None);
        }
        let key = key.to_string();
        self.read(move |c| {
            c.prepare_cached("SELECT value FROM secrets WHERE key = ?1")
                .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
                .map_err(db_err)
        })
        .await
    }

    async fn secret_delete(&self, key: &str) -> Result<bool> {
        if !super::valid_secret_key(key) {
            return Ok(false);
        }
        let key = key.to_string();
        self.write(move |c| {
            let n = c
                .prepare_cached("DELETE FROM secrets WHERE key = ?1")
                .and_then(|mut s| s.execute([key]))
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_streams_due_rows_are_found_through_the_stream_index() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(SCHEMA).unwrap();
        let plan: Vec<String> = c
            .prepare(&format!("EXPLAIN QUERY PLAN {}", due_sql(true)))
            .unwrap()
            .query_map(params!["2026-01-01", 10, "s"], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            plan[0].contains("outbox_heads (status=? AND stream=?)"),
            "{plan:?}"
        );
    }

    /// Durability is a setting: a SIGKILL test cannot tell an fsync from the page cache, so check
    /// the writer's settings themselves.
    #[test]
    fn the_writer_fsyncs_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (mode, sync): (String, i64) = rt
            .block_on(store.write(|c| {
                let mode = c
                    .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                    .map_err(db_err)?;
                let sync = c
                    .query_row("PRAGMA synchronous", [], |r| r.get(0))
                    .map_err(db_err)?;
                Ok((mode, sync))
            }))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2, "synchronous=FULL");
    }
}
