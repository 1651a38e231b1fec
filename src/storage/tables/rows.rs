//! Table entities, built and read as `serde_json::Map` so the stored properties are exactly the
//! ones named here: row keys, the `Kind` column, typed property helpers (Int64, Edm.Binary
//! chunks for large text) and the conversions between rows and the storage types.

use crate::domain::alert::{Condition, Severity, Source};
use crate::domain::incident::{Incident, IncidentAction, IncidentStatus};
use crate::domain::routing::Sink;
use crate::storage::{OutboxRow, OutboxStatus, RawRequest, StoreError, StoredEvent};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub(crate) type Entity = Map<String, Value>;

/// The largest Edm.Binary property value.
const CHUNK: usize = 64 * 1024;
/// Chunks per text property: 14 x 64 KiB = 896 KiB, leaving room under the 1 MiB entity limit.
const MAX_CHUNKS: usize = 14;
/// Text up to this many UTF-16 units is stored as a plain string (the limit is 32 Ki units).
const PLAIN_TEXT_UNITS: usize = 16 * 1024;
/// The longest text [`put_text`] stores.
pub(crate) const MAX_TEXT_BYTES: usize = MAX_CHUNKS * CHUNK;

pub(crate) const HEAD: &str = "head";
/// The property carrying an entity's ETag in responses with full metadata.
pub(crate) const ODATA_ETAG: &str = "odata.etag";

pub(crate) fn event_key(event_id: &str) -> String {
    format!("event|{event_id}")
}
pub(crate) fn dedup_key(dedup_key: &str) -> String {
    format!(
        "dedup|{}",
        hex::encode(Sha256::digest(dedup_key.as_bytes()))
    )
}
pub(crate) fn incident_key(incident_id: &str) -> String {
    format!("incident|{incident_id}")
}
pub(crate) fn outbox_key(seq: u64) -> String {
    format!("outbox|{seq:012}")
}
/// RowKeys of documents start with this; the document key follows (and may contain `|`).
pub(crate) const DOC_PREFIX: &str = "doc|";
pub(crate) fn doc_key(key: &str) -> String {
    format!("{DOC_PREFIX}{key}")
}

/// Whether `s` can be a PartitionKey/RowKey (no `/ \ # ?`, no control characters, < 1 KiB).
pub(crate) fn valid_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 1024
        && !s
            .chars()
            .any(|c| matches!(c, '/' | '\\' | '#' | '?') || c.is_control())
}

/// An OData string literal: `'` doubled.
pub(crate) fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Fixed-width UTC timestamps, so that string order is time order (server-side `ge` filters).
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn corrupt(row: &Entity, what: impl std::fmt::Display) -> StoreError {
    let pk = row
        .get("PartitionKey")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let rk = row.get("RowKey").and_then(Value::as_str).unwrap_or("?");
    StoreError::Corrupt(format!("entity ({pk}, {rk}): {what}"))
}

pub(crate) fn new_entity(pk: &str, rk: &str, kind: &str) -> Entity {
    let mut m = Map::new();
    m.insert("PartitionKey".into(), pk.into());
    m.insert("RowKey".into(), rk.into());
    m.insert("Kind".into(), kind.into());
    m
}

pub(crate) fn put_str(m: &mut Entity, name: &str, v: &str) {
    m.insert(name.into(), v.into());
}
fn put_opt(m: &mut Entity, name: &str, v: Option<&str>) {
    if let Some(v) = v {
        put_str(m, name, v);
    }
}
pub(crate) fn put_i64(m: &mut Entity, name: &str, v: u64) {
    m.insert(format!("{name}@odata.type"), "Edm.Int64".into());
    m.insert(name.into(), v.to_string().into());
}

/// Store bytes as Edm.Binary chunks `<name>0`, `<name>1`, ... plus `<name>Chunks`.
pub(crate) fn put_chunks(m: &mut Entity, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let chunks: Vec<&[u8]> = bytes.chunks(CHUNK).collect();
    if chunks.len() > MAX_CHUNKS {
        // Not worth retrying: the ingress body limit must stay below this.
        return Err(StoreError::Config(format!(
            "{name}: {} bytes exceed the Table Storage backend's limit of {} bytes per entity; \
             lower the request body limit",
            bytes.len(),
            MAX_CHUNKS * CHUNK
        )));
    }
    for (i, c) in chunks.iter().enumerate() {
        m.insert(format!("{name}{i}@odata.type"), "Edm.Binary".into());
        m.insert(format!("{name}{i}"), azure_core::base64::encode(c).into());
    }
    m.insert(format!("{name}Chunks"), (chunks.len() as i64).into());
    Ok(())
}

