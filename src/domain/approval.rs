//! The approval state machine: a deployment request needs a technical and a business approval
//! from two different people holding the matching roles, none of them the requester. Pure: the
//! caller passes the clock, the policy and who is signing; storage lives in [`crate::approvals`].
//!
//! ```text
//! pending ──technical──▶ technical_approved ──business──▶ approved
//!    │  └──business (kept, still pending)──technical──────▶ approved
//!    ├── any rejection (with a reason) ─────────────────▶ rejected
//!    ├── older than the expiry ─────────────────────────▶ expired
//!    └── admin asks for an emergency override ──▶ override_pending ──a second person
//!        (from any state but approved; a reason)       │   holding override_approver──▶ approved
//!                                                      └── not confirmed in time ──▶ back where it was
//! ```
//!
//! An override is an exception and a two-person act: an admin asks, a different person holding
//! `override_approver` confirms within the override window, neither of them the requester or
//! the run's trigger, both with a reason. Who triggered the run is read from the ledger at
//! signing time ([`Approval::with_ledger`]), not only when the request was made.

use super::alert::PayloadError;
use super::identity::Role;
use super::run::chain;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    TechnicalApproved,
    Approved,
    Rejected,
    Expired,
    /// An admin asked for an emergency override; a second person must confirm it.
    OverridePending,
}

impl ApprovalStatus {
    pub const ALL: [ApprovalStatus; 6] = [
        ApprovalStatus::Pending,
        ApprovalStatus::TechnicalApproved,
        ApprovalStatus::Approved,
        ApprovalStatus::Rejected,
        ApprovalStatus::Expired,
        ApprovalStatus::OverridePending,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::TechnicalApproved => "technical_approved",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Rejected => "rejected",
            ApprovalStatus::Expired => "expired",
            ApprovalStatus::OverridePending => "override_pending",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Approved, rejected and expired approvals never change again (an override aside).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ApprovalStatus::Approved | ApprovalStatus::Rejected | ApprovalStatus::Expired
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalType {
    Technical,
    Business,
}

impl ApprovalType {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalType::Technical => "technical",
            ApprovalType::Business => "business",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approved,
    Rejected,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Rejected => "rejected",
        }
    }
}

/// The rules that are configuration (see `ICAHUB_APPROVAL_*` in docs/configuration.md).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Pending longer than this: expired and escalated.
    pub expiry: Duration,
    /// Approvers are reminded this often while a request is pending.
    pub reminder_every: Duration,
    /// An estimate above this (USD per month) needs the business approval from finance.
    pub finance_threshold: f64,
    /// Utilization above this is rejected automatically.
    pub max_utilization: f64,
    /// Deployment targets that are production: exact names, or a prefix ending in `*`.
    pub production_targets: Vec<String>,
    /// A deployment lock whose run never finishes is released after this long.
    pub lock_ttl: Duration,
    /// An emergency override asked for by an admin must be confirmed by a second person within
    /// this long, or it lapses.
    pub override_window: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            expiry: Duration::hours(4),
            reminder_every: Duration::hours(1),
            finance_threshold: 5000.0,
            max_utilization: 0.95,
            production_targets: ["production", "prod", "prod-*", "production-*"]
                .map(String::from)
                .to_vec(),
            lock_ttl: Duration::hours(24),
            override_window: Duration::hours(1),
        }
    }
}

impl Policy {
    pub fn is_production(&self, target: &str) -> bool {
        let t = target.trim().to_ascii_lowercase();
        self.production_targets.iter().any(|p| {
            let p = p.trim().to_ascii_lowercase();
            match p.strip_suffix('*') {
                Some(prefix) => t.starts_with(prefix),
                None => t == p,
            }
        })
    }
}

/// A validated `POST /api/v1/azdev/approval` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub run_id: String,
    pub deployment_target: String,
    /// USD per month; required for production targets.
    pub estimated_cost: Option<f64>,
    /// As sent (a list of items or an object of item → done).
    pub checklist: Value,
    /// Whose budget this spends; defaults to the run's pipeline name.
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

fn opt_string(v: &Value, name: &str, max: usize) -> Result<Option<String>, PayloadError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) if s.chars().count() > max => Err(PayloadError::new(
            name,
            format!("is longer than {max} characters"),
        )),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(other) => Err(PayloadError::new(
            name,
            format!("must be a string, got {}", super::json::type_name(other)),
        )),
    }
}

