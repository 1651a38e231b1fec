//! Approval settings (`ICAHUB_APPROVAL_*`, `ICAHUB_BUDGET_*`, the policy's periods and limits):
//! read here, used by [`crate::services::approvals`].

use crate::domain::approval::Policy;
use chrono::Duration;
use serde_json::Value;

/// Approval settings: the policy plus where notifications go.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ApprovalConfig {
    pub policy: Policy,
    /// Named Mattermost webhook and channel for requests, reminders and decisions.
    pub webhook: Option<String>,
    pub channel: Option<String>,
    /// Channel where finance hears of requests that need its approval.
    pub finance_channel: Option<String>,
    /// Where expired requests are escalated.
    pub escalation_webhook: Option<String>,
    pub escalation_channel: Option<String>,
    /// Pipeline name patterns → project (`ICAHUB_BUDGET_PROJECTS`), after the maps kept with
    /// `icahub budget map`.
    pub budget_projects: Vec<(String, String)>,
    /// A production request whose project has no budget is refused (`ICAHUB_BUDGET_REQUIRED`).
    pub budget_required: bool,
}

impl ApprovalConfig {
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<ApprovalConfig, String> {
        let d = Policy::default();
        let secs = |name: &str, default: Duration| -> Result<Duration, String> {
            match get(name) {
                None => Ok(default),
                Some(v) => match v.parse::<i64>() {
                    Ok(n) if (60..=90 * 86_400).contains(&n) => Ok(Duration::seconds(n)),
                    _ => Err(format!(
                        "{name}={v:?} must be a number of seconds between 60 and 7776000"
                    )),
                },
            }
        };
        let number = |name: &str, default: f64, max: f64| -> Result<f64, String> {
            match get(name) {
                None => Ok(default),
                Some(v) => match v.parse::<f64>() {
                    Ok(x) if x.is_finite() && x > 0.0 && x <= max => Ok(x),
                    _ => Err(format!(
                        "{name}={v:?} must be a number above 0 and at most {max}"
                    )),
                },
            }
        };
        let policy = Policy {
            expiry: secs("ICAHUB_APPROVAL_EXPIRY_SECS", d.expiry)?,
            reminder_every: secs("ICAHUB_APPROVAL_REMINDER_SECS", d.reminder_every)?,
            finance_threshold: number("ICAHUB_FINANCE_THRESHOLD_USD", d.finance_threshold, 1e12)?,
            max_utilization: number("ICAHUB_BUDGET_MAX_UTILIZATION", d.max_utilization, 100.0)?,
            production_targets: match get("ICAHUB_PRODUCTION_TARGETS") {
                None => d.production_targets,
                Some(v) => v
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            },
            lock_ttl: secs("ICAHUB_DEPLOYMENT_LOCK_SECS", d.lock_ttl)?,
            override_window: secs("ICAHUB_OVERRIDE_WINDOW_SECS", d.override_window)?,
        };
        let webhook = get("ICAHUB_APPROVAL_WEBHOOK");
        let channel = get("ICAHUB_APPROVAL_CHANNEL");
        let budget_projects = match get("ICAHUB_BUDGET_PROJECTS") {
            None => Vec::new(),
            Some(v) => {
                parse_budget_projects(&v).map_err(|e| format!("ICAHUB_BUDGET_PROJECTS: {e}"))?
            }
        };
        let budget_required = match get("ICAHUB_BUDGET_REQUIRED").as_deref().map(str::trim) {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(other) => {
                return Err(format!(
                    "ICAHUB_BUDGET_REQUIRED={other:?} must be true or false"
                ))
            }
        };
        Ok(ApprovalConfig {
            budget_projects,
            budget_required,
            policy,
            finance_channel: get("ICAHUB_FINANCE_CHANNEL").or_else(|| channel.clone()),
            escalation_webhook: get("ICAHUB_ESCALATION_WEBHOOK").or_else(|| webhook.clone()),
            escalation_channel: get("ICAHUB_ESCALATION_CHANNEL").or_else(|| channel.clone()),
            webhook,
            channel,
        })
    }
}

/// `{"payments-*": "payments", "web-deploy": "web"}`: exact pipeline names, or prefixes ending
/// in `*`. An exact name wins over a prefix, and a longer prefix over a shorter one.
fn parse_budget_projects(v: &str) -> Result<Vec<(String, String)>, String> {
    let map: serde_json::Map<String, Value> = serde_json::from_str(v)
        .map_err(|e| format!("must be a JSON object of pipeline pattern to project: {e}"))?;
    let mut out = Vec::new();
    for (pattern, project) in map {
        let Some(project) = project.as_str().map(str::trim).filter(|p| !p.is_empty()) else {
            return Err(format!(
                "the project of {pattern:?} must be a non-empty string"
            ));
        };
        let pattern = pattern.trim().to_ascii_lowercase();
        if pattern.is_empty() || pattern.len() > 256 || project.len() > 128 {
            return Err(format!("{pattern:?} → {project:?} is too long or empty"));
        }
        out.push((pattern, project.to_string()));
    }
    // Exact names first, then longer prefixes before shorter ones.
    out.sort_by_key(|(p, _)| (p.ends_with('*'), std::cmp::Reverse(p.len())));
    Ok(out)
}
