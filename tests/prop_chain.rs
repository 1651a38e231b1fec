//! Property tests of the two hash chains:
//!
//! - the audit chain of a storage partition (`icahub::audit`: `next_entry` links, the verifier
//!   `verify_partition`): any sequence of entries verifies, and changing, removing, inserting or
//!   reordering any entry, or any current record, is found, as long as the partition's recorded
//!   head is not rewritten too (the checkpoints anchor heads outside the store). A chain forged
//!   again from the tampered entry on ends at a different head, which is what a checkpoint
//!   catches.
//! - the per-record chain of runs and approvals (`icahub::domain::run::chain`): each link covers
//!   the one before, so the last link (a run's `audit_hash`, an approval's `chain_head`) pins the
//!   whole sequence of records: any change, removal, insertion or reordering gives another head,
//!   and recomputing the links finds where.

use chrono::{DateTime, Duration, TimeZone, Utc};
use icahub::audit::{kind, next_entry, verify_partition, AuditEntry, PartitionState};
use icahub::domain::run::chain;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};

const PARTITION: &str = "p";
const KINDS: [&str; 3] = [kind::DOC, kind::EVENT, kind::INCIDENT];

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap()
}

/// One record write: its kind, which of a few keys (so records are written more than once),
/// and a value for its body.
type Write = (usize, usize, u32);

fn writes() -> impl Strategy<Value = Vec<Write>> {
    prop::collection::vec((0..KINDS.len(), 0usize..4, any::<u32>()), 1..24)
}

fn body(i: usize, v: u32) -> Value {
    json!({"n": i, "v": v, "note": format!("write {i}")})
}

/// The partition as a backend holds it after `writes`: the chain, its head, and each record
/// as last written.
fn partition(writes: &[Write]) -> PartitionState {
    let mut st = PartitionState::default();
    let mut prev: Option<(u64, String)> = None;
    for (i, (k, key, v)) in writes.iter().enumerate() {
        let (kind, key, body) = (KINDS[*k], format!("key{key}"), body(i, *v));
        let at = t0() + Duration::seconds(i as i64);
        let (e, _) = next_entry(
            prev.as_ref().map(|(s, h)| (*s, h.as_str())),
            PARTITION,
            kind,
            &key,
            at,
            body.clone(),
            None,
        );
        prev = Some((e.seq, e.hash.clone()));
        st.records.insert((kind.to_string(), key), body);
        st.entries.push(e);
    }
    st.head = prev;
    st
}

/// Recompute `e`'s own hash over its (tampered) fields, as a forger would.
fn rehash(e: &mut AuditEntry) {
    e.hash = icahub::audit::link_hash(
        &e.prev,
        &e.partition,
        e.seq,
        &e.kind,
        &e.key,
        &e.at,
        &e.body.to_string(),
    );
}

/// Re-link every entry from `from` on (new prev, new hash), as a forger who also rewrites the
/// rest of the chain would; returns the head such a forger would have to record.
fn relink(entries: &mut [AuditEntry], from: usize) -> Option<(u64, String)> {
    for i in from..entries.len() {
        if i > 0 {
            entries[i].prev = entries[i - 1].hash.clone();
        }
        rehash(&mut entries[i]);
    }
    entries.last().map(|e| (e.seq, e.hash.clone()))
}

#[derive(Debug, Clone)]
enum Field {
    Body,
    Key,
    Kind,
    At,
    Prev,
    Partition,
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        Just(Field::Body),
        Just(Field::Key),
        Just(Field::Kind),
        Just(Field::At),
        Just(Field::Prev),
        Just(Field::Partition),
    ]
}

/// Change one field of `e` to something it was not.
fn tamper(e: &mut AuditEntry, f: &Field) {
    match f {
        Field::Body => e.body["tampered"] = json!(true),
        Field::Key => e.key.push_str("-x"),
        Field::Kind => {
            e.kind = if e.kind == kind::DOC {
                kind::EVENT
            } else {
                kind::DOC
            }
            .into()
        }
        Field::At => e.at = icahub::audit::ts(t0() - Duration::days(1)),
        Field::Prev => e.prev = "f".repeat(64),
        Field::Partition => e.partition.push('x'),
    }
}

