//! The ICA control plane: every ledger record (alert received, incident changes, and later runs and
//! approvals) is forwarded to its REST API under `{base}/api/v1/azdev/...` ([`path_for`]).
//!
//! Each request carries `Idempotency-Key` (the row's key, stable across retries), a bearer token
//! when one is configured, and Standard Webhooks headers (`webhook-id` = the idempotency key,
//! `webhook-timestamp` = the attempt's unix time, `webhook-signature` = one `v1,` HMAC per active
//! secret, see [`super::signature`]) when signing secrets are configured. The signature covers the
//! exact body bytes sent.

use super::signature::{sign, SigningKey};
use super::{post, prefix, Delivered, SendError, SinkClient};
use crate::clock::Clock;
use crate::config::sinks::ControlPlaneSink;
use crate::config::Secret;
use crate::domain::routing::Sink;
use crate::storage::OutboxRow;
use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The path segments (after the base URL) for a row, or `Permanent` for an unknown kind.
/// `approval.signed`, `.expired` and `.overridden` (all decisions on an approval, told apart by the
/// body's `kind`) need `approval_id` (or `approval.id`) in the payload.
pub fn path_for(row: &OutboxRow) -> Result<Vec<String>, SendError> {
    let tail: Vec<String> = match row.kind.as_str() {
        "alert.received" => vec!["alert".into()],
        "incident.opened" | "incident.updated" | "incident.resolved" => vec!["incident".into()],
        "run.start" => vec!["run".into(), "start".into()],
        "run.event" => vec!["run".into(), "event".into()],
        "run.finish" => vec!["run".into(), "finish".into()],
        "approval.created" => vec!["approval".into()],
        "audit.checkpoint" => vec!["audit".into(), "checkpoint".into()],
        "approval.signed" | "approval.expired" | "approval.overridden" => {
            let id = row
                .payload
                .get("approval_id")
                .or_else(|| row.payload.get("approval").and_then(|a| a.get("id")))
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| {
                    SendError::permanent(
                        "control plane: approval.signed payload has no approval_id",
                    )
                })?;
            vec!["approval".into(), id.to_string(), "sign".into()]
        }
        other => {
            return Err(SendError::permanent(format!(
                "control plane: no route for kind {other:?}"
            )))
        }
    };
    let mut path: Vec<String> = ["api", "v1", "azdev"].map(String::from).to_vec();
    path.extend(tail);
    Ok(path)
}

/// The JSON body for a row (serialized once; the signature covers these bytes).
pub fn body(row: &OutboxRow) -> Value {
    json!({
        "kind": row.kind,
        "idempotency_key": row.idempotency_key,
        "event_id": row.event_id,
        "stream": row.stream,
        "seq": row.seq,
        "occurred_at": row.created_at,
        "data": row.payload,
    })
}

#[derive(Debug)]
pub struct ControlPlaneClient {
    client: reqwest::Client,
    base: reqwest::Url,
    token: Option<Secret>,
    keys: Vec<SigningKey>,
    warned_unsigned: AtomicBool,
    /// Dates the signatures (`webhook-timestamp`) and the `Retry-After` answers.
    clock: Arc<dyn Clock>,
}

impl ControlPlaneClient {
    pub fn new(
        client: reqwest::Client,
        base: reqwest::Url,
        token: Option<Secret>,
        keys: Vec<SigningKey>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        ControlPlaneClient {
            client,
            base,
            token,
            keys,
            warned_unsigned: AtomicBool::new(false),
            clock,
        }
    }

    pub fn from_settings(
        settings: &ControlPlaneSink,
        client: reqwest::Client,
        clock: Arc<dyn Clock>,
    ) -> Self {
        ControlPlaneClient::new(
            client,
            settings.base.clone(),
            settings.token.clone(),
            settings.keys.clone(),
            clock,
        )
    }

    fn url(&self, segments: &[String]) -> reqwest::Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked: the base URL can be a base")
            .pop_if_empty()
            .extend(segments);
        url
    }
}

#[async_trait]
impl SinkClient for ControlPlaneClient {
    fn sink(&self) -> Sink {
        Sink::ControlPlane
    }

    async fn send(&self, row: &OutboxRow) -> Result<Delivered, SendError> {
        let url = self.url(&path_for(row)?);
        let bytes = serde_json::to_vec(&body(row)).expect("a JSON value serializes");
        let id = HeaderValue::from_str(&row.idempotency_key).map_err(|_| {
            SendError::permanent("control plane: idempotency key is not a valid header value")
        })?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(HeaderName::from_static("idempotency-key"), id.clone());
        if let Some(t) = &self.token {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                .expect("checked at configuration");
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        if self.keys.is_empty() {
            if !self.warned_unsigned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "ICAHUB_CONTROL_PLANE_SIGNING_SECRETS is not set: control-plane requests are unsigned"
                );
            }
        } else {
            let ts = self.clock.now().timestamp();
            let sig = sign(&self.keys, &row.idempotency_key, ts, &bytes);
            headers.insert(HeaderName::from_static("webhook-id"), id);
            headers.insert(
                HeaderName::from_static("webhook-timestamp"),
                HeaderValue::from(ts),
            );
            headers.insert(
                HeaderName::from_static("webhook-signature"),
                HeaderValue::from_str(&sig).expect("base64 is a valid header value"),
            );
        }
        let (status, _) = post(
            &self.client,
            self.clock.as_ref(),
            url.as_str(),
            headers,
            bytes,
        )
        .await
        .map_err(|e| prefix("control plane", e))?;
        Ok(Delivered { status })
    }
}
