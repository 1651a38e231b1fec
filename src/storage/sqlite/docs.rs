//! Documents: commits checked against their expectations, chained and with their outbox rows.

use super::*;

pub(super) fn doc_commit_tx(c: &Connection, commit: &DocCommit) -> Result<bool> {
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

pub(super) fn doc_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

pub(super) fn decode_doc((key, value, version): (String, String, i64)) -> Result<Doc> {
    Ok(Doc {
        value: serde_json::from_str(&value)
            .map_err(|e| StoreError::Corrupt(format!("doc {key}: {e}")))?,
        key,
        version: version.to_string(),
    })
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
