//! Mattermost approval buttons and the rejection dialog (docs/protocols.md §5.2, §5.3;
//! docs/mattermost.md): what `POST /api/v1/mattermost/actions` does ([`crate::http::mattermost`]
//! is the route).
//!
//! Mattermost does not sign its callbacks, so the token in the button's `integration.context`
//! (kept server-side by Mattermost) is the authentication; see [`crate::domain::action_token`].
//! A click is: verify the token (forged, altered, expired: refused and audited, in the
//! [`SECURITY`] partition when no authentic token names the approval, else on the approval's
//! own trail), check the clicker with the Mattermost API when a server is configured
//! ([`clicker`]: exists, active, a member of the callback's channel), map the Mattermost user
//! **id** (never the name, which its owner can change) to an identity
//! ([`crate::identity::by_mattermost`]), then [`Approvals::sign`], which applies every
//! rule the API applies and refuses a token used before. The post's update shows the remaining
//! buttons with exactly the tokens the message was posted with (re-derived from the clicked
//! token's message group), never new ones. Reject opens a dialog for the reason; its state is a
//! token bound to the clicking user id, because the dialog hands its state to that user's client.
//!
//! The actions take narrow dependencies ([`Actions`]: the approval service, the Mattermost
//! settings, API and clicker cache, the refusal counter) and answer a [`Reply`];
//! [`crate::http::mattermost`] writes it. Every answer is HTTP 200 (Mattermost shows a generic
//! error for anything else): refusals are an `ephemeral_text` (buttons) or `{"error"}` /
//! `{"errors"}` (dialogs).

use crate::config::MattermostActions;
use crate::domain::action_token::{self, Action, Claims, TokenError, TokenKeys};
use crate::domain::approval::{ApprovalType, Decision, SignIn};
use crate::domain::identity::IdentityRecord;
use crate::refusals::Refusals;
use crate::refusals::PARTITION as SECURITY;
use crate::services::approvals::{self, Approvals, Signer};
use crate::services::ServiceError;
use crate::sinks::mattermost_approval::{self, ApprovalView, ButtonConfig, Buttons, Phase};
use crate::storage::{DocCommit, Store};
use chrono::{DateTime, Utc};
use clicker::Standing;
use serde_json::{json, Value};

pub mod api;
pub mod clicker;
mod dialog;

pub use dialog::MAX_REASON_CHARS;

/// A callback's fields, read leniently: a missing or wrongly typed field is absent (all three
/// documented shapes parse; the token decides what happens).
#[derive(Debug, Clone, Default)]
pub struct Callback {
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub channel_id: Option<String>,
    pub post_id: Option<String>,
    pub trigger_id: Option<String>,
    /// `context.token` of a button, `state` of a dialog submission.
    pub token: Option<String>,
    pub dialog: bool,
    pub cancelled: bool,
    /// A dialog's `submission.reason`, when it is a string.
    pub reason: Option<String>,
}

impl Callback {
    pub fn parse(v: &Value) -> Callback {
        let s = |v: Option<&Value>| {
            v.and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.chars().take(2 * action_token::MAX_TOKEN_CHARS).collect())
        };
        let dialog = v.get("type").and_then(Value::as_str) == Some("dialog_submission");
        Callback {
            user_id: s(v.get("user_id")),
            user_name: s(v.get("user_name")),
            channel_id: s(v.get("channel_id")),
            post_id: s(v.get("post_id")),
            trigger_id: s(v.get("trigger_id")),
            token: if dialog {
                s(v.get("state"))
            } else {
                s(v.get("context").and_then(|c| c.get("token")))
            },
            dialog,
            cancelled: v.get("cancelled").and_then(Value::as_bool) == Some(true),
            reason: v
                .get("submission")
                .and_then(|s| s.get("reason"))
                .and_then(Value::as_str)
                .map(str::to_string),
        }
    }
}

/// What an action answers; [`crate::http::mattermost`] writes it as Mattermost expects it, with
/// HTTP 200.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A button's answer: `text` is shown to the clicker only; `update`, the post's new content.
    Ephemeral { text: String, update: Option<Value> },
    /// Done: a dialog opened, closed or cancelled.
    Done,
    /// A dialog submission refused, with the text to show.
    Refused(String),
    /// A dialog submission whose reason field is wrong, with the text to show beside it.
    BadReason(String),
}

