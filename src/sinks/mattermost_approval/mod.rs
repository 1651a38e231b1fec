//! Mattermost messages for approvals (docs/protocols.md §5.1, §5.2): the request, with buttons
//! Approve (technical), Approve (business) and Reject; reminders (buttons again, new tokens of
//! the reminder's own message group);
//! the finance review; the escalation of an expired request; the decision. Pure: the rows'
//! payload carries the approval view ([`crate::approvals::view`]); tokens are minted here, at
//! send time, with the configured secret, and expire with the approval.
//!
//! [`card`] is also what the button endpoint ([`crate::mattermost`]) sends back as the post's
//! `update` after a click: the same attachment showing who signed what and when, with the
//! buttons still open while the approval is pending and none once it is final.
//!
//! Limits: every text is cut so a message stays well below Mattermost's 16383-character post
//! limit (headline and fallback 2 × 500 + title 200 + text 6000 + 16 fields × 440 + footer
//! 300 = 14540); button ids are letters and digits only; `ts` is never sent. `view.rs` reads the
//! approval, `format.rs` formats checklists, money and times.

use super::mattermost::{RenderOptions, GREEN};
use super::{route_field, truncate, SendError};
use crate::domain::action_token::{self, Action, Claims, TokenKeys};
use crate::domain::approval::{ApprovalStatus, ApprovalType, Decision, Signature};
use crate::storage::OutboxRow;
use serde_json::{json, Map, Value};

mod format;
mod view;

pub use format::{checklist, time, usd};
pub use view::ApprovalView;

const MAX_HEADLINE_CHARS: usize = 500;
const MAX_TITLE_CHARS: usize = 200;
const MAX_TEXT_CHARS: usize = 6000;
const MAX_CHECKLIST_CHARS: usize = 3500;
const MAX_DESCRIPTION_CHARS: usize = 1500;
const MAX_FIELD_TITLE_CHARS: usize = 40;
const MAX_FIELD_VALUE_CHARS: usize = 400;
const MAX_FIELDS: usize = 16;
const MAX_FOOTER_CHARS: usize = super::mattermost::MAX_FOOTER_CHARS;

const AMBER: &str = "#f2c744";
const RED: &str = "#d00000";
const GREY: &str = "#9aa5b1";
const PURPLE: &str = "#8e44ad";

/// Where button clicks go and the keys that sign their tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ButtonConfig {
    /// `<ICAHUB_PUBLIC_URL>/api/v1/mattermost/actions`
    pub url: String,
    pub keys: TokenKeys,
}

/// Buttons to put on a card: the configuration, the message's group (each button's token is
/// [`Claims::grouped`] in it) and the tokens' expiry (the approval's when `None`).
pub struct Buttons<'a> {
    pub config: &'a ButtonConfig,
    pub grp: String,
    pub expires: Option<i64>,
}

/// The message kinds this module renders.
pub fn handles(kind: &str) -> bool {
    matches!(
        kind,
        "approval.requested"
            | "approval.reminder"
            | "approval.finance_review"
            | "approval.escalated"
            | "approval.decided"
    )
}

/// The webhook body for an `approval.*` row. The message's group id (and so every button's
/// nonce) is derived from the row's idempotency key, so a retried delivery renders the same
/// message, and the update after a click can re-derive the very tokens it was posted with.
pub fn render(row: &OutboxRow, opts: &RenderOptions) -> Result<Value, SendError> {
    let view = row
        .payload
        .get("approval")
        .ok_or_else(|| SendError::permanent(format!("{} payload has no approval", row.kind)))
        .and_then(|v| {
            ApprovalView::from_value(v)
                .map_err(|e| SendError::permanent(format!("{} payload: approval: {e}", row.kind)))
        })?;
    let grp = action_token::group_id(&[&row.idempotency_key]);
    let buttons = opts.buttons.as_ref().map(|config| Buttons {
        config,
        grp: grp.clone(),
        expires: None,
    });
    let (headline, attachment) = match row.kind.as_str() {
        "approval.requested" => (
            format!(
                "Approval needed: {} deployment of run {} ({}) · {}",
                view.deployment_target, view.run_id, view.project, view.id
            ),
            card(&view, Phase::Request, buttons.as_ref()),
        ),
        "approval.reminder" => (
            format!(
                "Reminder{}: {} still needs approval; it expires at {}",
                if view.reminders_sent > 0 {
                    format!(" {}", view.reminders_sent)
                } else {
                    String::new()
                },
                view.id,
                time(view.expires_at)
            ),
            card(&view, Phase::Request, buttons.as_ref()),
        ),
        "approval.finance_review" => (
            format!(
                "Finance review needed: {} estimates {}/month, above the finance threshold; the business approval must come from finance",
                view.id,
                usd(view.estimated_cost.unwrap_or(0.0))
            ),
            card(&view, Phase::Finance, None),
        ),
        "approval.escalated" => (
            format!(
                "Escalated: {} ({} deployment of run {}) expired at {} without a decision",
                view.id,
                view.deployment_target,
                view.run_id,
                time(view.expires_at)
            ),
            card(&view, Phase::Escalated, None),
        ),
        "approval.decided" => (headline(&view), card(&view, Phase::Decided, None)),
        other => {
            return Err(SendError::permanent(format!(
                "mattermost: no message for kind {other:?}"
            )))
        }
    };
    let mut body = Map::new();
    body.insert("username".into(), json!(opts.username));
    if let Some(icon) = &opts.icon_url {
        body.insert("icon_url".into(), json!(icon));
    }
    if let Some(channel) = route_field(row, "mattermost_channel") {
        body.insert("channel".into(), json!(channel));
    }
    let headline = truncate(&headline, MAX_HEADLINE_CHARS);
    body.insert("text".into(), json!(headline));
    let mut attachment = attachment;
    attachment["fallback"] = json!(headline);
    body.insert("attachments".into(), json!([attachment]));
    Ok(Value::Object(body))
}

