//! Documents: atomic commits with expectations, and the outbox rows they carry.

use super::*;

fn doc_commit(partition: &str, writes: Vec<crate::storage::DocWrite>) -> crate::storage::DocCommit {
    crate::storage::DocCommit {
        partition: partition.into(),
        writes,
        outbox: Vec::new(),
        record_id: "REC-test".into(),
        now: Utc::now(),
    }
}

fn write(
    key: &str,
    value: serde_json::Value,
    expect: crate::storage::Expect,
) -> crate::storage::DocWrite {
    crate::storage::DocWrite {
        key: key.into(),
        value,
        expect,
    }
}

pub async fn documents_commit_atomically_with_expectations(s: Shared) {
    use crate::storage::Expect;
    let p = unique("docs").replace('-', "");
    assert!(s.doc_get(&p, "a").await.unwrap().is_none());
    assert!(s
        .doc_commit(&doc_commit(
            &p,
            vec![
                write("a", serde_json::json!({"n": 1}), Expect::Absent),
                write("b|1", serde_json::json!("x"), Expect::Absent),
            ],
        ))
        .await
        .unwrap());
    let a = s.doc_get(&p, "a").await.unwrap().expect("a stored");
    assert_eq!(a.value["n"], 1);
    // A second create of `a` fails and writes nothing, not even its other document.
    assert!(!s
        .doc_commit(&doc_commit(
            &p,
            vec![
                write("c", serde_json::json!(3), Expect::Absent),
                write("a", serde_json::json!({"n": 9}), Expect::Absent),
            ],
        ))
        .await
        .unwrap());
    assert!(
        s.doc_get(&p, "c").await.unwrap().is_none(),
        "all or nothing"
    );
    // Update at the read version works once; the stale version then fails.
    assert!(s
        .doc_commit(&doc_commit(
            &p,
            vec![write(
                "a",
                serde_json::json!({"n": 2}),
                Expect::Version(a.version.clone())
            )],
        ))
        .await
        .unwrap());
    assert!(!s
        .doc_commit(&doc_commit(
            &p,
            vec![write(
                "a",
                serde_json::json!({"n": 3}),
                Expect::Version(a.version.clone())
            )],
        ))
        .await
        .unwrap());
    let a2 = s.doc_get(&p, "a").await.unwrap().unwrap();
    assert_eq!(a2.value["n"], 2);
    assert_ne!(a2.version, a.version);
    // Listing by prefix, in key order; other partitions are separate.
    assert!(s
        .doc_commit(&doc_commit(
            &p,
            vec![write("b|0", serde_json::json!("w"), Expect::Absent)],
        ))
        .await
        .unwrap());
    let keys: Vec<String> = s
        .doc_list(&p, "b|")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.key)
        .collect();
    assert_eq!(keys, vec!["b|0", "b|1"]);
    assert_eq!(s.doc_list(&p, "").await.unwrap().len(), 3);
    assert!(s.doc_list(&format!("{p}x"), "").await.unwrap().is_empty());
    // A large document round-trips.
    let big = "ü".repeat(150_000);
    assert!(s
        .doc_commit(&doc_commit(
            &p,
            vec![write("big", serde_json::json!(big), Expect::Absent)]
        ))
        .await
        .unwrap());
    assert_eq!(
        s.doc_get(&p, "big").await.unwrap().unwrap().value,
        serde_json::json!(big)
    );
}

pub async fn documents_carry_outbox_rows(s: Shared) {
    use crate::storage::Expect;
    let p = unique("docout").replace('-', "");
    let draft = |n: u32| crate::domain::routing::OutboxDraft {
        sink: Sink::ControlPlane,
        kind: "run.start".into(),
        idempotency_key: format!("{p}-{n}"),
        payload: serde_json::json!({"n": n}),
    };
    let mut c = doc_commit(
        &p,
        vec![write(
            "run",
            serde_json::json!({"state": 1}),
            Expect::Absent,
        )],
    );
    c.outbox = vec![draft(1), draft(2)];
    assert!(s.doc_commit(&c).await.unwrap());
    let run = s.doc_get(&p, "run").await.unwrap().unwrap();
    let mut c2 = doc_commit(
        &p,
        vec![write(
            "run",
            serde_json::json!({"state": 2}),
            Expect::Version(run.version),
        )],
    );
    c2.outbox = vec![draft(3)];
    assert!(s.doc_commit(&c2).await.unwrap());
    // A failed commit adds no rows.
    let mut c3 = doc_commit(
        &p,
        vec![write("run", serde_json::json!({}), Expect::Absent)],
    );
    c3.outbox = vec![draft(4)];
    assert!(!s.doc_commit(&c3).await.unwrap());
    let rows = s.stream_outbox(&p).await.unwrap();
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(rows[0].event_id, "REC-test");
    assert_eq!(rows[2].payload["n"], 3);
    let due = s
        .outbox_due(Utc::now() + Duration::seconds(5), 10, Some(&p))
        .await
        .unwrap();
    assert_eq!(due.len(), 1, "one head per sink");
    assert_eq!(due[0].seq, 1);
}

/// Two instances update one document at once: every successful update is based on the one
/// before it (no lost update).
pub async fn two_instances_never_lose_a_document_update(a: Shared, b: Shared) {
    use crate::storage::Expect;
    let p = unique("docrace").replace('-', "");
    assert!(a
        .doc_commit(&doc_commit(
            &p,
            vec![write("n", serde_json::json!(0), Expect::Absent)]
        ))
        .await
        .unwrap());
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let d = s.doc_get(&p, "n").await.unwrap().unwrap();
                let n = d.value.as_i64().unwrap();
                let c = doc_commit(
                    &p,
                    vec![write(
                        "n",
                        serde_json::json!(n + 1),
                        Expect::Version(d.version),
                    )],
                );
                if s.doc_commit(&c).await.unwrap() {
                    break;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        a.doc_get(&p, "n").await.unwrap().unwrap().value,
        serde_json::json!(20)
    );
}
