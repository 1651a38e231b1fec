//! Deployment locks: one approved production deployment per target at a time. The lock
//! (`lock|<hash of the target>` in the registry) is taken in the signature (or override) that
//! approves, and binds while its approval is approved, its run has not finished and the lock is
//! younger than `ICAHUB_DEPLOYMENT_LOCK_SECS`.

use super::{commit_of, expect_of, key_hash, load, pause, Approvals, ATTEMPTS, REGISTRY};
use crate::domain::approval::{Approval, ApprovalStatus};
use crate::services::ServiceError;
use crate::storage::{DocWrite, Expect, StoreError};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A lock taken by an approval that is not (yet) approved is honoured this long: the approval's
/// own commit follows the lock's within this time.
const LOCK_GRACE_SECS: i64 = 60;

/// What the registry keeps of a target's lock (free when `holder` is `None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lock {
    pub target: String,
    pub holder: Option<String>,
    pub run_id: Option<String>,
    pub acquired_at: Option<DateTime<Utc>>,
}

fn lock_key(target: &str) -> String {
    format!("lock|{}", key_hash(&[&target.trim().to_ascii_lowercase()]))
}

/// A storage failure on a lock, or contention on it.
fn lock_err(e: StoreError) -> ServiceError {
    ServiceError::from_store(
        "the deployment lock was not read or changed",
        "this deployment lock",
    )(e)
}

fn held_by(target: &str, l: &Lock) -> ServiceError {
    ServiceError::Conflict(format!(
        "deployment target {target:?} is locked by {} (run {}, approved {}): one approved production deployment at a time; finish that run first",
        l.holder.as_deref().unwrap_or("?"),
        l.run_id.as_deref().unwrap_or("?"),
        l.acquired_at.map(|t| t.to_rfc3339()).unwrap_or_default()
    ))
}

impl Approvals {
    /// The approval holding `lock`, if the lock still binds: held, younger than the TTL, its
    /// holder approved (or just taking it) and the holder's run not finished.
    async fn live_holder(
        &self,
        lock: &Lock,
        now: DateTime<Utc>,
    ) -> Result<Option<Lock>, ServiceError> {
        let (Some(holder), Some(at)) = (&lock.holder, lock.acquired_at) else {
            return Ok(None);
        };
        if now - at > self.config.policy.lock_ttl {
            return Ok(None);
        }
        let fresh = now - at < Duration::seconds(LOCK_GRACE_SECS);
        match load(self.store(), holder).await? {
            Some((a, _)) if a.status == ApprovalStatus::Approved => {
                let finished = self
                    .run_record(&a.run_id)
                    .await?
                    .is_some_and(|r| r.status != crate::domain::run::RunStatus::Running);
                Ok((!finished).then(|| lock.clone()))
            }
            Some((a, _)) if a.status.is_final() => Ok(None),
            _ => Ok(fresh.then(|| lock.clone())),
        }
    }

    async fn read_lock(
        &self,
        target: &str,
    ) -> Result<(Option<crate::storage::Doc>, Option<Lock>), ServiceError> {
        let doc = self
            .store()
            .doc_get(REGISTRY, &lock_key(target))
            .await
            .map_err(lock_err)?;
        let lock = match &doc {
            Some(d) => Some(
                serde_json::from_value(d.value.clone())
                    .map_err(|e| lock_err(StoreError::Corrupt(format!("lock: {e}"))))?,
            ),
            None => None,
        };
        Ok((doc, lock))
    }

    /// 409 when another approval holds the target's lock.
    pub(super) async fn check_lock(
        &self,
        target: &str,
        me: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), ServiceError> {
        if let (_, Some(lock)) = self.read_lock(target).await? {
            if let Some(l) = self.live_holder(&lock, now).await? {
                if l.holder.as_deref() != me {
                    return Err(held_by(target, &l));
                }
            }
        }
        Ok(())
    }

    /// Take the target's lock for `a` (idempotent when `a` holds it already).
    pub(super) async fn acquire_lock(
        &self,
        a: &Approval,
        now: DateTime<Utc>,
    ) -> Result<(), ServiceError> {
        for attempt in 0..ATTEMPTS {
            let (doc, lock) = self.read_lock(&a.deployment_target).await?;
            if let Some(lock) = &lock {
                if lock.holder.as_deref() == Some(a.id.as_str()) {
                    return Ok(());
                }
                if let Some(l) = self.live_holder(lock, now).await? {
                    return Err(held_by(&a.deployment_target, &l));
                }
            }
            let new = Lock {
                target: a.deployment_target.clone(),
                holder: Some(a.id.clone()),
                run_id: Some(a.run_id.clone()),
                acquired_at: Some(now),
            };
            let c = commit_of(
                REGISTRY.into(),
                vec![
                    DocWrite {
                        key: lock_key(&a.deployment_target),
                        value: serde_json::to_value(&new).unwrap_or_default(),
                        expect: expect_of(&doc),
                    },
                    crate::audit::note(
                        now,
                        json!({"action": "lock.acquired", "target": a.deployment_target, "approval_id": a.id, "run_id": a.run_id, "previous": lock, "at": now}),
                    ),
                ],
                Vec::new(),
                &a.id,
                now,
            );
            if self.store().doc_commit(&c).await.map_err(lock_err)? {
                return Ok(());
            }
            pause(attempt).await;
        }
        Err(super::contention("this deployment lock"))
    }

    /// Give the lock back if `id` holds it (its approval did not go through after all).
    pub(super) async fn release_lock(&self, target: &str, id: &str, now: DateTime<Utc>) {
        for _ in 0..10 {
            let Ok((Some(doc), Some(lock))) = self.read_lock(target).await else {
                return;
            };
            if lock.holder.as_deref() != Some(id) {
                return;
            }
            let free = Lock {
                target: target.into(),
                holder: None,
                run_id: None,
                acquired_at: None,
            };
            let c = commit_of(
                REGISTRY.into(),
                vec![
                    DocWrite {
                        key: lock_key(target),
                        value: serde_json::to_value(&free).unwrap_or_default(),
                        expect: Expect::Version(doc.version),
                    },
                    crate::audit::note(
                        now,
                        json!({"action": "lock.released", "target": target, "approval_id": id, "at": now}),
                    ),
                ],
                Vec::new(),
                id,
                now,
            );
            if let Ok(true) = self.store().doc_commit(&c).await {
                return;
            }
        }
        tracing::warn!(
            approval_id = id,
            target,
            "could not release a deployment lock; it lapses on its own"
        );
    }
}
