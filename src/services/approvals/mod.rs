//! Approval gates, kept in the document store: create, read, sign, override; monthly budgets;
//! deployment locks; and the sweep (run by the timer) that expires, escalates and reminds.
//!
//! [`Approvals`] is the service: it holds the narrow [`Deps`] (store, clock, notifier, counters),
//! the [`ApprovalConfig`], the routing (for the control plane's ledger rows) and the
//! [`IdAllocator`], and answers domain types or a [`ServiceError`]; `http/` builds the JSON
//! bodies. What is where:
//!
//! - here: the service, reading ([`Approvals::get`], [`load`]) and the shared write path (one
//!   optimistic commit of the approval, its audit note and its outbox rows);
//! - [`create`](Approvals::create) and [`attach_check`](Approvals::attach_check): `create.rs`;
//! - [`sign`](Approvals::sign) and [`emergency_override`](Approvals::emergency_override):
//!   `sign.rs`;
//! - `ids.rs`: approval numbers ([`IdAllocator`]); `locks.rs`: deployment locks; `budgets.rs`:
//!   budgets, pipeline→project maps and the estimates held against them; `notify.rs`: the
//!   outbox rows an approval's change writes; `tokens.rs`: the check's job token, kept out of
//!   the approval; `view.rs`: the approval's public JSON ([`view`], also the outbox payload);
//!   `sweep.rs`: expiry, escalation, reminders; `redact.rs`: `icahub audit redact-tokens`.
//! - The settings and their parsers are [`crate::config::approvals`]; the rules (who may sign
//!   what, budgets, overrides) are the pure [`crate::domain::approval`].
//!
//! Layout: each approval lives alone in partition `apr<year><seq>` (its document `approval`, its
//! `audit|…` entries and its outbox stream, so one approval's notifications go out in order and
//! never wait behind another's). The registry partition [`REGISTRY`] holds the id counter per year
//! (`seq|<year>`), the request index (`req|<hash>`: one open request per run and target), the day
//! index the sweep reads (`index|<yyyymmdd>|<id>`), budgets (`budget|<hash>`) and deployment locks
//! (`lock|<hash>`). Every change is an optimistic commit (document versions): a concurrent writer
//! makes the commit fail and the loser re-reads and re-applies, so no signature is lost and
//! exactly one final state wins.

mod budgets;
mod create;
mod ids;
mod locks;
mod notify;
mod redact;
mod sign;
mod sweep;
mod tokens;
mod view;

pub use crate::config::approvals::ApprovalConfig;
pub use budgets::{
    budget, list_budget_maps, list_budgets, set_budget, set_budget_map, settle_run_estimates,
    BudgetMap,
};
pub use create::Origin;
pub use ids::IdAllocator;
pub use locks::Lock;
pub use redact::{redact_tokens, RedactReport};
pub use sign::{Overridden, Signed, Signer};
pub use sweep::SweepReport;
pub use tokens::{detach_token, secret_of};
pub use view::view;

use super::{Deps, ServiceError};
use crate::domain::alert::hash_parts;
use crate::domain::approval::{parse_approval_id, Approval, Refusal};
use crate::domain::identity::{IdentityRecord, Role};
use crate::domain::routing::{OutboxDraft, Routing};
use crate::domain::run::RunRecord;
use crate::storage::{DocCommit, DocWrite, Expect, Store, StoreError};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// Counters, indexes, budgets and locks.
pub const REGISTRY: &str = "approvals";
/// How often a write that lost an optimistic race is re-read and tried again.
const ATTEMPTS: usize = 40;

/// The approval service: what `POST /api/v1/azdev/approval…`, the Azure DevOps check, the
/// Mattermost buttons and the timer's sweep do.
pub struct Approvals {
    deps: Deps,
    config: ApprovalConfig,
    /// Where the control plane's ledger rows go ([`Routing::ledger_drafts`]) and whether
    /// Mattermost is configured.
    routing: Routing,
    ids: IdAllocator,
}

/// An approval and who may sign it: what `create` and `get` answer.
#[derive(Debug, Clone)]
pub struct Found {
    pub approval: Approval,
    pub approvers: Approvers,
}

/// Who can sign each half, by role (the requester and the run's trigger excluded).
#[derive(Debug, Clone, PartialEq)]
pub struct Approvers {
    pub technical: Vec<String>,
    pub business: Vec<String>,
    /// The role the business half needs (finance for a request above the threshold).
    pub business_role: Role,
}

