//! Sinks: where outbox rows are delivered. One trait, [`SinkClient`]; one file per destination
//! ([`mattermost`], [`pagerduty`], [`control_plane`], [`azure_devops`]); one shared classification of answers
//! ([`classify_at`], [`from_reqwest`]) so every sink retries the same way: 2xx delivered; 408, 429
//! and 5xx retried (honouring `Retry-After`); other statuses, and kinds a sink does not know,
//! permanent. A new destination is a new file here plus a field of [`Sinks`].
//!
//! The dispatcher (not here) owns backoff and dead letters; a client only says what happened.

pub mod azure_devops;
pub mod control_plane;
pub mod mattermost;
pub mod mattermost_approval;
pub mod pagerduty;
/// The Standard Webhooks signature, shared with the verifier ([`crate::domain::standard_webhooks`]).
pub use crate::domain::standard_webhooks as signature;

use crate::clock::{Clock, SystemClock};
use crate::domain::routing::Sink;
use crate::storage::OutboxRow;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::sync::Arc;
use std::time::Duration;

/// Every sink request gives up after this long (then it is a [`SendError::Retry`]).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `Retry-After` honoured; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How much of an error answer's body a [`SendError::Permanent`] keeps.
pub const ERROR_BODY_CHARS: usize = 300;
/// The name of the webhook / routing key used when a row's `route` names none.
pub use crate::config::sinks::{name_map, DEFAULT_ROUTE};

/// A successful delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The receiver's HTTP status, or [`Delivered::NOT_SENT`].
    pub status: u16,
}

impl Delivered {
    /// `status` of a row the sink deliberately does not send (PagerDuty's `incident.updated`):
    /// done, no request made.
    pub const NOT_SENT: u16 = 0;
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// Worth trying again: network error, timeout, 408, 429, 5xx. `retry_after` is the
    /// receiver's `Retry-After` (capped at [`MAX_RETRY_AFTER`]) when it sent one.
    #[error("retryable: {error}")]
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Will fail the same way every time: a 4xx, a payload the sink cannot render, a kind it
    /// does not know, a route naming an unconfigured webhook or key.
    #[error("permanent: {error}")]
    Permanent { error: String },
    /// Our own client-side rate limit: nothing was sent; try again after `wait`. Not an attempt.
    #[error("throttled for {wait:?}")]
    Throttled { wait: Duration },
}

impl SendError {
    pub fn permanent(error: impl Into<String>) -> Self {
        SendError::Permanent {
            error: error.into(),
        }
    }
    pub fn retry(error: impl Into<String>) -> Self {
        SendError::Retry {
            error: error.into(),
            retry_after: None,
        }
    }
}

/// One destination. Implementations are cheap to share (`Arc`) and safe to call concurrently.
#[async_trait]
pub trait SinkClient: Send + Sync {
    fn sink(&self) -> Sink;
    /// Deliver one outbox row. Idempotent on the receiver's side where the receiver allows it
    /// (PagerDuty `dedup_key`, control-plane `Idempotency-Key`); Mattermost may show a repeat.
    async fn send(&self, row: &OutboxRow) -> Result<Delivered, SendError>;
}

/// The shared answer classification (see the module docs), at `now` (an HTTP-date
/// `Retry-After` is relative to it): the sinks pass their injected clock's time.
pub fn classify_at(
    status: u16,
    headers: &HeaderMap,
    body: &str,
    now: DateTime<Utc>,
) -> Result<(), SendError> {
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(SendError::Retry {
            error: status_error(status, body),
            retry_after: retry_after(headers, now),
        }),
        _ => Err(SendError::Permanent {
            error: status_error(status, body),
        }),
    }
}

fn status_error(status: u16, body: &str) -> String {
    let body = truncate(body.trim(), ERROR_BODY_CHARS);
    if body.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {body}")
    }
}

/// `Retry-After` as delay-seconds or an HTTP-date, capped at [`MAX_RETRY_AFTER`]. A date in the
/// past is zero; anything unparseable is ignored.
pub fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
        (at - now).to_std().unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// A request that got no answer (connect error, timeout, broken body) is worth retrying. The
