//! The normalized alert: what every ingress parser (Azure Monitor, Alertmanager) turns its payload
//! into. Pure data; the raw body is kept beside it by the caller, never rebuilt from this.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Where an alert came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    AzureMonitor,
    Alertmanager,
    /// The run ledger: a pipeline's rollback events.
    Pipeline,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::AzureMonitor => "azure_monitor",
            Source::Alertmanager => "alertmanager",
            Source::Pipeline => "pipeline",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "azure_monitor" => Some(Source::AzureMonitor),
            "alertmanager" => Some(Source::Alertmanager),
            "pipeline" => Some(Source::Pipeline),
            _ => None,
        }
    }
}

/// Fired or resolved (`Fired`/`Resolved` in Azure Monitor, `firing`/`resolved` in Alertmanager,
/// `Activated`/`Deactivated` in the legacy metric schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    Fired,
    Resolved,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Fired => "fired",
            Condition::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fired" => Some(Condition::Fired),
            "resolved" => Some(Condition::Resolved),
            _ => None,
        }
    }
}

/// Incident severity. Azure Monitor Sev0..Sev4 map in order; Alertmanager uses the `severity`
/// label. Ordered from most to least severe, so `min` is "the worse of two".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
    Info,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Info,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Info => "info",
        }
    }

    /// The hub's own names (`critical`, `high`, ...), as used in the read API's filter.
    pub fn parse(s: &str) -> Option<Self> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
    }

    /// Azure Monitor `Sev0`..`Sev4` (also `0`..`4`, which the legacy schemas send).
    pub fn from_azure(s: &str) -> Option<Self> {
        let digits = s.trim().trim_start_matches("Sev").trim_start_matches("sev");
        match digits {
            "0" => Some(Severity::Critical),
            "1" => Some(Severity::High),
            "2" => Some(Severity::Medium),
            "3" => Some(Severity::Low),
            "4" => Some(Severity::Info),
            _ => None,
        }
    }

    /// Alertmanager `severity` label. Unknown or missing labels count as medium, the middle.
    pub fn from_label(s: Option<&str>) -> Self {
        match s.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            Some("critical" | "fatal" | "page" | "emergency" | "p1" | "sev0") => Severity::Critical,
            Some("high" | "error" | "major" | "p2" | "sev1") => Severity::High,
            Some("medium" | "warning" | "warn" | "p3" | "sev2") => Severity::Medium,
            Some("low" | "minor" | "p4" | "sev3") => Severity::Low,
            Some("info" | "informational" | "none" | "notice" | "p5" | "sev4") => Severity::Info,
            _ => Severity::Medium,
        }
    }
}

/// One alert as the hub understands it, whatever schema it arrived in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalizedAlert {
    pub source: Source,
    /// The payload schema: `azureMonitorCommonAlertSchema`, `AzureMonitorMetricAlert`,
    /// `Microsoft.Insights/activityLogs`, `LogAlertV1`, `alertmanager/v4`, or `unrecognized`.
    pub schema: String,
    /// The alert type within the schema: Azure `monitoringService` (`Platform`, `Log Alerts V2`,
    /// `ServiceHealth`, ...), or `prometheus` for Alertmanager.
    pub kind: String,
    /// The sender's id of this alert instance (Azure `alertId`, Alertmanager `fingerprint`).
    pub alert_id: String,
    /// Rule name (Azure `alertRule`, Alertmanager `alertname` label).
    pub rule: String,
    pub rule_id: Option<String>,
    /// Target resources (Azure `alertTargetIDs`, lower-cased; Alertmanager `name=value` labels).
    pub targets: Vec<String>,
    pub condition: Condition,
    pub severity: Severity,
    pub fired_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub description: Option<String>,
    pub resource_group: Option<String>,
    /// A link for humans: Azure portal / investigation link, or Alertmanager `generatorURL`.
    pub link: Option<String>,
    /// A few readable facts from the alert context (metric, value, threshold, query, caller...).
    pub details: BTreeMap<String, String>,
    /// Identifies one delivery of one state of one alert: a repeat with the same key is a duplicate.
    pub dedup_key: String,
    /// Identifies the incident stream: the rule plus its target resources.
    pub fingerprint: String,
}

/// Longest description kept on incidents and in outbox messages (the raw body keeps it all).
pub const MAX_DESCRIPTION_CHARS: usize = 4000;
const MAX_DETAIL_CHARS: usize = 1000;
const MAX_DETAILS: usize = 40;
const MAX_TARGETS: usize = 50;