/// Parse and validate a request. A production target without an estimate is refused here.
pub fn parse_request(v: &Value, policy: &Policy) -> Result<ApprovalRequest, PayloadError> {
    if !v.is_object() {
        return Err(PayloadError::new("$", "must be a JSON object"));
    }
    let run_id = opt_string(v, "run_id", 256)?;
    let target = opt_string(v, "deployment_target", 128)?;
    let missing: Vec<&str> = [("run_id", &run_id), ("deployment_target", &target)]
        .into_iter()
        .filter(|(_, x)| x.is_none())
        .map(|(n, _)| n)
        .collect();
    if !missing.is_empty() {
        return Err(PayloadError::new(
            missing.join(","),
            format!("missing required field(s): {}", missing.join(", ")),
        ));
    }
    let (run_id, deployment_target) = (run_id.unwrap_or_default(), target.unwrap_or_default());
    let estimated_cost = match v.get("estimated_cost") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) if x.is_finite() && (0.0..1e12).contains(&x) => Some(x),
            _ => {
                return Err(PayloadError::new(
                    "estimated_cost",
                    "must be a number of US dollars between 0 and 10^12",
                ))
            }
        },
        Some(Value::String(s)) => match s.trim().trim_start_matches('$').parse::<f64>() {
            Ok(x) if x.is_finite() && (0.0..1e12).contains(&x) => Some(x),
            _ => {
                return Err(PayloadError::new(
                    "estimated_cost",
                    format!("must be a number of US dollars, got {s:?}"),
                ))
            }
        },
        Some(other) => {
            return Err(PayloadError::new(
                "estimated_cost",
                format!("must be a number, got {}", super::json::type_name(other)),
            ))
        }
    };
    if estimated_cost.is_none() && policy.is_production(&deployment_target) {
        return Err(PayloadError::new(
            "estimated_cost",
            format!(
                "is required for the production target {deployment_target:?} (USD per month; 0 if it costs nothing)"
            ),
        ));
    }
    let checklist = match v.get("checklist") {
        None | Some(Value::Null) => Value::Array(Vec::new()),
        Some(c @ (Value::Array(_) | Value::Object(_))) => c.clone(),
        Some(other) => {
            return Err(PayloadError::new(
                "checklist",
                format!(
                    "must be a list of items or an object of item to done, got {}",
                    super::json::type_name(other)
                ),
            ))
        }
    };
    if checklist.to_string().len() > 16_384 {
        return Err(PayloadError::new(
            "checklist",
            "is larger than 16 KiB; link to the details instead",
        ));
    }
    Ok(ApprovalRequest {
        run_id,
        deployment_target,
        estimated_cost,
        checklist,
        project: opt_string(v, "project", 128)?,
        description: opt_string(v, "description", 2000)?,
    })
}

/// A validated `sign` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignIn {
    pub approval_type: ApprovalType,
    pub decision: Decision,
    pub comments: Option<String>,
}

pub fn parse_sign(v: &Value) -> Result<SignIn, PayloadError> {
    if !v.is_object() {
        return Err(PayloadError::new("$", "must be a JSON object"));
    }
    let word = |name: &str, allowed: &[&str]| -> Result<String, PayloadError> {
        match v.get(name) {
            None | Some(Value::Null) => Err(PayloadError::new(
                name,
                format!("missing required field: one of {}", allowed.join(", ")),
            )),
            Some(Value::String(s)) if allowed.contains(&s.trim().to_ascii_lowercase().as_str()) => {
                Ok(s.trim().to_ascii_lowercase())
            }
            Some(other) => Err(PayloadError::new(
                name,
                format!("must be one of {}, got {other}", allowed.join(", ")),
            )),
        }
    };
    let approval_type = match word("approval_type", &["technical", "business"])?.as_str() {
        "technical" => ApprovalType::Technical,
        _ => ApprovalType::Business,
    };
    let decision = match word("decision", &["approved", "rejected"])?.as_str() {
        "approved" => Decision::Approved,
        _ => Decision::Rejected,
    };
    let comments = opt_string(v, "comments", 2000)?;
    if decision == Decision::Rejected && comments.is_none() {
        return Err(PayloadError::new(
            "comments",
            "a rejection needs a reason: say why in comments",
        ));
    }
    Ok(SignIn {
        approval_type,
        decision,
        comments,
    })
}

/// The budget figures a request was judged on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetCheck {
    pub project: String,
    pub month: String,
    pub monthly_budget: f64,
    pub current_spend: f64,
    /// Estimates of other approved deployments of the project whose runs have not finished.
    #[serde(default)]
    pub committed: f64,
    pub estimated_cost: f64,
    /// (current spend + committed + estimate) / budget.
    pub utilization: f64,
}

/// A project's monthly budget, kept with `icahub budget set`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub project: String,
    pub monthly_budget: f64,
    /// What the project has spent this month, as last recorded.
    pub current_spend: f64,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
    /// Approved deployments whose runs have not finished: approval id → its estimate. They
    /// count as spend until the run finishes (then a successful run's estimate is added to
    /// `current_spend` and a failed one's released), so two approvals cannot each pass against
    /// the same unspent budget.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub committed: std::collections::BTreeMap<String, Commitment>,
}

/// An approved estimate held against a budget until its run finishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commitment {
    pub estimate: f64,
    pub run_id: String,
    pub at: DateTime<Utc>,
}

