//! Backup and restore of the hub's two tables, entity by entity, as NDJSON: a header line, one
//! `{"table", "entity"}` line per entity (its properties with their `@odata.type` annotations,
//! so binary chunks and 64-bit numbers come back as they were), and a trailer with the count. A
//! restore refuses a file without its trailer (cut short) and a target that already holds data;
//! it writes each partition with entity-group transactions of up to 100 entities.
//!
//! Secrets (the `secrets` partition of `<prefix>requests`, see [`crate::storage::SecretStore::secret_put`])
//! are never read into a backup (a server-side filter leaves them out), and a restore refuses a
//! file that holds one. So a restored store holds no job tokens: checks that were waiting on an
//! approval can no longer be called back, and Azure DevOps fails them at their timeout.
//!
//! A backup taken while the hub runs is per-entity consistent, not a snapshot: stop the hub or
//! take it in a quiet moment, and check the result with `icahub audit verify`, which finds any
//! chain a concurrent write left half-copied.

use super::connection::map_err;
use super::rows::Entity;
use super::TableStore;
use crate::storage::{Result, StoreError};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};

pub const FORMAT: &str = "icahub-table-backup";
const BATCH: usize = 100;
const BATCH_BYTES: usize = 3 * 1024 * 1024;

/// Properties the service adds and a restore must not send back.
fn strip_service_properties(mut e: Entity) -> Entity {
    e.retain(|k, _| !k.starts_with("odata.") && k != "Timestamp" && k != "Timestamp@odata.type");
    e
}

