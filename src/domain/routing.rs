//! Routing: which sinks hear about an alert or incident change. Produces outbox drafts that the
//! storage backends write in the same transaction as the event.
//!
//! Default rules, used until a routing file says otherwise: every alert and incident change goes to
//! the control plane; incident openings and resolutions go to Mattermost; those of critical and
//! high severity also go to PagerDuty. A sink takes part only when it is configured.

use super::alert::{NormalizedAlert, Severity};
use super::incident::{Incident, IncidentAction};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sink {
    Mattermost,
    Pagerduty,
    ControlPlane,
}

impl Sink {
    pub fn as_str(self) -> &'static str {
        match self {
            Sink::Mattermost => "mattermost",
            Sink::Pagerduty => "pagerduty",
            Sink::ControlPlane => "control_plane",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Sink::Mattermost, Sink::Pagerduty, Sink::ControlPlane]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One delivery to make, before the store gives it a sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxDraft {
    pub sink: Sink,
    /// `alert.received`, `incident.opened`, `incident.updated`, `incident.resolved`.
    pub kind: String,
    /// Stable across retries and redrives: the receiver deduplicates on it.
    pub idempotency_key: String,
    pub payload: serde_json::Value,
}

/// Which sinks are configured, and the severity from which PagerDuty is paged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    pub mattermost: bool,
    pub pagerduty: bool,
    pub control_plane: bool,
    pub page_at_or_above: Severity,
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            mattermost: false,
            pagerduty: false,
            control_plane: false,
            page_at_or_above: Severity::High,
        }
    }
}

impl Routing {
    pub fn drafts(
        &self,
        alert: &NormalizedAlert,
        event_id: &str,
        action: IncidentAction,
        incident: Option<&Incident>,
    ) -> Vec<OutboxDraft> {
        let mut out = Vec::new();
        let key = |sink: Sink, kind: &str| {
            super::alert::hash_parts([sink.as_str(), kind, event_id])[..32].to_string()
        };
        if self.control_plane {
            out.push(OutboxDraft {
                sink: Sink::ControlPlane,
                kind: "alert.received".into(),
                idempotency_key: key(Sink::ControlPlane, "alert.received"),
                payload: json!({ "event_id": event_id, "alert": alert }),
            });
        }
        let kind = match action {
            IncidentAction::Opened => "incident.opened",
            IncidentAction::Attached => "incident.updated",
            IncidentAction::Resolved => "incident.resolved",
            IncidentAction::None => return out,
        };
        let Some(inc) = incident else { return out };
        let payload = json!({ "event_id": event_id, "incident": inc, "alert": alert });
        if self.control_plane {
            out.push(OutboxDraft {
                sink: Sink::ControlPlane,
                kind: kind.into(),
                idempotency_key: key(Sink::ControlPlane, kind),
                payload: payload.clone(),
            });
        }
        if action == IncidentAction::Attached {
            return out; // humans hear about openings and resolutions, not every repeat
        }
        if self.mattermost {
            out.push(OutboxDraft {
                sink: Sink::Mattermost,
                kind: kind.into(),
                idempotency_key: key(Sink::Mattermost, kind),
                payload: payload.clone(),
            });
        }
        if self.pagerduty && inc.severity <= self.page_at_or_above {
            out.push(OutboxDraft {
                sink: Sink::Pagerduty,
                kind: kind.into(),
                idempotency_key: key(Sink::Pagerduty, kind),
                payload,
            });
        }
        out
    }
}