impl Budget {
    /// The committed estimates, leaving out approval `except` (its own, when re-checking).
    pub fn committed_total(&self, except: Option<&str>) -> f64 {
        self.committed
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != except)
            .map(|(_, c)| c.estimate)
            .sum()
    }

    /// Utilization with `estimate` on top of the recorded spend and every other commitment.
    pub fn check(&self, estimate: f64, except: Option<&str>, now: DateTime<Utc>) -> BudgetCheck {
        let committed = self.committed_total(except);
        let utilization = if self.monthly_budget > 0.0 {
            (self.current_spend + committed + estimate) / self.monthly_budget
        } else {
            f64::INFINITY
        };
        BudgetCheck {
            project: self.project.clone(),
            month: now.format("%Y-%m").to_string(),
            monthly_budget: self.monthly_budget,
            current_spend: self.current_spend,
            committed,
            estimated_cost: estimate,
            utilization: (utilization * 10_000.0).round() / 10_000.0,
        }
    }
}

/// The refusal text when `b` is above `max` utilization.
pub fn over_budget(b: &BudgetCheck, max: f64) -> Option<String> {
    (b.utilization > max).then(|| {
        format!(
            "budget utilization would be {:.1}% (spend ${:.2} + committed ${:.2} + estimate ${:.2} of ${:.2} for {} in {}), above the {:.0}% limit",
            b.utilization * 100.0,
            b.current_spend,
            b.committed,
            b.estimated_cost,
            b.monthly_budget,
            b.project,
            b.month,
            max * 100.0
        )
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    pub approval_type: ApprovalType,
    pub decision: Decision,
    pub by: String,
    /// The roles that allowed it.
    pub role: Role,
    pub comments: Option<String>,
    pub at: DateTime<Utc>,
    /// `api` or `mattermost`.
    pub via: String,
    pub signature_hash: String,
}

/// An emergency override: an exception, flagged in the audit trail. `by` is the admin who asked,
/// `confirmed_by` the second person (holding `override_approver`) who made it take effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Override {
    pub exception_id: String,
    pub by: String,
    pub reason: String,
    /// When it took effect (the confirmation).
    pub at: DateTime<Utc>,
    pub previous_status: ApprovalStatus,
    pub signature_hash: String,
    /// When the admin asked (absent on overrides made by one admin before version 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_reason: Option<String>,
}

/// An admin's request for an emergency override, waiting for the second person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverrideRequest {
    pub by: String,
    pub reason: String,
    pub at: DateTime<Utc>,
    /// Not confirmed by then: it lapses, and the approval is back where it was.
    pub expires_at: DateTime<Utc>,
    pub previous_status: ApprovalStatus,
    pub signature_hash: String,
}

/// What an override call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideStep {
    /// The first signature: the approval is now `override_pending`.
    Requested,
    /// The second signature: the approval is now `approved`.
    Confirmed,
}

/// What is stored for an approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub id: String,
    pub run_id: String,
    pub deployment_target: String,
    pub production: bool,
    pub project: String,
    pub estimated_cost: Option<f64>,
    pub checklist: Value,
    pub description: Option<String>,
    /// The identity that asked, and the person who triggered the run: neither may approve.
    pub requested_by: String,
    pub run_triggered_by: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub status: ApprovalStatus,
    /// The business approval must come from the finance role.
    pub finance_required: bool,
    pub budget: Option<BudgetCheck>,
    pub signatures: Vec<Signature>,
    pub decided_at: Option<DateTime<Utc>>,
    /// Why it was rejected or expired.
    pub reason: Option<String>,
    #[serde(rename = "override")]
    pub override_: Option<Override>,
    /// An override an admin asked for that a second person has not confirmed yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_request: Option<OverrideRequest>,
    pub reminders_sent: u32,
    pub last_reminder_at: Option<DateTime<Utc>>,
    pub escalated_at: Option<DateTime<Utc>>,
    /// Chain hash of the latest record of this approval.
    pub chain_head: String,
    /// Ids of Mattermost button tokens already used (a token works once).
    #[serde(default)]
    pub used_tokens: Vec<String>,
    /// `api`, or `azdo_check` for requests made by the Azure DevOps check.
    #[serde(default)]
    pub source: String,
    /// Where to tell Azure DevOps the outcome (Invoke Azure Function check, callback mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Value>,
}

