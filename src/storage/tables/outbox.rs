//! The dispatch side of the outbox on [`TableStore`]: finding due rows, leasing, settling,
//! listing and redriving.
//!
//! Outbox rows live in their stream's partition (`outbox|<seq, 12 digits>`, written by
//! `ingest`). Every change to a row after ingest is a whole-entity replace (`Update`, HTTP PUT)
//! with `If-Match` on the ETag the caller read, carried in [`OutboxRow::version`]:
//!
//! - `outbox_lease` checks the row as read (pending, lease absent or expired), then writes it
//!   back with `LeaseOwner`/`LeaseUntil` set. Of several dispatchers racing on the same read,
//!   exactly one write matches the ETag; the others get 412 and `None`.
//! - `outbox_settle` writes the outcome with `If-Match` on the ETag returned by the lease. If
//!   the lease expired and another dispatcher took the row, that lease changed the ETag, so the
//!   late settle fails with 412 and changes nothing.
//!
//! Replacing the whole entity (rather than merging) is what clears `LeaseOwner`, `LeaseUntil`
//! and `LastError`: properties left out of the new entity are gone.

use super::connection::{map_err, status_of};
use super::rows::{self, lit, valid_key, Entity};
use super::TableStore;
use crate::domain::routing::Sink;
use crate::storage::{OutboxFilter, OutboxRow, OutboxStatus, Result, Settle};
use azure_core::{Etag, StatusCode};
use azure_data_tables::prelude::IfMatchCondition;
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// Outcome of a conditional write.
enum Write {
    /// Stored; the entity's new ETag.
    Done(Etag),
    /// The row changed since it was read (412) or is gone (404).
    Lost,
}

impl TableStore {
    /// Replace the stored row with `row`, only if its ETag is still `etag`.
    async fn replace_if(&self, row: &OutboxRow, etag: &str) -> Result<Write> {
        let entity = rows::outbox_entity(row)?;
        let res = self
            .streams
            .partition_key_client(row.stream.replace('\'', "''"))
            .entity_client(rows::outbox_key(row.seq))
            .update(&entity, IfMatchCondition::Etag(Etag::from(etag)))
            .map_err(|e| map_err("outbox write", e))?
            .await;
        match res {
            Ok(r) => Ok(Write::Done(r.etag)),
            Err(e)
                if matches!(
                    status_of(&e),
                    Some(StatusCode::PreconditionFailed | StatusCode::NotFound)
                ) =>
            {
                Ok(Write::Lost)
            }
            Err(e) => Err(map_err("outbox write", e)),
        }
    }

    /// One row with its ETag in `version`; `None` if missing.
    pub(super) async fn outbox_row(&self, stream: &str, seq: u64) -> Result<Option<OutboxRow>> {
        if !valid_key(stream) {
            return Ok(None);
        }
        match self
            .get(&self.streams, stream, &rows::outbox_key(seq))
            .await?
        {
            Some((m, etag)) => {
                let mut row = rows::outbox_of(&m)?;
                row.version = Some(etag.to_string());
                Ok(Some(row))
            }
            None => Ok(None),
        }
    }

    /// Pending outbox rows of one stream (a range query in its partition) or, with `None`, of
    /// all streams: a filtered query over the whole table, i.e. a scan. That is acceptable for a
    /// dispatcher polling every few seconds over a modest table; a large deployment should
    /// dispatch per stream (`Some`), e.g. driven by the streams that just ingested.
    async fn pending_rows(&self, stream: Option<&str>) -> Result<Vec<OutboxRow>> {
        let filter = match stream {
            Some(s) if !valid_key(s) => return Ok(Vec::new()),
            // '}' follows '|' in ASCII: exactly the keys starting with "outbox|".
            Some(s) => format!(
                "PartitionKey eq {} and RowKey ge 'outbox|' and RowKey lt 'outbox}}' \
                 and Status eq 'pending'",
                lit(s)
            ),
            None => "Kind eq 'outbox' and Status eq 'pending'".to_string(),
        };
        self.query(&self.streams, filter)
            .await?
            .iter()
            .map(rows::outbox_of)
            .collect()
    }

