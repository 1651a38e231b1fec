//! Approval numbers: `APR-<year>-<seq>`, from a yearly counter in the registry.

use super::{commit_of, contention, expect_of, pause, ATTEMPTS, REGISTRY};
use crate::services::ServiceError;
use crate::storage::{DocWrite, Store, StoreError};
use chrono::{DateTime, Datelike, Utc};
use serde_json::{json, Value};

/// Hands out approval numbers from the yearly counter in the registry. Requests that arrive
/// together on one instance share one counter commit (the first to get the lock serves everyone
/// queued), so they do not fight over the counter document; instances still race each other
/// optimistically. A number is lost (a gap) only when its request then fails.
#[derive(Default)]
pub struct IdAllocator {
    waiting: std::sync::Mutex<Vec<Waiter>>,
    leader: tokio::sync::Mutex<()>,
}

/// A request for a number of this year, and where to send it.
type Waiter = (i32, tokio::sync::oneshot::Sender<Result<u64, StoreError>>);

impl IdAllocator {
    /// The next number of `now`'s year.
    pub async fn next(&self, store: &dyn Store, now: DateTime<Utc>) -> Result<u64, ServiceError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.push((now.year(), tx));
        }
        {
            let _leader = self.leader.lock().await;
            let batch: Vec<_> = match self.waiting.lock() {
                Ok(mut w) => w.drain(..).collect(),
                Err(_) => Vec::new(),
            };
            let mut years: Vec<i32> = batch.iter().map(|(y, _)| *y).collect();
            years.sort_unstable();
            years.dedup();
            let mut batch = batch;
            for y in years {
                let (mine, rest): (Vec<_>, Vec<_>) =
                    batch.into_iter().partition(|(by, _)| *by == y);
                batch = rest;
                match Self::reserve(store, y, mine.len() as u64, now).await {
                    Ok(first) => {
                        for (i, (_, tx)) in mine.into_iter().enumerate() {
                            let _ = tx.send(Ok(first + i as u64));
                        }
                    }
                    Err(e) => {
                        for (_, tx) in mine {
                            let _ = tx.send(Err(copy(&e)));
                        }
                    }
                }
            }
        }
        match rx.await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(ServiceError::from_store(
                "no approval number was allocated",
                "the approval counter",
            )(e)),
            Err(_) => Err(contention("the approval counter")),
        }
    }

    /// Move the counter on by `k`; the first of the reserved numbers.
    async fn reserve(
        store: &dyn Store,
        year: i32,
        k: u64,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let key = format!("seq|{year}");
        for attempt in 0..ATTEMPTS {
            let doc = store.doc_get(REGISTRY, &key).await?;
            let last = doc
                .as_ref()
                .and_then(|d| d.value.get("last").and_then(Value::as_u64))
                .unwrap_or(0);
            let c = commit_of(
                REGISTRY.into(),
                vec![DocWrite {
                    key: key.clone(),
                    value: json!({"last": last + k}),
                    expect: expect_of(&doc),
                }],
                Vec::new(),
                &key,
                now,
            );
            if store.doc_commit(&c).await? {
                return Ok(last + 1);
            }
            pause(attempt).await;
        }
        Err(StoreError::Contention(
            "the approval counter is busy".into(),
        ))
    }
}

/// One failure for each request of a batch (`StoreError` is not `Clone`).
fn copy(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Contention(m) => StoreError::Contention(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        StoreError::Config(m) => StoreError::Config(m.clone()),
    }
}