impl TableStore {
    /// Write every entity of both tables to `out`; `progress` is called with the running count.
    pub async fn backup_to(
        &self,
        out: &mut (dyn Write + Send),
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64> {
        let io = |e: std::io::Error| StoreError::Unavailable(format!("writing the backup: {e}"));
        let header = json!({"format": FORMAT, "version": 1,
            "created_at": chrono::Utc::now(), "source": self.location,
            "hub_version": env!("CARGO_PKG_VERSION")});
        writeln!(out, "{header}").map_err(io)?;
        let mut n = 0u64;
        let no_secrets = format!(
            "PartitionKey ne {}",
            super::rows::lit(crate::storage::SECRETS_PARTITION)
        );
        for (name, table) in [("streams", &self.streams), ("requests", &self.requests)] {
            let query = table.query();
            let query = if name == "requests" {
                query.filter(no_secrets.clone())
            } else {
                query
            };
            let mut pages = query.into_stream::<Entity>();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| map_err("backup query", e))?;
                for e in page.entities {
                    let line = json!({"table": name, "entity": strip_service_properties(e)});
                    writeln!(out, "{line}").map_err(io)?;
                    n += 1;
                    if n % 500 == 0 {
                        progress(n);
                    }
                }
            }
        }
        writeln!(out, "{}", json!({"end": true, "entities": n})).map_err(io)?;
        out.flush().map_err(io)?;
        progress(n);
        Ok(n)
    }

    /// [`TableStore::backup_to`] into the new file `to`, synced.
    pub(crate) async fn backup_to_file(
        &self,
        to: &std::path::Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64> {
        let file = crate::storage::open::create_new(to)?;
        let mut w = std::io::BufWriter::new(file);
        let n = self.backup_to(&mut w, progress).await?;
        let io = |what: &str, e: std::io::Error| {
            StoreError::Unavailable(format!("{what} the backup: {e}"))
        };
        let file = w.into_inner().map_err(|e| io("flushing", e.into_error()))?;
        file.sync_all().map_err(|e| io("syncing", e))?;
        Ok(n)
    }

    /// Whether both tables are empty.
    pub async fn is_empty(&self) -> Result<bool> {
        for table in [&self.streams, &self.requests] {
            // A page may come back empty with a continuation: read on until an entity or the end.
            let mut pages = table.query().top(1).into_stream::<Entity>();
            while let Some(page) = pages.next().await {
                if !page.map_err(|e| map_err("query", e))?.entities.is_empty() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Load a backup written by [`TableStore::backup_to`] into these (empty) tables.
    pub async fn restore_from(
        &self,
        input: &mut (dyn BufRead + Send),
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64> {
        let bad = |m: String| StoreError::Config(format!("backup file: {m}"));
        let mut lines = input.lines();
        let header: Value = lines
            .next()
            .ok_or_else(|| bad("it is empty".into()))?
            .map_err(|e| bad(e.to_string()))
            .and_then(|l| serde_json::from_str(&l).map_err(|_| bad("no header line".into())))?;
        if header["format"] != FORMAT {
            return Err(bad(format!(
                "not an icahub Table Storage backup (format {})",
                header["format"]
            )));
        }
        if !self.is_empty().await? {
            return Err(StoreError::Config(format!(
                "the target tables ({}) already hold data: restore into a new table prefix or \
                 account, never over live data",
                self.location
            )));
        }
        // Read it all first: a file cut short must not leave a half restore behind.
        let mut by_table: BTreeMap<String, BTreeMap<String, Vec<Entity>>> = BTreeMap::new();
        let mut count = 0u64;
        let mut trailer = None;
        for (i, line) in lines.enumerate() {
            let line = line.map_err(|e| bad(e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&line)
                .map_err(|_| bad(format!("line {} is not JSON", i + 2)))?;
            if v["end"] == json!(true) {
                trailer = v["entities"].as_u64();
                break;
            }
            let table = v["table"].as_str().unwrap_or_default().to_string();
            if table != "streams" && table != "requests" {
                return Err(bad(format!("line {}: unknown table {:?}", i + 2, table)));
            }
            let Some(Value::Object(e)) = v.get("entity").cloned() else {
                return Err(bad(format!("line {}: no entity", i + 2)));
            };
            let pk = e
                .get("PartitionKey")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("line {}: no PartitionKey", i + 2)))?
                .to_string();
            if table == "requests" && pk == crate::storage::SECRETS_PARTITION {
                return Err(bad(format!(
                    "line {}: a secret; backups never hold secrets, so this file was not written by icahub backup",
                    i + 2
                )));
            }
            by_table
                .entry(table)
                .or_default()
                .entry(pk)
                .or_default()
                .push(e);
            count += 1;
        }
        match trailer {
            Some(n) if n == count => {}
            Some(n) => {
                return Err(bad(format!(
                    "the trailer counts {n} entities but the file holds {count}"
                )))
            }
            None => {
                return Err(bad(
                    "no trailer: the file was cut short (nothing was restored)".into(),
                ))
            }
        }

        let mut done = 0u64;
        for (name, partitions) in by_table {
            let table = if name == "streams" {
                &self.streams
            } else {
                &self.requests
            };
            let mut batches = Vec::new();
            for (pk, entities) in partitions {
                let mut batch: Vec<Entity> = Vec::new();
                let mut bytes = 0;
                for e in entities {
                    let size = serde_json::to_string(&e).map_or(0, |s| s.len()) + 1024;
                    if !batch.is_empty() && (batch.len() == BATCH || bytes + size > BATCH_BYTES) {
                        batches.push((pk.clone(), std::mem::take(&mut batch)));
                        bytes = 0;
                    }
                    bytes += size;
                    batch.push(e);
                }
                if !batch.is_empty() {
                    batches.push((pk, batch));
                }
            }
            let mut results = futures::stream::iter(batches)
                .map(|(pk, batch)| async move {
                    let n = batch.len();
                    let build = |e: azure_core::Error| map_err("build restore transaction", e);
                    let mut tx = table
                        .partition_key_client(pk.replace('\'', "''"))
                        .transaction();
                    for e in batch {
                        tx = tx.insert(e).map_err(build)?;
                    }
                    let resp = tx.await.map_err(|e| map_err("restore transaction", e))?;
                    let ok = resp.operation_responses.len() == n
                        && resp
                            .operation_responses
                            .iter()
                            .all(|r| r.status_code.is_success());
                    if !ok {
                        return Err(StoreError::Unavailable(format!(
                            "restoring partition {pk}: Table Storage answered {:?}",
                            resp.operation_responses
                                .iter()
                                .map(|r| u16::from(r.status_code))
                                .collect::<Vec<_>>()
                        )));
                    }
                    Ok(n as u64)
                })
                .buffer_unordered(8);
            while let Some(r) = results.next().await {
                match r {
                    Ok(n) => done += n,
                    Err(e) => {
                        return Err(StoreError::Unavailable(format!(
                            "{e}; {done} entities were written before it failed: delete the \
                             tables {} and {} before restoring again (a restore only goes into \
                             empty tables)",
                            self.streams.table_name(),
                            self.requests.table_name()
                        )))
                    }
                }
                progress(done);
            }
        }
        Ok(done)
    }
}