fn config(cases: u32) -> ProptestConfig {
    // Integration tests have no lib.rs beside them for proptest's regression files.
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

fn problems(st: &PartitionState) -> Vec<String> {
    verify_partition(PARTITION, st)
        .into_iter()
        .map(|f| f.problem)
        .collect()
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn an_untouched_chain_verifies(w in writes()) {
        let st = partition(&w);
        prop_assert_eq!(problems(&st), Vec::<String>::new());
        prop_assert!(st.entries.iter().all(AuditEntry::hash_ok));
    }

    #[test]
    fn an_edited_entry_is_found(w in writes(), at in any::<Index>(), f in field(), forge in any::<bool>()) {
        let mut st = partition(&w);
        let i = at.index(st.entries.len());
        tamper(&mut st.entries[i], &f);
        if forge {
            // The forger fixes the entry's own hash: the next link, or the head, gives it away.
            rehash(&mut st.entries[i]);
        }
        let p = problems(&st);
        prop_assert!(!p.is_empty(), "entry {} edited ({:?}, rehashed: {}) and not found", i, f, forge);
    }

    #[test]
    fn a_removed_entry_is_found(w in writes(), at in any::<Index>()) {
        let mut st = partition(&w);
        let i = at.index(st.entries.len());
        st.entries.remove(i);
        let p = problems(&st);
        prop_assert!(!p.is_empty(), "entry {} removed and not found", i);
        prop_assert!(p.iter().any(|p| p == "removed" || p == "head_mismatch"), "{:?}", p);
    }

    #[test]
    fn an_inserted_entry_is_found(w in writes(), at in any::<Index>(), v in any::<u32>(), k in 0..KINDS.len()) {
        let mut st = partition(&w);
        let i = at.index(st.entries.len() + 1);
        // A well-formed link after the entry before it, as a forger with the code would make.
        let prev = i.checked_sub(1).map(|j| (st.entries[j].seq, st.entries[j].hash.clone()));
        let (forged, _) = next_entry(
            prev.as_ref().map(|(s, h)| (*s, h.as_str())),
            PARTITION,
            KINDS[k],
            "forged",
            t0(),
            json!({"forged": v}),
            None,
        );
        st.entries.insert(i, forged);
        let p = problems(&st);
        prop_assert!(!p.is_empty(), "an entry inserted at {} and not found", i);
    }

    #[test]
    fn reordered_entries_are_found(w in writes(), a in any::<Index>(), b in any::<Index>()) {
        let mut st = partition(&w);
        let (i, j) = (a.index(st.entries.len()), b.index(st.entries.len()));
        prop_assume!(i != j);
        st.entries.swap(i, j);
        let p = problems(&st);
        prop_assert!(p.iter().any(|p| p == "reordered" || p == "removed"), "{:?}", p);
    }

    #[test]
    fn a_changed_removed_or_added_record_is_found(w in writes(), at in any::<Index>(), how in 0..3u8) {
        let mut st = partition(&w);
        let keys: Vec<(String, String)> = st.records.keys().cloned().collect();
        let key = keys[at.index(keys.len())].clone();
        let expected = match how {
            0 => {
                st.records.get_mut(&key).unwrap()["tampered"] = json!(true);
                "edited"
            }
            1 => {
                st.records.remove(&key);
                "removed"
            }
            _ => {
                st.records.insert((kind::DOC.into(), "outside".into()), json!({"x": 1}));
                "inserted"
            }
        };
        let p = problems(&st);
        prop_assert!(p.iter().any(|p| p == expected), "{:?}, expected {}", p, expected);
    }

    /// Forging the rest of the chain after an edit makes it link up again, but it ends at
    /// another head: the recorded head, or a checkpoint of it, tells.
    #[test]
    fn a_reforged_chain_ends_at_another_head(w in writes(), at in any::<Index>(), f in field()) {
        prop_assume!(!matches!(f, Field::Prev));
        let st = partition(&w);
        let mut forged = st.entries.clone();
        let i = at.index(forged.len());
        tamper(&mut forged[i], &f);
        let head = relink(&mut forged, i);
        prop_assert_ne!(head, st.head.clone());
        let tampered = PartitionState { entries: forged, ..st };
        prop_assert!(!problems(&tampered).is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// The per-record chain of runs and approvals

/// A record of a run's or an approval's chain: its kind and body.
type Record = (String, Value);

fn records() -> impl Strategy<Value = Vec<Record>> {
    let kinds = ["run.start", "run.event", "run.finish", "approval.signed"];
    prop::collection::vec((0..kinds.len(), any::<u32>()), 1..16).prop_map(move |v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (k, x))| (kinds[k].to_string(), json!({"seq": i, "x": x})))
            .collect()
    })
}

/// Each record with its link, from the empty start, as the run ledger and approvals store them.
fn links(records: &[Record]) -> Vec<String> {
    let mut prev = String::new();
    records
        .iter()
        .map(|(kind, body)| {
            prev = chain(&prev, kind, body);
            prev.clone()
        })
        .collect()
}

/// The verifier: every stored link recomputes from the records, and the last is `head`.
fn verifies(records: &[Record], stored: &[String], head: &str) -> bool {
    records.len() == stored.len()
        && links(records) == stored
        && stored.last().map(String::as_str) == Some(head)
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn a_record_chain_verifies(r in records()) {
        let stored = links(&r);
        let head = stored.last().unwrap().clone();
        prop_assert!(verifies(&r, &stored, &head));
    }

    #[test]
    fn any_change_to_the_records_gives_another_head(
        r in records(),
        a in any::<Index>(),
        b in any::<Index>(),
        how in 0..5u8,
        v in any::<u32>(),
    ) {
        let stored = links(&r);
        let head = stored.last().unwrap().clone();
        let mut t = r.clone();
        let i = a.index(t.len());
        match how {
            0 => t[i].1["tampered"] = json!(v),
            1 => t[i].0.push_str(".x"),
            2 => {
                t.remove(i);
            }
            3 => t.insert(b.index(t.len() + 1), ("run.event".into(), json!({"inserted": v}))),
            _ => {
                let j = b.index(t.len());
                t.swap(i, j);
            }
        }
        prop_assume!(t != r); // swapping a record with itself, or with an equal one
        // The stored links no longer verify against the records...
        prop_assert!(!verifies(&t, &stored, &head));
        // ...and links recomputed over the changed records end elsewhere.
        let relinked = links(&t);
        prop_assert_ne!(relinked.last(), Some(&head));
    }
}
