//! Incidents: the pure decision of what an alert does to its stream (open, attach, resolve), and
//! which outbox deliveries go with it. Storage backends call [`plan`] inside their transaction;
//! nothing here does I/O, and the clock and ids are passed in.

use super::alert::{Condition, NormalizedAlert, Severity, Source, UNRECOGNIZED_SCHEMA};
use super::routing::{OutboxDraft, Routing};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    Open,
    Resolved,
}

impl IncidentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Open => "open",
            IncidentStatus::Resolved => "resolved",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "open" => Some(IncidentStatus::Open),
            "resolved" => Some(IncidentStatus::Resolved),
            _ => None,
        }
    }
}

/// An incident: one open-to-resolved episode of one stream (rule plus target resources).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// `INC-<stream>-<n>`: the stream key and the incident's number within that stream.
    pub id: String,
    pub stream: String,
    pub status: IncidentStatus,
    pub severity: Severity,
    pub title: String,
    pub source: Source,
    pub kind: String,
    pub rule_id: Option<String>,
    pub targets: Vec<String>,
    pub resource_group: Option<String>,
    pub description: Option<String>,
    pub link: Option<String>,
    pub opened_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub last_event_at: DateTime<Utc>,
    /// Alerts (fired and resolved, duplicates excluded) recorded against this incident.
    pub event_count: u64,
    pub first_event_id: String,
    pub last_event_id: String,
}

/// What a stream looks like before an alert is applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamState {
    /// How many incidents this stream has opened so far.
    pub incident_seq: u64,
    pub open: Option<Incident>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentAction {
    Opened,
    Attached,
    Resolved,
    /// The alert changed no incident: an unrecognized payload, or a resolve with nothing open.
    None,
}

/// The outcome of applying one new (non-duplicate) alert to its stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub action: IncidentAction,
    /// The incident to write (new or updated), if any changed.
    pub incident: Option<Incident>,
    /// An open incident this alert closes because it went quiet (pipeline rollbacks more than
    /// [`ROLLBACK_WINDOW`] apart): written resolved, before `incident`.
    pub closed: Option<Incident>,
    /// The stream's state after the alert.
    pub next: StreamState,
    /// Deliveries to make, written in the same transaction.
    pub outbox: Vec<OutboxDraft>,
}

/// Rollbacks of one pipeline closer together than this attach to one incident; a rollback after a
/// longer quiet spell closes the old incident and opens a new one.
pub const ROLLBACK_WINDOW_SECS: i64 = 3600;

/// Stream key of an alert: the first 16 hex digits of its fingerprint.
pub fn stream_key(alert: &NormalizedAlert) -> &str {
    &alert.fingerprint[..16.min(alert.fingerprint.len())]
}

pub fn incident_id(stream: &str, n: u64) -> String {
    format!("INC-{stream}-{n}")
}

/// The stream an incident or event id belongs to (`INC-<stream>-<n>`, `EVT-<stream>-<...>`).
pub fn stream_of_id(id: &str) -> Option<&str> {
    let mut parts = id.splitn(3, '-');
    let prefix = parts.next()?;
    let stream = parts.next()?;
    parts.next()?;
    let ok = (prefix == "INC" || prefix == "EVT")
        && stream.len() == 16
        && stream.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then_some(stream)
}

