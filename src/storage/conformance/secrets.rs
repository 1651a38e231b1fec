//! Secrets: kept apart from every record.

use super::*;

/// Secrets: put, read, replace, delete; never a record, a chain entry or an audit partition.
pub async fn secrets_are_kept_apart(s: Shared) {
    let now = Utc::now();
    let key = format!("azdo|APR-2026-000001|{}", uuid::Uuid::new_v4().simple());
    let value = format!("tok-{}", uuid::Uuid::new_v4().simple());
    assert_eq!(s.secret_get(&key).await.unwrap(), None);
    assert!(
        !s.secret_delete(&key).await.unwrap(),
        "nothing to delete yet"
    );
    s.secret_put(&key, &value, now).await.unwrap();
    assert_eq!(
        s.secret_get(&key).await.unwrap().as_deref(),
        Some(value.as_str())
    );
    // Another key is another secret; a put replaces.
    let other = format!("{key}-2");
    s.secret_put(&other, "second", now).await.unwrap();
    s.secret_put(&key, "replaced", now).await.unwrap();
    assert_eq!(
        s.secret_get(&key).await.unwrap().as_deref(),
        Some("replaced")
    );
    assert_eq!(
        s.secret_get(&other).await.unwrap().as_deref(),
        Some("second")
    );
    // A long token (the check allows 16 KiB) round-trips.
    let long = "x".repeat(16_384);
    s.secret_put(&other, &long, now).await.unwrap();
    assert_eq!(s.secret_get(&other).await.unwrap(), Some(long));
    // Not a record: no chain, no partition, nothing the verifier or an export reads.
    assert!(s.audit_partitions().await.unwrap().is_empty());
    assert!(s.audit_page(None, 100).await.unwrap().is_empty());
    assert!(s.audit_heads().await.unwrap().is_empty());
    assert!(s.secret_delete(&key).await.unwrap());
    assert!(!s.secret_delete(&key).await.unwrap());
    assert_eq!(s.secret_get(&key).await.unwrap(), None);
    assert!(
        s.secret_get(&other).await.unwrap().is_some(),
        "only that key"
    );
    // Unusable keys are refused on put and unknown on read.
    for bad in ["", "a/b", "a#b", "a b", "a?b"] {
        assert!(
            matches!(
                s.secret_put(bad, "v", now).await,
                Err(crate::storage::StoreError::Config(_))
            ),
            "{bad:?}"
        );
        assert_eq!(s.secret_get(bad).await.unwrap(), None);
    }
}
