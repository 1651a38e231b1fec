//! The approval's public shape: what the API answers (`http/approvals.rs`, with the approvers
//! added there) and what the outbox rows carry to the control plane and the Mattermost cards.
//! It is part of the stored outbox payloads, so it lives with the service rather than in
//! `http/`; it is pure.

use crate::domain::approval::{Approval, ApprovalStatus};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// The API view of an approval: the record, with an overdue one shown as expired and a lapsed
/// override request undone.
pub fn view(a: &Approval, now: DateTime<Utc>) -> Value {
    // An override request nobody confirmed in time shows as the state it lapsed back to.
    let a = &a.settled(now);
    let mut v = serde_json::to_value(a).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("used_tokens");
        o.remove("chain_head");
        o.insert("approval_id".into(), json!(a.id));
        if let Some(check) = o.get_mut("check").and_then(Value::as_object_mut) {
            check.remove("auth_token");
        }
        if a.is_overdue(now) {
            o.insert("status".into(), json!(ApprovalStatus::Expired));
        }
    }
    v
}
