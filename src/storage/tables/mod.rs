//! The Azure Table Storage backend of [`Store`]: [`TableStore`].
//!
//! Two tables. `<prefix>streams` holds everything about incident streams, one partition per
//! stream (PartitionKey = [`stream_key`]), with rows `head` (incident and outbox sequence
//! numbers, the open incident), `event|<event_id>`, `dedup|<sha256 of dedup key>`,
//! `incident|<incident_id>` and `outbox|<seq, 12 digits>`; every row has a `Kind` column.
//! `<prefix>requests` holds the raw bodies of requests that carried several alerts
//! (PartitionKey = `YYYYMMDD` of receipt, RowKey = request id).
//!
//! Each new alert is one entity-group transaction on its stream's partition: event, dedup
//! marker, head (inserted, or updated with `If-Match` on the ETag read), incident and outbox
//! rows. A concurrent writer on the same stream (another task or another hub instance) makes
//! the transaction fail with 409/412; the alert is then re-read and re-planned, so no update is
//! lost and an incident is never opened twice.
//!
//! Cross-partition reads (`incidents`, `raw_request`, `count_events`) scan the table with a
//! server-side filter; fine for operator use, not for hot paths.

mod connection;
mod rows;

use crate::domain::incident::Incident;
use crate::domain::incident::{plan, stream_key, stream_of_id, IncidentAction, StreamState};
use crate::domain::routing::Routing;
use crate::storage::{
    Delivery, DeliveryAlert, EventOutcome, IncidentFilter, OutboxRow, OutboxStatus, RawRequest,
    Result, Store, StoreError, StoredEvent,
};
use async_trait::async_trait;
use azure_core::{Etag, StatusCode};
use azure_data_tables::prelude::{IfMatchCondition, TableClient};
use chrono::Utc;
use connection::{map_err, status_of};
use futures::StreamExt;
use rows::{lit, valid_key, Dedup, Entity, HEAD};
use std::collections::BTreeMap;
use std::time::Duration;

/// Attempts of one alert's read-plan-commit loop before giving up with `Contention`.
const MAX_ATTEMPTS: u32 = 30;

/// Azure Table Storage implementation of [`Store`]. Cheap to clone; safe to share.
#[derive(Debug, Clone)]
pub struct TableStore {
    streams: TableClient,
    requests: TableClient,
    location: String,
}

/// Outcome of one commit attempt.
enum Commit {
    Done,
    /// Another writer changed the partition first (409/412): re-read and retry.
    Conflict,
}

impl TableStore {
    /// Connect and create the tables `<prefix>streams` and `<prefix>requests` if missing.
    ///
    /// `table_prefix` must be alphanumeric and start with a letter (or be empty). Errors with
    /// [`StoreError::Config`] for a bad connection string or rejected credentials, and
    /// [`StoreError::Unavailable`] when the service cannot be reached.
    pub async fn connect(connection_string: &str, table_prefix: &str) -> Result<TableStore> {
        if !table_prefix.chars().all(|c| c.is_ascii_alphanumeric())
            || table_prefix.starts_with(|c: char| c.is_ascii_digit())
            || table_prefix.len() > 55
        {
            return Err(StoreError::Config(format!(
                "table prefix {table_prefix:?} must be at most 55 ASCII letters and digits, \
                 starting with a letter"
            )));
        }
        let endpoint = connection::parse(connection_string)?;
        let service = connection::client(&endpoint)?;
        let streams = service.table_client(format!("{table_prefix}streams"));
        let requests = service.table_client(format!("{table_prefix}requests"));
        for table in [&streams, &requests] {
            create_table(table).await?;
        }
        Ok(TableStore {
            location: format!(
                "{} (tables {}, {})",
                endpoint.url,
                streams.table_name(),
                requests.table_name()
            ),
            streams,
            requests,
        })
    }

    /// Point read; `None` on 404.
    async fn get(&self, table: &TableClient, pk: &str, rk: &str) -> Result<Option<(Entity, Etag)>> {
        let res = table
            .partition_key_client(pk.replace('\'', "''"))
            .entity_client(rk.replace('\'', "''"))
            .get::<Entity>()
            .await;
        match res {
            Ok(r) => Ok(Some((r.entity, r.etag))),
            Err(e) if status_of(&e) == Some(StatusCode::NotFound) => Ok(None),
            Err(e) => Err(map_err("read", e)),
        }
    }