/// URL is dropped from the message: webhook URLs carry secrets.
pub fn from_reqwest(err: reqwest::Error) -> SendError {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connect error"
    } else {
        "request error"
    };
    let err = err.without_url();
    let mut msg = format!("{kind}: {err}");
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    SendError::retry(msg)
}

/// The HTTP client every sink uses: [`REQUEST_TIMEOUT`], and no redirects (a 3xx is a
/// misconfigured URL, reported as permanent rather than followed).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("icahub/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the TLS backend initializes")
}

/// POST `body` with `headers`, classify the answer. Shared by the clients.
pub(crate) async fn post(
    client: &reqwest::Client,
    clock: &dyn Clock,
    url: &str,
    headers: HeaderMap,
    body: Vec<u8>,
) -> Result<(u16, String), SendError> {
    let resp = client
        .post(url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(from_reqwest)?;
    let status = resp.status().as_u16();
    let resp_headers = resp.headers().clone();
    let text = resp.text().await.map_err(from_reqwest)?;
    classify_at(status, &resp_headers, &text, clock.now())?;
    Ok((status, text))
}

/// The configured clients; a sink is `None` when it is not configured.
#[derive(Clone, Default)]
pub struct Sinks {
    pub mattermost: Option<Arc<dyn SinkClient>>,
    pub pagerduty: Option<Arc<dyn SinkClient>>,
    pub control_plane: Option<Arc<dyn SinkClient>>,
    /// Always present from [`Sinks::from_lookup`]: each row names its own destination.
    pub azure_devops: Option<Arc<dyn SinkClient>>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sinks")
            .field("mattermost", &self.mattermost.is_some())
            .field("pagerduty", &self.pagerduty.is_some())
            .field("control_plane", &self.control_plane.is_some())
            .field("azure_devops", &self.azure_devops.is_some())
            .finish()
    }
}

impl Sinks {
    pub fn get(&self, sink: Sink) -> Option<Arc<dyn SinkClient>> {
        match sink {
            Sink::Mattermost => self.mattermost.clone(),
            Sink::Pagerduty => self.pagerduty.clone(),
            Sink::ControlPlane => self.control_plane.clone(),
            Sink::AzureDevops => self.azure_devops.clone(),
        }
    }

