//! Mattermost incoming webhooks (docs/protocols.md §5.1): one message with one attachment per incident
//! opening, update or resolution, and the approval messages (with their buttons) rendered by
//! [`super::mattermost_approval`]. [`render`] is pure and builds the JSON body; the client picks
//! the webhook named by the row's `route.mattermost_webhook` (`default` when unnamed) and posts.
//!
//! Limits honoured: a post is split by Mattermost above 16383 characters, so every text we send
//! is cut well below that in total; `footer` is at most 300 characters; `ts` is not supported by
//! Mattermost and never sent.

use super::mattermost_approval::{self, ButtonConfig};
use super::{
    http_link, human_duration, incident_payload, post, prefix, ranked_details, route_field,
    short_targets, truncate, Delivered, SendError, SinkClient, DEFAULT_ROUTE,
};
use crate::clock::Clock;
use crate::config::sinks::MattermostSink;
use crate::config::Secret;
use crate::domain::alert::{NormalizedAlert, Severity};
use crate::domain::incident::Incident;
use crate::domain::routing::Sink;
use crate::storage::OutboxRow;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Mattermost splits posts longer than this (since v5.0).
pub const MAX_POST_CHARS: usize = 16383;
/// Mattermost truncates longer footers.
pub const MAX_FOOTER_CHARS: usize = 300;
// Budgets that keep the sum of all texts below MAX_POST_CHARS:
// 500 + 500 + 500 + 8000 + 14 fields * (40 + 400) + 300 = 15960.
const MAX_HEADLINE_CHARS: usize = 500;
const MAX_TITLE_CHARS: usize = 500;
const MAX_DESCRIPTION_CHARS: usize = 8000;
const MAX_FIELD_TITLE_CHARS: usize = 40;
const MAX_FIELD_VALUE_CHARS: usize = 400;
/// Alert details shown as fields, after the fixed ones.
const MAX_DETAIL_FIELDS: usize = 5;

pub const GREEN: &str = "#2eb67d";

/// Attachment colour of a severity.
pub fn color(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "#d00000",
        Severity::High => "#e8590c",
        Severity::Medium => "#f2c744",
        Severity::Low => "#4c9be8",
        Severity::Info => "#9aa5b1",
    }
}

/// Who the post appears to come from (overrides need the server's permission to take effect),
/// and the approval buttons' configuration (none: approval messages go out without buttons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    pub username: String,
    pub icon_url: Option<String>,
    pub buttons: Option<ButtonConfig>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            username: "icahub".into(),
            icon_url: None,
            buttons: None,
        }
    }
}

/// The webhook body for `row`: kinds `incident.opened`, `incident.updated`,
/// `incident.resolved` and the approval kinds ([`mattermost_approval::handles`]); any other kind
/// is [`SendError::Permanent`].
pub fn render(row: &OutboxRow, opts: &RenderOptions) -> Result<Value, SendError> {
    if mattermost_approval::handles(&row.kind) {
        return mattermost_approval::render(row, opts);
    }
    let phase = match row.kind.as_str() {
        "incident.opened" => Phase::Opened,
        "incident.updated" => Phase::Updated,
        "incident.resolved" => Phase::Resolved,
        other => {
            return Err(SendError::permanent(format!(
                "mattermost: no message for kind {other:?}"
            )))
        }
    };
    let (inc, alert) = incident_payload(row)?;
    let mut body = Map::new();
    body.insert("username".into(), json!(opts.username));
    if let Some(icon) = &opts.icon_url {
        body.insert("icon_url".into(), json!(icon));
    }
    if let Some(channel) = route_field(row, "mattermost_channel") {
        body.insert("channel".into(), json!(channel));
    }
    let headline = truncate(&headline(phase, &inc), MAX_HEADLINE_CHARS);
    body.insert("text".into(), json!(headline));
    body.insert(
        "attachments".into(),
        json!([attachment(phase, &inc, &alert, &headline)]),
    );
    Ok(Value::Object(body))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Opened,
    Updated,
    Resolved,
}

fn label(inc: &Incident) -> String {
    format!(
        "[{}] {}",
        inc.severity.as_str().to_ascii_uppercase(),
        inc.title
    )
}

