//! Signing (`POST approval/{id}/sign`, the Mattermost buttons) and the two-person emergency
//! override (`POST approval/{id}/override`). The rules are [`crate::domain::approval::sign`] and
//! [`crate::domain::approval::emergency_override`]; here they are applied to the stored approval,
//! with the run's trigger read from the ledger, the budget held and the deployment lock taken
//! in the same attempt, and both given back when the approval's own commit does not happen.

use super::budgets::release_estimate;
use super::{
    contention, load, mark_final, not_found, pause, refusal, Approvals, ServiceError, ATTEMPTS,
};
use crate::domain::approval::{
    self, Approval, ApprovalStatus, Override, OverrideRequest, SignIn, Signature,
};
use crate::domain::identity::Role;
use crate::identity::Caller;
use chrono::{DateTime, Utc};
use serde_json::json;

/// Who is signing, and how they reached us.
#[derive(Debug, Clone)]
pub struct Signer {
    pub name: String,
    pub roles: Vec<Role>,
    /// `api` or `mattermost`.
    pub via: String,
    /// The Mattermost button token's id: each token works once.
    pub token_id: Option<String>,
}

impl Signer {
    pub fn api(caller: &Caller) -> Signer {
        Signer {
            name: caller.name.clone(),
            roles: caller.roles.clone(),
            via: "api".into(),
            token_id: None,
        }
    }

    /// A person who clicked a Mattermost button: the identity their user id is linked to, and
    /// the button token's id (each token works once).
    pub fn mattermost(name: &str, roles: &[Role], token_id: String) -> Signer {
        Signer {
            name: name.to_string(),
            roles: roles.to_vec(),
            via: "mattermost".into(),
            token_id: Some(token_id),
        }
    }
}

/// What a signature did: the approval as it now stands and the signature recorded.
#[derive(Debug, Clone)]
pub struct Signed {
    pub approval: Approval,
    pub signature: Signature,
}

/// What an override call did.
#[derive(Debug, Clone)]
pub enum Overridden {
    /// The first person asked: the approval is `override_pending`, waiting for a second.
    Requested {
        approval: Approval,
        request: OverrideRequest,
    },
    /// The second person confirmed: the approval is approved, as an exception.
    Confirmed {
        approval: Approval,
        record: Override,
    },
}

impl Approvals {
    /// Expire an overdue approval now (escalating it); returns the refusal to give the signer.
    pub(super) async fn expire_now(
        &self,
        a: &Approval,
        version: &str,
        now: DateTime<Utc>,
    ) -> Result<ServiceError, ServiceError> {
        let next = approval::expire(a, now);
        let audit = json!({"action": "approval.expired", "approval_id": a.id, "at": now, "escalated": true});
        if self
            .save(
                &next,
                Some(version),
                "approval.expired",
                &format!("{}-expired", a.id),
                audit,
                now,
            )
            .await?
        {
            mark_final(self.store(), &next, now).await;
        }
        Ok(ServiceError::Conflict(format!(
            "{} expired at {}; ask for a new approval",
            a.id,
            a.expires_at.to_rfc3339()
        )))
    }

    /// `POST approval/{id}/sign`.
    pub async fn sign(
        &self,
        signer: &Signer,
        id: &str,
        input: &SignIn,
        now: DateTime<Utc>,
    ) -> Result<Signed, ServiceError> {
        let (mut took_lock, mut took_budget) = (None, None);
        let result = self
            .sign_inner(signer, id, input, now, &mut took_lock, &mut took_budget)
            .await;
        if result.is_err() {
            if let Some(target) = took_lock {
                self.release_lock(&target, id, now).await;
            }
            if let Some(project) = took_budget {
                release_estimate(self.store(), &project, id, false, now).await;
            }
        }
        result
    }