fn ephemeral(text: impl Into<String>) -> Reply {
    Reply::Ephemeral {
        text: text.into(),
        update: None,
    }
}

/// What the Mattermost actions need from the app, and nothing more.
pub struct Actions<'a> {
    /// Signs, and reads the approval a button names.
    pub approvals: &'a Approvals,
    /// The buttons' callback URL, the token keys and the clicker check's cache lifetime.
    pub settings: &'a MattermostActions,
    /// The Mattermost server, when configured: checks the clicker, opens the dialog.
    pub api: Option<&'a api::MattermostApi>,
    pub clickers: &'a clicker::ClickerCache,
    /// Where refusals without an authentic token are counted.
    pub refusals: &'a Refusals,
}

impl Actions<'_> {
    fn store(&self) -> &dyn Store {
        self.approvals.deps().store.as_ref()
    }

    /// Handle a button click or a dialog submission.
    pub async fn handle(&self, v: &Value) -> Reply {
        let cb = Callback::parse(v);
        let now = self.approvals.deps().clock.now();
        if cb.dialog {
            self.submission(&cb, now).await
        } else {
            self.click(&cb, now).await
        }
    }

    /// Verify the callback's token; a refusal is audited and explained.
    async fn verify(
        &self,
        cb: &Callback,
        now: DateTime<Utc>,
    ) -> Result<(Claims, TokenKeys, String), String> {
        let Some((url, keys)) = self.settings.buttons() else {
            self.audit(cb, None, "buttons_not_configured", now).await;
            return Err("Approval buttons are not configured on this icahub (ICAHUB_PUBLIC_URL and ICAHUB_MATTERMOST_ACTION_SECRETS); approve or reject with the API.".into());
        };
        let Some(token) = cb.token.as_deref() else {
            self.audit(cb, None, "missing", now).await;
            return Err(
                "This request carries no icahub token, so it was refused and recorded.".into(),
            );
        };
        match keys.verify(token, now.timestamp()) {
            Ok(c) => {
                // A dialog's state is bound to one user and works only as a dialog's state; a
                // button's token is unbound and works only on a button.
                let bound_ok = match (&c.user_id, cb.dialog) {
                    (None, false) => true,
                    (Some(uid), true) => cb.user_id.as_deref() == Some(uid.as_str()),
                    _ => false,
                };
                if !bound_ok || (cb.dialog && c.action != Action::Reject) {
                    self.audit(cb, Some(&c.approval_id), "misused", now).await;
                    return Err("This token does not belong to this user or this kind of request; the attempt was recorded.".into());
                }
                Ok((c, keys, url))
            }
            Err(TokenError::Expired(c)) => {
                self.audit(cb, Some(&c.approval_id), "expired", now).await;
                Err(format!(
                "This button expired at {} with approval {}; it can no longer be signed here. The attempt was recorded.",
                mattermost_approval::time(
                    DateTime::from_timestamp(c.expires, 0).unwrap_or(now)
                ),
                c.approval_id
            ))
            }
            Err(e @ (TokenError::Malformed | TokenError::BadSignature)) => {
                let why = if e == TokenError::Malformed {
                    "malformed"
                } else {
                    "forged"
                };
                self.audit(cb, None, why, now).await;
                Err(
                "This button's token is not valid (forged or altered), so nothing was done; the attempt was recorded."
                    .into(),
            )
            }
        }
    }
}

/// At most this many bytes of a caller-supplied field go into an audit entry; a longer value is
/// recorded as `sha256:` and 32 hex digits of its SHA-256 (the same value, the same record).
pub const MAX_AUDIT_FIELD_BYTES: usize = 64;

/// A caller-supplied field as it may be recorded.
pub fn bounded(s: &str) -> String {
    if s.len() <= MAX_AUDIT_FIELD_BYTES {
        s.to_string()
    } else {
        use sha2::Digest;
        format!(
            "sha256:{}",
            hex::encode(&sha2::Sha256::digest(s.as_bytes())[..16])
        )
    }
}