/// Text that may be long: a plain string when short, Edm.Binary chunks otherwise.
pub(crate) fn put_text(m: &mut Entity, name: &str, v: &str) -> Result<(), StoreError> {
    if v.len() <= PLAIN_TEXT_UNITS {
        put_str(m, name, v);
        Ok(())
    } else {
        put_chunks(m, name, v.as_bytes())
    }
}

pub(crate) fn get_str(m: &Entity, name: &str) -> Result<String, StoreError> {
    opt_str(m, name)?.ok_or_else(|| corrupt(m, format!("missing {name}")))
}
pub(crate) fn opt_str(m: &Entity, name: &str) -> Result<Option<String>, StoreError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(corrupt(m, format!("{name} is not a string: {other}"))),
    }
}
pub(crate) fn get_u64(m: &Entity, name: &str) -> Result<u64, StoreError> {
    match m.get(name) {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| corrupt(m, format!("{name} is not a count")))
}
pub(crate) fn get_chunks(m: &Entity, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(n) = m.get(&format!("{name}Chunks")) else {
        return Ok(None);
    };
    let n = n
        .as_u64()
        .ok_or_else(|| corrupt(m, format!("{name}Chunks")))?;
    let mut out = Vec::new();
    for i in 0..n {
        let b64 = get_str(m, &format!("{name}{i}"))?;
        let bytes = azure_core::base64::decode(&b64).map_err(|e| corrupt(m, e))?;
        out.extend_from_slice(&bytes);
    }
    Ok(Some(out))
}
pub(crate) fn get_text(m: &Entity, name: &str) -> Result<Option<String>, StoreError> {
    match get_chunks(m, name)? {
        Some(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| corrupt(m, format!("{name} is not UTF-8"))),
        None => opt_str(m, name),
    }
}
pub(crate) fn get_time(m: &Entity, name: &str) -> Result<DateTime<Utc>, StoreError> {
    parse_time(m, &get_str(m, name)?)
}
fn opt_time(m: &Entity, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    opt_str(m, name)?.map(|s| parse_time(m, &s)).transpose()
}
fn parse_time(m: &Entity, s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| corrupt(m, format!("bad timestamp {s:?}")))
}
fn parsed<T>(m: &Entity, name: &str, parse: fn(&str) -> Option<T>) -> Result<T, StoreError> {
    let s = get_str(m, name)?;
    parse(&s).ok_or_else(|| corrupt(m, format!("bad {name} {s:?}")))
}
fn json_of<T: serde::de::DeserializeOwned>(
    m: &Entity,
    name: &str,
    s: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt(m, format!("{name}: {e}")))
}

pub(crate) fn action_str(a: IncidentAction) -> &'static str {
    match a {
        IncidentAction::Opened => "opened",
        IncidentAction::Attached => "attached",
        IncidentAction::Resolved => "resolved",
        IncidentAction::None => "none",
    }
}
fn parse_action(s: &str) -> Option<IncidentAction> {
    [
        IncidentAction::Opened,
        IncidentAction::Attached,
        IncidentAction::Resolved,
        IncidentAction::None,
    ]
    .into_iter()
    .find(|a| action_str(*a) == s)
}

// --- events -----------------------------------------------------------------------------------

pub(crate) fn event_entity(e: &StoredEvent) -> Result<Entity, StoreError> {
    let mut m = new_entity(&e.stream, &event_key(&e.id), "event");
    put_str(&mut m, "EventId", &e.id);
    put_str(&mut m, "RequestId", &e.request_id);
    put_opt(&mut m, "InvocationId", e.invocation_id.as_deref());
    put_str(&mut m, "Source", e.source.as_str());
    put_str(&mut m, "Schema", &e.schema);
    put_str(&mut m, "AlertKind", &e.kind);
    put_text(&mut m, "AlertId", &e.alert_id)?;
    put_text(&mut m, "DedupKey", &e.dedup_key)?;
    put_str(&mut m, "Stream", &e.stream);
    put_str(&mut m, "Condition", e.condition.as_str());
    put_str(&mut m, "Severity", e.severity.as_str());
    put_opt(&mut m, "IncidentId", e.incident_id.as_deref());
    put_str(&mut m, "ReceivedAt", &ts(e.received_at));
    put_chunks(&mut m, "Raw", e.raw.as_bytes())?;
    Ok(m)
}

