//! The sweep, run by the timer: expires and escalates overdue requests and reminds approvers of
//! pending ones. It reads the day index (`index|<yyyymmdd>|<id>` in the registry) back over the
//! expiry period plus two days; a decided approval is marked `final` there and left alone.

use super::{load, mark_final, Approvals, ServiceError, REGISTRY};
use crate::storage::StoreError;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{json, Value};

/// What one sweep looked at and did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SweepReport {
    pub checked: usize,
    pub expired: usize,
    pub reminded: usize,
}

/// What the sweep did with one approval.
enum Swept {
    Expired,
    Reminded,
    Nothing,
}

impl Approvals {
    /// Expire and escalate overdue requests and remind approvers of pending ones. Reads the day
    /// index back over the expiry period plus two days; safe to run from several instances at once.
    pub async fn sweep(&self, now: DateTime<Utc>) -> Result<SweepReport, StoreError> {
        let policy = &self.config.policy;
        let days = policy.expiry.num_days() + 2;
        let mut report = SweepReport::default();
        for d in 0..=days {
            let day = (now - Duration::days(d)).format("%Y%m%d").to_string();
            for doc in self
                .store()
                .doc_list(REGISTRY, &format!("index|{day}|"))
                .await?
            {
                if doc.value.get("final") == Some(&json!(true)) {
                    continue;
                }
                let Some(id) = doc.value.get("approval_id").and_then(Value::as_str) else {
                    continue;
                };
                report.checked += 1;
                match self.sweep_one(id, now).await {
                    Ok(Swept::Expired) => report.expired += 1,
                    Ok(Swept::Reminded) => report.reminded += 1,
                    Ok(Swept::Nothing) => {}
                    Err(e) => {
                        tracing::warn!(approval_id = id, error = %e, "approval sweep failed; next tick retries")
                    }
                }
            }
        }
        Ok(report)
    }

    async fn sweep_one(&self, id: &str, now: DateTime<Utc>) -> Result<Swept, ServiceError> {
        let policy = &self.config.policy;
        for _ in 0..5 {
            let Some((a, version)) = load(self.store(), id).await? else {
                return Ok(Swept::Nothing);
            };
            if a.status.is_final() {
                mark_final(self.store(), &a, now).await;
                return Ok(Swept::Nothing);
            }
            if a.is_overdue(now) {
                self.expire_now(&a, &version, now).await?;
                return Ok(Swept::Expired);
            }
            if !a.reminder_due(now, policy) {
                return Ok(Swept::Nothing);
            }
            let mut next = a.clone();
            next.reminders_sent += 1;
            next.last_reminder_at = Some(now);
            let record_id = format!("{id}-R{}", next.reminders_sent);
            let audit = json!({"action": "approval.reminded", "approval_id": id, "reminder": next.reminders_sent, "at": now});
            if self
                .save(
                    &next,
                    Some(&version),
                    "approval.reminder",
                    &record_id,
                    audit,
                    now,
                )
                .await?
            {
                return Ok(Swept::Reminded);
            }
        }
        Ok(Swept::Nothing)
    }
}