impl Actions<'_> {
    /// Record a refused callback: on the approval's own trail when the approval id comes from an
    /// authentic token, else counted in the minute's refusal summary ([`crate::refusals`], in the
    /// security partition; never in the approvals partitions, which anyone could otherwise fill).
    /// Every caller-supplied field is [`bounded`]. Best effort: the refusal stands either way.
    async fn audit(
        &self,
        cb: &Callback,
        trusted_id: Option<&str>,
        reason: &'static str,
        now: DateTime<Utc>,
    ) {
        // Without an authentic token nothing proves the request came from Mattermost at all: it is
        // unauthenticated noise, counted in the minute's refusal summary rather than recorded one by
        // one (a flood must not grow the permanent trail).
        if trusted_id.is_none() {
            let detail = format!(
                "{} {}, token {}",
                if cb.dialog {
                    "dialog_submission"
                } else {
                    "button"
                },
                cb.user_id.as_deref().map(bounded).unwrap_or_default(),
                cb.token
                    .as_deref()
                    .map(action_token::fingerprint)
                    .unwrap_or_default()
            );
            crate::refusals::record_in(
                self.refusals,
                &self.approvals.deps().store,
                now,
                reason,
                "mattermost",
                &detail,
            );
            return;
        }
        let claimed = cb
            .token
            .as_deref()
            .and_then(action_token::unverified_approval_id);
        let field = |v: &Option<String>| v.as_deref().map(bounded);
        let entry = json!({
            "action": "mattermost.token_refused", "reason": reason,
            "approval_id": trusted_id, "claimed_approval_id": if trusted_id.is_none() { claimed } else { None },
            "token_fingerprint": cb.token.as_deref().map(action_token::fingerprint),
            "kind": if cb.dialog { "dialog_submission" } else { "button" },
            "mattermost_user_id": field(&cb.user_id), "mattermost_user_name": field(&cb.user_name),
            "channel_id": field(&cb.channel_id), "post_id": field(&cb.post_id), "at": now,
        });
        tracing::warn!(reason, approval_id = ?trusted_id, user_id = ?field(&cb.user_id), "refused a Mattermost callback");
        let partition = trusted_id
            .and_then(approvals::partition_of)
            .unwrap_or_else(|| SECURITY.to_string());
        let c = DocCommit {
            partition,
            writes: vec![crate::audit::note(now, entry)],
            outbox: Vec::new(),
            record_id: "mattermost-refusal".into(),
            now,
        };
        if let Err(e) = self.store().doc_commit(&c).await {
            tracing::warn!(error = %e, "could not audit a refused Mattermost callback");
        }
    }

    /// With a Mattermost server configured: the clicker must exist, be active and be a member of
    /// the callback's channel ([`clicker`]); `Err` is the text to show (the refusal is audited).
    async fn check_clicker(
        &self,
        api: &api::MattermostApi,
        cb: &Callback,
        user_id: &str,
        claims: &Claims,
        now: DateTime<Utc>,
    ) -> Result<(), String> {
        let id = Some(claims.approval_id.as_str());
        let Some(channel) = cb.channel_id.as_deref() else {
            self.audit(cb, id, "no_channel", now).await;
            return Err("Mattermost sent no channel id with this request, so icahub cannot check that you are a member of the channel the approval was posted in; nothing was signed. The attempt was recorded.".into());
        };
        let ttl =
            chrono::Duration::seconds(i64::try_from(self.settings.check_ttl_secs).unwrap_or(0));
        match self
            .clickers
            .standing(api, user_id, channel, ttl, now)
            .await
        {
            Ok(Standing::Member) => Ok(()),
            Ok(Standing::UnknownUser) => {
                self.audit(cb, id, "user_unknown", now).await;
                Err("Mattermost does not know the user this request names, so nothing was signed; the attempt was recorded.".into())
            }
            Ok(Standing::Deactivated) => {
                self.audit(cb, id, "user_deactivated", now).await;
                Err("Your Mattermost account is deactivated, so it cannot sign; nothing was signed. The attempt was recorded.".into())
            }
            Ok(Standing::NotMember) => {
                self.audit(cb, id, "not_channel_member", now).await;
                Err("You are not a member of the channel this approval was posted in (as Mattermost tells icahub), so nothing was signed; the attempt was recorded.".into())
            }
            Err(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, "could not check a Mattermost clicker");
                self.audit(cb, id, "mattermost_unavailable", now).await;
                Err(format!("icahub could not check your account with the Mattermost server ({e}), so nothing was signed. Try again in a moment."))
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not check a Mattermost clicker");
                self.audit(cb, id, "mattermost_token_refused", now).await;
                Err(format!("icahub could not check your account with the Mattermost server: {e}. Nothing was signed; tell an icahub admin."))
            }
        }
    }

    /// The identity behind the callback's Mattermost user id (never its user name, which the user
    /// can change), after the server's check when one is configured; or the text to show instead.
    async fn who(
        &self,
        cb: &Callback,
        claims: &Claims,
        now: DateTime<Utc>,
    ) -> Result<IdentityRecord, String> {
        let Some(user_id) = cb
            .user_id
            .as_deref()
            .filter(|u| crate::domain::identity::valid_mattermost_id(u))
        else {
            self.audit(cb, Some(&claims.approval_id), "no_user_id", now)
                .await;
            return Err("Mattermost sent no valid user id with this request, so icahub cannot tell who you are; nothing was signed. The attempt was recorded.".into());
        };
        if let Some(api) = self.api {
            self.check_clicker(api, cb, user_id, claims, now).await?;
        }
        match crate::identity::by_mattermost(self.store(), user_id).await {
            Ok(Some(rec)) => Ok(rec),
            Ok(None) => {
                self.audit(cb, Some(&claims.approval_id), "unknown_user", now)
                    .await;
                let by_name = if self.api.is_some() {
                    " (or `icahub roles link-mattermost <identity> <your user name>`)"
                } else {
                    ""
                };
                Err(format!(
                "Your Mattermost account is not linked to an icahub identity, so icahub cannot tell which roles you hold. Ask an icahub admin to run `icahub roles link-mattermost <identity> --user-id {user_id}`{by_name}."
            ))
            }
            Err(e) => {
                tracing::warn!(error = %e, "Mattermost user lookup failed");
                Err(
                    "icahub could not look your account up right now; try again in a moment."
                        .into(),
                )
            }
        }
    }
}

