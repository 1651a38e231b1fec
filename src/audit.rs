//! The audit trail: an append-only SHA-256 hash chain per storage partition, written by the
//! storage backends in the same atomic write as the record it describes, and a verifier that
//! reads the whole store back. `docs/audit.md` describes the scheme. The chain's primitives
//! (entries, link hashes, entry bodies) are pure and live in [`crate::domain::audit_chain`],
//! which the backends use; this module is the service level: the verifier, checkpoints, audit
//! notes and the export's filters and masking.
//!
//! A record is a document (runs, approvals, identities, keys, budgets, locks, audit notes), an
//! event (one alert as received) or an incident. Each write of a record appends one
//! [`AuditEntry`] to its partition's chain: the record's kind and key, the time, the record's
//! body as written, the previous entry's hash and its own. Chains are per partition so hub
//! instances writing different partitions never wait for each other; within a partition the
//! backend's optimistic concurrency (ETags, SQLite's single writer) keeps the chain linear.

use crate::domain::audit_chain::sha256_hex;
pub use crate::domain::audit_chain::{
    event_body, incident_body, kind, link_hash, next_entry, ts, AuditEntry, PartitionState, GENESIS,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// An audit note (`audit|<time>|<random>`): a document recording who did what (a role change, a
/// refused attempt), written in the same commit as the change it describes and chained like
/// every document.
pub fn note(now: DateTime<Utc>, entry: Value) -> crate::storage::DocWrite {
    crate::storage::DocWrite {
        key: format!(
            "audit|{}|{}",
            now.format("%Y%m%dT%H%M%S%.6fZ"),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        value: entry,
        expect: crate::storage::Expect::Absent,
    }
}

/// The fields [`for_output`] masks: the Azure DevOps check's job token, as versions before the
/// secret store chained it inside an approval's `check`.
pub const MASKED_FIELD: &str = "auth_token";

/// Mask every [`MASKED_FIELD`] string inside `v` (any depth): the field is removed and
/// `auth_token_sha256` (the token's SHA-256) put beside it, as current versions store it.
/// Returns the dotted paths masked (`check.auth_token`).
pub fn mask_tokens(v: &mut Value) -> Vec<String> {
    fn walk(v: &mut Value, path: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(t)) = o.get(MASKED_FIELD) {
                    let sha = crate::domain::check::token_sha256(t);
                    o.remove(MASKED_FIELD);
                    o.insert(crate::domain::check::TOKEN_SHA_FIELD.into(), json!(sha));
                    out.push(if path.is_empty() {
                        MASKED_FIELD.to_string()
                    } else {
                        format!("{path}.{MASKED_FIELD}")
                    });
                }
                for (k, child) in o.iter_mut() {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(child, &p, out);
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter_mut().enumerate() {
                    walk(child, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, "", &mut out);
    out
}

/// A chain entry as `audit query`, `audit export` and `audit archive` show it. An entry written
/// before the secret store may hold a job token in its body: the stored entry stays as it is
/// (its hash is over that body, and `audit verify` recomputes it from the store), and the
/// output masks the token and says so: `redacted` names the masked fields and gives the SHA-256
/// of the original body's canonical JSON. Such an entry's own hash cannot be recomputed from the
/// output; `audit verify-export` reports it as redacted rather than edited.
pub fn for_output(e: &AuditEntry) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    let mut body = e.body.clone();
    let fields = mask_tokens(&mut body);
    if !fields.is_empty() {
        v["body"] = body;
        v["redacted"] = json!({
            "fields": fields,
            "body_sha256": sha256_hex(&e.body.to_string()),
            "reason": "a job token chained by an earlier version; the stored entry is unchanged and `icahub audit verify` checks it",
        });
    }
    v
}

/// One problem [`verify`] found in a chain (not to be confused with `cli::doctor::Finding`,
/// a configuration check's result).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainFinding {
    /// `edited`, `removed`, `inserted`, `reordered`, `chain_broken`, `head_mismatch`.
    pub problem: String,
    pub partition: String,
    /// `<kind>:<key>` of the record, or `seq <n>` of a chain entry.
    pub id: String,
    pub detail: String,
}

/// Check one partition: the chain links up (no entry edited, removed, inserted or moved), its
/// end is the recorded head, and every current record is the body of its last entry (no record
/// edited, removed or added outside the chain).
pub fn verify_partition(partition: &str, st: &PartitionState) -> Vec<ChainFinding> {
    let mut out = Vec::new();
    let mut f = |problem: &str, id: String, detail: String| {
        out.push(ChainFinding {
            problem: problem.into(),
            partition: partition.into(),
            id,
            detail,
        })
    };
    let mut prev_hash = GENESIS.to_string();
    let mut expected_seq = 1u64;
    let mut last: BTreeMap<(String, String), (u64, &Value)> = BTreeMap::new();
    for e in &st.entries {
        if e.seq != expected_seq {
            if e.seq > expected_seq {
                f(
                    "removed",
                    format!("seq {expected_seq}..{}", e.seq - 1),
                    format!("chain entries {expected_seq} to {} are missing", e.seq - 1),
                );
            } else {
                f(
                    "reordered",
                    format!("seq {}", e.seq),
                    format!("entry {} appears after entry {}", e.seq, expected_seq - 1),
                );
            }
        }
        if !e.hash_ok() {
            f(
                "edited",
                format!("seq {}", e.seq),
                format!(
                    "chain entry {} ({}:{}) does not match its hash",
                    e.seq, e.kind, e.key
                ),
            );
        } else if e.prev != prev_hash {
            f("chain_broken", format!("seq {}", e.seq), format!("entry {} does not follow the entry before it (an entry was removed, inserted or moved)", e.seq));
        }
        prev_hash = e.hash.clone();
        expected_seq = e.seq.max(expected_seq) + 1;
        last.insert((e.kind.clone(), e.key.clone()), (e.seq, &e.body));
    }
    match (&st.head, st.entries.last()) {
        (Some((seq, hash)), Some(e)) if (*seq, hash.as_str()) != (e.seq, e.hash.as_str()) => f(
            "head_mismatch",
            format!("seq {seq}"),
            format!("the partition's head says entry {seq} but the chain ends at entry {} (entries were removed from the end, or the head was changed)", e.seq),
        ),
        (Some((seq, _)), None) => f("removed", format!("seq 1..{seq}"), "the partition's chain is gone".into()),
        _ => {}
    }
    for ((kind, key), body) in &st.records {
        match last.get(&(kind.clone(), key.clone())) {
            None => f(
                "inserted",
                format!("{kind}:{key}"),
                "a record with no chain entry (written outside the hub)".into(),
            ),
            Some((seq, b)) if *b != body => f(
                "edited",
                format!("{kind}:{key}"),
                format!("the record differs from what chain entry {seq} recorded"),
            ),
            _ => {}
        }
    }
    for ((kind, key), (seq, _)) in &last {
        if !st.records.contains_key(&(kind.clone(), key.clone())) {
            f(
                "removed",
                format!("{kind}:{key}"),
                format!("the record of chain entry {seq} is gone"),
            );
        }
    }
    out
}

/// The partition of checkpoints: `cp|<time>` documents over every chain head, and `latest`.
pub const CHECKPOINTS: &str = "auditcp";

/// Write a checkpoint over every partition's chain head, unless one was written less than
/// `every` ago (several instances: one wins each period). The checkpoint is itself a record (on
/// the `auditcp` chain) and is forwarded to the control plane, which anchors the heads outside
/// the store. Returns the checkpoint's key when one was written.
pub async fn checkpoint(
    store: &dyn crate::storage::Store,
    routing: &crate::domain::routing::Routing,
    every: chrono::Duration,
    now: DateTime<Utc>,
) -> Result<Option<String>, crate::storage::StoreError> {
    use crate::storage::{DocCommit, DocWrite, Expect};
    let latest = store.doc_get(CHECKPOINTS, "latest").await?;
    if let Some(d) = &latest {
        let at = d.value["at"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc));
        if at.is_some_and(|at| now - at < every) {
            return Ok(None);
        }
    }
    let heads: serde_json::Map<String, Value> = store
        .audit_heads()
        .await?
        .into_iter()
        .filter(|(p, _, _)| p != CHECKPOINTS)
        .map(|(p, seq, hash)| (p, json!({"seq": seq, "hash": hash})))
        .collect();
    let digest = sha256_hex(&Value::Object(heads.clone()).to_string());
    let key = format!("cp|{}", ts(now));
    let body = json!({"at": ts(now), "partitions": heads.len(), "heads": heads, "digest": digest});
    let c = DocCommit {
        partition: CHECKPOINTS.into(),
        writes: vec![
            DocWrite {
                key: key.clone(),
                value: body.clone(),
                expect: Expect::Absent,
            },
            DocWrite {
                key: "latest".into(),
                value: json!({"at": ts(now), "key": key, "digest": digest}),
                expect: match latest {
                    Some(d) => Expect::Version(d.version),
                    None => Expect::Absent,
                },
            },
        ],
        outbox: routing.ledger_drafts("audit.checkpoint", &key, body),
        record_id: key.clone(),
        now,
    };
    Ok(store.doc_commit(&c).await?.then_some(key))
}

/// The timer's part: a checkpoint when the configured period has passed (errors logged).
pub async fn periodic_checkpoint(app: &crate::startup::App) -> Option<String> {
    let every = app.config.audit_checkpoint_every?;
    let every = chrono::Duration::from_std(every).ok()?;
    match checkpoint(
        app.store.as_ref(),
        &app.config.routing,
        every,
        app.clock.now(),
    )
    .await
    {
        Ok(Some(key)) => {
            app.dispatcher.kick(CHECKPOINTS.to_string());
            Some(key)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "audit checkpoint failed; the next tick retries");
            None
        }
    }
}