impl Approval {
    /// A new request. `auto_reject` carries the reason when the budget refuses it outright.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        req: ApprovalRequest,
        project: String,
        requested_by: String,
        run_triggered_by: Option<String>,
        budget: Option<BudgetCheck>,
        policy: &Policy,
        now: DateTime<Utc>,
    ) -> Approval {
        let estimate = req.estimated_cost.unwrap_or(0.0);
        let auto_reject = budget
            .as_ref()
            .and_then(|b| over_budget(b, policy.max_utilization))
            .map(|why| format!("rejected automatically: {why}"));
        let mut a = Approval {
            id,
            production: policy.is_production(&req.deployment_target),
            run_id: req.run_id,
            deployment_target: req.deployment_target,
            project,
            estimated_cost: req.estimated_cost,
            checklist: req.checklist,
            description: req.description,
            requested_by,
            run_triggered_by,
            requested_at: now,
            expires_at: now + policy.expiry,
            status: ApprovalStatus::Pending,
            finance_required: estimate > policy.finance_threshold,
            budget,
            signatures: Vec::new(),
            decided_at: None,
            reason: None,
            override_: None,
            override_request: None,
            reminders_sent: 0,
            last_reminder_at: None,
            escalated_at: None,
            chain_head: String::new(),
            used_tokens: Vec::new(),
            source: "api".into(),
            check: None,
        };
        a.chain_head = chain("", "approval.created", &a.summary());
        if let Some(reason) = auto_reject {
            a.status = ApprovalStatus::Rejected;
            a.decided_at = Some(now);
            a.reason = Some(reason);
            a.chain_head = chain(&a.chain_head, "approval.auto_rejected", &a.summary());
        }
        a
    }

    /// The fields every chain link covers.
    pub fn summary(&self) -> Value {
        json!({
            "id": self.id, "run_id": self.run_id, "deployment_target": self.deployment_target,
            "project": self.project, "estimated_cost": self.estimated_cost,
            "checklist": self.checklist, "requested_by": self.requested_by,
            "requested_at": self.requested_at, "status": self.status, "reason": self.reason,
            "finance_required": self.finance_required,
        })
    }

    /// The role the business approval needs.
    pub fn business_role(&self) -> Role {
        if self.finance_required {
            Role::Finance
        } else {
            Role::BusinessApprover
        }
    }

    pub fn signature(&self, t: ApprovalType) -> Option<&Signature> {
        self.signatures.iter().find(|s| s.approval_type == t)
    }

    /// Past its expiry and still undecided (an override waiting for its second signature is
    /// governed by the override window instead).
    pub fn is_overdue(&self, now: DateTime<Utc>) -> bool {
        !self.status.is_final()
            && self.status != ApprovalStatus::OverridePending
            && now >= self.expires_at
    }

    /// The approval with a lapsed override request undone (back to the status it had), chained
    /// as `approval.override_lapsed`; unchanged otherwise.
    pub fn settled(&self, now: DateTime<Utc>) -> Approval {
        match &self.override_request {
            Some(r) if self.status == ApprovalStatus::OverridePending && now >= r.expires_at => {
                let mut next = self.clone();
                next.status = r.previous_status;
                next.override_request = None;
                next.chain_head = chain(
                    &self.chain_head,
                    "approval.override_lapsed",
                    &next.summary(),
                );
                next
            }
            _ => self.clone(),
        }
    }

    /// The approval as the run ledger now says: who triggered the run is taken from the ledger at
    /// signing time, for every half, so a run reported after its approval was requested cannot
    /// let its trigger approve it. `run_trigger` is `Some` when the run is on the ledger. A
    /// production approval whose run is not on the ledger cannot be signed yet: nobody could
    /// tell whether the signer started the run.
    pub fn with_ledger(&self, run_trigger: Option<&str>) -> Result<Approval, Refusal> {
        let mut next = self.clone();
        match run_trigger {
            Some(t) if !t.trim().is_empty() => next.run_triggered_by = Some(t.trim().to_string()),
            Some(_) => {}
            None if self.production => {
                return Err(Refusal::Conflict(format!(
                    "run {} of {} is not on the run ledger yet, so who triggered it is unknown; a production approval can be signed once its run is recorded (POST run/start, or the Azure DevOps service hook)",
                    self.run_id, self.id
                )))
            }
            None => {}
        }
        Ok(next)
    }

    /// Still undecided, and an hour (the policy's interval) since the request or last reminder.
    pub fn reminder_due(&self, now: DateTime<Utc>, policy: &Policy) -> bool {
        !self.status.is_final()
            && !self.is_overdue(now)
            && now - self.last_reminder_at.unwrap_or(self.requested_at) >= policy.reminder_every
    }

    /// Who may not approve this: the requester and whoever triggered the run.
    pub fn is_requester(&self, name: &str) -> bool {
        self.requested_by.eq_ignore_ascii_case(name)
            || self
                .run_triggered_by
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case(name))
    }
}

/// Why a signature or override was refused; the HTTP edge maps each kind to a status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 403: the signer lacks the role, is the requester, or already signed the other half.
    #[error("{0}")]
    Forbidden(String),
    /// 409: the approval is decided, or this half is already signed.
    #[error("{0}")]
    Conflict(String),
    /// 400: the request itself is incomplete (a rejection without a reason).
    #[error("{0}")]
    Invalid(String),
}

