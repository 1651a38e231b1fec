//! `POST /api/v1/mattermost/actions`: Mattermost's callbacks for the approval buttons and the
//! rejection dialog's submissions. No API key: Mattermost cannot send one, and the signed token
//! each button carries is the authentication ([`crate::mattermost`] does the work; its
//! [`Reply`] is written here). Anything
//! that is a JSON object gets HTTP 200 (Mattermost shows a generic error for any other status),
//! with the refusal in `ephemeral_text`, `error` or `errors` (a key twice in one object too, with
//! its `code` and `field`); a body that is not a JSON object is a 400 JSON error like everywhere
//! else.

use super::{ctx, json_body, with_app};
use crate::error::{json_response, ApiError};
use crate::ingest::{decode_json, RequestCtx};
use crate::mattermost::{Actions, Reply};
use crate::startup::App;
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

pub fn actions(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "v1" / "mattermost" / "actions")
        .and(warp::post())
        .and(ctx())
        .and(json_body(app.config.max_body_bytes))
        .and(with_app(app))
        .then(handle)
}

#[tracing::instrument(skip_all, fields(route = "mattermost_actions", request_id = %ctx.request_id))]
async fn handle(ctx: RequestCtx, body: Bytes, app: Arc<App>) -> Response {
    let v = match decode_json(&body) {
        Ok((v, _)) if v.is_object() => v,
        Ok(_) => {
            return ApiError::bad_request(
                Some("$".into()),
                "expected a Mattermost action callback or dialog submission (a JSON object)",
            )
            .into_response(&ctx.request_id)
        }
        // A body with a key twice is a refusal like any other here: HTTP 200 with the reason
        // where Mattermost shows it (`ephemeral_text` for a button, `error` for a dialog), and
        // the error object for everyone else.
        Err(ApiError::BadRequest {
            code: code @ "duplicate_key",
            field,
            message,
        }) => {
            let text = format!("Refused: {message}");
            let answer = json!({
                "ephemeral_text": text, "error": text, "code": code, "field": field,
            });
            return json_response(StatusCode::OK, &answer, &ctx.request_id);
        }
        Err(e) => return e.into_response(&ctx.request_id),
    };
    let actions = Actions {
        approvals: &app.approvals,
        settings: &app.config.mattermost,
        api: app.mattermost_api.as_ref(),
        clickers: &app.clickers,
        refusals: &app.refusals,
    };
    let answer = reply_body(actions.handle(&v).await);
    json_response(StatusCode::OK, &answer, &ctx.request_id)
}

/// The body Mattermost expects: `ephemeral_text` (and the post's `update`) for a button,
/// `{}` to close a dialog, `error` or `errors.reason` to refuse a submission.
fn reply_body(reply: Reply) -> Value {
    match reply {
        Reply::Ephemeral { text, update } => {
            let mut v = json!({ "ephemeral_text": text });
            if let Some(u) = update {
                v["update"] = u;
            }
            v
        }
        Reply::Done => json!({}),
        Reply::Refused(text) => json!({ "error": text }),
        Reply::BadReason(text) => json!({"errors": {"reason": text}}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_written_as_mattermost_expects() {
        let text = || "no".to_string();
        assert_eq!(
            reply_body(Reply::Ephemeral {
                text: text(),
                update: None
            }),
            json!({"ephemeral_text": "no"})
        );
        assert_eq!(
            reply_body(Reply::Ephemeral {
                text: text(),
                update: Some(json!({"message": "m"}))
            }),
            json!({"ephemeral_text": "no", "update": {"message": "m"}})
        );
        assert_eq!(reply_body(Reply::Done), json!({}));
        assert_eq!(reply_body(Reply::Refused(text())), json!({"error": "no"}));
        assert_eq!(
            reply_body(Reply::BadReason(text())),
            json!({"errors": {"reason": "no"}})
        );
    }
}