/// What [`verify`] read and found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub partitions: usize,
    pub entries: u64,
    pub records: u64,
    pub findings: Vec<ChainFinding>,
}

/// Read every partition of the store and check it ([`verify_partition`]). `progress` is told
/// (done, total) after each partition.
pub async fn verify(
    store: &dyn crate::storage::Store,
    progress: &dyn Fn(usize, usize),
) -> Result<VerifyReport, crate::storage::StoreError> {
    verify_window(store, None, None, progress).await
}

/// Only the findings about entries written in [from, to) (for a record: its last entry), and
/// those about whole chains (heads, removed partitions). Every chain is still read from its
/// first entry: the links into the window are checked, not taken on trust.
fn in_window(
    f: &ChainFinding,
    st: &PartitionState,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> bool {
    if from.is_none() && to.is_none() {
        return true;
    }
    let at = if let Some(seq) = f.id.strip_prefix("seq ") {
        let first = seq.split("..").next().and_then(|n| n.parse::<u64>().ok());
        st.entries
            .iter()
            .find(|e| Some(e.seq) == first)
            .map(|e| e.at.clone())
    } else if let Some((kind, key)) = f.id.split_once(':') {
        st.entries
            .iter()
            .rev()
            .find(|e| e.kind == kind && e.key == key)
            .map(|e| e.at.clone())
    } else {
        None
    };
    let Some(at) = at.and_then(|a| DateTime::parse_from_rfc3339(&a).ok()) else {
        return true; // nothing to date it by: report it
    };
    let at = at.with_timezone(&Utc);
    from.is_none_or(|f| at >= f) && to.is_none_or(|t| at < t)
}

/// [`verify`], reporting only what concerns entries written in [from, to).
pub async fn verify_window(
    store: &dyn crate::storage::Store,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    progress: &dyn Fn(usize, usize),
) -> Result<VerifyReport, crate::storage::StoreError> {
    let partitions = store.audit_partitions().await?;
    let mut report = VerifyReport {
        partitions: partitions.len(),
        ..Default::default()
    };
    // What the checkpoints say each chain contained: (checkpoint, seq, hash) per partition.
    let mut pinned: BTreeMap<String, Vec<(String, u64, String)>> = BTreeMap::new();
    for d in store.doc_list(CHECKPOINTS, "cp|").await? {
        if let Some(heads) = d.value["heads"].as_object() {
            for (p, h) in heads {
                if let (Some(seq), Some(hash)) = (h["seq"].as_u64(), h["hash"].as_str()) {
                    pinned.entry(p.clone()).or_default().push((
                        d.key.clone(),
                        seq,
                        hash.to_string(),
                    ));
                }
            }
        }
    }
    for (p, pins) in &pinned {
        if partitions.binary_search(p).is_err() {
            let (cp, seq, _) = &pins[pins.len() - 1];
            report.findings.push(ChainFinding {
                problem: "removed".into(),
                partition: p.clone(),
                id: format!("partition {p}"),
                detail: format!(
                    "the whole partition is gone; checkpoint {cp} saw its chain at entry {seq}"
                ),
            });
        }
    }
    for (i, p) in partitions.iter().enumerate() {
        let st = store.audit_state(p).await?;
        report.entries += st.entries.len() as u64;
        report.records += st.records.len() as u64;
        report.findings.extend(
            verify_partition(p, &st)
                .into_iter()
                .filter(|f| in_window(f, &st, from, to)),
        );
        for (cp, seq, hash) in pinned.get(p).map(Vec::as_slice).unwrap_or_default() {
            if !st.entries.iter().any(|e| e.seq == *seq && &e.hash == hash) {
                report.findings.push(ChainFinding {
                    problem: "checkpoint_mismatch".into(),
                    partition: p.clone(),
                    id: format!("seq {seq}"),
                    detail: format!("checkpoint {cp} saw entry {seq} with another hash, or the entry is gone: the chain was rewritten or cut"),
                });
            }
        }
        progress(i + 1, partitions.len());
    }
    Ok(report)
}

/// Export filters (`icahub audit export`): every given one must match.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// A record's `status` (approval, run or incident status).
    pub status: Option<String>,
    /// Someone who signed an approval (`signatures[].by`) or an override.
    pub approver: Option<String>,
    /// A run event's `event_type`, or an audit note's `action`.
    pub event_type: Option<String>,
    /// A run's or event's `pipeline_name`.
    pub pipeline: Option<String>,
}