    /// All entities matching `filter`, following continuation tokens.
    async fn query(&self, table: &TableClient, filter: String) -> Result<Vec<Entity>> {
        let mut pages = table.query().filter(filter).into_stream::<Entity>();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            out.extend(page.map_err(|e| map_err("query", e))?.entities);
        }
        Ok(out)
    }

    /// Rows of one stream whose RowKey starts with `<prefix>|`, in RowKey order.
    async fn stream_rows(&self, stream: &str, prefix: &str) -> Result<Vec<Entity>> {
        if !valid_key(stream) {
            return Ok(Vec::new());
        }
        // '}' follows '|' in ASCII: the range is exactly the keys starting with "<prefix>|".
        let filter = format!(
            "PartitionKey eq {} and RowKey ge '{prefix}|' and RowKey lt '{prefix}}}'",
            lit(stream)
        );
        self.query(&self.streams, filter).await
    }

    /// Store one alert: the read-plan-commit loop on its stream's partition.
    async fn ingest_alert(
        &self,
        delivery: &Delivery,
        da: &DeliveryAlert,
        routing: &Routing,
    ) -> Result<EventOutcome> {
        let stream = stream_key(&da.alert).to_string();
        if !valid_key(&stream) || !valid_key(&da.event_id) {
            return Err(StoreError::Corrupt(format!(
                "alert has an unusable stream key {stream:?} or event id {:?}",
                da.event_id
            )));
        }
        let dedup_rk = rows::dedup_key(&da.alert.dedup_key);
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(jitter()).await;
            }
            let (head, dedup) = futures::join!(
                self.get(&self.streams, &stream, HEAD),
                self.get(&self.streams, &stream, &dedup_rk)
            );
            if let Some((m, _)) = dedup? {
                let d = rows::dedup_of(&m)?;
                // Our own event id means an earlier attempt of ours committed (e.g. the
                // response was lost and the batch retried): report it as new.
                let duplicate = d.event_id != da.event_id;
                return Ok(EventOutcome {
                    event_id: d.event_id,
                    duplicate,
                    incident_id: d.incident_id,
                    action: if duplicate {
                        IncidentAction::None
                    } else {
                        d.action
                    },
                });
            }
            let (state, outbox_seq, etag) = match head? {
                Some((m, etag)) => {
                    let (incident_seq, outbox_seq, open) = rows::head_of(&m)?;
                    (StreamState { incident_seq, open }, outbox_seq, Some(etag))
                }
                None => (StreamState::default(), 0, None),
            };
            let p = plan(
                routing,
                &state,
                &da.alert,
                &da.event_id,
                delivery.received_at,
            );
            let incident_id = p.incident.as_ref().map(|i| i.id.clone());
            let outcome = EventOutcome {
                event_id: da.event_id.clone(),
                duplicate: false,
                incident_id: incident_id.clone(),
                action: p.action,
            };
            let event = StoredEvent {
                id: da.event_id.clone(),
                request_id: delivery.request_id.clone(),
                invocation_id: delivery.invocation_id.clone(),
                source: da.alert.source,
                schema: da.alert.schema.clone(),
                kind: da.alert.kind.clone(),
                alert_id: da.alert.alert_id.clone(),
                dedup_key: da.alert.dedup_key.clone(),
                stream: stream.clone(),
                condition: da.alert.condition,
                severity: da.alert.severity,
                incident_id: incident_id.clone(),
                received_at: delivery.received_at,
                raw: da
                    .raw_alert
                    .clone()
                    .unwrap_or_else(|| delivery.raw_body.clone()),
            };
            let now = Utc::now();
            let outbox: Vec<OutboxRow> = p
                .outbox
                .into_iter()
                .enumerate()
                .map(|(i, d)| OutboxRow {
                    stream: stream.clone(),
                    seq: outbox_seq + 1 + i as u64,
                    sink: d.sink,
                    kind: d.kind,
                    idempotency_key: d.idempotency_key,
                    event_id: da.event_id.clone(),
                    payload: d.payload,
                    status: OutboxStatus::Pending,
                    attempts: 0,
                    next_attempt_at: now,
                    created_at: now,
                    last_error: None,
                })
                .collect();
            let dedup = Dedup {
                event_id: da.event_id.clone(),
                incident_id,
                action: p.action,
            };
            let head = rows::head_entity(
                &stream,
                p.next.incident_seq,
                outbox_seq + outbox.len() as u64,
                p.next.open.as_ref(),
            )?;
            let commit = self
                .commit(
                    &stream,
                    &event,
                    &dedup,
                    head,
                    etag,
                    p.incident.as_ref(),
                    &outbox,
                )
                .await?;
            if let Commit::Done = commit {
                return Ok(outcome);
            }
            tracing::debug!(stream = %stream, attempt, "stream changed concurrently; retrying");
        }
        Err(StoreError::Contention(format!(
            "stream {stream}: gave up after {MAX_ATTEMPTS} conflicting attempts"
        )))
    }

    /// One entity-group transaction writing everything an alert changed.
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        stream: &str,
        event: &StoredEvent,
        dedup: &Dedup,
        head: Entity,
        etag: Option<Etag>,
        incident: Option<&Incident>,
        outbox: &[OutboxRow],
    ) -> Result<Commit> {
        let build = |e: azure_core::Error| map_err("build transaction", e);
        let mut tx = self
            .streams
            .partition_key_client(stream)
            .transaction()
            .insert(rows::event_entity(event)?)
            .map_err(build)?
            .insert(rows::dedup_entity(stream, &event.dedup_key, dedup))
            .map_err(build)?;
        tx = match etag {
            Some(etag) => tx.update(HEAD, head, Some(IfMatchCondition::Etag(etag))),
            None => tx.insert(head),
        }
        .map_err(build)?;
        if let Some(inc) = incident {
            tx = tx
                .insert_or_replace(rows::incident_key(&inc.id), rows::incident_entity(inc)?)
                .map_err(build)?;
        }
        for row in outbox {
            tx = tx.insert(rows::outbox_entity(row)?).map_err(build)?;
        }
        let ops = 3 + usize::from(incident.is_some()) + outbox.len();
        let resp = match tx.await {
            Ok(resp) => resp,
            Err(e) if is_conflict(status_of(&e)) => return Ok(Commit::Conflict),
            Err(e) => return Err(map_err("commit", e)),
        };
        // A failed entity-group transaction still answers 202: the failure is in the
        // per-operation responses (usually only the failing one is listed).
        let statuses: Vec<StatusCode> = resp
            .operation_responses
            .iter()
            .map(|r| r.status_code)
            .collect();
        if statuses.iter().any(|s| is_conflict(Some(*s))) {
            return Ok(Commit::Conflict);
        }
        if statuses.len() == ops && statuses.iter().all(|s| s.is_success()) {
            return Ok(Commit::Done);
        }
        Err(StoreError::Unavailable(format!(
            "commit on stream {stream}: Table Storage answered {:?} for {ops} operations",
            statuses.iter().map(|s| u16::from(*s)).collect::<Vec<_>>()
        )))
    }
}