/// One line on where an approval stands, for a post's text after a click or a decision.
pub fn headline(view: &ApprovalView) -> String {
    let what = format!(
        "{} deployment of run {} ({})",
        view.deployment_target, view.run_id, view.project
    );
    match view.status {
        ApprovalStatus::Approved if view.override_.is_some() => {
            format!("{} approved by emergency override: {what}", view.id)
        }
        ApprovalStatus::Approved => format!("{} approved: {what}", view.id),
        ApprovalStatus::Rejected => format!("{} rejected: {what}", view.id),
        ApprovalStatus::Expired => format!("{} expired: {what}", view.id),
        ApprovalStatus::TechnicalApproved => {
            format!(
                "{} technically approved, business approval pending: {what}",
                view.id
            )
        }
        ApprovalStatus::Pending => format!("Approval needed: {what} · {}", view.id),
        ApprovalStatus::OverridePending => format!(
            "{} emergency override asked for, waiting for a second person: {what}",
            view.id
        ),
    }
}

/// Which message a card belongs to (colour, title, what the text adds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The request or a reminder.
    Request,
    /// The post after a click: like the request, and without buttons when the clicked token
    /// came from an earlier version (no message group to re-derive the posted tokens from).
    Clicked,
    Finance,
    Escalated,
    Decided,
}

/// The attachment for an approval: facts, checklist, signatures, and (in the request phase,
/// while undecided, when configured) the buttons.
pub fn card(view: &ApprovalView, phase: Phase, buttons: Option<&Buttons<'_>>) -> Value {
    let color = match (phase, view.status) {
        (Phase::Escalated, _) => RED,
        (_, ApprovalStatus::Approved) => GREEN,
        (_, ApprovalStatus::Rejected) => RED,
        (_, ApprovalStatus::Expired) => GREY,
        (Phase::Finance, _) => PURPLE,
        _ => AMBER,
    };
    let mut a = Map::new();
    a.insert("color".into(), json!(color));
    a.insert(
        "title".into(),
        json!(truncate(
            &format!(
                "{}: deployment to {}{}",
                view.id,
                view.deployment_target,
                if view.production && !view.deployment_target.to_ascii_lowercase().contains("prod")
                {
                    " (production)"
                } else {
                    ""
                }
            ),
            MAX_TITLE_CHARS
        )),
    );
    a.insert("text".into(), json!(text(view, phase, buttons.is_some())));
    a.insert("fields".into(), Value::Array(fields(view)));
    a.insert(
        "footer".into(),
        json!(truncate(&format!("icahub · {}", view.id), MAX_FOOTER_CHARS)),
    );
    if let (Phase::Request | Phase::Clicked, Some(b)) = (phase, buttons) {
        let actions = view.open_actions();
        if !actions.is_empty() {
            let expires = b.expires.unwrap_or_else(|| view.expires_at.timestamp());
            let list: Vec<Value> = actions
                .into_iter()
                .map(|act| button(view, act, expires, b))
                .collect();
            a.insert("actions".into(), Value::Array(list));
        }
    }
    Value::Object(a)
}

fn button(view: &ApprovalView, act: Action, expires: i64, b: &Buttons<'_>) -> Value {
    let token = b
        .config
        .keys
        .sign(&Claims::grouped(&view.id, act, expires, &b.grp));
    json!({
        "id": act.button_id(),
        "type": "button",
        "name": act.label(),
        "style": if act == Action::Reject { "danger" } else { "primary" },
        "integration": {
            "url": b.config.url,
            // Only the token is trusted; the rest is for people reading the post's JSON.
            "context": {"token": token, "approval_id": view.id, "action": act.as_str()},
        },
    })
}

