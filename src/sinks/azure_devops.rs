//! Azure DevOps: tells an "Invoke Azure Function" check (callback mode, docs/protocols.md §4) the
//! outcome of the approval it waits on. One `check.completed` row per decided approval, written by
//! [`crate::approvals`] in the commit that decides it; the row carries the check's callback
//! ([`CheckCallback`]), so there is nothing to configure. The row never carries the job's token:
//! its check names the secret that holds it (`auth_token_secret`, see [`secret_key_of`]), which the
//! dispatcher reads at delivery time ([`with_token`]) and deletes once the row is settled
//! (delivered or dead). Rows written by earlier versions carry the token inline and still work.
//!
//! `POST {PlanUrl}{ProjectId}/_apis/distributedtask/hubs/{HubName}/plans/{PlanId}/events?api-version=…`
//! with `Authorization: Bearer {AuthToken}` and
//! `{"name":"TaskCompleted","taskId":"{TaskInstanceId}","jobId":"{JobId}","result":"succeeded"|"failed"}`.
//! Answers go through the shared [`classify_at`]: 401/403 (the job token expired or lacks rights) and
//! other 4xx are dead letters, 5xx and 429 retry. One Azure DevOps quirk on top: a token it does not
//! accept can get **203** with a sign-in page instead of a 401, so 203 is a dead letter, not success.

use super::{classify_at, from_reqwest, prefix, Delivered, SendError, SinkClient};
use crate::clock::Clock;
use crate::domain::check::{normalize_plan_url, CheckCallback, PlanHosts};
use crate::domain::routing::Sink;
use crate::storage::OutboxRow;
use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Value};
use std::sync::Arc;

/// The version the task documentation uses; the REST reference lists `7.1-preview.1` too.
pub use crate::config::sinks::{AzureDevopsSink, DEFAULT_API_VERSION};

/// The secret store key of the row's job token (`check.auth_token_secret`), if it names one.
pub fn secret_key_of(row: &OutboxRow) -> Option<String> {
    if row.sink != Sink::AzureDevops {
        return None;
    }
    row.payload
        .get("check")?
        .get(crate::domain::check::SECRET_FIELD)?
        .as_str()
        .map(str::to_string)
}

/// A copy of `row` whose check carries `token`, for [`SinkClient::send`] only (never stored).
pub fn with_token(row: &OutboxRow, token: &str) -> OutboxRow {
    let mut r = row.clone();
    if let Some(c) = r.payload.get_mut("check").and_then(Value::as_object_mut) {
        c.insert("auth_token".into(), token.into());
    }
    r
}

/// The event body for a row: `TaskCompleted` with the check's task and job and the result.
pub fn render(row: &OutboxRow) -> Result<(CheckCallback, Value), SendError> {
    if row.kind != "check.completed" {
        return Err(SendError::permanent(format!(
            "azure devops: no event for kind {:?}",
            row.kind
        )));
    }
    let check: CheckCallback = row
        .payload
        .get("check")
        .cloned()
        .ok_or_else(|| SendError::permanent("azure devops: payload has no check"))
        .and_then(|c| {
            serde_json::from_value(c)
                .map_err(|e| SendError::permanent(format!("azure devops: payload check: {e}")))
        })?;
    if check.auth_token.is_empty() {
        return Err(SendError::permanent(
            "azure devops: no AuthToken for this check (its secret is gone: the callback was settled before, or the store was restored from a backup); Azure DevOps fails the check at its timeout",
        ));
    }
    let result = match row.payload.get("result").and_then(Value::as_str) {
        Some(r @ ("succeeded" | "failed")) => r,
        _ => {
            return Err(SendError::permanent(
                "azure devops: payload result must be succeeded or failed",
            ))
        }
    };
    let body = json!({
        "name": "TaskCompleted",
        "taskId": check.task_instance_id,
        "jobId": check.job_id,
        "result": result,
    });
    Ok((check, body))
}