impl Approvers {
    fn of(ids: &[IdentityRecord], a: &Approval) -> Approvers {
        let with = |r: Role| -> Vec<String> {
            ids.iter()
                .filter(|i| i.roles.contains(&r) && !a.is_requester(&i.name))
                .map(|i| i.name.clone())
                .collect()
        };
        Approvers {
            technical: with(Role::TechnicalApprover),
            business: with(a.business_role()),
            business_role: a.business_role(),
        }
    }
}

impl Approvals {
    pub fn new(deps: Deps, config: ApprovalConfig, routing: Routing) -> Approvals {
        Approvals {
            deps,
            config,
            routing,
            ids: IdAllocator::default(),
        }
    }

    /// The store, clock, notifier and counters the service works with.
    pub fn deps(&self) -> &Deps {
        &self.deps
    }

    fn store(&self) -> &dyn Store {
        self.deps.store.as_ref()
    }

    /// `GET approval/{id}`: the approval and who may sign it.
    pub async fn get(&self, id: &str) -> Result<Found, ServiceError> {
        match load(self.store(), id).await? {
            Some((approval, _)) => {
                let approvers = self.approvers(&approval).await?;
                Ok(Found {
                    approval,
                    approvers,
                })
            }
            None => Err(not_found(id)),
        }
    }

    /// Who may sign `a`.
    pub async fn approvers(&self, a: &Approval) -> Result<Approvers, ServiceError> {
        Ok(Approvers::of(&identities(self.store()).await?, a))
    }

    /// The run as the ledger has it now (who triggered it, its pipeline, its status).
    async fn run_record(&self, run_id: &str) -> Result<Option<RunRecord>, ServiceError> {
        crate::services::runs::run_record(self.store(), run_id).await
    }

    /// Write an approval's new state (and an audit entry) if it is still at `version`.
    async fn save(
        &self,
        next: &Approval,
        version: Option<&str>,
        kind: &str,
        record_id: &str,
        audit: Value,
        now: DateTime<Utc>,
    ) -> Result<bool, ServiceError> {
        let partition = partition_of(&next.id).ok_or_else(|| not_found(&next.id))?;
        // An approval an earlier version wrote keeps its check's token inline: move it to the
        // secret store in this write, so the token never reaches the chain (or an outbox row)
        // again.
        let mut detached = next.clone();
        detach_token(self.store(), &mut detached, true, now)
            .await
            .map_err(store_err)?;
        let next = &detached;
        let writes = vec![
            DocWrite {
                key: "approval".into(),
                value: serde_json::to_value(next).unwrap_or_default(),
                expect: match version {
                    Some(v) => Expect::Version(v.into()),
                    None => Expect::Absent,
                },
            },
            crate::audit::note(now, audit),
        ];
        let outbox = self.drafts(kind, record_id, next, now);
        let any = !outbox.is_empty();
        let ok = self
            .store()
            .doc_commit(&commit_of(
                partition.clone(),
                writes,
                outbox,
                record_id,
                now,
            ))
            .await
            .map_err(store_err)?;
        // Reminders rewrite the approval without changing its state: not a state change.
        if ok && kind != "approval.reminder" {
            self.deps.metrics.approval(next.status.as_str());
        }
        if ok && any {
            self.deps.notify.kick(partition);
        }
        Ok(ok)
    }

    /// [`mark_final`] in the background, off the signer's latency.
    fn mark_final_later(&self, a: &Approval, now: DateTime<Utc>) {
        let (store, a) = (self.deps.store.clone(), a.clone());
        tokio::spawn(async move { mark_final(store.as_ref(), &a, now).await });
    }

