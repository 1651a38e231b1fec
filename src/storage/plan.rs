//! The ingest recipe, written once: what one alert's atomic write consists of, planned by pure
//! functions from what a backend read. A backend reads the inputs (dedup marker, stream head,
//! open incident, audit chain head), calls [`plan_alert`], and persists the [`AlertWrite`]
//! atomically (the embedded store in its savepoint of the group commit, Table Storage as one
//! entity-group transaction with `If-Match` on the head's ETag). Neither backend decides
//! anything about incidents, outbox rows or chain entries itself.

use super::{Delivery, DeliveryAlert, EventOutcome, OutboxRow, OutboxStatus, StoredEvent};
use crate::domain::audit_chain::{self, AuditEntry};
use crate::domain::incident::{plan, stream_key, Incident, IncidentAction, StreamState};
use crate::domain::routing::{OutboxDraft, Routing};
use chrono::{DateTime, Utc};

/// A stream partition's head as a backend read it (all zero/`None` for a new stream).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamHead {
    /// Incidents opened on the stream so far (the next one is `incident_seq + 1`).
    pub incident_seq: u64,
    /// The last outbox row's `seq`.
    pub outbox_seq: u64,
    /// The stream's open incident.
    pub open: Option<Incident>,
    /// The partition's audit chain head: (seq, hash).
    pub audit: Option<(u64, String)>,
}

/// What an alert whose dedup key was seen before found: the marker of the first event.
#[derive(Debug, Clone, PartialEq)]
pub struct DedupMarker {
    pub event_id: String,
    pub incident_id: Option<String>,
    /// What the first event did to its incident.
    pub action: IncidentAction,
}

impl DedupMarker {
    /// The outcome for the alert proposed as `event_id`. A marker holding that very id means
    /// an earlier attempt of this same write committed (its answer was lost and the write
    /// retried): the alert is reported as new, as that attempt would have reported it.
    pub fn outcome(self, event_id: &str) -> EventOutcome {
        let duplicate = self.event_id != event_id;
        EventOutcome {
            event_id: self.event_id,
            duplicate,
            incident_id: self.incident_id,
            action: if duplicate {
                IncidentAction::None
            } else {
                self.action
            },
            outbox_rows: 0,
        }
    }
}

/// The outcome for an alert already stored as `event_id` (a duplicate).
pub fn duplicate(event_id: String, incident_id: Option<String>) -> EventOutcome {
    EventOutcome {
        event_id,
        duplicate: true,
        incident_id,
        action: IncidentAction::None,
        outbox_rows: 0,
    }
}

/// Everything one new alert writes, in one atomic write on its stream's partition.
#[derive(Debug, Clone)]
pub struct AlertWrite {
    pub stream: String,
    /// The event (its `incident_id` set).
    pub event: StoredEvent,
    /// The dedup marker to store with it.
    pub dedup: DedupMarker,
    /// Incidents to insert or replace: a closed (superseded) one first, then the current one.
    pub incidents: Vec<Incident>,
    /// New outbox rows, numbered after the head's `outbox_seq`.
    pub outbox: Vec<OutboxRow>,
    /// Chain entries (the event, then each incident) with their bodies' stored text.
    pub audit: Vec<(AuditEntry, String)>,
    /// The stream head after the write.
    pub head: StreamHead,
    /// What to answer for this alert once the write is durable.
    pub outcome: EventOutcome,
}

impl AlertWrite {
    /// Whether the head's sequence numbers and open incident are what they were (an alert that
    /// attached to the open incident and queued nothing). The audit head moves regardless.
    pub fn stream_unchanged(&self, before: &StreamHead) -> bool {
        self.head.incident_seq == before.incident_seq
            && self.head.outbox_seq == before.outbox_seq
            && self.head.open.as_ref().map(|i| &i.id) == before.open.as_ref().map(|i| &i.id)
    }
}