fn text(view: &ApprovalView, phase: Phase, with_buttons: bool) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(d) = view
        .description
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        parts.push(truncate(d, MAX_DESCRIPTION_CHARS));
    }
    let checklist = checklist(&view.checklist);
    if !checklist.is_empty() {
        parts.push(format!(
            "**Checklist**\n{}",
            truncate(&checklist, MAX_CHECKLIST_CHARS)
        ));
    }
    match view.status {
        ApprovalStatus::Rejected | ApprovalStatus::Expired => {
            if let Some(r) = &view.reason {
                parts.push(format!("**Reason:** {r}"));
            }
        }
        _ => {}
    }
    if let Some(o) = &view.override_ {
        parts.push(format!(
            "**Emergency override** {} by {} at {}: {}",
            o.exception_id,
            o.by,
            time(o.at),
            o.reason
        ));
    }
    let sign_path = format!("POST /api/v1/azdev/approval/{}/sign", view.id);
    match phase {
        Phase::Request if !view.status.is_final() && !with_buttons => parts.push(format!(
            "_No buttons: approval buttons need ICAHUB_PUBLIC_URL and ICAHUB_MATTERMOST_ACTION_SECRETS on the hub. Sign with `{sign_path}`._"
        )),
        Phase::Clicked if !view.status.is_final() && !with_buttons => parts.push(format!(
            "_The buttons of this message came from an earlier icahub version and are not shown again: use the next reminder's, or sign with `{sign_path}`._"
        )),
        Phase::Finance => parts.push(format!(
            "Finance: give the business approval with the buttons on the request, or with `{sign_path}` (approval_type business)."
        )),
        Phase::Escalated => parts.push(
            "Nobody decided in time. Ask for a new approval if the deployment is still wanted."
                .into(),
        ),
        _ => {}
    }
    truncate(&parts.join("\n\n"), MAX_TEXT_CHARS)
}

fn fields(view: &ApprovalView) -> Vec<Value> {
    let mut f: Vec<(String, String, bool)> = vec![
        ("Status".into(), status_label(view), true),
        ("Run".into(), view.run_id.clone(), true),
        ("Target".into(), view.deployment_target.clone(), true),
        ("Project".into(), view.project.clone(), true),
    ];
    if let Some(c) = view.estimated_cost {
        f.push(("Estimated cost".into(), format!("{}/month", usd(c)), true));
    }
    if let Some(b) = &view.budget {
        f.push((
            "Budget utilization".into(),
            format!(
                "{:.1}% of {} in {} (spent {}{} + this {})",
                b.utilization * 100.0,
                usd(b.monthly_budget),
                b.month,
                usd(b.current_spend),
                if b.committed > 0.0 {
                    format!(
                        " + committed to approved, unfinished runs {}",
                        usd(b.committed)
                    )
                } else {
                    String::new()
                },
                usd(b.estimated_cost)
            ),
            false,
        ));
    }
    f.push(("Requested by".into(), view.requested_by.clone(), true));
    if let Some(t) = &view.run_triggered_by {
        f.push(("Run triggered by".into(), t.clone(), true));
    }
    f.push(("Requested".into(), time(view.requested_at), true));
    f.push(("Expires".into(), time(view.expires_at), true));
    f.push((
        "Needs".into(),
        format!(
            "technical (technical_approver) and business ({}{})",
            view.business_role(),
            if view.finance_required {
                ": the estimate is above the finance threshold"
            } else {
                ""
            }
        ),
        false,
    ));
    for t in [ApprovalType::Technical, ApprovalType::Business] {
        let title = match t {
            ApprovalType::Technical => "Technical approval",
            ApprovalType::Business => "Business approval",
        };
        let value = match view.signature(t) {
            Some(s) => signed(s),
            None if view.status.is_final() => "not given".into(),
            None => "waiting".into(),
        };
        f.push((title.into(), value, false));
    }
    if let Some(at) = view.decided_at {
        f.push(("Decided".into(), time(at), true));
    }
    f.into_iter()
        .take(MAX_FIELDS)
        .map(|(title, value, short)| {
            json!({
                "title": truncate(&title, MAX_FIELD_TITLE_CHARS),
                "value": truncate(&value, MAX_FIELD_VALUE_CHARS),
                "short": short,
            })
        })
        .collect()
}

fn signed(s: &Signature) -> String {
    let what = match s.decision {
        Decision::Approved => "approved",
        Decision::Rejected => "rejected",
    };
    let mut out = format!("{what} by {} at {} (via {})", s.by, time(s.at), s.via);
    if let Some(c) = s.comments.as_deref().filter(|c| !c.trim().is_empty()) {
        out.push_str(": ");
        out.push_str(c.trim());
    }
    out
}

fn status_label(view: &ApprovalView) -> String {
    match view.status {
        ApprovalStatus::Pending => "Pending",
        ApprovalStatus::TechnicalApproved => "Technical approved; business pending",
        ApprovalStatus::Approved if view.override_.is_some() => "Approved (emergency override)",
        ApprovalStatus::Approved => "Approved",
        ApprovalStatus::Rejected => "Rejected",
        ApprovalStatus::Expired => "Expired",
        ApprovalStatus::OverridePending => "Emergency override waiting for a second person",
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_fit_one_post() {
        let total = MAX_HEADLINE_CHARS * 2
            + MAX_TITLE_CHARS
            + MAX_TEXT_CHARS
            + MAX_FIELDS * (MAX_FIELD_TITLE_CHARS + MAX_FIELD_VALUE_CHARS)
            + MAX_FOOTER_CHARS;
        assert!(total < super::super::mattermost::MAX_POST_CHARS, "{total}");
    }
}