    /// Record a refused attempt on the approval's own trail (best effort: the refusal stands).
    async fn audit_refusal(&self, id: &str, entry: Value, now: DateTime<Utc>) {
        let Some(p) = partition_of(id) else { return };
        let c = commit_of(p, vec![crate::audit::note(now, entry)], Vec::new(), id, now);
        if let Err(e) = self.store().doc_commit(&c).await {
            tracing::warn!(error = %e, approval_id = id, "could not audit a refused attempt");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the concerns

/// A storage failure on an approval (or its indexes), or contention on it.
fn store_err(e: StoreError) -> ServiceError {
    ServiceError::from_store("the approval was not read or changed", "this approval")(e)
}

/// A stored document that does not read back.
fn corrupt(what: &str, e: serde_json::Error) -> ServiceError {
    store_err(StoreError::Corrupt(format!("{what}: {e}")))
}

/// Every attempt lost its optimistic race on `what` ("this approval", "this budget").
fn contention(what: &str) -> ServiceError {
    ServiceError::Busy {
        message: format!("too many concurrent updates of {what}; retry"),
        retry_after: 1,
    }
}

/// A rule's refusal; an invalid value is blamed on the request's `field`.
fn refusal(r: Refusal, field: &str) -> ServiceError {
    match r {
        Refusal::Forbidden(m) => ServiceError::Forbidden(m),
        Refusal::Conflict(m) => ServiceError::Conflict(m),
        Refusal::Invalid(m) => ServiceError::invalid(Some(field.into()), m),
    }
}

fn not_found(id: &str) -> ServiceError {
    ServiceError::NotFound(if parse_approval_id(id).is_some() {
        format!("no approval {id}")
    } else {
        format!("{id:?} is not an approval id (APR-<year>-<number>)")
    })
}

/// A short hash for keys built from free text (Table Storage keys forbid `/ \ # ?`).
fn key_hash(parts: &[&str]) -> String {
    hash_parts(parts.iter().copied())[..24].to_string()
}

/// The partition of an approval: `apr` + year + sequence.
pub fn partition_of(id: &str) -> Option<String> {
    parse_approval_id(id).map(|(y, s)| format!("apr{y}{s:06}"))
}

fn expect_of(doc: &Option<crate::storage::Doc>) -> Expect {
    match doc {
        Some(d) => Expect::Version(d.version.clone()),
        None => Expect::Absent,
    }
}

/// A short, jittered wait before re-reading after a lost race.
async fn pause(attempt: usize) {
    let jitter = uuid::Uuid::new_v4().as_bytes()[0] as u64 % 8;
    tokio::time::sleep(std::time::Duration::from_millis(
        (attempt as u64).min(10) * 3 + jitter,
    ))
    .await;
}

fn commit_of(
    partition: String,
    writes: Vec<DocWrite>,
    outbox: Vec<OutboxDraft>,
    record_id: &str,
    now: DateTime<Utc>,
) -> DocCommit {
    DocCommit {
        partition,
        writes,
        outbox,
        record_id: record_id.into(),
        now,
    }
}

/// The approval `id` and its document version, if there is one.
pub async fn load(store: &dyn Store, id: &str) -> Result<Option<(Approval, String)>, ServiceError> {
    let Some(p) = partition_of(id) else {
        return Ok(None);
    };
    match store.doc_get(&p, "approval").await.map_err(store_err)? {
        Some(d) => Ok(Some((
            serde_json::from_value(d.value).map_err(|e| corrupt("approval", e))?,
            d.version,
        ))),
        None => Ok(None),
    }
}

async fn identities(store: &dyn Store) -> Result<Vec<IdentityRecord>, ServiceError> {
    crate::identity::list_identities(store)
        .await
        .map_err(|e| match e {
            crate::identity::IdentityError::Store(s) => {
                ServiceError::from_store("the approvers were not read", "the identities")(s)
            }
            other => ServiceError::Conflict(other.to_string()),
        })
}

/// Best effort: tell the sweep this approval needs no more attention.
async fn mark_final(store: &dyn Store, a: &Approval, now: DateTime<Utc>) {
    let key = format!("index|{}|{}", a.requested_at.format("%Y%m%d"), a.id);
    for _ in 0..5 {
        let Ok(Some(doc)) = store.doc_get(REGISTRY, &key).await else {
            return;
        };
        if doc.value.get("final") == Some(&json!(true)) {
            return;
        }
        let mut v = doc.value.clone();
        v["final"] = json!(true);
        let c = commit_of(
            REGISTRY.into(),
            vec![DocWrite {
                key: key.clone(),
                value: v,
                expect: Expect::Version(doc.version),
            }],
            Vec::new(),
            &a.id,
            now,
        );
        match store.doc_commit(&c).await {
            Ok(true) | Err(_) => return,
            Ok(false) => continue,
        }
    }
}
