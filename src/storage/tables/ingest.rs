//! The write path of [`TableStore`]: one alert's read-plan-commit loop on its stream partition
//! (the plan is [`crate::storage::plan::plan_alert`], shared with the embedded store), and the
//! entity-group transaction that persists it (retried on 409/412 with jittered backoff).

use super::connection::{map_err, status_of};
use super::rows::{self, valid_key, HEAD};
use super::TableStore;
use crate::domain::incident::stream_key;
use crate::domain::routing::Routing;
use crate::storage::plan::{plan_alert, AlertWrite, StreamHead};
use crate::storage::{Delivery, DeliveryAlert, EventOutcome, Result, StoreError};
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
                return Ok(rows::dedup_of(&m)?.outcome(&da.event_id));
            }
            let (before, etag) = match head? {
                Some((m, etag)) => {
                    let (incident_seq, outbox_seq, open) = rows::head_of(&m)?;
                    let head = StreamHead {
                        incident_seq,
                        outbox_seq,
                        open,
                        audit: rows::audit_head_of(&m)?,
                    };
                    (head, Some(etag))
                }
                None => (StreamHead::default(), None),
            };
            let w = plan_alert(delivery, da, routing, &before);
            if let Commit::Done = self.commit(&w, etag).await? {
                return Ok(w.outcome);
            }
            tracing::debug!(stream = %stream, attempt, "stream changed concurrently; retrying");
        }
        Err(StoreError::Contention(format!(
            "stream {stream}: gave up after {:?} of conflicting attempts",
            started.elapsed()
        )))
    }

    /// One entity-group transaction writing everything an alert changed: the head is
    /// inserted, or updated with `If-Match` on the ETag it was read with.
    async fn commit(&self, w: &AlertWrite, etag: Option<Etag>) -> Result<Commit> {
        let stream = w.stream.as_str();
        let build = |e: azure_core::Error| map_err("build transaction", e);
        let mut head = rows::head_entity(
            stream,
            w.head.incident_seq,
            w.head.outbox_seq,
            w.head.open.as_ref(),
        )?;
        if let Some((seq, hash)) = &w.head.audit {
            rows::put_audit_head(&mut head, *seq, hash);
        }
        let mut tx = self
            .streams
            .partition_key_client(stream)
            .transaction()
            .insert(rows::event_entity(&w.event)?)
            .map_err(build)?
            .insert(rows::dedup_entity(stream, &w.event.dedup_key, &w.dedup))
            .map_err(build)?;
        tx = match etag {
            Some(etag) => tx.update(HEAD, head, Some(IfMatchCondition::Etag(etag))),
            None => tx.insert(head),
        }
        .map_err(build)?;
        // A closed (superseded) incident first, then the current one.
        for inc in &w.incidents {
            tx = tx
                .insert_or_replace(rows::incident_key(&inc.id), rows::incident_entity(inc)?)
                .map_err(build)?;
        }
        for row in &w.outbox {
            tx = tx.insert(rows::outbox_entity(row)?).map_err(build)?;
        }
        let ops = 3 + w.incidents.len() + w.outbox.len() + w.audit.len();
        for (e, text) in &w.audit {
            tx = tx.insert(rows::audit_entity(e, text)?).map_err(build)?;
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
