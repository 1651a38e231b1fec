//! Routing: which sinks hear about an alert or incident change, decided by rules, and the outbox
//! drafts that the storage backends write in the same transaction as the event.
//!
//! Rules come from `ICAHUB_ROUTING` (inline JSON) or `ICAHUB_ROUTING_FILE` (a JSON file); without
//! either, [`Routing::default_rules`] applies: everything to the control plane; incident openings and
//! resolutions to Mattermost; those of critical and high severity to PagerDuty too. Every matching
//! rule adds its sinks (a union); for each sink the first matching rule that names it decides its
//! route (Mattermost webhook and channel, PagerDuty routing key). A sink takes part only when it is
//! configured, and only for the event kinds it understands ([`Sink::accepts`]).
//!
//! [`Sink::AzureDevops`] is not routed: it hears only of approval checks' outcomes, and each row
//! carries its own destination (the check's callback), written by [`crate::approvals`].

use super::alert::{NormalizedAlert, Severity, Source};
use super::incident::{Incident, IncidentAction};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sink {
    Mattermost,
    Pagerduty,
    ControlPlane,
    /// The Azure DevOps check callback (`TaskCompleted`).
    AzureDevops,
}

impl Sink {
    pub const ALL: [Sink; 4] = [
        Sink::Mattermost,
        Sink::Pagerduty,
        Sink::ControlPlane,
        Sink::AzureDevops,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Sink::Mattermost => "mattermost",
            Sink::Pagerduty => "pagerduty",
            Sink::ControlPlane => "control_plane",
            Sink::AzureDevops => "azure_devops",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Sink::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The event kinds this sink is sent. People hear about openings and resolutions; the control
    /// plane keeps the whole ledger.
    pub fn accepts(self, kind: &str) -> bool {
        match self {
            Sink::Mattermost => {
                matches!(kind, "incident.opened" | "incident.resolved")
                    || kind.starts_with("approval.")
            }
            Sink::Pagerduty => matches!(kind, "incident.opened" | "incident.resolved"),
            Sink::ControlPlane => true,
            Sink::AzureDevops => kind == "check.completed",
        }
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

/// What a rule matches; every field given must match (an empty rule matches everything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// `azure_monitor`, `alertmanager`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Vec<Source>>,
    /// Exact severities (`critical`, `high`, `medium`, `low`, `info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Vec<Severity>>,
    /// This severity or worse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_severity: Option<Severity>,
    /// Resource groups, case-insensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<Vec<String>>,
}

/// A routing rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default, rename = "match")]
    pub when: Match,
    pub sinks: Vec<Sink>,
    /// Named Mattermost webhook (see `ICAHUB_MATTERMOST_WEBHOOKS`); default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mattermost_webhook: Option<String>,
    /// Channel override for Mattermost (the webhook must allow it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mattermost_channel: Option<String>,
    /// Named PagerDuty routing key (see `ICAHUB_PAGERDUTY_ROUTING_KEYS`); default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagerduty_key: Option<String>,
}

impl Rule {
    fn matches(&self, source: Source, severity: Severity, resource_group: Option<&str>) -> bool {
        let m = &self.when;
        m.source.as_ref().is_none_or(|v| v.contains(&source))
            && m.severity.as_ref().is_none_or(|v| v.contains(&severity))
            && m.min_severity.is_none_or(|min| severity <= min)
            && m.resource_group.as_ref().is_none_or(|v| {
                resource_group.is_some_and(|rg| v.iter().any(|x| x.eq_ignore_ascii_case(rg)))
            })
    }
}

/// The routing rules plus which sinks are configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    pub rules: Vec<Rule>,
    pub mattermost: bool,
    pub pagerduty: bool,
    pub control_plane: bool,
}

impl Default for Routing {
    /// The default rules with no sink configured: no outbox rows.
    fn default() -> Self {
        Routing {
            rules: Routing::default_rules(),
            mattermost: false,
            pagerduty: false,
            control_plane: false,
        }
    }
}

