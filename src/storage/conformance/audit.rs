//! The audit chains as backends read them back: partitions, heads, pages and a partition's
//! state, for records written by `ingest` and `doc_commit`.

use super::*;
use crate::domain::audit_chain::{event_body, incident_body, kind, AuditEntry, GENESIS};
use crate::storage::{DocCommit, DocWrite, Expect};

/// Every entry links to the one before it, from the genesis, with no gap, and its own hash holds.
fn assert_linked(entries: &[&AuditEntry]) {
    let mut prev = GENESIS.to_string();
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "{e:?}");
        assert_eq!(e.prev, prev, "entry {} links to the one before", e.seq);
        assert!(e.hash_ok(), "entry {} matches its hash", e.seq);
        prev = e.hash.clone();
    }
}

pub async fn audit_chains_link_and_read_back(s: Shared) {
    let rule = unique("rule");
    let fired = delivery(alert(&rule, "vm1", &unique("a"), Condition::Fired));
    let stream = stream_key(&fired.alerts[0].alert).to_string();
    let out1 = s.ingest(&fired, &all_sinks()).await.unwrap();
    let resolved = delivery(alert(&rule, "vm1", &unique("a"), Condition::Resolved));
    let out2 = s.ingest(&resolved, &all_sinks()).await.unwrap();
    let incident_id = out1[0].incident_id.clone().expect("an incident");

    let docp = unique("p").replace('-', "");
    let now = Utc::now();
    let commit = |writes: Vec<DocWrite>| DocCommit {
        partition: docp.clone(),
        writes,
        outbox: Vec::new(),
        record_id: "r".into(),
        now,
    };
    let w = |key: &str, v: serde_json::Value, expect: Expect| DocWrite {
        key: key.into(),
        value: v,
        expect,
    };
    assert!(s
        .doc_commit(&commit(vec![
            w("a", serde_json::json!({"n": 1}), Expect::Absent),
            w("b", serde_json::json!({"n": 2}), Expect::Absent),
        ]))
        .await
        .unwrap());
    let a = s.doc_get(&docp, "a").await.unwrap().unwrap();
    assert!(s
        .doc_commit(&commit(vec![w(
            "a",
            serde_json::json!({"n": 3}),
            Expect::Version(a.version)
        )]))
        .await
        .unwrap());

    // Partitions: both, in name order.
    let parts = s.audit_partitions().await.unwrap();
    assert!(
        parts.contains(&stream) && parts.contains(&docp),
        "{parts:?}"
    );
    assert!(parts.windows(2).all(|w| w[0] < w[1]), "sorted: {parts:?}");

    // The whole trail in one page, and again two entries at a time: the same, in order.
    let all = s.audit_page(None, 100_000).await.unwrap();
    assert!(all
        .windows(2)
        .all(|w| (&w[0].partition, w[0].seq) < (&w[1].partition, w[1].seq)));
    let mut paged: Vec<AuditEntry> = Vec::new();
    loop {
        let after = paged.last().map(|e| (e.partition.as_str(), e.seq));
        let page = s.audit_page(after, 2).await.unwrap();
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    assert_eq!(paged, all);
    let of = |p: &str| all.iter().filter(|e| e.partition == p).collect::<Vec<_>>();

    // The stream's chain: each event, then the incident it changed.
    let chain = of(&stream);
    assert_linked(&chain);
    let kinds: Vec<(&str, &str)> = chain
        .iter()
        .map(|e| (e.kind.as_str(), e.key.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (kind::EVENT, out1[0].event_id.as_str()),
            (kind::INCIDENT, incident_id.as_str()),
            (kind::EVENT, out2[0].event_id.as_str()),
            (kind::INCIDENT, incident_id.as_str()),
        ]
    );
    // The document partition's chain: one entry per document written, bodies as written.
    let docs = of(&docp);
    assert_linked(&docs);
    let bodies: Vec<(&str, serde_json::Value)> = docs
        .iter()
        .map(|e| (e.key.as_str(), e.body.clone()))
        .collect();
    assert_eq!(
        bodies,
        vec![
            ("a", serde_json::json!({"n": 1})),
            ("b", serde_json::json!({"n": 2})),
            ("a", serde_json::json!({"n": 3})),
        ]
    );
    assert!(docs.iter().all(|e| e.kind == kind::DOC));

    // Heads: each partition's last entry, in partition order.
    let heads = s.audit_heads().await.unwrap();
    assert!(heads.windows(2).all(|w| w[0].0 < w[1].0));
    for p in [&stream, &docp] {
        let last = of(p).last().copied().unwrap();
        assert!(
            heads.contains(&(p.clone(), last.seq, last.hash.clone())),
            "{p}: {heads:?}"
        );
    }

    // A partition's state: the same chain, its head, and every current record's body
    // rebuilt from stored data, equal to the body its last entry recorded.
    let st = s.audit_state(&stream).await.unwrap();
    assert_eq!(st.entries.iter().collect::<Vec<_>>(), chain);
    let last = chain.last().unwrap();
    assert_eq!(st.head, Some((last.seq, last.hash.clone())));
    let e1 = s.event(&out1[0].event_id).await.unwrap().unwrap();
    let e2 = s.event(&out2[0].event_id).await.unwrap().unwrap();
    let inc = s.incident(&incident_id).await.unwrap().unwrap();
    let mut want = BTreeMap::new();
    want.insert((kind::EVENT.to_string(), e1.id.clone()), event_body(&e1));
    want.insert((kind::EVENT.to_string(), e2.id.clone()), event_body(&e2));
    want.insert(
        (kind::INCIDENT.to_string(), inc.id.clone()),
        incident_body(&inc),
    );
    assert_eq!(st.records, want);
    assert_eq!(
        st.records[&(kind::INCIDENT.into(), incident_id.clone())],
        last.body
    );

    let st = s.audit_state(&docp).await.unwrap();
    assert_eq!(st.entries.iter().collect::<Vec<_>>(), docs);
    let mut want = BTreeMap::new();
    want.insert(
        (kind::DOC.to_string(), "a".to_string()),
        serde_json::json!({"n": 3}),
    );
    want.insert(
        (kind::DOC.to_string(), "b".to_string()),
        serde_json::json!({"n": 2}),
    );
    assert_eq!(st.records, want);

    // A partition nobody wrote has no chain and no records.
    let st = s
        .audit_state(&unique("none").replace('-', ""))
        .await
        .unwrap();
    assert!(st.entries.is_empty() && st.head.is_none() && st.records.is_empty());
}
