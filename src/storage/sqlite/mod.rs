//! The embedded store: SQLite (WAL, `synchronous=FULL`) in one file under `ICAHUB_DATA_DIR`.
//!
//! All writes go through one writer thread that takes whatever deliveries are queued, applies each
//! inside its own savepoint of one `BEGIN IMMEDIATE` transaction, commits once (one fsync for the
//! whole group) and only then answers every caller. That is group commit: each acknowledged alert
//! is fsync'd, and the fsync cost is shared by everyone who arrived while the previous one ran.
//! `BEGIN IMMEDIATE` also serializes writers from other processes on the same file, and a partial
//! unique index makes a second open incident per stream impossible at the database level.
//! Reads use a small pool of separate connections, so they never wait for the writer.
//!
//! Files: this one (opening, the reader pool, backup and restore, the [`Store`] impl), `writer`
//! (the writer thread and group commit), `schema`, and one per capability: `ingest`, `outbox`,
//! `docs`, `audit`, `secrets`.

mod audit;
mod docs;
mod ingest;
mod outbox;
mod schema;
mod secrets;
mod writer;

use self::{audit::*, ingest::*, outbox::*, schema::*, secrets::*, writer::*};
use super::plan::{self, AlertWrite, StreamHead};
use super::{
    valid_partition, AuditStore, Delivery, Doc, DocCommit, DocStore, EventOutcome, Expect,
    IncidentFilter, IncidentStore, OutboxFilter, OutboxRow, OutboxStatus, OutboxStore, RawRequest,
    Result, SecretStore, Settle, Store, StoreError, StoredEvent,
};
use crate::domain::alert::{Condition, Severity, Source};
use crate::domain::audit_chain::{self, AuditEntry, PartitionState};
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

fn poisoned() -> StoreError {
    StoreError::Unavailable("reader pool lock poisoned".into())
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
        // VACUUM INTO would write into an existing empty file; a backup never reuses a file.
        if to.exists() {
            return Err(StoreError::Config(format!("{} exists", to.display())));
        }
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