/// Plan one new alert (its dedup key not seen on its stream) of `delivery` on the stream whose
/// head is `head`. Everything is stamped with the delivery's time: one clock for the event.
pub fn plan_alert(
    delivery: &Delivery,
    da: &DeliveryAlert,
    routing: &Routing,
    head: &StreamHead,
) -> AlertWrite {
    let stream = stream_key(&da.alert).to_string();
    let now = delivery.received_at;
    let state = StreamState {
        incident_seq: head.incident_seq,
        open: head.open.clone(),
    };
    let p = plan(routing, &state, &da.alert, &da.event_id, now);
    let incident_id = p.incident.as_ref().map(|i| i.id.clone());
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
    let incidents: Vec<Incident> = p.closed.into_iter().chain(p.incident).collect();
    // The audit chain: the event, then each incident it changed.
    let mut records = vec![(
        audit_chain::kind::EVENT,
        event.id.clone(),
        audit_chain::event_body(&event),
        None,
    )];
    for inc in &incidents {
        records.push((
            audit_chain::kind::INCIDENT,
            inc.id.clone(),
            audit_chain::incident_body(inc),
            None,
        ));
    }
    let audit = audit_chain::append(head.audit.clone(), &stream, records, now);
    let outbox = outbox_rows(&stream, head.outbox_seq, &p.outbox, &da.event_id, now);
    let next = StreamHead {
        incident_seq: p.next.incident_seq,
        outbox_seq: head.outbox_seq + outbox.len() as u64,
        open: p.next.open,
        audit: audit
            .last()
            .map(|(e, _)| (e.seq, e.hash.clone()))
            .or_else(|| head.audit.clone()),
    };
    AlertWrite {
        outcome: EventOutcome {
            event_id: da.event_id.clone(),
            duplicate: false,
            incident_id: incident_id.clone(),
            action: p.action,
            outbox_rows: outbox.len() as u32,
        },
        dedup: DedupMarker {
            event_id: da.event_id.clone(),
            incident_id,
            action: p.action,
        },
        stream,
        event,
        incidents,
        outbox,
        audit,
        head: next,
    }
}