/// `{PlanUrl}{ProjectId}/_apis/distributedtask/hubs/{HubName}/plans/{PlanId}/events?api-version=…`,
/// built segment by segment (so a `PlanUrl` with or without its trailing `/` never gives `//`).
pub fn events_url(
    check: &CheckCallback,
    api_version: &str,
    hosts: &PlanHosts,
) -> Result<reqwest::Url, SendError> {
    let (plan_url, host) = normalize_plan_url(&check.plan_url)
        .map_err(|e| SendError::permanent(format!("azure devops: PlanUrl {e}")))?;
    if !hosts.allows(&host) {
        return Err(SendError::permanent(format!(
            "azure devops: PlanUrl host {host:?} is not in ICAHUB_AZDO_PLAN_HOSTS"
        )));
    }
    let mut url = reqwest::Url::parse(&plan_url)
        .map_err(|e| SendError::permanent(format!("azure devops: PlanUrl: {e}")))?;
    url.path_segments_mut()
        .map_err(|_| SendError::permanent("azure devops: PlanUrl cannot be a base URL"))?
        .pop_if_empty()
        .extend([
            check.project_id.as_str(),
            "_apis",
            "distributedtask",
            "hubs",
            check.hub_name.as_str(),
            "plans",
            check.plan_id.as_str(),
            "events",
        ]);
    url.query_pairs_mut()
        .append_pair("api-version", api_version);
    Ok(url)
}

#[derive(Debug)]
pub struct AzureDevopsClient {
    client: reqwest::Client,
    api_version: String,
    hosts: PlanHosts,
    /// Dates the `Retry-After` answers.
    clock: Arc<dyn Clock>,
}

impl AzureDevopsClient {
    pub fn new(
        client: reqwest::Client,
        api_version: String,
        hosts: PlanHosts,
        clock: Arc<dyn Clock>,
    ) -> Self {
        AzureDevopsClient {
            client,
            api_version,
            hosts,
            clock,
        }
    }

    /// Always configured: `ICAHUB_AZDO_API_VERSION` and `ICAHUB_AZDO_PLAN_HOSTS`.
    pub fn from_settings(
        settings: &AzureDevopsSink,
        hosts: PlanHosts,
        client: reqwest::Client,
        clock: Arc<dyn Clock>,
    ) -> Self {
        AzureDevopsClient::new(client, settings.api_version.clone(), hosts, clock)
    }
}

pub use crate::config::plan_hosts;

#[async_trait]
impl SinkClient for AzureDevopsClient {
    fn sink(&self) -> Sink {
        Sink::AzureDevops
    }