    /// Read the `ICAHUB_MATTERMOST_*`, `ICAHUB_PAGERDUTY_*`, `ICAHUB_CONTROL_PLANE_*` and
    /// `ICAHUB_AZDO_*` variables (see each client's `from_lookup`). Empty values count as unset. An invalid value
    /// is an error naming the variable, never showing a secret. The clients tell the real time.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Sinks, String> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let settings = crate::config::sinks::SinkSettings::from_lookup(&get)?;
        let actions = crate::config::MattermostActions::from_lookup(&get)?;
        let hosts = crate::config::plan_hosts(&get)?;
        Ok(Sinks::from_settings(
            &settings,
            &actions,
            &hosts,
            Arc::new(SystemClock),
        ))
    }

    /// The sinks a configuration describes, telling time by `clock`.
    pub fn from_config(config: &crate::config::Config, clock: Arc<dyn Clock>) -> Sinks {
        Sinks::from_settings(
            &config.sinks,
            &config.mattermost,
            &config.azdo_plan_hosts,
            clock,
        )
    }

    /// The clients for `settings`, with the approval buttons of `actions` and the check callback
    /// restricted to `plan_hosts`. `clock` dates what they sign and the `Retry-After` dates they
    /// are answered.
    pub fn from_settings(
        settings: &crate::config::sinks::SinkSettings,
        actions: &crate::config::MattermostActions,
        plan_hosts: &crate::domain::check::PlanHosts,
        clock: Arc<dyn Clock>,
    ) -> Sinks {
        let client = http_client();
        let buttons = actions
            .buttons()
            .map(|(url, keys)| mattermost_approval::ButtonConfig { url, keys });
        Sinks {
            mattermost: settings.mattermost.as_ref().map(|s| {
                Arc::new(mattermost::MattermostClient::from_settings(
                    s,
                    buttons,
                    client.clone(),
                    clock.clone(),
                )) as Arc<dyn SinkClient>
            }),
            pagerduty: settings.pagerduty.as_ref().map(|s| {
                Arc::new(pagerduty::PagerDutyClient::from_settings(
                    s,
                    client.clone(),
                    clock.clone(),
                )) as Arc<dyn SinkClient>
            }),
            control_plane: settings.control_plane.as_ref().map(|s| {
                Arc::new(control_plane::ControlPlaneClient::from_settings(
                    s,
                    client.clone(),
                    clock.clone(),
                )) as Arc<dyn SinkClient>
            }),
            azure_devops: Some(Arc::new(azure_devops::AzureDevopsClient::from_settings(
                &settings.azure_devops,
                plan_hosts.clone(),
                client,
                clock,
            ))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the renderers.

/// The named route entry of a row's payload (`route.<field>`), if it is a non-empty string.
pub(crate) fn route_field<'a>(row: &'a OutboxRow, field: &str) -> Option<&'a str> {
    row.payload
        .get("route")?
        .get(field)?
        .as_str()
        .filter(|s| !s.trim().is_empty())
}

/// At most `max` characters; a cut string ends with `…` (counted in `max`).
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `http(s)` URLs only: links are shown to humans and sent to PagerDuty.
pub(crate) fn http_link(link: Option<&str>) -> Option<&str> {
    link.map(str::trim)
        .filter(|l| l.starts_with("https://") || l.starts_with("http://"))
}

/// The incident and alert of an `incident.*` row. A payload that does not deserialize is
/// permanent: retrying will not change it.
pub(crate) fn incident_payload(
    row: &OutboxRow,
) -> Result<
    (
        crate::domain::incident::Incident,
        crate::domain::alert::NormalizedAlert,
    ),
    SendError,
> {
    let field = |name: &str| {
        row.payload
            .get(name)
            .cloned()
            .ok_or_else(|| SendError::permanent(format!("{} payload has no {name}", row.kind)))
    };
    let incident = serde_json::from_value(field("incident")?)
        .map_err(|e| SendError::permanent(format!("{} payload: incident: {e}", row.kind)))?;
    let alert = serde_json::from_value(field("alert")?)
        .map_err(|e| SendError::permanent(format!("{} payload: alert: {e}", row.kind)))?;
    Ok((incident, alert))
}

/// A short name for a target: the last segment of an Azure resource id, else as is.
pub(crate) fn short_target(t: &str) -> &str {
    if t.contains('/') {
        t.rsplit('/').find(|s| !s.is_empty()).unwrap_or(t)
    } else {
        t
    }
}

/// Up to three short target names, then `+N more`.
pub(crate) fn short_targets(targets: &[String]) -> String {
    let mut s = targets
        .iter()
        .take(3)
        .map(|t| short_target(t))
        .collect::<Vec<_>>()
        .join(", ");
    if targets.len() > 3 {
        s.push_str(&format!(" +{} more", targets.len() - 3));
    }
    s
}

/// `4m 52s`, `1h 5m`, `2d 3h`.
pub(crate) fn human_duration(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    let (days, hours, mins, secs) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else if mins > 0 {
        format!("{mins}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

/// Name the sink in an error message.
pub(crate) fn prefix(sink: &str, e: SendError) -> SendError {
    match e {
        SendError::Retry { error, retry_after } => SendError::Retry {
            error: format!("{sink}: {error}"),
            retry_after,
        },
        SendError::Permanent { error } => SendError::Permanent {
            error: format!("{sink}: {error}"),
        },
        t @ SendError::Throttled { .. } => t,
    }
}

/// Alert details most worth a human's glance first (metric, value, threshold; query and count;
/// who did what), then the rest in name order. `metricName[1]` ranks as `metricName`.
pub(crate) fn ranked_details(
    details: &std::collections::BTreeMap<String, String>,
) -> Vec<(&String, &String)> {
    const FIRST: &[&str] = &[
        "metricName",
        "metricValue",
        "operator",
        "threshold",
        "timeAggregation",
        "dimensions",
        "searchQuery",
        "resultCount",
        "operationName",
        "caller",
        "status",
        "summary",
    ];
    let rank = |k: &str| {
        let base = k.split('[').next().unwrap_or(k);
        FIRST.iter().position(|f| *f == base).unwrap_or(FIRST.len())
    };
    let mut v: Vec<_> = details.iter().collect();
    v.sort_by_key(|(k, _)| rank(k)); // stable: name order within a rank
    v
}