/// `s` cut to at most `max` characters, with an ellipsis when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

impl NormalizedAlert {
    /// A bounded copy for messages and incident records: long descriptions, many details or
    /// targets would otherwise be repeated in every outbox row (and could outgrow a Table
    /// Storage entity). The stored event keeps the raw body whole.
    pub fn compact(&self) -> NormalizedAlert {
        let mut a = self.clone();
        a.description = a.description.map(|d| clip(&d, MAX_DESCRIPTION_CHARS));
        a.details = a
            .details
            .into_iter()
            .filter(|(k, _)| k != "description")
            .take(MAX_DETAILS)
            .map(|(k, v)| (clip(&k, 100), clip(&v, MAX_DETAIL_CHARS)))
            .collect();
        a.targets.truncate(MAX_TARGETS);
        a.targets = a.targets.iter().map(|t| clip(t, 1000)).collect();
        a.rule = clip(&a.rule, 1000);
        a
    }
}

/// Hex SHA-256 of the given parts, each followed by a newline so that ("ab","c") != ("a","bc").
pub fn hash_parts<I, S>(parts: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_ref().as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// The incident fingerprint of a rule and its targets: order and case of targets do not matter.
pub fn incident_fingerprint(source: Source, rule: &str, targets: &[String]) -> String {
    let mut t: Vec<String> = targets.iter().map(|s| s.to_ascii_lowercase()).collect();
    t.sort();
    t.dedup();
    let mut parts = vec![source.as_str().to_string(), rule.to_ascii_lowercase()];
    parts.extend(t);
    // 32 hex digits (128 bits) is plenty to keep streams apart and keeps keys short.
    hash_parts(parts)[..32].to_string()
}

/// A sample Azure Monitor alert of `rule` on virtual machine `resource`, fired a minute ago:
/// the one fixture the unit tests and the storage conformance suite build alerts from.
#[cfg(any(test, feature = "conformance"))]
pub fn sample(rule: &str, resource: &str, alert_id: &str, condition: Condition) -> NormalizedAlert {
    let targets = vec![format!(
        "/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachines/{resource}"
    )];
    NormalizedAlert {
        source: Source::AzureMonitor,
        schema: "azureMonitorCommonAlertSchema".into(),
        kind: "Platform".into(),
        alert_id: alert_id.into(),
        rule: rule.into(),
        rule_id: None,
        condition,
        severity: Severity::High,
        fired_at: Some(Utc::now() - chrono::Duration::minutes(1)),
        resolved_at: None,
        description: Some("conformance".into()),
        resource_group: Some("rg".into()),
        link: None,
        details: BTreeMap::new(),
        dedup_key: format!("azmon|{alert_id}|{}", condition.as_str()),
        fingerprint: incident_fingerprint(Source::AzureMonitor, rule, &targets),
        targets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_target_order_and_case() {
        let a = incident_fingerprint(
            Source::AzureMonitor,
            "Rule",
            &["/subs/A".into(), "/subs/b".into()],
        );
        let b = incident_fingerprint(
            Source::AzureMonitor,
            "rule",
            &["/subs/B".into(), "/subs/a".into()],
        );
        assert_eq!(a, b);
        let c = incident_fingerprint(Source::AzureMonitor, "rule", &["/subs/c".into()]);
        assert_ne!(a, c);
    }

    #[test]
    fn azure_severity_mapping() {
        assert_eq!(Severity::from_azure("Sev0"), Some(Severity::Critical));
        assert_eq!(Severity::from_azure("Sev1"), Some(Severity::High));
        assert_eq!(Severity::from_azure("Sev2"), Some(Severity::Medium));
        assert_eq!(Severity::from_azure("Sev3"), Some(Severity::Low));
        assert_eq!(Severity::from_azure("Sev4"), Some(Severity::Info));
        assert_eq!(Severity::from_azure("3"), Some(Severity::Low));
        assert_eq!(Severity::from_azure("Sev9"), None);
    }
}

/// `schema` of a payload the hub stores but does not understand: kept with its raw body, opens no
/// incident.
pub const UNRECOGNIZED_SCHEMA: &str = "unrecognized";

/// A payload problem, named by its JSON path: becomes a 400 with this field and problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct PayloadError {
    pub field: String,
    pub problem: String,
}

impl PayloadError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}