    async fn send(&self, row: &OutboxRow) -> Result<Delivered, SendError> {
        let (check, body) = render(row)?;
        let url = events_url(&check, &self.api_version, &self.hosts)?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", check.auth_token))
            .map_err(|_| SendError::permanent("azure devops: AuthToken is not a valid header"))?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(AUTHORIZATION, auth);
        let resp = self
            .client
            .post(url)
            .headers(headers)
            .body(serde_json::to_vec(&body).expect("a JSON value serializes"))
            .send()
            .await
            .map_err(|e| prefix("azure devops", from_reqwest(e)))?;
        let status = resp.status().as_u16();
        let resp_headers = resp.headers().clone();
        let text = resp
            .text()
            .await
            .map_err(|e| prefix("azure devops", from_reqwest(e)))?;
        if status == 203 {
            return Err(SendError::permanent(
                "azure devops: HTTP 203 (a sign-in page): the job's AuthToken was not accepted",
            ));
        }
        classify_at(status, &resp_headers, &text, self.clock.now())
            .map_err(|e| prefix("azure devops", e))?;
        Ok(Delivered { status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::OutboxStatus;
    fn row(kind: &str, payload: Value) -> OutboxRow {
        let now = "2026-01-01T00:00:00Z".parse().expect("a date");
        OutboxRow {
            stream: "apr2026000001".into(),
            seq: 1,
            sink: Sink::AzureDevops,
            kind: kind.into(),
            idempotency_key: "k".into(),
            event_id: "APR-2026-000001-S2".into(),
            payload,
            status: OutboxStatus::Pending,
            attempts: 0,
            next_attempt_at: now,
            created_at: now,
            last_error: None,
            lease_owner: None,
            lease_until: None,
            delivered_at: None,
            version: None,
        }
    }

    fn check(plan_url: &str) -> Value {
        json!({"plan_url": plan_url, "project_id": "p1", "hub_name": "checks", "plan_id": "plan-1",
               "job_id": "job-1", "timeline_id": "tl-1", "task_instance_id": "task-1",
               "auth_token": "tok"})
    }

    #[test]
    fn renders_task_completed_at_the_plan_events_url() {
        let r = row(
            "check.completed",
            json!({"approval_id": "APR-2026-000001", "result": "failed",
                   "check": check("https://dev.azure.com/fabrikam")}),
        );
        let (c, body) = render(&r).unwrap();
        assert_eq!(
            body,
            json!({"name": "TaskCompleted", "taskId": "task-1", "jobId": "job-1", "result": "failed"})
        );
        let url = events_url(&c, DEFAULT_API_VERSION, &PlanHosts::default()).unwrap();
        assert_eq!(
            url.as_str(),
            "https://dev.azure.com/fabrikam/p1/_apis/distributedtask/hubs/checks/plans/plan-1/events?api-version=2.0-preview.1"
        );
        let (c, _) = render(&row(
            "check.completed",
            json!({"result": "succeeded", "check": check("https://dev.azure.com//fabrikam//")}),
        ))
        .unwrap();
        let url = events_url(&c, "7.1-preview.1", &PlanHosts::default()).unwrap();
        assert!(!url.path().contains("//"), "{url}");
        assert_eq!(url.query(), Some("api-version=7.1-preview.1"));
    }

    #[test]
    fn bad_rows_are_permanent() {
        let permanent = |r: Result<(CheckCallback, Value), SendError>| {
            assert!(matches!(r, Err(SendError::Permanent { .. })), "{r:?}")
        };
        permanent(render(&row(
            "incident.opened",
            json!({"result": "failed", "check": check("https://dev.azure.com/x/")}),
        )));
        permanent(render(&row(
            "check.completed",
            json!({"result": "maybe", "check": check("https://dev.azure.com/x/")}),
        )));
        permanent(render(&row("check.completed", json!({"result": "failed"}))));
        let (c, _) = render(&row(
            "check.completed",
            json!({"result": "failed", "check": check("https://intranet.example.net/x/")}),
        ))
        .unwrap();
        assert!(matches!(
            events_url(&c, DEFAULT_API_VERSION, &PlanHosts::default()),
            Err(SendError::Permanent { .. })
        ));
    }

    #[test]
    fn configuration() {
        let config = |k: &'static str, v: &'static str| {
            crate::config::Config::from_lookup(move |n| (n == k).then(|| v.to_string()), None)
        };
        let c = crate::config::Config::from_lookup(|_| None, None).unwrap();
        let client = AzureDevopsClient::from_settings(
            &c.sinks.azure_devops,
            c.azdo_plan_hosts.clone(),
            reqwest::Client::new(),
            Arc::new(crate::clock::SystemClock),
        );
        assert_eq!(client.api_version, DEFAULT_API_VERSION);
        assert_eq!(client.hosts, PlanHosts::default());
        let e = config("ICAHUB_AZDO_API_VERSION", "7.1&x=y").unwrap_err();
        assert!(e.0.contains("ICAHUB_AZDO_API_VERSION"), "{e}");
        let e = config("ICAHUB_AZDO_PLAN_HOSTS", "a/b").unwrap_err();
        assert!(e.0.contains("ICAHUB_AZDO_PLAN_HOSTS"), "{e}");
    }
}