/// Decide what `alert` (already known not to be a duplicate) does to a stream in `state`.
pub fn plan(
    routing: &Routing,
    state: &StreamState,
    alert: &NormalizedAlert,
    event_id: &str,
    now: DateTime<Utc>,
) -> Plan {
    let alert = &alert.compact();
    let stream = stream_key(alert).to_string();
    // A pipeline's open rollback incident that has been quiet past the window is closed first.
    let mut closed = None;
    let mut state = state.clone();
    if let (Source::Pipeline, Condition::Fired, Some(open)) =
        (alert.source, alert.condition, &state.open)
    {
        if (now - open.last_event_at).num_seconds() > ROLLBACK_WINDOW_SECS {
            let mut old = open.clone();
            old.status = IncidentStatus::Resolved;
            old.resolved_at = Some(now);
            closed = Some(old);
            state.open = None;
        }
    }
    let state = &state;
    let (action, incident, next) = if alert.schema == UNRECOGNIZED_SCHEMA {
        (IncidentAction::None, None, state.clone())
    } else {
        match (alert.condition, &state.open) {
            (Condition::Fired, None) => {
                let n = state.incident_seq + 1;
                let inc = Incident {
                    id: incident_id(&stream, n),
                    stream: stream.clone(),
                    status: IncidentStatus::Open,
                    severity: alert.severity,
                    title: alert.rule.clone(),
                    source: alert.source,
                    kind: alert.kind.clone(),
                    rule_id: alert.rule_id.clone(),
                    targets: alert.targets.clone(),
                    resource_group: alert.resource_group.clone(),
                    description: alert.description.clone(),
                    link: alert.link.clone(),
                    opened_at: alert.fired_at.unwrap_or(now),
                    resolved_at: None,
                    last_event_at: now,
                    event_count: 1,
                    first_event_id: event_id.to_string(),
                    last_event_id: event_id.to_string(),
                };
                let next = StreamState {
                    incident_seq: n,
                    open: Some(inc.clone()),
                };
                (IncidentAction::Opened, Some(inc), next)
            }
            (Condition::Fired, Some(open)) => {
                let mut inc = open.clone();
                inc.severity = inc.severity.min(alert.severity);
                inc.event_count += 1;
                inc.last_event_at = now;
                inc.last_event_id = event_id.to_string();
                if inc.link.is_none() {
                    inc.link = alert.link.clone();
                }
                let next = StreamState {
                    incident_seq: state.incident_seq,
                    open: Some(inc.clone()),
                };
                (IncidentAction::Attached, Some(inc), next)
            }
            (Condition::Resolved, Some(open)) => {
                let mut inc = open.clone();
                inc.status = IncidentStatus::Resolved;
                inc.resolved_at = Some(alert.resolved_at.unwrap_or(now));
                inc.event_count += 1;
                inc.last_event_at = now;
                inc.last_event_id = event_id.to_string();
                let next = StreamState {
                    incident_seq: state.incident_seq,
                    open: None,
                };
                (IncidentAction::Resolved, Some(inc), next)
            }
            (Condition::Resolved, None) => (IncidentAction::None, None, state.clone()),
        }
    };
    let previous = state.open.as_ref().map(|i| i.severity);
    let outbox = routing.drafts(alert, event_id, action, incident.as_ref(), previous);
    Plan {
        action,
        incident,
        closed,
        next,
        outbox,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::alert::incident_fingerprint;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn alert(cond: Condition, sev: Severity) -> NormalizedAlert {
        let targets = vec!["/subscriptions/x/resourcegroups/rg/providers/a/b/vm1".to_string()];
        NormalizedAlert {
            source: Source::AzureMonitor,
            schema: "azureMonitorCommonAlertSchema".into(),
            kind: "Platform".into(),
            alert_id: "a1".into(),
            rule: "cpu".into(),
            rule_id: None,
            targets: targets.clone(),
            condition: cond,
            severity: sev,
            fired_at: None,
            resolved_at: None,
            description: None,
            resource_group: Some("rg".into()),
            link: None,
            details: BTreeMap::new(),
            dedup_key: "k".into(),
            fingerprint: incident_fingerprint(Source::AzureMonitor, "cpu", &targets),
        }
    }

    #[test]
    fn fire_attach_resolve_reopen() {
        let r = Routing::default();
        let now = Utc::now();
        let s0 = StreamState::default();
        let p1 = plan(&r, &s0, &alert(Condition::Fired, Severity::Low), "e1", now);
        assert_eq!(p1.action, IncidentAction::Opened);
        let id1 = p1.incident.as_ref().unwrap().id.clone();
        assert!(id1.ends_with("-1"));
        let p2 = plan(
            &r,
            &p1.next,
            &alert(Condition::Fired, Severity::High),
            "e2",
            now,
        );
        assert_eq!(p2.action, IncidentAction::Attached);
        assert_eq!(p2.incident.as_ref().unwrap().severity, Severity::High);
        assert_eq!(p2.incident.as_ref().unwrap().id, id1);
        let p3 = plan(
            &r,
            &p2.next,
            &alert(Condition::Resolved, Severity::High),
            "e3",
            now,
        );
        assert_eq!(p3.action, IncidentAction::Resolved);
        assert_eq!(p3.incident.as_ref().unwrap().event_count, 3);
        assert!(p3.next.open.is_none());
        let p4 = plan(
            &r,
            &p3.next,
            &alert(Condition::Fired, Severity::Low),
            "e4",
            now,
        );
        assert_eq!(p4.action, IncidentAction::Opened);
        assert!(p4.incident.unwrap().id.ends_with("-2"));
    }

    #[test]
    fn rollbacks_an_hour_apart_open_a_new_incident() {
        let r = Routing::default();
        let t0 = Utc::now();
        let mut a = alert(Condition::Fired, Severity::High);
        a.source = Source::Pipeline;
        let p1 = plan(&r, &StreamState::default(), &a, "e1", t0);
        let p2 = plan(&r, &p1.next, &a, "e2", t0 + chrono::Duration::minutes(50));
        assert_eq!(p2.action, IncidentAction::Attached);
        assert!(p2.closed.is_none());
        let p3 = plan(&r, &p2.next, &a, "e3", t0 + chrono::Duration::minutes(171));
        assert_eq!(p3.action, IncidentAction::Opened);
        let closed = p3.closed.expect("the quiet incident is closed");
        assert_eq!(closed.status, IncidentStatus::Resolved);
        assert_eq!(closed.id, p1.incident.unwrap().id);
        assert!(p3.incident.unwrap().id.ends_with("-2"));
        // Other sources keep attaching however long the gap.
        let b = alert(Condition::Fired, Severity::High);
        let q1 = plan(&r, &StreamState::default(), &b, "e1", t0);
        let q2 = plan(&r, &q1.next, &b, "e2", t0 + chrono::Duration::hours(5));
        assert_eq!(q2.action, IncidentAction::Attached);
    }

    #[test]
    fn ids_name_their_stream() {
        assert_eq!(
            stream_of_id("INC-0123456789abcdef-7"),
            Some("0123456789abcdef")
        );
        assert_eq!(
            stream_of_id("EVT-0123456789abcdef-x"),
            Some("0123456789abcdef")
        );
        assert_eq!(stream_of_id("INC-zz-1"), None);
        assert_eq!(stream_of_id("nope"), None);
    }

    proptest! {
        /// Whatever the sequence of fired/resolved alerts, at most one incident is open, incident
        /// numbers only grow, and a stream is open exactly when the last state-changing alert fired.
        #[test]
        fn at_most_one_open_incident(seq in proptest::collection::vec(any::<bool>(), 1..60)) {
            let r = Routing::default();
            let mut s = StreamState::default();
            let mut last_seq = 0;
            for (i, fired) in seq.iter().enumerate() {
                let cond = if *fired { Condition::Fired } else { Condition::Resolved };
                let p = plan(&r, &s, &alert(cond, Severity::Medium), &format!("e{i}"), Utc::now());
                prop_assert!(p.next.incident_seq >= last_seq);
                last_seq = p.next.incident_seq;
                prop_assert_eq!(p.next.open.is_some(), *fired);
                if let Some(open) = &p.next.open {
                    prop_assert_eq!(open.status, IncidentStatus::Open);
                    let suffix = format!("-{}", p.next.incident_seq);
                    prop_assert!(open.id.ends_with(&suffix));
                }
                s = p.next;
            }
        }
    }
}
