//! Creating an approval (`POST approval`, the Azure DevOps check) and handing an open one to a
//! re-run's check.

use super::notify::check_draft;
use super::tokens::{check_for_audit, secret_of};
use super::{
    commit_of, contention, expect_of, identities, key_hash, load, mark_final, not_found,
    partition_of, pause, store_err, Approvals, Approvers, Found, ATTEMPTS, REGISTRY,
};
use crate::domain::approval::{approval_id, Approval, ApprovalRequest, ApprovalStatus};
use crate::domain::routing::OutboxDraft;
use crate::identity::Caller;
use crate::services::ServiceError;
use crate::storage::{DocWrite, Expect};
use chrono::{DateTime, Datelike, Utc};
use serde_json::{json, Value};

/// Extra facts a request carries beyond its body (the Azure DevOps check adds its callback).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub source: Option<String>,
    /// The check's callback, token included: [`Approvals::create`] keeps the token in the secret store and
    /// the rest ([`crate::domain::check::CheckCallback::stored`]) with the approval.
    pub check: Option<crate::domain::check::CheckCallback>,
}

impl Approvals {
    /// `POST approval`: `(true, found)` for a new request; `(false, found)` when the run already
    /// has an open request for this target (a retried call gets the same approval back).
    pub async fn create(
        &self,
        caller: &Caller,
        req: ApprovalRequest,
        origin: Origin,
        now: DateTime<Utc>,
    ) -> Result<(bool, Found), ServiceError> {
        let policy = &self.config.policy;
        let store = self.store();
        let req_key = format!(
            "req|{}",
            key_hash(&[&req.run_id, &req.deployment_target.to_ascii_lowercase()])
        );
        // Independent reads at once: one round trip of latency instead of four.
        let (run, req_doc, ids) = tokio::join!(
            self.run_record(&req.run_id),
            store.doc_get(REGISTRY, &req_key),
            identities(store),
        );
        let (run, mut req_doc, ids) = (run?, req_doc.map_err(store_err)?, ids?);
        let project = self
            .project_for(
                run.as_ref().map(|r| r.start.pipeline_name.as_str()),
                &req.deployment_target,
            )
            .await?;
        if let Some(asked) = &req.project {
            if !asked.eq_ignore_ascii_case(&project) {
                return Err(ServiceError::invalid(
                Some("project".into()),
                format!(
                    "the project is decided by the run's pipeline, not the request: run {} spends the budget of {project:?} (`icahub budget map` changes it), not {asked:?}",
                    req.run_id
                ),
            ));
            }
        }
        let answer = |a: &Approval| Found {
            approval: a.clone(),
            approvers: Approvers::of(&ids, a),
        };
        let mut allocated: Option<String> = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                req_doc = store.doc_get(REGISTRY, &req_key).await.map_err(store_err)?;
            }
            let mut reuse_id: Option<String> = None;
            if let Some(d) = &req_doc {
                if let Some(id) = d.value.get("approval_id").and_then(Value::as_str) {
                    match load(store, id).await? {
                        Some((a, _))
                            if !a.is_overdue(now)
                                && matches!(
                                    a.status,
                                    ApprovalStatus::Pending
                                        | ApprovalStatus::TechnicalApproved
                                        | ApprovalStatus::Approved
                                        | ApprovalStatus::OverridePending
                                ) =>
                        {
                            return Ok((false, answer(&a)));
                        }
                        Some(_) => {}
                        // Indexed but never written (a crash between the two commits): use the id.
                        None => reuse_id = Some(id.to_string()),
                    }
                }
            }
            if policy.is_production(&req.deployment_target) {
                self.check_lock(&req.deployment_target, None, now).await?;
            }
            let found = super::budget(store, &project)
                .await
                .map_err(super::budgets::budget_err)?;
            if found.is_none()
                && self.config.budget_required
                && policy.is_production(&req.deployment_target)
            {
                return Err(ServiceError::Conflict(format!(
                "project {project:?} has no budget, and production requests need one (ICAHUB_BUDGET_REQUIRED): set it with `icahub budget set {project} --monthly USD`"
            )));
            }
            let check = match req.estimated_cost {
                Some(est) => found.map(|b| b.check(est, None, now)),
                None => None,
            };
            let id = match reuse_id {
                Some(id) => id,
                None => {
                    let id = match allocated.take() {
                        Some(id) => id,
                        None => approval_id(now.year(), self.ids.next(store, now).await?),
                    };
                    let c = commit_of(
                        REGISTRY.into(),
                        vec![
                            DocWrite {
                                key: req_key.clone(),
                                value: json!({"approval_id": id, "run_id": req.run_id, "deployment_target": req.deployment_target}),
                                expect: expect_of(&req_doc),
                            },
                            DocWrite {
                                key: format!("index|{}|{id}", now.format("%Y%m%d")),
                                value: json!({"approval_id": id, "requested_at": now, "final": false}),
                                expect: Expect::Absent,
                            },
                        ],
                        Vec::new(),
                        &id,
                        now,
                    );
                    if !store.doc_commit(&c).await.map_err(store_err)? {
                        // Another request for this run and target got in first: look again.
                        allocated = Some(id);
                        pause(attempt).await;
                        continue;
                    }
                    id
                }
            };
            let mut a = Approval::new(
                id.clone(),
                req.clone(),
                project.clone(),
                caller.name.clone(),
                run.as_ref().map(|r| r.start.triggered_by.clone()),
                check,
                policy,
                now,
            );
            if let Some(s) = &origin.source {
                a.source = s.clone();
            }
            if let Some(check) = &origin.check {
                // The token first, so that the approval never names a secret that is not there.
                let key = crate::domain::check::secret_key(&id, &check.task_instance_id);
                store
                    .secret_put(&key, &check.auth_token, now)
                    .await
                    .map_err(store_err)?;
                a.check = Some(check.stored(&key));
            }
            let audit = json!({"action": "approval.created", "approval_id": id, "by": caller.name, "status": a.status, "reason": a.reason, "at": now});
            if !self
                .save(
                    &a,
                    None,
                    "approval.created",
                    &format!("{id}-created"),
                    audit,
                    now,
                )
                .await?
            {
                // Someone else wrote this id meanwhile (only possible when reusing): look again.
                continue;
            }
            if a.status.is_final() {
                mark_final(store, &a, now).await;
            }
            return Ok((true, answer(&a)));
        }
        Err(contention("this approval"))
    }

    /// The Azure DevOps check asked about a run and target that already have an open or approved
    /// request (a re-run stage evaluates its checks again, or the pipeline asked through the API
    /// first): from now on the approval answers this check. Already approved: the outcome goes to
    /// this check at once. Still open: this check replaces the earlier one, whose evaluation Azure
    /// DevOps no longer waits on. A repeat of the same check instance changes nothing.
    pub async fn attach_check(
        &self,
        id: &str,
        check: &crate::domain::check::CheckCallback,
        now: DateTime<Utc>,
    ) -> Result<Approval, ServiceError> {
        let key = crate::domain::check::secret_key(id, &check.task_instance_id);
        let check_value = check.stored(&key);
        let mut secret_written = false;
        for attempt in 0..ATTEMPTS {
            let Some((a, version)) = load(self.store(), id).await? else {
                return Err(not_found(id));
            };
            let current: Option<crate::domain::check::CheckCallback> = a
                .check
                .as_ref()
                .and_then(|c| serde_json::from_value(c.clone()).ok());
            if let Some(c) = &current {
                if c.same_instance(check) {
                    return Ok(a);
                }
                // Only a check of the same organization and project may take over the callback:
                // another organization's check for the same build number and target must not
                // redirect the decision (and the job token) to itself.
                if !c.same_project(check) {
                    return Err(ServiceError::Conflict(format!(
                    "{id} was requested by a check of the Azure DevOps organization {:?}, project {}; a check from organization {:?}, project {} cannot answer it",
                    c.organization(),
                    c.project_id,
                    check.organization(),
                    check.project_id
                )));
                }
            }
            if !secret_written {
                self.store()
                    .secret_put(&key, &check.auth_token, now)
                    .await
                    .map_err(store_err)?;
                secret_written = true;
            }
            let mut next = a.clone();
            next.check = Some(check_value.clone());
            let record_id = format!("{id}-check-{}", check.task_instance_id);
            let audit = json!({"action": "approval.check_attached", "approval_id": id,
                           "check": check_for_audit(next.check.as_ref()),
                           "previous": check_for_audit(a.check.as_ref()), "status": a.status, "at": now});
            let outbox: Vec<OutboxDraft> = check_draft("approval.check_attached", &next)
                .into_iter()
                .collect();
            let any = !outbox.is_empty();
            let partition = partition_of(id).ok_or_else(|| not_found(id))?;
            let c = commit_of(
                partition.clone(),
                vec![
                    DocWrite {
                        key: "approval".into(),
                        value: serde_json::to_value(&next).unwrap_or_default(),
                        expect: Expect::Version(version),
                    },
                    crate::audit::note(now, audit),
                ],
                outbox,
                &record_id,
                now,
            );
            if self.store().doc_commit(&c).await.map_err(store_err)? {
                // The replaced check of an approval still open gets no callback (Azure DevOps no
                // longer waits on it): its token is of no more use. A decided approval's earlier
                // check keeps its token until its own callback is settled (the dispatcher deletes
                // it then).
                if !a.status.is_final() {
                    if let Some(old) = secret_of(a.check.as_ref()).filter(|k| *k != key) {
                        if let Err(e) = self.store().secret_delete(&old).await {
                            tracing::warn!(approval_id = id, error = %e, "could not delete a replaced check's token");
                        }
                    }
                }
                if any {
                    self.deps.notify.kick(partition);
                }
                return Ok(next);
            }
            pause(attempt).await;
        }
        Err(contention("this approval"))
    }
}