impl Routing {
    pub fn default_rules() -> Vec<Rule> {
        let rule = |name: &str, when: Match, sinks: Vec<Sink>| Rule {
            name: name.into(),
            when,
            sinks,
            mattermost_webhook: None,
            mattermost_channel: None,
            pagerduty_key: None,
        };
        vec![
            rule(
                "everything-to-the-control-plane",
                Match::default(),
                vec![Sink::ControlPlane],
            ),
            rule(
                "page-critical-and-high",
                Match {
                    min_severity: Some(Severity::High),
                    ..Match::default()
                },
                vec![Sink::Pagerduty],
            ),
            rule(
                "chat-about-every-incident",
                Match::default(),
                vec![Sink::Mattermost],
            ),
        ]
    }

    /// Parse rules from JSON: `{"rules": [...]}` or a bare array. Errors name the problem.
    pub fn parse_rules(json: &str) -> Result<Vec<Rule>, String> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Doc {
            Wrapped { rules: Vec<Rule> },
            Bare(Vec<Rule>),
        }
        let doc: Doc = serde_json::from_str(json).map_err(|e| {
            format!("routing rules are not valid: {e} (expected {{\"rules\": [{{\"name\", \"match\", \"sinks\"}}]}})")
        })?;
        let rules = match doc {
            Doc::Wrapped { rules } | Doc::Bare(rules) => rules,
        };
        for r in &rules {
            if r.sinks.is_empty() {
                return Err(format!("routing rule {:?} names no sinks", r.name));
            }
            if r.sinks.contains(&Sink::AzureDevops) {
                return Err(format!(
                    "routing rule {:?} names azure_devops, which is not routed: it hears only of approval checks' outcomes",
                    r.name
                ));
            }
        }
        Ok(rules)
    }

    fn enabled(&self, sink: Sink) -> bool {
        match sink {
            Sink::Mattermost => self.mattermost,
            Sink::Pagerduty => self.pagerduty,
            Sink::ControlPlane => self.control_plane,
            // Each row names its own destination (the check's callback): nothing to configure.
            Sink::AzureDevops => true,
        }
    }

    /// The route of each sink that hears about an event of this source, severity and group.
    pub fn route(
        &self,
        source: Source,
        severity: Severity,
        resource_group: Option<&str>,
    ) -> Vec<(Sink, &Rule)> {
        let mut out: Vec<(Sink, &Rule)> = Vec::new();
        for rule in self
            .rules
            .iter()
            .filter(|r| r.matches(source, severity, resource_group))
        {
            for &sink in &rule.sinks {
                if self.enabled(sink) && !out.iter().any(|(s, _)| *s == sink) {
                    out.push((sink, rule));
                }
            }
        }
        out.sort_by_key(|(s, _)| *s);
        out
    }

    /// Deliveries for a ledger record (run start, event, finish; approvals later): the control
    /// plane keeps the whole ledger.
    pub fn ledger_drafts(
        &self,
        kind: &str,
        record_id: &str,
        payload: serde_json::Value,
    ) -> Vec<OutboxDraft> {
        if !self.control_plane {
            return Vec::new();
        }
        vec![OutboxDraft {
            sink: Sink::ControlPlane,
            kind: kind.into(),
            idempotency_key: super::alert::hash_parts([
                Sink::ControlPlane.as_str(),
                kind,
                record_id,
            ])[..32]
                .to_string(),
            payload,
        }]
    }

    /// `previous` is the open incident's severity before this alert: when an attach escalates it
    /// into a sink's route (say a warning incident turning critical, and PagerDuty pages from
    /// high), that sink now hears of the incident's opening, so a later resolve never reaches a
    /// sink that was not told of the incident.
    pub fn drafts(
        &self,
        alert: &NormalizedAlert,
        event_id: &str,
        action: IncidentAction,
        incident: Option<&Incident>,
        previous: Option<Severity>,
    ) -> Vec<OutboxDraft> {
        let incident_kind = match action {
            IncidentAction::Opened => Some("incident.opened"),
            IncidentAction::Attached => Some("incident.updated"),
            IncidentAction::Resolved => Some("incident.resolved"),
            IncidentAction::None => None,
        };
        let severity = incident.map_or(alert.severity, |i| i.severity);
        let group = incident
            .and_then(|i| i.resource_group.as_deref())
            .or(alert.resource_group.as_deref());
        let before: Vec<Sink> = match (action, previous) {
            (IncidentAction::Attached, Some(prev)) => self
                .route(alert.source, prev, group)
                .into_iter()
                .map(|(s, _)| s)
                .collect(),
            _ => Vec::new(),
        };
        let mut out = Vec::new();
        for (sink, rule) in self.route(alert.source, severity, group) {
            // Escalated into this sink's route: it hears of the opening now.
            let incident_kind = match incident_kind {
                Some("incident.updated") if previous.is_some() && !before.contains(&sink) => {
                    Some("incident.opened")
                }
                k => k,
            };
            let route = json!({
                "rule": rule.name,
                "mattermost_webhook": rule.mattermost_webhook.as_deref().unwrap_or("default"),
                "mattermost_channel": rule.mattermost_channel,
                "pagerduty_key": rule.pagerduty_key.as_deref().unwrap_or("default"),
            });
            let mut push = |kind: &str, payload: serde_json::Value| {
                if sink.accepts(kind) {
                    let mut payload = payload;
                    payload["route"] = route.clone();
                    out.push(OutboxDraft {
                        sink,
                        kind: kind.into(),
                        idempotency_key: super::alert::hash_parts([sink.as_str(), kind, event_id])
                            [..32]
                            .to_string(),
                        payload,
                    });
                }
            };
            push(
                "alert.received",
                json!({ "event_id": event_id, "alert": alert }),
            );
            if let (Some(kind), Some(inc)) = (incident_kind, incident) {
                push(
                    kind,
                    json!({ "event_id": event_id, "incident": inc, "alert": alert }),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::alert::Condition;

    fn all() -> Routing {
        Routing {
            mattermost: true,
            pagerduty: true,
            control_plane: true,
            ..Routing::default()
        }
    }

    #[test]
    fn default_rules_page_only_critical_and_high() {
        let r = all();
        let sinks = |sev| -> Vec<Sink> {
            r.route(Source::AzureMonitor, sev, None)
                .into_iter()
                .map(|(s, _)| s)
                .collect()
        };
        assert_eq!(
            sinks(Severity::Critical),
            vec![Sink::Mattermost, Sink::Pagerduty, Sink::ControlPlane]
        );
        assert_eq!(
            sinks(Severity::High),
            vec![Sink::Mattermost, Sink::Pagerduty, Sink::ControlPlane]
        );
        assert_eq!(
            sinks(Severity::Medium),
            vec![Sink::Mattermost, Sink::ControlPlane]
        );
        assert_eq!(
            sinks(Severity::Info),
            vec![Sink::Mattermost, Sink::ControlPlane]
        );
    }

    #[test]
    fn unconfigured_sinks_get_nothing() {
        let r = Routing {
            control_plane: true,
            ..Routing::default()
        };
        let s: Vec<Sink> = r
            .route(Source::Alertmanager, Severity::Critical, None)
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(s, vec![Sink::ControlPlane]);
    }

    #[test]
    fn rules_from_json_choose_channels_and_keys() {
        let rules = Routing::parse_rules(
            r#"{"rules": [
              {"name": "prod-db", "match": {"resource_group": ["PROD-DB"], "min_severity": "high"},
               "sinks": ["pagerduty", "mattermost"], "pagerduty_key": "dba", "mattermost_channel": "db-oncall"},
              {"name": "rest", "sinks": ["mattermost", "control_plane"]}
            ]}"#,
        )
        .unwrap();
        let r = Routing { rules, ..all() };
        let routes = r.route(Source::AzureMonitor, Severity::Critical, Some("prod-db"));
        let mm = routes
            .iter()
            .find(|(s, _)| *s == Sink::Mattermost)
            .unwrap()
            .1;
        assert_eq!(mm.mattermost_channel.as_deref(), Some("db-oncall"));
        let pd = routes
            .iter()
            .find(|(s, _)| *s == Sink::Pagerduty)
            .unwrap()
            .1;
        assert_eq!(pd.pagerduty_key.as_deref(), Some("dba"));
        let low = r.route(Source::AzureMonitor, Severity::Low, Some("prod-db"));
        assert!(low.iter().all(|(s, _)| *s != Sink::Pagerduty));
        let other = r.route(Source::AzureMonitor, Severity::Critical, Some("web"));
        assert!(other.iter().all(|(s, _)| *s != Sink::Pagerduty));
    }

    #[test]
    fn bad_rules_are_explained() {
        assert!(Routing::parse_rules("{").unwrap_err().contains("not valid"));
        assert!(Routing::parse_rules(r#"[{"name":"x","sinks":["email"]}]"#).is_err());
        assert!(Routing::parse_rules(r#"[{"name":"x","sinks":[]}]"#)
            .unwrap_err()
            .contains("no sinks"));
        assert!(
            Routing::parse_rules(r#"[{"name":"x","sinks":["mattermost"],"mtach":{}}]"#).is_err()
        );
        assert!(
            Routing::parse_rules(r#"[{"name":"x","sinks":["azure_devops"]}]"#)
                .unwrap_err()
                .contains("not routed")
        );
        assert!(Sink::AzureDevops.accepts("check.completed"));
        assert!(!Sink::AzureDevops.accepts("incident.opened"));
        assert_eq!(Sink::parse("azure_devops"), Some(Sink::AzureDevops));
    }

    #[test]
    fn an_escalation_pages_and_the_resolve_follows() {
        use crate::domain::incident::{plan, StreamState};
        let r = all();
        let mut a = crate::domain::alert::sample("r", "vm", "a", Condition::Fired);
        a.severity = Severity::Medium;
        let p1 = plan(&r, &StreamState::default(), &a, "e1", chrono::Utc::now());
        let sinks = |p: &crate::domain::incident::Plan| -> Vec<(Sink, String)> {
            p.outbox.iter().map(|d| (d.sink, d.kind.clone())).collect()
        };
        assert!(
            !sinks(&p1).iter().any(|(s, _)| *s == Sink::Pagerduty),
            "medium does not page"
        );
        a.severity = Severity::Critical;
        a.dedup_key = "k2".into();
        let p2 = plan(&r, &p1.next, &a, "e2", chrono::Utc::now());
        assert!(
            sinks(&p2).contains(&(Sink::Pagerduty, "incident.opened".into())),
            "{:?}",
            sinks(&p2)
        );
        assert!(
            !sinks(&p2).iter().any(|(s, _)| *s == Sink::Mattermost),
            "Mattermost already knew"
        );
        a.condition = Condition::Resolved;
        a.dedup_key = "k3".into();
        let p3 = plan(&r, &p2.next, &a, "e3", chrono::Utc::now());
        assert!(sinks(&p3).contains(&(Sink::Pagerduty, "incident.resolved".into())));
    }

    #[test]
    fn drafts_respect_what_each_sink_accepts() {
        let alert = crate::domain::alert::sample("r", "vm", "a", Condition::Fired);
        let d = all().drafts(&alert, "EVT-x", IncidentAction::Attached, None, None);
        // Attached with no incident given: only the control plane's alert record.
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, "alert.received");
        assert_eq!(
            d[0].payload["route"]["rule"],
            "everything-to-the-control-plane"
        );
    }
}