/// Outbox rows for `drafts`, numbered after `last_seq` in `stream`, pending and due at `now`;
/// `record_id` is the event or document they belong to.
pub fn outbox_rows(
    stream: &str,
    last_seq: u64,
    drafts: &[OutboxDraft],
    record_id: &str,
    now: DateTime<Utc>,
) -> Vec<OutboxRow> {
    drafts
        .iter()
        .enumerate()
        .map(|(i, d)| OutboxRow {
            stream: stream.to_string(),
            seq: last_seq + 1 + i as u64,
            sink: d.sink,
            kind: d.kind.clone(),
            idempotency_key: d.idempotency_key.clone(),
            event_id: record_id.to_string(),
            payload: d.payload.clone(),
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
        .collect()
}

/// Whether the delivery's raw body is kept as a [`super::RawRequest`]: when it carried several
/// alerts (or none) and at least one was new (a single alert's raw JSON is its event's).
pub fn keeps_raw_request(delivery: &Delivery, outcomes: &[EventOutcome]) -> bool {
    delivery.alerts.len() != 1
        && (delivery.alerts.is_empty() || outcomes.iter().any(|o| !o.duplicate))
}

/// What a [`super::DocCommit`] writes besides its documents: one chain entry per document, in
/// commit order, and its outbox rows numbered after `outbox_seq`.
#[derive(Debug, Clone)]
pub struct DocCommitWrite {
    pub audit: Vec<(AuditEntry, String)>,
    pub outbox: Vec<OutboxRow>,
}

impl DocCommitWrite {
    /// The partition's audit chain head after the write (`None`: still no chain).
    pub fn audit_head(&self) -> Option<(u64, String)> {
        self.audit.last().map(|(e, _)| (e.seq, e.hash.clone()))
    }
}

/// Plan a document commit on a partition whose chain head is `audit_head` and whose last
/// outbox row is `outbox_seq`. The chain entry's body is the document as written.
pub fn plan_doc_commit(
    commit: &super::DocCommit,
    audit_head: Option<(u64, String)>,
    outbox_seq: u64,
) -> DocCommitWrite {
    let records = commit
        .writes
        .iter()
        .map(|w| (audit_chain::kind::DOC, w.key.clone(), w.value.clone(), None))
        .collect();
    DocCommitWrite {
        audit: audit_chain::append(audit_head, &commit.partition, records, commit.now),
        outbox: outbox_rows(
            &commit.partition,
            outbox_seq,
            &commit.outbox,
            &commit.record_id,
            commit.now,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::alert::Condition;
    use crate::storage::conformance::{alert, all_sinks, delivery};

    #[test]
    fn a_new_stream_gets_an_incident_a_chain_and_numbered_rows() {
        let d = delivery(alert("cpu", "vm1", "a1", Condition::Fired));
        let w = plan_alert(&d, &d.alerts[0], &all_sinks(), &StreamHead::default());
        assert_eq!(w.outcome.action, IncidentAction::Opened);
        assert!(!w.outcome.duplicate);
        assert_eq!(w.incidents.len(), 1);
        assert_eq!(
            w.event.incident_id.as_deref(),
            Some(w.incidents[0].id.as_str())
        );
        assert_eq!(
            w.event.raw, d.raw_body,
            "a single alert's raw JSON is the body"
        );
        assert_eq!(w.dedup.event_id, d.alerts[0].event_id);
        // The chain: the event, then the incident, from the genesis.
        let kinds: Vec<&str> = w.audit.iter().map(|(e, _)| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [audit_chain::kind::EVENT, audit_chain::kind::INCIDENT]
        );
        assert_eq!(w.audit[0].0.prev, audit_chain::GENESIS);
        assert_eq!(w.audit[1].0.prev, w.audit[0].0.hash);
        assert!(w
            .audit
            .iter()
            .all(|(e, text)| e.hash_ok() && text == &serde_json::to_string(&e.body).unwrap()));
        // Rows numbered from 1, the head after them.
        assert!(!w.outbox.is_empty());
        let seqs: Vec<u64> = w.outbox.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=w.outbox.len() as u64).collect::<Vec<_>>());
        assert_eq!(w.outcome.outbox_rows as usize, w.outbox.len());
        assert_eq!(w.head.outbox_seq, w.outbox.len() as u64);
        assert_eq!(w.head.incident_seq, 1);
        assert_eq!(w.head.audit, Some((2, w.audit[1].0.hash.clone())));
        assert!(!w.stream_unchanged(&StreamHead::default()));
        assert!(w.outbox.iter().all(|r| r.event_id == d.alerts[0].event_id
            && r.status == OutboxStatus::Pending
            && r.next_attempt_at == d.received_at));
    }

    #[test]
    fn the_next_alert_continues_from_the_head() {
        let d1 = delivery(alert("cpu", "vm1", "a1", Condition::Fired));
        let first = plan_alert(&d1, &d1.alerts[0], &all_sinks(), &StreamHead::default());
        let d2 = delivery(alert("cpu", "vm1", "a1", Condition::Resolved));
        let w = plan_alert(&d2, &d2.alerts[0], &all_sinks(), &first.head);
        assert_eq!(w.outcome.action, IncidentAction::Resolved);
        assert_eq!(w.audit[0].0.seq, 3);
        assert_eq!(w.audit[0].0.prev, first.audit[1].0.hash);
        assert_eq!(w.outbox[0].seq, first.head.outbox_seq + 1);
        assert!(w.head.open.is_none());
        assert_eq!(w.head.incident_seq, 1);
    }

    #[test]
    fn a_dedup_marker_of_our_own_event_is_a_retried_write() {
        let m = DedupMarker {
            event_id: "EVT-s-1".into(),
            incident_id: Some("INC-s-1".into()),
            action: IncidentAction::Opened,
        };
        let own = m.clone().outcome("EVT-s-1");
        assert!(!own.duplicate && own.action == IncidentAction::Opened);
        let other = m.outcome("EVT-s-2");
        assert!(other.duplicate && other.action == IncidentAction::None);
        assert_eq!(other.event_id, "EVT-s-1");
        assert_eq!(other.incident_id.as_deref(), Some("INC-s-1"));
    }
}