pub(crate) fn event_of(m: &Entity) -> Result<StoredEvent, StoreError> {
    let raw = get_chunks(m, "Raw")?.ok_or_else(|| corrupt(m, "missing Raw"))?;
    Ok(StoredEvent {
        id: get_str(m, "EventId")?,
        request_id: get_str(m, "RequestId")?,
        invocation_id: opt_str(m, "InvocationId")?,
        source: parsed(m, "Source", Source::parse)?,
        schema: get_str(m, "Schema")?,
        kind: get_str(m, "AlertKind")?,
        alert_id: get_text(m, "AlertId")?.unwrap_or_default(),
        dedup_key: get_text(m, "DedupKey")?.unwrap_or_default(),
        stream: get_str(m, "Stream")?,
        condition: parsed(m, "Condition", Condition::parse)?,
        severity: parsed(m, "Severity", Severity::parse)?,
        incident_id: opt_str(m, "IncidentId")?,
        received_at: get_time(m, "ReceivedAt")?,
        raw: String::from_utf8(raw).map_err(|_| corrupt(m, "Raw is not UTF-8"))?,
    })
}

// --- dedup markers ----------------------------------------------------------------------------

/// What a dedup marker remembers: the first event with that key and what it did.
pub(crate) use crate::storage::plan::DedupMarker as Dedup;

pub(crate) fn dedup_entity(stream: &str, key: &str, d: &Dedup) -> Entity {
    let mut m = new_entity(stream, &dedup_key(key), "dedup");
    put_str(&mut m, "EventId", &d.event_id);
    put_opt(&mut m, "IncidentId", d.incident_id.as_deref());
    put_str(&mut m, "Action", action_str(d.action));
    m
}

pub(crate) fn dedup_of(m: &Entity) -> Result<Dedup, StoreError> {
    Ok(Dedup {
        event_id: get_str(m, "EventId")?,
        incident_id: opt_str(m, "IncidentId")?,
        action: parsed(m, "Action", parse_action)?,
    })
}

// --- incidents --------------------------------------------------------------------------------

pub(crate) fn incident_entity(i: &Incident) -> Result<Entity, StoreError> {
    let mut m = new_entity(&i.stream, &incident_key(&i.id), "incident");
    put_str(&mut m, "IncidentId", &i.id);
    put_str(&mut m, "Stream", &i.stream);
    put_str(&mut m, "Status", i.status.as_str());
    put_str(&mut m, "Severity", i.severity.as_str());
    put_text(&mut m, "Title", &i.title)?;
    put_str(&mut m, "Source", i.source.as_str());
    put_str(&mut m, "AlertKind", &i.kind);
    put_opt(&mut m, "RuleId", i.rule_id.as_deref());
    let targets = serde_json::to_string(&i.targets).expect("strings serialize");
    put_text(&mut m, "Targets", &targets)?;
    put_opt(&mut m, "ResourceGroup", i.resource_group.as_deref());
    if let Some(d) = &i.description {
        put_text(&mut m, "Description", d)?;
    }
    if let Some(l) = &i.link {
        put_text(&mut m, "Link", l)?;
    }
    put_str(&mut m, "OpenedAt", &ts(i.opened_at));
    put_opt(&mut m, "ResolvedAt", i.resolved_at.map(ts).as_deref());
    put_str(&mut m, "LastEventAt", &ts(i.last_event_at));
    put_i64(&mut m, "EventCount", i.event_count);
    put_str(&mut m, "FirstEventId", &i.first_event_id);
    put_str(&mut m, "LastEventId", &i.last_event_id);
    Ok(m)
}

