//! The write path of [`TableStore`]: one alert's read-plan-commit loop on its stream partition,
//! and the entity-group transaction that commits it (retried on 409/412 with jittered backoff).

use super::connection::{map_err, status_of};
use super::rows::{self, valid_key, Dedup, Entity, HEAD};
use super::TableStore;
use crate::domain::incident::{plan, stream_key, Incident, IncidentAction, StreamState};
use crate::domain::routing::Routing;
use crate::storage::{
    Delivery, DeliveryAlert, EventOutcome, OutboxRow, OutboxStatus, Result, StoreError, StoredEvent,
};
use azure_core::{Etag, StatusCode};
use azure_data_tables::prelude::IfMatchCondition;
use std::time::Duration;

/// Attempts of one alert's read-plan-commit loop before giving up with `Contention`.
const MAX_ATTEMPTS: u32 = 30;
/// Time after which one alert's loop stops retrying conflicts, within the callers' ~10 s.
const CONFLICT_BUDGET: Duration = Duration::from_secs(7);

/// Outcome of one commit attempt.
enum Commit {
    Done,
    /// Another writer changed the partition first (409/412): re-read and retry.
    Conflict,
}

impl TableStore {
    /// Store one alert: the read-plan-commit loop on its stream's partition.
    pub(super) async fn ingest_alert(
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
        let started = std::time::Instant::now();
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                if started.elapsed() > CONFLICT_BUDGET {
                    break;
                }
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
                    outbox_rows: 0,
                });
            }
            let (state, outbox_seq, etag, audit_head) = match head? {
                Some((m, etag)) => {
                    let (incident_seq, outbox_seq, open) = rows::head_of(&m)?;
                    (
                        StreamState { incident_seq, open },
                        outbox_seq,
                        Some(etag),
                        rows::audit_head_of(&m)?,
                    )
                }
                None => (StreamState::default(), 0, None, None),
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
                outbox_rows: p.outbox.len() as u32,
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
            // The delivery's time, like the embedded store: one clock for the whole event.
            let now = delivery.received_at;
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
                    lease_owner: None,
                    lease_until: None,
                    delivered_at: None,
                    version: None,
                })
                .collect();
            let dedup = Dedup {
                event_id: da.event_id.clone(),
                incident_id,
                action: p.action,
            };
            // The audit chain: the event, then each incident it changed.
            let mut audit = Vec::new();
            let mut prev = audit_head.clone();
            let mut records = vec![(
                crate::domain::audit_chain::kind::EVENT,
                event.id.clone(),
                crate::domain::audit_chain::event_body(&event),
            )];
            for inc in p.closed.iter().chain(p.incident.iter()) {
                records.push((
                    crate::domain::audit_chain::kind::INCIDENT,
                    inc.id.clone(),
                    crate::domain::audit_chain::incident_body(inc),
                ));
            }
            for (kind, key, body) in records {
                let (e, text) = crate::domain::audit_chain::next_entry(
                    prev.as_ref().map(|(s, h)| (*s, h.as_str())),
                    &stream,
                    kind,
                    &key,
                    now,
                    body,
                    None,
                );
                prev = Some((e.seq, e.hash.clone()));
                audit.push(rows::audit_entity(&e, &text)?);
            }
            let mut head = rows::head_entity(
                &stream,
                p.next.incident_seq,
                outbox_seq + outbox.len() as u64,
                p.next.open.as_ref(),
            )?;
            if let Some((seq, hash)) = &prev {
                rows::put_audit_head(&mut head, *seq, hash);
            }
            let commit = self
                .commit(
                    &stream,
                    &event,
                    &dedup,
                    head,
                    etag,
                    &p.closed.iter().chain(p.incident.iter()).collect::<Vec<_>>(),
                    &outbox,
                    audit,
                )
                .await?;
            if let Commit::Done = commit {
                return Ok(outcome);
            }
            tracing::debug!(stream = %stream, attempt, "stream changed concurrently; retrying");
        }
        Err(StoreError::Contention(format!(
            "stream {stream}: gave up after {:?} of conflicting attempts",
            started.elapsed()
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
        incidents: &[&Incident],
        outbox: &[OutboxRow],
        audit: Vec<Entity>,
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
        // A closed (superseded) incident first, then the current one.
        for inc in incidents {
            tx = tx
                .insert_or_replace(rows::incident_key(&inc.id), rows::incident_entity(inc)?)
                .map_err(build)?;
        }
        for row in outbox {
            tx = tx.insert(rows::outbox_entity(row)?).map_err(build)?;
        }
        let ops = 3 + incidents.len() + outbox.len() + audit.len();
        for entity in audit {
            tx = tx.insert(entity).map_err(build)?;
        }
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