fn is_conflict(status: Option<StatusCode>) -> bool {
    matches!(
        status,
        Some(StatusCode::Conflict | StatusCode::PreconditionFailed)
    )
}

/// 5-50 ms, uniformly, so that retrying writers spread out.
fn jitter() -> Duration {
    let r = (uuid::Uuid::new_v4().as_u128() % 46) as u64;
    Duration::from_millis(5 + r)
}

async fn create_table(table: &TableClient) -> Result<()> {
    match table.create().await {
        Ok(_) => Ok(()),
        Err(e) if status_of(&e) == Some(StatusCode::Conflict) => Ok(()),
        Err(e) if matches!(status_of(&e).map(u16::from), Some(401 | 403)) => {
            Err(StoreError::Config(format!(
                "Table Storage refused the credentials while creating table {} ({})",
                table.table_name(),
                u16::from(status_of(&e).expect("matched"))
            )))
        }
        Err(e) => Err(map_err(&format!("create table {}", table.table_name()), e)),
    }
}

#[async_trait]
impl Store for TableStore {
    fn backend(&self) -> &'static str {
        "azure_tables"
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn ingest(&self, delivery: &Delivery, routing: &Routing) -> Result<Vec<EventOutcome>> {
        // Streams are independent partitions: run them concurrently, each in delivery order.
        let mut by_stream: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, da) in delivery.alerts.iter().enumerate() {
            by_stream.entry(stream_key(&da.alert)).or_default().push(i);
        }
        let per_stream = by_stream.into_values().map(|idxs| async move {
            let mut out = Vec::with_capacity(idxs.len());
            for i in idxs {
                let da = &delivery.alerts[i];
                out.push((i, self.ingest_alert(delivery, da, routing).await?));
            }
            Ok::<_, StoreError>(out)
        });
        let mut outcomes: Vec<(usize, EventOutcome)> = futures::future::try_join_all(per_stream)
            .await?
            .into_iter()
            .flatten()
            .collect();
        outcomes.sort_by_key(|(i, _)| *i);
        let outcomes: Vec<EventOutcome> = outcomes.into_iter().map(|(_, o)| o).collect();

