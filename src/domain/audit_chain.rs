//! The audit chain's primitives (pure): one append-only SHA-256 hash chain per storage
//! partition, of which every record write appends one [`AuditEntry`]. Storage backends build
//! entries with [`next_entry`] inside the same atomic write as the record; the verifier
//! (`crate::audit`, a service) rebuilds [`PartitionState`] from stored data and checks it.
//! `docs/audit.md` describes the scheme.
//!
//! **Why there are two chains.** [`crate::domain::run::chain`] links the records *of one
//! pipeline run* (start, events, finish): its last link is the `audit_hash` the run ledger hands
//! back at finish, so a pipeline can keep a receipt of what the hub recorded about it. It hashes
//! only (previous link, record kind, record JSON) and lives inside the run's documents. The
//! audit chain here is the store's own tamper evidence: it covers *every* record of a partition
//! (documents, events, incidents, and the run documents themselves), is kept by the backend in
//! its own rows (`audit` table, `audit|<seq>` rows) with a recorded head, and its link also
//! binds the partition, sequence number, record key and time, so that removing, inserting or
//! moving a record is found by `icahub audit verify`. A run's chain is data the hub publishes;
//! the audit chain is how the store proves that data was not edited behind the hub's back.

use super::event::StoredEvent;
use super::incident::Incident;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The `prev` of a partition's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The kinds of record a chain entry can describe.
pub mod kind {
    pub const DOC: &str = "doc";
    pub const EVENT: &str = "event";
    pub const INCIDENT: &str = "incident";
}

/// One link of a partition's chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub partition: String,
    /// 1, 2, 3… within the partition, with no gaps.
    pub seq: u64,
    /// [`kind::DOC`], [`kind::EVENT`] or [`kind::INCIDENT`].
    pub kind: String,
    /// The record's key within its kind (document key, event id, incident id).
    pub key: String,
    /// When it was written, RFC 3339 with microseconds.
    pub at: String,
    /// The record as written (events: their metadata and the SHA-256 of their raw JSON).
    pub body: Value,
    pub prev: String,
    pub hash: String,
}

/// Times in entries: microseconds, as both backends store them, so a body rebuilt from stored
/// data is identical to the one hashed at write time.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The link hash: SHA-256 over the previous hash and every field of the entry.
pub fn link_hash(
    prev: &str,
    partition: &str,
    seq: u64,
    kind: &str,
    key: &str,
    at: &str,
    body_text: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [prev, partition, &seq.to_string(), kind, key, at] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    h.update(body_text.as_bytes());
    hex::encode(h.finalize())
}

/// The next entry after `prev` (`None`: the partition's first), and its body's canonical JSON
/// (what was hashed, and what the backend stores). `body_text` is that JSON when the caller
/// already has it (a document's stored text), so the write path serializes each record once.
pub fn next_entry(
    prev: Option<(u64, &str)>,
    partition: &str,
    kind: &str,
    key: &str,
    at: DateTime<Utc>,
    body: Value,
    body_text: Option<String>,
) -> (AuditEntry, String) {
    let (seq, prev) = match prev {
        Some((s, h)) => (s + 1, h.to_string()),
        None => (1, GENESIS.to_string()),
    };
    let at = ts(at);
    let text = body_text.unwrap_or_else(|| body.to_string());
    let hash = link_hash(&prev, partition, seq, kind, key, &at, &text);
    let entry = AuditEntry {
        partition: partition.into(),
        seq,
        kind: kind.into(),
        key: key.into(),
        at,
        body,
        prev,
        hash,
    };
    (entry, text)
}

impl AuditEntry {
    /// Whether the entry's own hash matches its fields.
    pub fn hash_ok(&self) -> bool {
        link_hash(
            &self.prev,
            &self.partition,
            self.seq,
            &self.kind,
            &self.key,
            &self.at,
            &self.body.to_string(),
        ) == self.hash
    }
}

/// A record to chain: its kind, key, body, and the body's JSON when already serialized.
pub type ChainRecord<'a> = (&'a str, String, Value, Option<String>);

/// Chain `records` after `head` (`None`: the partition's first entry) in order, all at `at`.
/// Returns each entry with its body's stored text; the new head is the last entry's
/// (seq, hash), or `head` when `records` is empty.
pub fn append(
    head: Option<(u64, String)>,
    partition: &str,
    records: Vec<ChainRecord<'_>>,
    at: DateTime<Utc>,
) -> Vec<(AuditEntry, String)> {
    let mut prev = head;
    let mut out = Vec::with_capacity(records.len());
    for (kind, key, body, text) in records {
        let (e, text) = next_entry(
            prev.as_ref().map(|(s, h)| (*s, h.as_str())),
            partition,
            kind,
            &key,
            at,
            body,
            text,
        );
        prev = Some((e.seq, e.hash.clone()));
        out.push((e, text));
    }
    out
}

/// What the verifier needs from a backend for one partition.
#[derive(Debug, Clone, Default)]
pub struct PartitionState {
    /// The chain, in the order the backend returns it (by sequence number).
    pub entries: Vec<AuditEntry>,
    /// The partition's head as the backend recorded it: (seq, hash).
    pub head: Option<(u64, String)>,
    /// Every current record: (kind, key) → body rebuilt from stored data.
    pub records: BTreeMap<(String, String), Value>,
}

/// Lowercase hex SHA-256 of `s`.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The body of an event entry: its metadata and the SHA-256 of its raw JSON (the raw body can
/// be half a megabyte; its hash pins it just as well).
pub fn event_body(e: &StoredEvent) -> Value {
    json!({
        "id": e.id, "request_id": e.request_id, "invocation_id": e.invocation_id,
        "source": e.source, "schema": e.schema, "kind": e.kind, "alert_id": e.alert_id,
        "dedup_key": e.dedup_key, "stream": e.stream, "condition": e.condition,
        "severity": e.severity, "incident_id": e.incident_id, "received_at": ts(e.received_at),
        "raw_sha256": sha256_hex(&e.raw),
    })
}

/// The body of an incident entry: the incident as stored.
pub fn incident_body(i: &Incident) -> Value {
    serde_json::to_value(i).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap()
    }

    #[test]
    fn entries_link_up_and_detect_edits() {
        let recs = vec![
            (kind::DOC, "a".to_string(), json!({"v": 1}), None),
            (kind::DOC, "b".to_string(), json!({"v": 2}), None),
        ];
        let out = append(None, "p", recs, at());
        assert_eq!(out[0].0.prev, GENESIS);
        assert_eq!((out[0].0.seq, out[1].0.seq), (1, 2));
        assert_eq!(out[1].0.prev, out[0].0.hash);
        assert!(out.iter().all(|(e, _)| e.hash_ok()));
        assert_eq!(out[1].1, r#"{"v":2}"#);
        let mut edited = out[1].0.clone();
        edited.body = json!({"v": 3});
        assert!(!edited.hash_ok());
        // Continuing from a head gives the same entry as chaining in one go.
        let head = Some((out[0].0.seq, out[0].0.hash.clone()));
        let again = append(
            head,
            "p",
            vec![(kind::DOC, "b".into(), json!({"v": 2}), None)],
            at(),
        );
        assert_eq!(again[0].0, out[1].0);
    }
}