/// Apply a signature by `by` (holding `roles`). Returns the new approval and the signature.
pub fn sign(
    a: &Approval,
    by: &str,
    roles: &[Role],
    input: &SignIn,
    via: &str,
    now: DateTime<Utc>,
) -> Result<(Approval, Signature), Refusal> {
    if a.status == ApprovalStatus::OverridePending {
        return Err(Refusal::Conflict(format!(
            "{} has an emergency override waiting for its second signature; it cannot be signed meanwhile",
            a.id
        )));
    }
    if a.status.is_final() {
        return Err(Refusal::Conflict(format!(
            "{} is already {}{}; a decided approval cannot be signed again",
            a.id,
            a.status.as_str(),
            a.decided_at
                .map(|t| format!(" (since {})", t.to_rfc3339()))
                .unwrap_or_default()
        )));
    }
    if a.is_overdue(now) {
        return Err(Refusal::Conflict(format!(
            "{} expired at {}; ask for a new approval",
            a.id,
            a.expires_at.to_rfc3339()
        )));
    }
    if a.is_requester(by) {
        return Err(Refusal::Forbidden(format!(
            "{by} requested this deployment (or triggered its run) and cannot approve or reject it"
        )));
    }
    let role = match input.approval_type {
        ApprovalType::Technical => Role::TechnicalApprover,
        ApprovalType::Business => a.business_role(),
    };
    if !roles.contains(&role) {
        let why = if input.approval_type == ApprovalType::Business && a.finance_required {
            format!(
                " (the estimate ${:.2}/month is above the finance threshold, so the business approval must come from finance)",
                a.estimated_cost.unwrap_or(0.0)
            )
        } else {
            String::new()
        };
        return Err(Refusal::Forbidden(format!(
            "{by} does not have the {} role needed for the {} approval{why}",
            role.as_str(),
            input.approval_type.as_str()
        )));
    }
    if let Some(s) = a.signature(input.approval_type) {
        return Err(Refusal::Conflict(format!(
            "the {} approval of {} was already given by {} at {}",
            input.approval_type.as_str(),
            a.id,
            s.by,
            s.at.to_rfc3339()
        )));
    }
    if let Some(other) = a.signatures.iter().find(|s| s.by.eq_ignore_ascii_case(by)) {
        return Err(Refusal::Forbidden(format!(
            "{by} already gave the {} approval of {}; the technical and business approvals must come from two different people",
            other.approval_type.as_str(),
            a.id
        )));
    }
    if input.decision == Decision::Rejected && input.comments.is_none() {
        return Err(Refusal::Invalid(
            "a rejection needs a reason: say why in comments".into(),
        ));
    }
    let body = json!({
        "approval_id": a.id, "approval_type": input.approval_type, "decision": input.decision,
        "by": by, "role": role, "comments": input.comments, "at": now, "via": via,
    });
    let hash = chain(&a.chain_head, "approval.signed", &body);
    let sig = Signature {
        approval_type: input.approval_type,
        decision: input.decision,
        by: by.to_string(),
        role,
        comments: input.comments.clone(),
        at: now,
        via: via.to_string(),
        signature_hash: hash.clone(),
    };
    let mut next = a.clone();
    next.signatures.push(sig.clone());
    next.chain_head = hash;
    match input.decision {
        Decision::Rejected => {
            next.status = ApprovalStatus::Rejected;
            next.decided_at = Some(now);
            next.reason = Some(format!(
                "{} rejection by {by}: {}",
                input.approval_type.as_str(),
                input.comments.as_deref().unwrap_or_default()
            ));
        }
        Decision::Approved => {
            let tech = next.signature(ApprovalType::Technical).is_some();
            let biz = next.signature(ApprovalType::Business).is_some();
            if tech && biz {
                next.status = ApprovalStatus::Approved;
                next.decided_at = Some(now);
            } else if tech {
                next.status = ApprovalStatus::TechnicalApproved;
            }
        }
    }
    Ok((next, sig))
}

/// Expire an overdue approval.
pub fn expire(a: &Approval, now: DateTime<Utc>) -> Approval {
    let mut next = a.clone();
    next.status = ApprovalStatus::Expired;
    next.decided_at = Some(now);
    next.escalated_at = Some(now);
    next.reason = Some(format!(
        "not decided within {} minutes of the request (expired at {})",
        (a.expires_at - a.requested_at).num_minutes(),
        a.expires_at.to_rfc3339()
    ));
    next.chain_head = chain(&a.chain_head, "approval.expired", &next.summary());
    next
}