    pub(super) async fn due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        stream: Option<&str>,
    ) -> Result<Vec<OutboxRow>> {
        let pending = self.pending_rows(stream).await?;
        // The head of each (stream, sink): its lowest pending seq, due or not, leased or not.
        let mut heads: HashMap<(&str, Sink), u64> = HashMap::new();
        for r in &pending {
            heads
                .entry((r.stream.as_str(), r.sink))
                .and_modify(|s| *s = (*s).min(r.seq))
                .or_insert(r.seq);
        }
        let mut due: Vec<OutboxRow> = pending
            .iter()
            .filter(|r| heads.get(&(r.stream.as_str(), r.sink)) == Some(&r.seq))
            .filter(|r| r.next_attempt_at <= now && r.lease_until.is_none_or(|u| u <= now))
            .cloned()
            .collect();
        due.sort_by(|a, b| {
            (a.next_attempt_at, &a.stream, a.seq).cmp(&(b.next_attempt_at, &b.stream, b.seq))
        });
        due.truncate(limit);
        Ok(due)
    }

    pub(super) async fn lease(
        &self,
        row: &OutboxRow,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<OutboxRow>> {
        let read;
        let row = match &row.version {
            Some(_) => row,
            None => match self.outbox_row(&row.stream, row.seq).await? {
                Some(r) => {
                    read = r;
                    &read
                }
                None => return Ok(None),
            },
        };
        let etag = row.version.as_deref().expect("read rows carry their ETag");
        if row.status != OutboxStatus::Pending || row.lease_until.is_some_and(|u| u > now) {
            return Ok(None);
        }
        let mut leased = row.clone();
        leased.lease_owner = Some(owner.to_string());
        leased.lease_until = Some(until);
        match self.replace_if(&leased, etag).await? {
            Write::Done(etag) => {
                leased.version = Some(etag.to_string());
                Ok(Some(leased))
            }
            Write::Lost => Ok(None),
        }
    }

    pub(super) async fn settle(&self, leased: &OutboxRow, settle: &Settle) -> Result<bool> {
        if leased.lease_owner.is_none() || leased.lease_until.is_none() {
            return Ok(false);
        }
        // Without an ETag, fall back to comparing the lease as stored (like the SQL backend).
        let read;
        let leased = match &leased.version {
            Some(_) => leased,
            None => match self.outbox_row(&leased.stream, leased.seq).await? {
                Some(r)
                    if r.lease_owner == leased.lease_owner
                        && r.lease_until == leased.lease_until =>
                {
                    read = r;
                    &read
                }
                _ => return Ok(false),
            },
        };
        if leased.status != OutboxStatus::Pending {
            return Ok(false);
        }
        let etag = leased
            .version
            .as_deref()
            .expect("read rows carry their ETag");
        let mut row = leased.clone();
        match settle {
            Settle::Delivered { at } => {
                row.status = OutboxStatus::Delivered;
                row.delivered_at = Some(*at);
                row.attempts += 1;
                row.last_error = None;
            }
            Settle::Retry {
                next_attempt_at,
                error,
            } => {
                row.next_attempt_at = *next_attempt_at;
                row.last_error = Some(error.clone());
                row.attempts += 1;
            }
            Settle::Dead { error } => {
                row.status = OutboxStatus::Dead;
                row.last_error = Some(error.clone());
                row.attempts += 1;
            }
            Settle::Defer { next_attempt_at } => row.next_attempt_at = *next_attempt_at,
        }
        row.lease_owner = None;
        row.lease_until = None;
        Ok(matches!(self.replace_if(&row, etag).await?, Write::Done(_)))
    }

    /// Scans the outbox rows of all streams (filtered server-side on `Kind`, status and sink),
    /// then sorts oldest first and keeps `limit`.
    pub(super) async fn list(&self, filter: &OutboxFilter) -> Result<Vec<OutboxRow>> {
        let mut q = "Kind eq 'outbox'".to_string();
        if let Some(s) = filter.status {
            q.push_str(&format!(" and Status eq {}", lit(s.as_str())));
        }
        if let Some(s) = filter.sink {
            q.push_str(&format!(" and Sink eq {}", lit(s.as_str())));
        }
        let found: Vec<Entity> = self.query(&self.streams, q).await?;
        let mut out = found
            .iter()
            .map(rows::outbox_of)
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| (a.created_at, &a.stream, a.seq).cmp(&(b.created_at, &b.stream, b.seq)));
        out.truncate(filter.limit);
        Ok(out)
    }

    /// Per-sink figures from the four columns they need (`$select`): still a scan of the
    /// outbox rows, but without their payloads. A row that does not parse is skipped (and
    /// logged) rather than failing every figure.
    pub(super) async fn stats(
        &self,
        now: DateTime<Utc>,
    ) -> Result<std::collections::BTreeMap<&'static str, crate::storage::OutboxStats>> {
        use futures::StreamExt;
        let mut by_sink = crate::storage::OutboxStats::empty_per_sink();
        let mut pages = self
            .streams
            .query()
            .filter("Kind eq 'outbox' and (Status eq 'pending' or Status eq 'dead')".to_string())
            .select(azure_data_tables::Select::new(
                "Sink,Status,NextAttemptAt,CreatedAt",
            ))
            .into_stream::<Entity>();
        let mut skipped = 0u64;
        while let Some(page) = pages.next().await {
            for e in page.map_err(|e| map_err("outbox stats", e))?.entities {
                let sink = e
                    .get("Sink")
                    .and_then(serde_json::Value::as_str)
                    .and_then(Sink::parse);
                let status = e.get("Status").and_then(serde_json::Value::as_str);
                match (sink, status) {
                    (Some(sink), Some("dead")) => {
                        by_sink.entry(sink.as_str()).or_default().dead += 1
                    }
                    (Some(sink), Some("pending")) => {
                        match (
                            rows::get_time(&e, "NextAttemptAt"),
                            rows::get_time(&e, "CreatedAt"),
                        ) {
                            (Ok(next), Ok(created)) => by_sink
                                .entry(sink.as_str())
                                .or_default()
                                .add_pending(next <= now, created),
                            _ => skipped += 1,
                        }
                    }
                    _ => skipped += 1,
                }
            }
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "outbox stats: rows that could not be read were skipped"
            );
        }
        Ok(by_sink)
    }

    pub(super) async fn redrive(&self, stream: &str, seq: u64, now: DateTime<Utc>) -> Result<bool> {
        // A concurrent change between the read and the write (412): read again, once.
        for _ in 0..2 {
            let Some(mut row) = self.outbox_row(stream, seq).await? else {
                return Ok(false);
            };
            if row.status != OutboxStatus::Dead {
                return Ok(false);
            }
            let etag = row.version.take().expect("read rows carry their ETag");
            row.status = OutboxStatus::Pending;
            row.attempts = 0;
            row.next_attempt_at = now;
            row.lease_owner = None;
            row.lease_until = None;
            if let Write::Done(_) = self.replace_if(&row, &etag).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