        let any_new = outcomes.iter().any(|o| !o.duplicate);
        if delivery.alerts.len() != 1 && (delivery.alerts.is_empty() || any_new) {
            if !valid_key(&delivery.request_id) {
                return Err(StoreError::Corrupt(format!(
                    "request id {:?} cannot be a RowKey",
                    delivery.request_id
                )));
            }
            let req = RawRequest {
                request_id: delivery.request_id.clone(),
                source: delivery.source,
                received_at: delivery.received_at,
                body: delivery.raw_body.clone(),
            };
            let entity = rows::request_entity(&req)?;
            let day = delivery.received_at.format("%Y%m%d").to_string();
            self.requests
                .partition_key_client(day)
                .entity_client(req.request_id.replace('\'', "''"))
                .insert_or_replace(&entity)
                .map_err(|e| map_err("store request", e))?
                .await
                .map_err(|e| map_err("store request", e))?;
        }
        Ok(outcomes)
    }

    async fn incident(&self, id: &str) -> Result<Option<Incident>> {
        let Some(stream) = stream_of_id(id).filter(|_| valid_key(id) && id.starts_with("INC-"))
        else {
            return Ok(None);
        };
        match self
            .get(&self.streams, stream, &rows::incident_key(id))
            .await?
        {
            Some((m, _)) => rows::incident_of(&m).map(Some),
            None => Ok(None),
        }
    }

    /// Scans the incident rows of all streams (filtered server-side on `Kind`, status,
    /// severity and opening time), then sorts newest first. `limit` 0 means no limit.
    async fn incidents(&self, filter: &IncidentFilter) -> Result<Vec<Incident>> {
        let mut q = "Kind eq 'incident'".to_string();
        if let Some(s) = filter.status {
            q.push_str(&format!(" and Status eq {}", lit(s.as_str())));
        }
        if let Some(s) = filter.severity {
            q.push_str(&format!(" and Severity eq {}", lit(s.as_str())));
        }
        if let Some(t) = filter.since {
            q.push_str(&format!(" and OpenedAt ge {}", lit(&rows::ts(t))));
        }
        let mut out = self
            .query(&self.streams, q)
            .await?
            .iter()
            .map(rows::incident_of)
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| b.opened_at.cmp(&a.opened_at).then_with(|| b.id.cmp(&a.id)));
        if filter.limit > 0 {
            out.truncate(filter.limit);
        }
        Ok(out)
    }

    async fn event(&self, id: &str) -> Result<Option<StoredEvent>> {
        let Some(stream) = stream_of_id(id).filter(|_| valid_key(id) && id.starts_with("EVT-"))
        else {
            return Ok(None);
        };
        match self
            .get(&self.streams, stream, &rows::event_key(id))
            .await?
        {
            Some((m, _)) => rows::event_of(&m).map(Some),
            None => Ok(None),
        }
    }

    async fn stream_events(&self, stream: &str) -> Result<Vec<StoredEvent>> {
        let mut out = self
            .stream_rows(stream, "event")
            .await?
            .iter()
            .map(rows::event_of)
            .collect::<Result<Vec<_>>>()?;
        // RowKey order is event-id order, which is time order; make receipt time win.
        out.sort_by_key(|e| e.received_at);
        Ok(out)
    }

    /// Looks the request id up across all days (a RowKey filter: scans the requests table).
    async fn raw_request(&self, request_id: &str) -> Result<Option<RawRequest>> {
        if !valid_key(request_id) {
            return Ok(None);
        }
        let rows = self
            .query(&self.requests, format!("RowKey eq {}", lit(request_id)))
            .await?;
        rows.first().map(rows::request_of).transpose()
    }

    async fn stream_outbox(&self, stream: &str) -> Result<Vec<OutboxRow>> {
        let mut out = self
            .stream_rows(stream, "outbox")
            .await?
            .iter()
            .map(rows::outbox_of)
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|o| o.seq);
        Ok(out)
    }

    /// Scans all event rows (only their keys are transferred).
    async fn count_events(&self) -> Result<u64> {
        let mut pages = self
            .streams
            .query()
            .filter("Kind eq 'event'")
            .select("PartitionKey,RowKey")
            .into_stream::<Entity>();
        let mut n = 0u64;
        while let Some(page) = pages.next().await {
            n += page.map_err(|e| map_err("count events", e))?.entities.len() as u64;
        }
        Ok(n)
    }

    async fn ping(&self) -> Result<()> {
        let mut pages = self
            .streams
            .query()
            .filter("PartitionKey eq 'ping' and RowKey eq 'ping'")
            .top(1)
            .into_stream::<Entity>();
        match pages.next().await {
            Some(Err(e)) => Err(map_err("ping", e)),
            _ => Ok(()),
        }
    }
}