pub(crate) fn incident_of(m: &Entity) -> Result<Incident, StoreError> {
    let targets = get_text(m, "Targets")?.unwrap_or_else(|| "[]".into());
    Ok(Incident {
        id: get_str(m, "IncidentId")?,
        stream: get_str(m, "Stream")?,
        status: parsed(m, "Status", IncidentStatus::parse)?,
        severity: parsed(m, "Severity", Severity::parse)?,
        title: get_text(m, "Title")?.unwrap_or_default(),
        source: parsed(m, "Source", Source::parse)?,
        kind: get_str(m, "AlertKind")?,
        rule_id: opt_str(m, "RuleId")?,
        targets: json_of(m, "Targets", &targets)?,
        resource_group: opt_str(m, "ResourceGroup")?,
        description: get_text(m, "Description")?,
        link: get_text(m, "Link")?,
        opened_at: get_time(m, "OpenedAt")?,
        resolved_at: opt_time(m, "ResolvedAt")?,
        last_event_at: get_time(m, "LastEventAt")?,
        event_count: get_u64(m, "EventCount")?,
        first_event_id: get_str(m, "FirstEventId")?,
        last_event_id: get_str(m, "LastEventId")?,
    })
}

// --- stream head ------------------------------------------------------------------------------

pub(crate) fn head_entity(
    stream: &str,
    incident_seq: u64,
    outbox_seq: u64,
    open: Option<&Incident>,
) -> Result<Entity, StoreError> {
    let mut m = new_entity(stream, HEAD, "head");
    put_i64(&mut m, "IncidentSeq", incident_seq);
    put_i64(&mut m, "OutboxSeq", outbox_seq);
    if let Some(open) = open {
        let json = serde_json::to_string(open).expect("incidents serialize");
        put_text(&mut m, "Open", &json)?;
    }
    Ok(m)
}

/// `(incident_seq, outbox_seq, open incident)` of a head row.
pub(crate) fn head_of(m: &Entity) -> Result<(u64, u64, Option<Incident>), StoreError> {
    let open = match get_text(m, "Open")? {
        Some(s) => Some(json_of(m, "Open", &s)?),
        None => None,
    };
    Ok((get_u64(m, "IncidentSeq")?, get_u64(m, "OutboxSeq")?, open))
}

/// The partition's audit chain head `(seq, hash)` kept on its head row, if it has one.
pub(crate) fn audit_head_of(m: &Entity) -> Result<Option<(u64, String)>, StoreError> {
    match (m.get("AuditSeq"), opt_str(m, "AuditHash")?) {
        (Some(_), Some(h)) => Ok(Some((get_u64(m, "AuditSeq")?, h))),
        _ => Ok(None),
    }
}

pub(crate) fn put_audit_head(m: &mut Entity, seq: u64, hash: &str) {
    put_i64(m, "AuditSeq", seq);
    put_str(m, "AuditHash", hash);
}

// --- audit ------------------------------------------------------------------------------------

pub(crate) fn audit_key(seq: u64) -> String {
    format!("audit|{seq:012}")
}

/// `body_text`: the entry's body as hashed (see [`crate::domain::audit_chain::next_entry`]).
pub(crate) fn audit_entity(
    e: &crate::domain::audit_chain::AuditEntry,
    body_text: &str,
) -> Result<Entity, StoreError> {
    let mut m = new_entity(&e.partition, &audit_key(e.seq), "audit");
    put_i64(&mut m, "Seq", e.seq);
    put_str(&mut m, "AuditKind", &e.kind);
    put_text(&mut m, "Key", &e.key)?;
    put_str(&mut m, "At", &e.at);
    put_text(&mut m, "Body", body_text)?;
    put_str(&mut m, "Prev", &e.prev);
    put_str(&mut m, "Hash", &e.hash);
    Ok(m)
}

pub(crate) fn audit_of(m: &Entity) -> Result<crate::domain::audit_chain::AuditEntry, StoreError> {
    let body = get_text(m, "Body")?.unwrap_or_default();
    Ok(crate::domain::audit_chain::AuditEntry {
        partition: get_str(m, "PartitionKey")?,
        seq: get_u64(m, "Seq")?,
        kind: get_str(m, "AuditKind")?,
        key: get_text(m, "Key")?.unwrap_or_default(),
        at: get_str(m, "At")?,
        body: serde_json::from_str(&body).unwrap_or(Value::String(body)),
        prev: get_str(m, "Prev")?,
        hash: get_str(m, "Hash")?,
    })
}

// --- outbox -----------------------------------------------------------------------------------

