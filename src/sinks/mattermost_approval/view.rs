//! What the approval renderer reads of an approval: the API view
//! ([`crate::approvals::view`]), leniently.

use crate::domain::action_token::Action;
use crate::domain::approval::{ApprovalStatus, ApprovalType, BudgetCheck, Override, Signature};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

/// What the renderer reads of an approval: the API view, leniently (a missing optional field
/// renders as absent rather than failing the delivery).
#[derive(Debug, Clone, Deserialize)]
pub struct ApprovalView {
    pub id: String,
    pub run_id: String,
    pub deployment_target: String,
    #[serde(default)]
    pub production: bool,
    #[serde(default)]
    pub project: String,
    #[serde(default)]
    pub estimated_cost: Option<f64>,
    #[serde(default)]
    pub checklist: Value,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub requested_by: String,
    #[serde(default)]
    pub run_triggered_by: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub status: ApprovalStatus,
    #[serde(default)]
    pub finance_required: bool,
    #[serde(default)]
    pub budget: Option<BudgetCheck>,
    #[serde(default)]
    pub signatures: Vec<Signature>,
    #[serde(default)]
    pub decided_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default, rename = "override")]
    pub override_: Option<Override>,
    #[serde(default)]
    pub reminders_sent: u32,
}

impl ApprovalView {
    pub fn from_value(v: &Value) -> Result<ApprovalView, String> {
        serde_json::from_value(v.clone()).map_err(|e| e.to_string())
    }

    pub fn signature(&self, t: ApprovalType) -> Option<&Signature> {
        self.signatures.iter().find(|s| s.approval_type == t)
    }

    pub fn business_role(&self) -> &'static str {
        if self.finance_required {
            "finance"
        } else {
            "business_approver"
        }
    }

    /// The buttons that can still do something: an approve button per unsigned half, and
    /// Reject, while the approval is undecided.
    pub fn open_actions(&self) -> Vec<Action> {
        if self.status.is_final() {
            return Vec::new();
        }
        let mut out = Vec::new();
        if self.signature(ApprovalType::Technical).is_none() {
            out.push(Action::ApproveTechnical);
        }
        if self.signature(ApprovalType::Business).is_none() {
            out.push(Action::ApproveBusiness);
        }
        out.push(Action::Reject);
        out
    }
}