/// What the clicker is told of a refusal; a storage failure's cause goes to the log only.
fn refusal_text(e: &ServiceError) -> String {
    let transient = || {
        format!(
            "icahub could not complete this right now ({}); try again in a moment.",
            e.caller_message()
        )
    };
    match e {
        ServiceError::Storage { source, .. } => {
            tracing::error!(error = %source, "storage failed");
            transient()
        }
        ServiceError::Busy { .. } | ServiceError::Unavailable { .. } => transient(),
        other => format!("Refused: {other}"),
    }
}

impl Actions<'_> {
    /// The post's new content for the approval as it now stands: the buttons still open while it
    /// is pending, none once it is final. The buttons carry exactly the tokens the message was
    /// posted with, re-derived from the clicked token's (verified) message group and expiry; a token
    /// of an earlier version has no group, and its post gets no buttons back. So one token never
    /// hands out another.
    async fn update(
        &self,
        claims: &Claims,
        config: &ButtonConfig,
        now: DateTime<Utc>,
    ) -> Option<Value> {
        let (a, _) = approvals::load(self.store(), &claims.approval_id)
            .await
            .ok()??;
        let view = ApprovalView::from_value(&approvals::view(&a, now)).ok()?;
        let buttons = claims.grp.as_ref().map(|grp| Buttons {
            config,
            grp: grp.clone(),
            expires: Some(claims.expires),
        });
        let mut card = mattermost_approval::card(&view, Phase::Clicked, buttons.as_ref());
        let headline = mattermost_approval::headline(&view);
        card["fallback"] = json!(headline);
        Some(json!({"message": headline, "props": {"attachments": [card]}}))
    }

    async fn click(&self, cb: &Callback, now: DateTime<Utc>) -> Reply {
        let (claims, keys, url) = match self.verify(cb, now).await {
            Ok(x) => x,
            Err(text) => return ephemeral(text),
        };
        let rec = match self.who(cb, &claims, now).await {
            Ok(r) => r,
            Err(text) => return ephemeral(text),
        };
        let config = ButtonConfig { url, keys };
        let approval_type = match claims.action {
            Action::ApproveTechnical => ApprovalType::Technical,
            Action::ApproveBusiness => ApprovalType::Business,
            Action::Reject => {
                // No dialog for an approval that is decided already (the submission would be
                // refused by the rules anyway); take the stale buttons off instead.
                if let Ok(Some((a, _))) = approvals::load(self.store(), &claims.approval_id).await {
                    if a.status.is_final() || a.is_overdue(now) {
                        return Reply::Ephemeral {
                            text: format!(
                                "{} is already {}; there is nothing to reject.",
                                a.id,
                                if a.is_overdue(now) {
                                    "expired"
                                } else {
                                    a.status.as_str()
                                }
                            ),
                            update: self.update(&claims, &config, now).await,
                        };
                    }
                }
                return self.open_dialog(cb, &claims, &config).await;
            }
        };
        let signer = Signer::mattermost(&rec.name, &rec.roles, claims.token_id());
        let input = SignIn {
            approval_type,
            decision: Decision::Approved,
            comments: None,
        };
        let id = &claims.approval_id;
        match self.approvals.sign(&signer, id, &input, now).await {
            Ok(signed) => {
                tracing::info!(approval_id = %id, by = %rec.name, approval_type = approval_type.as_str(), "signed in Mattermost");
                let status = signed.approval.status.as_str().replace('_', " ");
                Reply::Ephemeral {
                    text: format!(
                    "Recorded: the {} approval of {id} by {} (via Mattermost). Status: {status}.",
                    approval_type.as_str(),
                    rec.name
                ),
                    update: self.update(&claims, &config, now).await,
                }
            }
            Err(e) => {
                let text = refusal_text(&e);
                let mut update = None;
                // A decided approval's buttons are stale: take them off the post.
                if matches!(e, ServiceError::Conflict(_)) {
                    if let Ok(Some((a, _))) = approvals::load(self.store(), id).await {
                        if a.status.is_final() || a.is_overdue(now) {
                            update = self.update(&claims, &config, now).await;
                        }
                    }
                }
                Reply::Ephemeral { text, update }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audited_fields_are_bounded() {
        assert_eq!(
            bounded("rd49ehbqyjytddasoownkuqrxe"),
            "rd49ehbqyjytddasoownkuqrxe"
        );
        let long = "x".repeat(4096);
        let b = bounded(&long);
        assert!(b.starts_with("sha256:") && b.len() == 7 + 32, "{b}");
        assert_eq!(b, bounded(&long));
        assert_ne!(b, bounded(&"y".repeat(4096)));
        assert_eq!(bounded(&"é".repeat(32)).len(), 64);
        assert!(bounded(&"é".repeat(33)).starts_with("sha256:"));
    }

    #[test]
    fn callbacks_parse_leniently() {
        let c = Callback::parse(
            &json!({"user_id": "u1", "context": {"token": " t "}, "trigger_id": 5}),
        );
        assert_eq!(c.user_id.as_deref(), Some("u1"));
        assert_eq!(c.token.as_deref(), Some("t"));
        assert_eq!(c.trigger_id, None);
        assert!(!c.dialog);
        let d = Callback::parse(
            &json!({"type": "dialog_submission", "state": "s", "context": {"token": "t"},
                                        "submission": {"reason": "no"}, "cancelled": false}),
        );
        assert!(d.dialog);
        assert_eq!(d.token.as_deref(), Some("s"));
        assert_eq!(d.reason.as_deref(), Some("no"));
        let e = Callback::parse(&json!({"context": "not an object", "user_name": ""}));
        assert_eq!(e.token, None);
        assert_eq!(e.user_name, None);
    }
}
