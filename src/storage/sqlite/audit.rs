//! The audit chains: appending planned entries with their head, and reading them back.

use super::*;

/// `partition`'s audit chain head: (seq, hash).
pub(super) fn audit_head(c: &Connection, partition: &str) -> Result<Option<(u64, String)>> {
    c.prepare_cached("SELECT seq, hash FROM audit_heads WHERE partition = ?1")
        .and_then(|mut s| {
            s.query_row([partition], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(db_err)
}

/// Insert planned chain entries of `partition` and move its recorded head to the last one
/// (inside the caller's transaction).
pub(super) fn insert_audit(
    c: &Connection,
    partition: &str,
    entries: &[(AuditEntry, String)],
) -> Result<()> {
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
                st.records.insert((audit_chain::kind::DOC.into(), key), v);
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
                    Ok(e) => audit_chain::event_body(&e),
                    Err(e) => serde_json::json!({"unreadable": e.to_string()}),
                };
                st.records.insert((audit_chain::kind::EVENT.into(), id), body);
            }
            let incidents: Vec<(String, String)> = c
                .prepare_cached("SELECT id, doc FROM incidents WHERE stream = ?1")
                .and_then(|mut s| s.query_map([&p], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(db_err)?;
            for (id, doc) in incidents {
                let body = match serde_json::from_str::<Incident>(&doc) {
                    Ok(i) => audit_chain::incident_body(&i),
                    Err(_) => serde_json::Value::String(doc),
                };
                st.records.insert((audit_chain::kind::INCIDENT.into(), id), body);
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