    async fn sign_inner(
        &self,
        signer: &Signer,
        id: &str,
        input: &SignIn,
        now: DateTime<Utc>,
        took_lock: &mut Option<String>,
        took_budget: &mut Option<String>,
    ) -> Result<Signed, ServiceError> {
        for attempt in 0..ATTEMPTS {
            let Some((a, version)) = load(self.store(), id).await? else {
                return Err(not_found(id));
            };
            let a = a.settled(now);
            if a.is_overdue(now) {
                return Err(self.expire_now(&a, &version, now).await?);
            }
            let refuse = |why: String| {
                json!({"action": "approval.sign_refused", "approval_id": id, "by": signer.name, "via": signer.via,
                   "approval_type": input.approval_type, "decision": input.decision, "reason": why, "at": now})
            };
            if let Some(t) = &signer.token_id {
                if a.used_tokens.contains(t) {
                    let msg = format!("this button was already used on {id}; a token works once");
                    self.audit_refusal(id, refuse(msg.clone()), now).await;
                    return Err(ServiceError::Conflict(msg));
                }
            }
            // Who triggered the run, as the ledger says now (the run may have been reported after
            // the request was made).
            let run = self.run_record(&a.run_id).await?;
            let trigger = run.as_ref().map(|r| r.start.triggered_by.clone());
            // A request made before its run was on the ledger had no pipeline to take its project
            // from; now that there is one, its budget applies (asking early must not dodge it). The
            // budget itself is checked when the approval would become approved.
            let mut a = a;
            if let (None, Some(r)) = (&a.run_triggered_by, &run) {
                a.project = self
                    .project_for(Some(&r.start.pipeline_name), &a.deployment_target)
                    .await?;
            }
            let (mut next, sig) = match a.with_ledger(trigger.as_deref()).and_then(|a| {
                approval::sign(&a, &signer.name, &signer.roles, input, &signer.via, now)
            }) {
                Ok(x) => x,
                Err(r) => {
                    self.audit_refusal(id, refuse(r.to_string()), now).await;
                    return Err(refusal(r, "comments"));
                }
            };
            if let Some(t) = &signer.token_id {
                next.used_tokens.push(t.clone());
            }
            if next.status == ApprovalStatus::Approved {
                match self.commit_estimate(&next, true, now).await {
                    Ok(true) => *took_budget = Some(next.project.clone()),
                    Ok(false) => {}
                    Err(e) => {
                        self.audit_refusal(id, refuse(e.caller_message()), now)
                            .await;
                        return Err(e);
                    }
                }
            }
            if next.status == ApprovalStatus::Approved && next.production {
                if let Err(e) = self.acquire_lock(&next, now).await {
                    self.audit_refusal(id, refuse(e.caller_message()), now)
                        .await;
                    return Err(e);
                }
                *took_lock = Some(next.deployment_target.clone());
            }
            let record_id = format!("{id}-S{}", next.signatures.len());
            let audit = json!({"action": "approval.signed", "approval_id": id, "signature": sig, "status": next.status, "at": now});
            if self
                .save(
                    &next,
                    Some(&version),
                    "approval.signed",
                    &record_id,
                    audit,
                    now,
                )
                .await?
            {
                if next.status.is_final() {
                    self.mark_final_later(&next, now);
                }
                *took_lock = None;
                *took_budget = None;
                return Ok(Signed {
                    approval: next,
                    signature: sig,
                });
            }
            pause(attempt).await;
        }
        Err(contention("this approval"))
    }

    /// `POST approval/{id}/override`: an emergency override, a two-person act
    /// ([`approval::emergency_override`]). The first call (an admin, with a reason) leaves the
    /// approval `override_pending`; the second (a different person holding `override_approver`,
    /// with a reason, within the override window) approves it, recorded as an exception.
    pub async fn emergency_override(
        &self,
        caller: &Caller,
        id: &str,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Overridden, ServiceError> {
        let policy = &self.config.policy;
        for attempt in 0..ATTEMPTS {
            let Some((a, version)) = load(self.store(), id).await? else {
                return Err(not_found(id));
            };
            let trigger = self
                .run_record(&a.run_id)
                .await?
                .map(|r| r.start.triggered_by);
            // An override does not need the run on the ledger (an outage may be why it is asked
            // for), but a trigger the ledger knows is excluded.
            let mut a = a;
            if let Some(t) = trigger.filter(|t| !t.trim().is_empty()) {
                a.run_triggered_by = Some(t);
            }
            let (next, step) = match approval::emergency_override(
                &a,
                &caller.name,
                &caller.roles,
                reason,
                policy,
                now,
            ) {
                Ok(n) => n,
                Err(r) => {
                    self.audit_refusal(id, json!({"action": "approval.override_refused", "approval_id": id, "by": caller.name, "reason": r.to_string(), "at": now}), now).await;
                    return Err(refusal(r, "reason"));
                }
            };
            if step == approval::OverrideStep::Requested {
                let Some(r) = next.override_request.clone() else {
                    return Err(contention("this approval"));
                };
                let audit = json!({"action": "approval.override_requested", "exception": true, "approval_id": id,
                               "by": caller.name, "reason": r.reason, "previous_status": r.previous_status,
                               "expires_at": r.expires_at, "at": now});
                if self
                    .save(
                        &next,
                        Some(&version),
                        "approval.override_requested",
                        &format!("{id}-override-request-{}", now.timestamp_micros()),
                        audit,
                        now,
                    )
                    .await?
                {
                    tracing::warn!(approval_id = id, by = %caller.name, "emergency override requested; waiting for a second person");
                    return Ok(Overridden::Requested {
                        approval: next,
                        request: r,
                    });
                }
                pause(attempt).await;
                continue;
            }
            let mut took = false;
            if next.production {
                self.acquire_lock(&next, now).await?;
                took = true;
            }
            // An override passes the budget (that is what it is for), but its estimate still counts.
            let took_budget = self.commit_estimate(&next, false, now).await?;
            let Some(o) = next.override_.clone() else {
                return Err(contention("this approval"));
            };
            let audit = json!({"action": "approval.overridden", "exception": true, "approval_id": id, "exception_id": o.exception_id,
                           "by": o.by, "reason": o.reason, "confirmed_by": o.confirmed_by,
                           "confirm_reason": o.confirm_reason, "requested_at": o.requested_at,
                           "previous_status": o.previous_status, "at": now});
            if self
                .save(
                    &next,
                    Some(&version),
                    "approval.overridden",
                    &format!("{id}-override"),
                    audit,
                    now,
                )
                .await?
            {
                self.mark_final_later(&next, now);
                tracing::warn!(approval_id = id, by = %o.by, confirmed_by = %caller.name, exception_id = %o.exception_id, "emergency override");
                return Ok(Overridden::Confirmed {
                    approval: next,
                    record: o,
                });
            }
            if took {
                // Re-read: the next attempt decides again (and takes the lock again if still right).
                self.release_lock(&next.deployment_target, id, now).await;
            }
            if took_budget {
                release_estimate(self.store(), &next.project, id, false, now).await;
            }
            pause(attempt).await;
        }
        Err(contention("this approval"))
    }
}
