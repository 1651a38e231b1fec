//! `POST /api/v1/azdev/audit/query` (auditor or admin role): the audit trail's entries,
//! filtered and paginated. Body: `{from?, to?, status?, approver?, event_type?, pipeline?,
//! partition?, kind?, limit? (1-1000, default 100), cursor?}`; answer `{entries, next_cursor}`
//! where `next_cursor` (absent at the end) continues after the last entry examined.

use super::{auth, ctx, json_body, with_app};
use crate::audit::{AuditEntry, ExportFilter};
use crate::domain::identity::Role;
use crate::error::{json_response, ApiError};
use crate::identity::Caller;
use crate::ingest::{decode_json, RequestCtx};
use crate::startup::App;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::sync::Arc;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

/// Entries examined per request at most, so a sparse filter answers in bounded time (the
/// cursor then continues where it stopped).
const SCAN_BUDGET: usize = 50_000;

pub fn query(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "v1" / "azdev" / "audit" / "query")
        .and(warp::post())
        .and(auth::caller(
            app.clone(),
            crate::auth_methods::RouteGroup::Read,
        ))
        .and(ctx())
        .and(json_body(app.config.max_body_bytes))
        .and(with_app(app))
        .then(
            |caller: Caller, ctx: RequestCtx, body: Bytes, app: Arc<App>| async move {
                match handle(&caller, &body, &app).await {
                    Ok(v) => json_response(StatusCode::OK, &v, &ctx.request_id),
                    Err(e) => e.into_response(&ctx.request_id),
                }
            },
        )
}

fn bad(field: &str, msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(Some(field.into()), msg)
}

fn opt_str(v: &Value, name: &str) -> Result<Option<String>, ApiError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= 256 => Ok(Some(s.clone())),
        Some(_) => Err(bad(
            name,
            format!("{name} must be a string of at most 256 characters"),
        )),
    }
}

fn opt_time(v: &Value, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    opt_str(v, name)?
        .map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| bad(name, format!("{name} must be an RFC 3339 time, got {s:?}")))
        })
        .transpose()
}

fn encode_cursor(e: &AuditEntry) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!([e.partition, e.seq]).to_string())
}

fn decode_cursor(s: &str) -> Option<(String, u64)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    let (p, seq): (String, u64) = serde_json::from_slice(&raw).ok()?;
    Some((p, seq))
}

async fn handle(caller: &Caller, body: &[u8], app: &App) -> Result<Value, ApiError> {
    if !caller.has(Role::Auditor) && !caller.has(Role::Admin) {
        return Err(ApiError::Forbidden(format!(
            "{} needs the auditor role to read the audit trail",
            caller.name
        )));
    }
    let (v, _) = decode_json(body)?;
    if !v.is_object() {
        return Err(bad("$", "the query must be a JSON object"));
    }
    let filter = ExportFilter {
        from: opt_time(&v, "from")?,
        to: opt_time(&v, "to")?,
        status: opt_str(&v, "status")?,
        approver: opt_str(&v, "approver")?,
        event_type: opt_str(&v, "event_type")?,
        pipeline: opt_str(&v, "pipeline")?,
    };
    let partition = opt_str(&v, "partition")?;
    let kind = opt_str(&v, "kind")?;
    let limit = match v.get("limit") {
        None | Some(Value::Null) => 100,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(l @ 1..=1000) => l as usize,
            _ => return Err(bad("limit", "limit must be between 1 and 1000")),
        },
        Some(_) => return Err(bad("limit", "limit must be a number")),
    };
    let mut after = match opt_str(&v, "cursor")? {
        None => partition.as_ref().map(|p| (p.clone(), 0)),
        Some(c) => Some(
            decode_cursor(&c).ok_or_else(|| bad("cursor", "cursor is not one this API gave"))?,
        ),
    };
    let mut entries = Vec::new();
    let mut examined = 0usize;
    let mut next: Option<String> = None;
    'pages: loop {
        let page = app
            .store
            .audit_page(after.as_ref().map(|(p, s)| (p.as_str(), *s)), 1000)
            .await
            .map_err(crate::services::ServiceError::storage(
                "the audit trail was not read",
            ))?;
        let Some(last) = page.last() else { break };
        after = Some((last.partition.clone(), last.seq));
        for e in page {
            if let Some(p) = &partition {
                if &e.partition != p {
                    break 'pages;
                }
            }
            examined += 1;
            let keep = filter.matches(&e) && kind.as_ref().is_none_or(|k| &e.kind == k);
            let cursor = encode_cursor(&e);
            if keep {
                // Tokens an earlier version chained are masked (crate::audit::for_output).
                entries.push(crate::audit::for_output(&e));
            }
            if entries.len() >= limit || examined >= SCAN_BUDGET {
                next = Some(cursor);
                break 'pages;
            }
        }
    }
    let mut answer = json!({"entries": entries, "examined": examined});
    if let Some(c) = next {
        answer["next_cursor"] = json!(c);
    }
    Ok(answer)
}
