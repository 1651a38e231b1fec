//! The storage conformance suite on the embedded (SQLite) backend. "Two instances" are two
//! independent stores (two writer threads, two connections) on the same database file, as two
//! processes on one machine would be.

use icahub::storage::{sqlite::SqliteStore, Store};
use std::sync::Arc;

async fn two_stores() -> (Arc<dyn Store>, Arc<dyn Store>) {
    // Leaked on purpose: the directory must outlive the stores, which outlive the test body.
    let dir = Box::leak(Box::new(tempfile::tempdir().expect("temp dir")));
    let a = SqliteStore::open(dir.path()).expect("open a");
    let b = SqliteStore::open(dir.path()).expect("open b");
    (Arc::new(a), Arc::new(b))
}

icahub::store_conformance_tests!(two_stores);