impl ExportFilter {
    pub fn matches(&self, e: &AuditEntry) -> bool {
        let at = DateTime::parse_from_rfc3339(&e.at)
            .map(|t| t.with_timezone(&Utc))
            .ok();
        if let (Some(from), Some(at)) = (self.from, at) {
            if at < from {
                return false;
            }
        }
        if let (Some(to), Some(at)) = (self.to, at) {
            if at >= to {
                return false;
            }
        }
        let b = &e.body;
        let s = |v: &Value| v.as_str().map(str::to_string);
        let eq = |want: &Option<String>, got: Vec<Option<String>>| match want {
            None => true,
            Some(w) => got.into_iter().flatten().any(|g| g.eq_ignore_ascii_case(w)),
        };
        eq(&self.status, vec![s(&b["status"])])
            && eq(
                &self.approver,
                b["signatures"]
                    .as_array()
                    .map(|a| a.iter().map(|x| s(&x["by"])).collect::<Vec<_>>())
                    .unwrap_or_default()
                    .into_iter()
                    .chain([s(&b["override"]["by"])])
                    .collect(),
            )
            && eq(&self.event_type, vec![s(&b["event_type"]), s(&b["action"])])
            && eq(
                &self.pipeline,
                vec![s(&b["pipeline_name"]), s(&b["start"]["pipeline_name"])],
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> PartitionState {
        let now = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap();
        let mut st = PartitionState::default();
        let mut prev: Option<(u64, String)> = None;
        for i in 0..n {
            let key = format!("k{}", i % 3);
            let body = json!({"v": i});
            let (e, _) = next_entry(
                prev.as_ref().map(|(s, h)| (*s, h.as_str())),
                "p",
                kind::DOC,
                &key,
                now + chrono::Duration::seconds(i as i64),
                body.clone(),
                None,
            );
            prev = Some((e.seq, e.hash.clone()));
            st.records.insert((kind::DOC.into(), key), body);
            st.entries.push(e);
        }
        st.head = prev;
        st
    }

    #[test]
    fn an_untouched_chain_verifies() {
        assert!(verify_partition("p", &chain(7)).is_empty());
    }

    #[test]
    fn every_kind_of_tampering_is_found() {
        let mut st = chain(7);
        st.records
            .insert((kind::DOC.into(), "k1".into()), json!({"v": 99}));
        let f = verify_partition("p", &st);
        assert_eq!(
            (f[0].problem.as_str(), f[0].id.as_str()),
            ("edited", "doc:k1")
        );

        let mut st = chain(7);
        st.entries[2].body = json!({"v": 2, "x": 1});
        assert!(verify_partition("p", &st)
            .iter()
            .any(|f| f.problem == "edited" && f.id == "seq 3"));

        let mut st = chain(7);
        st.entries.remove(3);
        assert!(verify_partition("p", &st)
            .iter()
            .any(|f| f.problem == "removed" && f.id == "seq 4..4"));

        let mut st = chain(7);
        st.entries.swap(1, 2);
        assert!(verify_partition("p", &st)
            .iter()
            .any(|f| f.problem == "reordered"));

        let mut st = chain(7);
        st.entries.pop();
        assert!(verify_partition("p", &st)
            .iter()
            .any(|f| f.problem == "head_mismatch"));

        let mut st = chain(7);
        st.records
            .insert((kind::DOC.into(), "new".into()), json!(1));
        st.records
            .remove(&(kind::DOC.to_string(), "k0".to_string()));
        let f = verify_partition("p", &st);
        assert!(f
            .iter()
            .any(|f| f.problem == "inserted" && f.id == "doc:new"));
        assert!(f.iter().any(|f| f.problem == "removed" && f.id == "doc:k0"));
    }
}
