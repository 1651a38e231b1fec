//! Incidents and events: reading the ingest plan's inputs and persisting the plan
//! ([`crate::storage::plan`]) inside a savepoint, and the reads of events and incidents.

use super::*;

/// One delivery's write: for each alert, read the plan's inputs and persist what
/// [`plan::plan_alert`] says (all inside the caller's savepoint, so the delivery is atomic).
pub(super) fn apply_delivery(
    tx: &Connection,
    d: &Delivery,
    routing: &Routing,
) -> Result<Vec<EventOutcome>> {
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
pub(super) fn read_head(tx: &Connection, stream: &str) -> Result<(StreamHead, bool)> {
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
pub(super) fn persist_alert(tx: &Connection, w: &AlertWrite, stream_unchanged: bool) -> Result<()> {
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

pub(super) fn load_incident(conn: &Connection, id: &str) -> Result<Option<Incident>> {
    let doc: Option<String> = conn
        .prepare_cached("SELECT doc FROM incidents WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .map_err(db_err)?;
    doc.map(|d| {
        serde_json::from_str(&d).map_err(|e| StoreError::Corrupt(format!("incident {id}: {e}")))
    })
    .transpose()
}

pub(super) fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<[Option<String>; 14]> {
    let mut out: [Option<String>; 14] = Default::default();
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = r.get(i)?;
    }
    Ok(out)
}

pub(super) const EVENT_COLS: &str =
    "id, request_id, invocation_id, source, schema, kind, alert_id, \
    dedup_key, stream, condition, severity, incident_id, received_at, raw";

pub(super) fn decode_event(c: [Option<String>; 14]) -> Result<StoredEvent> {
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