pub(crate) fn outbox_entity(o: &OutboxRow) -> Result<Entity, StoreError> {
    let mut m = new_entity(&o.stream, &outbox_key(o.seq), "outbox");
    put_str(&mut m, "Stream", &o.stream);
    put_i64(&mut m, "Seq", o.seq);
    put_str(&mut m, "Sink", o.sink.as_str());
    put_str(&mut m, "OutboxKind", &o.kind);
    put_str(&mut m, "IdempotencyKey", &o.idempotency_key);
    put_str(&mut m, "EventId", &o.event_id);
    put_text(&mut m, "Payload", &o.payload.to_string())?;
    put_str(&mut m, "Status", o.status.as_str());
    put_i64(&mut m, "Attempts", o.attempts.into());
    put_str(&mut m, "NextAttemptAt", &ts(o.next_attempt_at));
    put_str(&mut m, "CreatedAt", &ts(o.created_at));
    if let Some(e) = &o.last_error {
        put_text(&mut m, "LastError", e)?;
    }
    // Absent when unset: outbox rows are always written whole (insert or replace), so leaving a
    // property out clears it.
    put_opt(&mut m, "LeaseOwner", o.lease_owner.as_deref());
    put_opt(&mut m, "LeaseUntil", o.lease_until.map(ts).as_deref());
    put_opt(&mut m, "DeliveredAt", o.delivered_at.map(ts).as_deref());
    Ok(m)
}

pub(crate) fn outbox_of(m: &Entity) -> Result<OutboxRow, StoreError> {
    let payload = get_text(m, "Payload")?.ok_or_else(|| corrupt(m, "missing Payload"))?;
    let attempts = get_u64(m, "Attempts")?;
    Ok(OutboxRow {
        stream: get_str(m, "Stream")?,
        seq: get_u64(m, "Seq")?,
        sink: parsed(m, "Sink", Sink::parse)?,
        kind: get_str(m, "OutboxKind")?,
        idempotency_key: get_str(m, "IdempotencyKey")?,
        event_id: get_str(m, "EventId")?,
        payload: json_of(m, "Payload", &payload)?,
        status: parsed(m, "Status", OutboxStatus::parse)?,
        attempts: u32::try_from(attempts).map_err(|_| corrupt(m, "Attempts"))?,
        next_attempt_at: get_time(m, "NextAttemptAt")?,
        created_at: get_time(m, "CreatedAt")?,
        last_error: get_text(m, "LastError")?,
        lease_owner: opt_str(m, "LeaseOwner")?,
        lease_until: opt_time(m, "LeaseUntil")?,
        delivered_at: opt_time(m, "DeliveredAt")?,
        // Queries and point reads ask for full metadata, so the entity carries its ETag.
        version: opt_str(m, ODATA_ETAG)?,
    })
}

// --- documents --------------------------------------------------------------------------------

/// A document row: its JSON text (at most [`MAX_TEXT_BYTES`]) in `Value`, chunked when long.
pub(crate) fn doc_entity(partition: &str, key: &str, json: &str) -> Result<Entity, StoreError> {
    let mut m = new_entity(partition, &doc_key(key), "doc");
    put_text(&mut m, "Value", json)?;
    Ok(m)
}

/// `(key, value)` of a document row.
pub(crate) fn doc_of(m: &Entity) -> Result<(String, serde_json::Value), StoreError> {
    let rk = get_str(m, "RowKey")?;
    let key = rk
        .strip_prefix(DOC_PREFIX)
        .ok_or_else(|| corrupt(m, "not a document row"))?
        .to_string();
    let text = get_text(m, "Value")?.ok_or_else(|| corrupt(m, "missing Value"))?;
    Ok((key, json_of(m, "Value", &text)?))
}

// --- raw requests -----------------------------------------------------------------------------

pub(crate) fn request_entity(r: &RawRequest) -> Result<Entity, StoreError> {
    let day = r.received_at.format("%Y%m%d").to_string();
    let mut m = new_entity(&day, &r.request_id, "request");
    put_str(&mut m, "RequestId", &r.request_id);
    put_str(&mut m, "Source", r.source.as_str());
    put_str(&mut m, "ReceivedAt", &ts(r.received_at));
    put_chunks(&mut m, "Raw", r.body.as_bytes())?;
    Ok(m)
}

pub(crate) fn request_of(m: &Entity) -> Result<RawRequest, StoreError> {
    let raw = get_chunks(m, "Raw")?.ok_or_else(|| corrupt(m, "missing Raw"))?;
    Ok(RawRequest {
        request_id: get_str(m, "RequestId")?,
        source: parsed(m, "Source", Source::parse)?,
        received_at: get_time(m, "ReceivedAt")?,
        body: String::from_utf8(raw).map_err(|_| corrupt(m, "Raw is not UTF-8"))?,
    })
}