/// An emergency override, a two-person act: the first call (an admin) asks for it and leaves the
/// approval `override_pending`; the second (a different person holding `override_approver`)
/// within [`Policy::override_window`] makes it `approved`, recorded as an exception with both
/// names and both reasons. Neither may be the requester or the run's trigger.
pub fn emergency_override(
    a: &Approval,
    by: &str,
    roles: &[Role],
    reason: Option<&str>,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<(Approval, OverrideStep), Refusal> {
    let Some(reason) = reason.map(str::trim).filter(|r| !r.is_empty()) else {
        return Err(Refusal::Invalid(
            "an emergency override needs a reason".into(),
        ));
    };
    if a.status == ApprovalStatus::Approved {
        return Err(Refusal::Conflict(format!(
            "{} is already approved; there is nothing to override",
            a.id
        )));
    }
    if a.is_requester(by) {
        return Err(Refusal::Forbidden(format!(
            "{by} requested this deployment (or triggered its run) and cannot override its approval"
        )));
    }
    let a = a.settled(now);
    match &a.override_request {
        None => {
            if !roles.contains(&Role::Admin) {
                return Err(Refusal::Forbidden(format!(
                    "{by} does not have the admin role needed to ask for an emergency override (an admin asks, then a different person holding override_approver confirms)"
                )));
            }
            let body = json!({
                "approval_id": a.id, "by": by, "reason": reason, "at": now,
                "previous_status": a.status, "expires_at": now + policy.override_window,
            });
            let hash = chain(&a.chain_head, "approval.override_requested", &body);
            let mut next = a.clone();
            next.override_request = Some(OverrideRequest {
                by: by.to_string(),
                reason: reason.to_string(),
                at: now,
                expires_at: now + policy.override_window,
                previous_status: a.status,
                signature_hash: hash.clone(),
            });
            next.status = ApprovalStatus::OverridePending;
            next.chain_head = hash;
            Ok((next, OverrideStep::Requested))
        }
        Some(req) => {
            // The ledger may have named the run's trigger only after the override was asked
            // for: an asker who turns out to be the trigger (or the requester) cannot have it
            // confirmed, or one person would have pushed their own deployment through.
            if a.is_requester(&req.by) {
                return Err(Refusal::Conflict(format!(
                    "{} asked for this override but triggered its run (or requested the deployment), so it cannot be confirmed; it lapses at {}, and a different admin may ask again",
                    req.by,
                    req.expires_at.to_rfc3339()
                )));
            }
            if req.by.eq_ignore_ascii_case(by) {
                return Err(Refusal::Forbidden(format!(
                    "{by} asked for this override; it takes effect only when a second, different person holding override_approver confirms it (before {})",
                    req.expires_at.to_rfc3339()
                )));
            }
            if !roles.contains(&Role::OverrideApprover) {
                return Err(Refusal::Forbidden(format!(
                    "{by} does not have the override_approver role needed to confirm the emergency override {} asked for",
                    req.by
                )));
            }
            let exception_id = format!("EXC-{}", a.id.trim_start_matches("APR-"));
            let body = json!({
                "approval_id": a.id, "exception_id": exception_id, "by": req.by,
                "reason": req.reason, "requested_at": req.at, "confirmed_by": by,
                "confirm_reason": reason, "at": now, "previous_status": req.previous_status,
            });
            let hash = chain(&a.chain_head, "approval.override", &body);
            let mut next = a.clone();
            next.override_ = Some(Override {
                exception_id,
                by: req.by.clone(),
                reason: req.reason.clone(),
                at: now,
                previous_status: req.previous_status,
                signature_hash: hash.clone(),
                requested_at: Some(req.at),
                confirmed_by: Some(by.to_string()),
                confirm_reason: Some(reason.to_string()),
            });
            next.override_request = None;
            next.status = ApprovalStatus::Approved;
            next.decided_at = Some(now);
            next.chain_head = hash;
            Ok((next, OverrideStep::Confirmed))
        }
    }
}

/// `APR-<year>-<seq, 6 digits>`.
pub fn approval_id(year: i32, seq: u64) -> String {
    format!("APR-{year}-{seq:06}")
}

/// The (year, seq) of an approval id; `None` for anything else.
pub fn parse_approval_id(id: &str) -> Option<(i32, u64)> {
    let rest = id.strip_prefix("APR-")?;
    let (year, seq) = rest.split_once('-')?;
    if year.len() != 4 || seq.len() < 6 || seq.len() > 12 {
        return None;
    }
    if !year.bytes().chain(seq.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((year.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap()
    }

    fn approval(estimate: f64) -> Approval {
        let req = parse_request(
            &json!({"run_id": "42", "deployment_target": "production", "estimated_cost": estimate,
                    "checklist": ["tests green"]}),
            &Policy::default(),
        )
        .unwrap();
        Approval::new(
            approval_id(2026, 1),
            req,
            "payments".into(),
            "pipeline".into(),
            Some("carol".into()),
            None,
            &Policy::default(),
            t0(),
        )
    }

    fn approve(t: ApprovalType) -> SignIn {
        SignIn {
            approval_type: t,
            decision: Decision::Approved,
            comments: None,
        }
    }

    #[test]
    fn two_people_two_roles_make_an_approval() {
        let a = approval(100.0);
        let (a, s1) = sign(
            &a,
            "alice",
            &[Role::TechnicalApprover],
            &approve(ApprovalType::Technical),
            "api",
            t0(),
        )
        .unwrap();
        assert_eq!(a.status, ApprovalStatus::TechnicalApproved);
        let (a, s2) = sign(
            &a,
            "bob",
            &[Role::BusinessApprover],
            &approve(ApprovalType::Business),
            "api",
            t0(),
        )
        .unwrap();
        assert_eq!(a.status, ApprovalStatus::Approved);
        assert_ne!(s1.signature_hash, s2.signature_hash);
        assert_eq!(a.chain_head, s2.signature_hash);
    }

    #[test]
    fn separation_of_duties() {
        let a = approval(100.0);
        let both = [Role::TechnicalApprover, Role::BusinessApprover];
        // The run's trigger and the requester cannot sign.
        for who in ["carol", "pipeline", "Carol"] {
            assert!(matches!(
                sign(
                    &a,
                    who,
                    &both,
                    &approve(ApprovalType::Technical),
                    "api",
                    t0()
                ),
                Err(Refusal::Forbidden(_))
            ));
        }
        // Wrong role.
        assert!(matches!(
            sign(
                &a,
                "bob",
                &[Role::BusinessApprover],
                &approve(ApprovalType::Technical),
                "api",
                t0()
            ),
            Err(Refusal::Forbidden(_))
        ));
        // One person, both halves: refused.
        let (a, _) = sign(
            &a,
            "alice",
            &both,
            &approve(ApprovalType::Technical),
            "api",
            t0(),
        )
        .unwrap();
        let e = sign(
            &a,
            "alice",
            &both,
            &approve(ApprovalType::Business),
            "api",
            t0(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("two different people"), "{e}");
        // The same half twice: conflict.
        assert!(matches!(
            sign(
                &a,
                "dave",
                &both,
                &approve(ApprovalType::Technical),
                "api",
                t0()
            ),
            Err(Refusal::Conflict(_))
        ));
    }

    #[test]
    fn finance_signs_expensive_requests_and_decided_ones_are_closed() {
        let a = approval(7500.0);
        assert!(a.finance_required);
        let e = sign(
            &a,
            "bob",
            &[Role::BusinessApprover],
            &approve(ApprovalType::Business),
            "api",
            t0(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("finance"), "{e}");
        let (a, _) = sign(
            &a,
            "fiona",
            &[Role::Finance],
            &approve(ApprovalType::Business),
            "api",
            t0(),
        )
        .unwrap();
        assert_eq!(
            a.status,
            ApprovalStatus::Pending,
            "business first keeps it pending"
        );
        let reject = SignIn {
            approval_type: ApprovalType::Technical,
            decision: Decision::Rejected,
            comments: Some("no rollback plan".into()),
        };
        let (a, _) = sign(
            &a,
            "alice",
            &[Role::TechnicalApprover],
            &reject,
            "api",
            t0(),
        )
        .unwrap();
        assert_eq!(a.status, ApprovalStatus::Rejected);
        assert!(matches!(
            sign(
                &a,
                "zed",
                &[Role::TechnicalApprover],
                &approve(ApprovalType::Technical),
                "api",
                t0()
            ),
            Err(Refusal::Conflict(_))
        ));
    }

    #[test]
    fn budget_and_expiry() {
        let b = Budget {
            project: "payments".into(),
            monthly_budget: 10_000.0,
            current_spend: 9_000.0,
            updated_at: t0(),
            updated_by: "fiona".into(),
            committed: Default::default(),
        };
        let check = b.check(600.0, None, t0());
        assert_eq!(check.utilization, 0.96);
        // An approved, unfinished estimate counts, except when re-checking that approval itself.
        let mut held = b.clone();
        held.committed.insert(
            "APR-2026-000009".into(),
            Commitment {
                estimate: 500.0,
                run_id: "9".into(),
                at: t0(),
            },
        );
        assert_eq!(held.check(600.0, None, t0()).utilization, 1.01);
        assert_eq!(
            held.check(600.0, Some("APR-2026-000009"), t0()).utilization,
            0.96
        );
        assert!(over_budget(&held.check(600.0, None, t0()), 0.95)
            .unwrap()
            .contains("committed $500.00"));
        let req = parse_request(
            &json!({"run_id": "1", "deployment_target": "staging", "estimated_cost": 600}),
            &Policy::default(),
        )
        .unwrap();
        let a = Approval::new(
            approval_id(2026, 2),
            req,
            "payments".into(),
            "p".into(),
            None,
            Some(check),
            &Policy::default(),
            t0(),
        );
        assert_eq!(a.status, ApprovalStatus::Rejected);
        assert!(a.reason.as_deref().unwrap().contains("96.0%"));

        let a = approval(10.0);
        let p = Policy::default();
        assert!(!a.reminder_due(t0() + Duration::minutes(59), &p));
        assert!(a.reminder_due(t0() + Duration::minutes(61), &p));
        assert!(a.is_overdue(t0() + Duration::hours(4)));
        assert_eq!(
            expire(&a, t0() + Duration::hours(4)).status,
            ApprovalStatus::Expired
        );
    }

    #[test]
    fn requests_are_validated() {
        let p = Policy::default();
        let e = parse_request(&json!({"deployment_target": "prod"}), &p).unwrap_err();
        assert_eq!(e.field, "run_id");
        let e = parse_request(
            &json!({"run_id": "1", "deployment_target": "Production"}),
            &p,
        )
        .unwrap_err();
        assert_eq!(e.field, "estimated_cost");
        assert!(parse_request(&json!({"run_id": "1", "deployment_target": "dev"}), &p).is_ok());
        let e = parse_request(
            &json!({"run_id": "1", "deployment_target": "dev", "estimated_cost": -1}),
            &p,
        )
        .unwrap_err();
        assert_eq!(e.field, "estimated_cost");
        assert!(p.is_production("prod-westeurope"));
        assert!(!p.is_production("preprod"));
        let e =
            parse_sign(&json!({"approval_type": "technical", "decision": "rejected"})).unwrap_err();
        assert_eq!(e.field, "comments");
        assert_eq!(parse_approval_id("APR-2026-000042"), Some((2026, 42)));
        assert_eq!(parse_approval_id("APR-2026-42"), None);
        assert_eq!(parse_approval_id("../etc"), None);
    }

    #[test]
    fn an_asker_the_ledger_later_names_as_trigger_cannot_have_the_override_confirmed() {
        let p = Policy::default();
        let mut a = approval(1.0);
        a.run_triggered_by = None;
        // Asked while the run was not on the ledger yet...
        let (o, _) =
            emergency_override(&a, "root", &[Role::Admin], Some("hotfix"), &p, t0()).unwrap();
        // ...which then names the asker as the run's trigger: no second person can complete it.
        let o = o.with_ledger(Some("root")).unwrap();
        let e = emergency_override(
            &o,
            "ceo",
            &[Role::OverrideApprover],
            Some("ok"),
            &p,
            t0() + Duration::minutes(5),
        )
        .unwrap_err();
        assert!(
            matches!(&e, Refusal::Conflict(m) if m.contains("root asked")),
            "{e:?}"
        );
    }

    #[test]
    fn an_override_needs_an_admin_and_a_second_person_with_reasons() {
        let p = Policy::default();
        let a = approval(1.0);
        assert!(matches!(
            emergency_override(&a, "root", &[Role::Admin], None, &p, t0()),
            Err(Refusal::Invalid(_))
        ));
        assert!(matches!(
            emergency_override(&a, "bob", &[Role::Finance], Some("hotfix"), &p, t0()),
            Err(Refusal::Forbidden(_))
        ));
        // The run's trigger (carol) may not ask, even as an admin.
        assert!(matches!(
            emergency_override(&a, "carol", &[Role::Admin], Some("hotfix"), &p, t0()),
            Err(Refusal::Forbidden(_))
        ));
        let (o, step) =
            emergency_override(&a, "root", &[Role::Admin], Some("hotfix"), &p, t0()).unwrap();
        assert_eq!(step, OverrideStep::Requested);
        assert_eq!(o.status, ApprovalStatus::OverridePending);
        // Not the same person twice, even holding override_approver; not an admin alone.
        let both = [Role::Admin, Role::OverrideApprover];
        assert!(matches!(
            emergency_override(&o, "root", &both, Some("again"), &p, t0()),
            Err(Refusal::Forbidden(_))
        ));
        assert!(matches!(
            emergency_override(&o, "ann", &[Role::Admin], Some("ok"), &p, t0()),
            Err(Refusal::Forbidden(_))
        ));
        // Regular signatures wait while the override is pending.
        assert!(matches!(
            sign(
                &o,
                "alice",
                &[Role::TechnicalApprover],
                &approve(ApprovalType::Technical),
                "api",
                t0()
            ),
            Err(Refusal::Conflict(_))
        ));
        let (c, step) = emergency_override(
            &o,
            "ceo",
            &[Role::OverrideApprover],
            Some("confirmed on the CAB call"),
            &p,
            t0() + Duration::minutes(5),
        )
        .unwrap();
        assert_eq!(step, OverrideStep::Confirmed);
        assert_eq!(c.status, ApprovalStatus::Approved);
        let ov = c.override_.unwrap();
        assert_eq!(ov.exception_id, "EXC-2026-000001");
        assert_eq!(
            (ov.by.as_str(), ov.confirmed_by.as_deref()),
            ("root", Some("ceo"))
        );
        assert_eq!(ov.previous_status, ApprovalStatus::Pending);
    }

    #[test]
    fn an_unconfirmed_override_lapses() {
        let p = Policy::default();
        let a = approval(1.0);
        let (o, _) =
            emergency_override(&a, "root", &[Role::Admin], Some("hotfix"), &p, t0()).unwrap();
        let late = t0() + p.override_window;
        assert!(matches!(
            emergency_override(&o, "ceo", &[Role::OverrideApprover], Some("ok"), &p, late),
            Err(Refusal::Forbidden(_))
        ));
        let back = o.settled(late);
        assert_eq!(back.status, ApprovalStatus::Pending);
        assert!(back.override_request.is_none());
        assert_ne!(back.chain_head, o.chain_head);
        assert_eq!(o.settled(late - Duration::seconds(1)), o);
    }

    #[test]
    fn the_ledger_decides_who_triggered_the_run() {
        let mut a = approval(1.0);
        a.run_triggered_by = None;
        // A production approval whose run is unknown cannot be signed yet.
        assert!(matches!(a.with_ledger(None), Err(Refusal::Conflict(_))));
        // Reported later: its trigger may not approve.
        let a = a.with_ledger(Some("mallory")).unwrap();
        assert!(matches!(
            sign(
                &a,
                "mallory",
                &[Role::TechnicalApprover],
                &approve(ApprovalType::Technical),
                "api",
                t0()
            ),
            Err(Refusal::Forbidden(_))
        ));
    }
}