fn headline(phase: Phase, inc: &Incident) -> String {
    let what = label(inc);
    let on = if inc.targets.is_empty() {
        String::new()
    } else {
        format!(" on {}", short_targets(&inc.targets))
    };
    match phase {
        Phase::Opened => format!("Incident opened: {what}{on}"),
        Phase::Updated => format!("Incident updated ({} alerts): {what}{on}", inc.event_count),
        Phase::Resolved => match inc.resolved_at {
            Some(at) => format!(
                "Resolved after {}: {what}{on}",
                human_duration(at - inc.opened_at)
            ),
            None => format!("Resolved: {what}{on}"),
        },
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn attachment(phase: Phase, inc: &Incident, alert: &NormalizedAlert, headline: &str) -> Value {
    let mut fields: Vec<(String, String, bool)> = vec![
        ("Severity".into(), capitalize(inc.severity.as_str()), true),
        (
            "Status".into(),
            if phase == Phase::Resolved {
                "Resolved".into()
            } else {
                "Open".into()
            },
            true,
        ),
    ];
    if !inc.targets.is_empty() {
        fields.push(("Resource".into(), short_targets(&inc.targets), true));
    }
    if let Some(rg) = &inc.resource_group {
        fields.push(("Resource group".into(), rg.clone(), true));
    }
    fields.push(("Monitoring service".into(), alert.kind.clone(), true));
    fields.push(("Fired".into(), time(inc.opened_at), true));
    if phase == Phase::Resolved {
        if let Some(at) = inc.resolved_at {
            fields.push(("Resolved".into(), time(at), true));
            fields.push(("Duration".into(), human_duration(at - inc.opened_at), true));
        }
    }
    fields.push(("Incident".into(), inc.id.clone(), true));
    for (k, v) in ranked_details(&alert.details)
        .into_iter()
        .take(MAX_DETAIL_FIELDS)
    {
        fields.push((k.clone(), v.clone(), v.chars().count() <= 40));
    }
    let fields: Vec<Value> = fields
        .into_iter()
        .map(|(title, value, short)| {
            json!({
                "title": truncate(&title, MAX_FIELD_TITLE_CHARS),
                "value": truncate(&value, MAX_FIELD_VALUE_CHARS),
                "short": short,
            })
        })
        .collect();

    let mut a = Map::new();
    a.insert("fallback".into(), json!(headline));
    let color = if phase == Phase::Resolved {
        GREEN
    } else {
        color(inc.severity)
    };
    a.insert("color".into(), json!(color));
    let title = match phase {
        Phase::Resolved => format!("Resolved: {}", label(inc)),
        _ => label(inc),
    };
    a.insert("title".into(), json!(truncate(&title, MAX_TITLE_CHARS)));
    if let Some(link) = http_link(inc.link.as_deref()).or(http_link(alert.link.as_deref())) {
        a.insert("title_link".into(), json!(link));
    }
    let description = inc
        .description
        .as_deref()
        .or(alert.description.as_deref())
        .map(str::trim)
        .filter(|d| !d.is_empty());
    if let Some(d) = description {
        a.insert("text".into(), json!(truncate(d, MAX_DESCRIPTION_CHARS)));
    }
    a.insert("fields".into(), Value::Array(fields));
    a.insert(
        "footer".into(),
        json!(truncate(&format!("icahub · {}", inc.id), MAX_FOOTER_CHARS)),
    );
    Value::Object(a)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Posts rendered messages to the configured incoming webhooks.
#[derive(Debug, Clone)]
pub struct MattermostClient {
    client: reqwest::Client,
    /// Webhook name → URL (the URL's last segment is the hook's secret key).
    webhooks: BTreeMap<String, Secret>,
    opts: RenderOptions,
    /// Dates the `Retry-After` answers.
    clock: Arc<dyn Clock>,
}

impl MattermostClient {
    pub fn new(
        client: reqwest::Client,
        webhooks: BTreeMap<String, Secret>,
        opts: RenderOptions,
        clock: Arc<dyn Clock>,
    ) -> Self {
        MattermostClient {
            client,
            webhooks,
            opts,
            clock,
        }
    }

    /// The client for [`MattermostSink`] settings; `buttons` from
    /// [`crate::config::MattermostActions::buttons`].
    pub fn from_settings(
        settings: &MattermostSink,
        buttons: Option<ButtonConfig>,
        client: reqwest::Client,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let opts = RenderOptions {
            username: settings.username.clone(),
            icon_url: settings.icon_url.clone(),
            buttons,
        };
        MattermostClient::new(client, settings.webhooks.clone(), opts, clock)
    }
}

#[async_trait]
impl SinkClient for MattermostClient {
    fn sink(&self) -> Sink {
        Sink::Mattermost
    }

    async fn send(&self, row: &OutboxRow) -> Result<Delivered, SendError> {
        let name = route_field(row, "mattermost_webhook").unwrap_or(DEFAULT_ROUTE);
        let url = self.webhooks.get(name).ok_or_else(|| {
            SendError::permanent(format!(
                "mattermost: no webhook named {name:?} is configured"
            ))
        })?;
        let body = render(row, &self.opts)?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let bytes = serde_json::to_vec(&body).expect("a JSON value serializes");
        let (status, _) = post(
            &self.client,
            self.clock.as_ref(),
            url.expose(),
            headers,
            bytes,
        )
        .await
        .map_err(|e| prefix("mattermost", e))?;
        Ok(Delivered { status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::short_target;

    #[test]
    fn short_names() {
        assert_eq!(
            short_target("/subscriptions/s/resourcegroups/rg/providers/a/b/vm1"),
            "vm1"
        );
        assert_eq!(short_target("instance=host:9100"), "instance=host:9100");
        let many: Vec<String> = (1..=5).map(|i| format!("/x/vm{i}")).collect();
        assert_eq!(short_targets(&many), "vm1, vm2, vm3 +2 more");
    }

    #[test]
    fn budgets_fit_one_post() {
        let total = MAX_HEADLINE_CHARS * 2
            + MAX_TITLE_CHARS
            + MAX_DESCRIPTION_CHARS
            + 14 * (MAX_FIELD_TITLE_CHARS + MAX_FIELD_VALUE_CHARS)
            + MAX_FOOTER_CHARS;
        assert!(total < MAX_POST_CHARS, "{total}");
    }
}
