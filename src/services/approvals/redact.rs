//! `icahub audit redact-tokens`: takes the check's job token out of approvals that earlier
//! versions stored with it inline, without rewriting the chain.

use super::{commit_of, detach_token, pause, ATTEMPTS};
use crate::domain::approval::Approval;
use crate::domain::routing::Sink;
use crate::storage::{DocWrite, Expect, Store, StoreError};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

/// What [`redact_tokens`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RedactReport {
    /// Approval partitions read.
    pub approvals: usize,
    /// Approvals whose current document held a token: redacted (or, dry run, to redact).
    pub redacted: Vec<String>,
    /// Of those, the open ones, whose token moved to the secret store for their callback.
    pub moved_to_secret: Vec<String>,
    /// Earlier chain entries that hold a token: kept as stored (the chain is never rewritten),
    /// masked in `audit query`, `audit export` and `audit archive`.
    pub chain_entries_with_token: u64,
    /// Azure DevOps outbox rows (not chained) whose payload carries a token inline.
    pub outbox_rows_with_token: u64,
    pub dry_run: bool,
}

/// For every approval whose current document holds its check's token inline (as versions before
/// the secret store wrote it), append a new version without it (the token's SHA-256 instead; an
/// approval still open keeps the token in the secret store for its callback) and an audit note
/// `audit.redacted`, in one commit. Nothing is rewritten: older chain entries keep their bodies
/// (and so their hashes) and are counted. `dry_run` only counts. Safe to run again, and while
/// the hub runs (each write is an optimistic commit).
pub async fn redact_tokens(
    store: &dyn Store,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<RedactReport, StoreError> {
    let mut report = RedactReport {
        dry_run,
        ..Default::default()
    };
    for p in store.audit_partitions().await? {
        if !p.starts_with("apr") {
            continue;
        }
        report.approvals += 1;
        let st = store.audit_state(&p).await?;
        report.chain_entries_with_token += st
            .entries
            .iter()
            .filter(|e| !crate::audit::mask_tokens(&mut e.body.clone()).is_empty())
            .count() as u64;
        for _ in 0..ATTEMPTS {
            let Some(doc) = store.doc_get(&p, "approval").await? else {
                break;
            };
            let has_token = doc.value["check"]
                .get("auth_token")
                .and_then(Value::as_str)
                .is_some_and(|t| !t.is_empty());
            if !has_token {
                break;
            }
            let mut a: Approval = serde_json::from_value(doc.value.clone())
                .map_err(|e| StoreError::Corrupt(format!("approval in {p}: {e}")))?;
            let open = !a.status.is_final();
            if dry_run {
                report.redacted.push(a.id.clone());
                if open {
                    report.moved_to_secret.push(a.id.clone());
                }
                break;
            }
            let Some(sha) = detach_token(store, &mut a, open, now).await? else {
                break;
            };
            let note = json!({"action": "audit.redacted", "approval_id": a.id,
                              "field": "check.auth_token", "sha256": sha,
                              "moved_to_secret": open, "at": now});
            let c = commit_of(
                p.clone(),
                vec![
                    DocWrite {
                        key: "approval".into(),
                        value: serde_json::to_value(&a).unwrap_or_default(),
                        expect: Expect::Version(doc.version.clone()),
                    },
                    crate::audit::note(now, note),
                ],
                Vec::new(),
                &format!("{}-redacted", a.id),
                now,
            );
            if store.doc_commit(&c).await? {
                report.redacted.push(a.id.clone());
                if open {
                    report.moved_to_secret.push(a.id.clone());
                }
                break;
            }
            pause(0).await;
        }
    }
    for status in [
        crate::storage::OutboxStatus::Pending,
        crate::storage::OutboxStatus::Dead,
        crate::storage::OutboxStatus::Delivered,
    ] {
        let rows = store
            .outbox_list(&crate::storage::OutboxFilter {
                status: Some(status),
                sink: Some(Sink::AzureDevops),
                limit: usize::MAX >> 1,
            })
            .await?;
        report.outbox_rows_with_token += rows
            .iter()
            .filter(|r| r.payload["check"].get("auth_token").is_some())
            .count() as u64;
    }
    Ok(report)
}
