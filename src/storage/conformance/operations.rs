//! What operators and health checks use: the backend's name and location, `ping`,
//! `count_events` and `backup`.

use super::*;

pub async fn identity_ping_count_and_backup(s: Shared) {
    assert!(
        ["embedded", "azure_tables"].contains(&s.backend()),
        "{}",
        s.backend()
    );
    assert!(!s.location().is_empty());
    s.ping().await.unwrap();

    let before = s.count_events().await.unwrap();
    let rule = unique("rule");
    let mut ids = Vec::new();
    for i in 0..3 {
        let d = delivery(alert(
            &rule,
            &format!("vm{i}"),
            &unique("a"),
            Condition::Fired,
        ));
        ids.push(
            s.ingest(&d, &Routing::default()).await.unwrap()[0]
                .event_id
                .clone(),
        );
        // The same alert again is a duplicate: not another event.
        let again = s.ingest(&d, &Routing::default()).await.unwrap();
        assert_eq!(again[0].event_id, ids[i]);
    }
    assert_eq!(s.count_events().await.unwrap(), before + 3);

    // A backup holds the records and never a secret, and never overwrites a file.
    let secret = format!("never-backed-up-{}", uuid::Uuid::new_v4().simple());
    s.secret_put(&unique("k"), &secret, Utc::now())
        .await
        .unwrap();
    let path = std::env::temp_dir().join(format!("icahub-conformance-{}.bak", unique("b")));
    let written = s.backup(&path, &|_| {}).await.unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let holds = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        ids.iter().all(|id| holds(id)),
        "the backup holds the events"
    );
    assert!(!holds(&secret), "the backup holds no secret");
    if let Some(n) = written.entities {
        assert!(n >= 3, "{n} entities");
    }
    assert!(
        s.backup(&path, &|_| {}).await.is_err(),
        "an existing file is never overwritten"
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let _ = std::fs::remove_file(&path);
}
