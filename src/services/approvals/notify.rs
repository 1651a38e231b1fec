//! The outbox rows an approval's change writes, in the same commit: the control plane keeps the
//! ledger; Mattermost hears of requests, reminders, escalations and decisions; Azure DevOps (a
//! check) hears of the outcome.

use super::tokens::check_for_audit;
use super::{view, Approvals};
use crate::domain::alert::hash_parts;
use crate::domain::approval::{Approval, ApprovalStatus};
use crate::domain::routing::{OutboxDraft, Sink};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

impl Approvals {
    /// Outbox rows for an approval record of `kind` (`approval.created`, `approval.signed`, …).
    pub(super) fn drafts(
        &self,
        kind: &str,
        record_id: &str,
        a: &Approval,
        now: DateTime<Utc>,
    ) -> Vec<OutboxDraft> {
        let cfg = &self.config;
        let payload =
            json!({"approval_id": a.id, "record_id": record_id, "approval": view(a, now)});
        let mut out = Vec::new();
        if matches!(
            kind,
            "approval.created" | "approval.signed" | "approval.expired" | "approval.overridden"
        ) {
            out.extend(self.routing.ledger_drafts(kind, record_id, payload.clone()));
        }
        if self.routing.mattermost {
            let mut mm = |mm_kind: &str, webhook: &Option<String>, channel: &Option<String>| {
                let mut p = payload.clone();
                p["route"] = json!({
                    "mattermost_webhook": webhook.as_deref().unwrap_or(crate::sinks::DEFAULT_ROUTE),
                    "mattermost_channel": channel,
                });
                out.push(OutboxDraft {
                    sink: Sink::Mattermost,
                    kind: mm_kind.into(),
                    idempotency_key: hash_parts([Sink::Mattermost.as_str(), mm_kind, record_id])
                        [..32]
                        .to_string(),
                    payload: p,
                });
            };
            match kind {
                "approval.created" if a.status == ApprovalStatus::Pending => {
                    mm("approval.requested", &cfg.webhook, &cfg.channel);
                    if a.finance_required {
                        mm(
                            "approval.finance_review",
                            &cfg.webhook,
                            &cfg.finance_channel,
                        );
                    }
                }
                "approval.reminder" => mm("approval.reminder", &cfg.webhook, &cfg.channel),
                "approval.expired" => mm(
                    "approval.escalated",
                    &cfg.escalation_webhook,
                    &cfg.escalation_channel,
                ),
                _ => {}
            }
            if a.status.is_final() && kind != "approval.reminder" {
                mm("approval.decided", &cfg.webhook, &cfg.channel);
            }
        }
        out.extend(check_draft(kind, a));
        out
    }
}

/// The Azure DevOps check's callback once the approval is decided: approved → `succeeded`,
/// rejected or expired → `failed`. Written in the commit that makes the approval final (created
/// rejected by the budget, signed, expired, overridden), which happens once: an override of an
/// approval that was already rejected or expired writes none, as the check has already been told
/// (and the same idempotency key twice would fail the commit). The key is stable per approval and
/// check instance ([`Approvals::attach_check`] may hand a decided approval to a re-run's new
/// check).
pub(super) fn check_draft(kind: &str, a: &Approval) -> Option<OutboxDraft> {
    let check = a.check.as_ref()?;
    if !a.status.is_final() || kind == "approval.reminder" || kind == "approval.override_requested"
    {
        return None;
    }
    if kind == "approval.overridden"
        && a.override_
            .as_ref()
            .is_some_and(|o| o.previous_status.is_final())
    {
        return None;
    }
    let result = if a.status == ApprovalStatus::Approved {
        "succeeded"
    } else {
        "failed"
    };
    let field = |k: &str| check.get(k).and_then(Value::as_str).unwrap_or_default();
    Some(OutboxDraft {
        sink: Sink::AzureDevops,
        kind: "check.completed".into(),
        idempotency_key: hash_parts([
            Sink::AzureDevops.as_str(),
            "check.completed",
            a.id.as_str(),
            field("plan_id"),
            field("job_id"),
            field("task_instance_id"),
        ])[..32]
            .to_string(),
        // The check as stored: its token's SHA-256 and the secret's key, never the token (the
        // dispatcher reads the secret at delivery time).
        payload: json!({"approval_id": a.id, "status": a.status, "result": result, "check": check_for_audit(Some(check))}),
    })
}
