//! The rejection dialog (docs/protocols.md §5.3): Reject opens it, with a state token bound to the
//! user who clicked; its submission (`type: dialog_submission`, same URL) rejects with the
//! reason. Answers ([`Reply`]): [`Reply::Done`] closes the dialog, [`Reply::BadReason`] marks
//! the field, [`Reply::Refused`] shows a refusal.

use super::api::MmError;
use super::{ephemeral, refusal_text, Actions, Callback, Reply};
use crate::domain::action_token::Claims;
use crate::domain::approval::{Approval, ApprovalType, Decision, SignIn};
use crate::domain::identity::Role;
use crate::services::approvals::{self, Signer};
use crate::sinks::mattermost_approval::ButtonConfig;
use chrono::{DateTime, Utc};
use serde_json::json;

/// The longest rejection reason (the API's limit for comments).
pub const MAX_REASON_CHARS: usize = 2000;
/// Mattermost limits a dialog's title to 24 characters.
const MAX_DIALOG_TITLE_CHARS: usize = 24;

impl Actions<'_> {
    /// Reject: ask for the reason in a dialog, when the hub can open one.
    pub(super) async fn open_dialog(
        &self,
        cb: &Callback,
        claims: &Claims,
        config: &ButtonConfig,
    ) -> Reply {
        let id = &claims.approval_id;
        let api_way = format!(
        "`POST /api/v1/azdev/approval/{id}/sign` with {{\"approval_type\": \"technical\" or \"business\", \"decision\": \"rejected\", \"comments\": \"<reason>\"}}"
    );
        let Some(api) = self.api else {
            return ephemeral(format!(
            "A rejection needs a reason, and this icahub cannot open a dialog to ask for it (set ICAHUB_MATTERMOST_URL and ICAHUB_MATTERMOST_TOKEN). Reject with {api_way}."
        ));
        };
        let (Some(trigger_id), Some(user_id)) = (&cb.trigger_id, &cb.user_id) else {
            return ephemeral(format!(
            "Mattermost sent no trigger id or user id with the click, so no dialog can be opened. Reject with {api_way}."
        ));
        };
        let state = config.keys.sign(&Claims {
            user_id: Some(user_id.clone()),
            user_name: None,
            ..claims.clone()
        });
        let title = format!("Reject {id}");
        let title = if title.chars().count() <= MAX_DIALOG_TITLE_CHARS {
            title
        } else {
            "Reject deployment".into()
        };
        let body = json!({
            "trigger_id": trigger_id,
            "url": config.url,
            "dialog": {
                "callback_id": id,
                "title": title,
                "introduction_text": format!("Reject approval {id}. The reason is recorded with your rejection and shown to the requester."),
                "elements": [{
                    "display_name": "Reason",
                    "name": "reason",
                    "type": "textarea",
                    "placeholder": "Why should this deployment not go ahead?",
                    "optional": false,
                    "max_length": MAX_REASON_CHARS,
                }],
                "submit_label": "Reject",
                "notify_on_cancel": false,
                "state": state,
            },
        });
        match api.open_dialog(&body).await {
            Ok(()) => Reply::Done,
            Err(e @ (MmError::Refused(_) | MmError::Status(_))) => {
                tracing::warn!(error = %e, approval_id = %id, "Mattermost refused to open the rejection dialog");
                ephemeral(format!(
                    "Mattermost would not open the rejection dialog ({e}). Reject with {api_way}."
                ))
            }
            Err(e) => {
                tracing::warn!(error = %e, approval_id = %id, "could not reach Mattermost to open the rejection dialog");
                ephemeral(format!(
                "icahub could not reach Mattermost to open the rejection dialog. Try again, or reject with {api_way}."
            ))
            }
        }
    }
}

/// The half a rejection is signed as: the one the user can give (by role) that is still open;
/// the rules themselves are [`approvals::Approvals::sign`]'s.
fn rejection_half(a: &Approval, roles: &[Role]) -> ApprovalType {
    let open = |t: ApprovalType| a.signature(t).is_none();
    if roles.contains(&Role::TechnicalApprover) && open(ApprovalType::Technical) {
        ApprovalType::Technical
    } else if roles.contains(&a.business_role()) && open(ApprovalType::Business) {
        ApprovalType::Business
    } else if roles.contains(&Role::TechnicalApprover) {
        ApprovalType::Technical
    } else {
        ApprovalType::Business
    }
}

impl Actions<'_> {
    /// A dialog's submission: reject with the reason given.
    pub(super) async fn submission(&self, cb: &Callback, now: DateTime<Utc>) -> Reply {
        if cb.cancelled {
            return Reply::Done;
        }
        let (claims, _, _) = match self.verify(cb, now).await {
            Ok(x) => x,
            Err(text) => return Reply::Refused(text),
        };
        let reason = cb.reason.as_deref().map(str::trim).unwrap_or("");
        if reason.is_empty() {
            return Reply::BadReason(
                "Say why the deployment is rejected; the reason is recorded with the rejection."
                    .into(),
            );
        }
        if reason.chars().count() > MAX_REASON_CHARS {
            return Reply::BadReason(format!("At most {MAX_REASON_CHARS} characters."));
        }
        let rec = match self.who(cb, &claims, now).await {
            Ok(r) => r,
            Err(text) => return Reply::Refused(text),
        };
        let id = &claims.approval_id;
        let approval_type = match approvals::load(self.store(), id).await {
            Ok(Some((a, _))) => rejection_half(&a, &rec.roles),
            Ok(None) => return Reply::Refused(format!("Refused: no approval {id}")),
            Err(e) => return Reply::Refused(refusal_text(&e)),
        };
        let signer = Signer::mattermost(&rec.name, &rec.roles, claims.token_id());
        let input = SignIn {
            approval_type,
            decision: Decision::Rejected,
            comments: Some(reason.to_string()),
        };
        match self.approvals.sign(&signer, id, &input, now).await {
            Ok(_) => {
                tracing::info!(approval_id = %id, by = %rec.name, "rejected in Mattermost");
                Reply::Done
            }
            Err(e) => Reply::Refused(refusal_text(&e)),
        }
    }
}
