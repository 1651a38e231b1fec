//! Azure Monitor action-group payloads (docs/protocols.md §2): the common alert schema for every
//! `monitoringService`, the legacy `AzureMonitorMetricAlert` and `Microsoft.Insights/activityLogs`
//! schemas, and Log Alerts V1 (no `schemaId`). Anything else that is a JSON object becomes an
//! [`UNRECOGNIZED_SCHEMA`] alert keyed by the hash of its raw body, so it is stored, not rejected.
//!
//! Essentials are checked strictly (wrong types are a [`PayloadError`] naming the JSON path);
//! the alert context is never a reason to reject, and only a few readable facts are taken from it.

use super::alert::{
    incident_fingerprint, Condition, NormalizedAlert, PayloadError, Severity, Source,
    UNRECOGNIZED_SCHEMA,
};
use super::json::{
    array_or_json_string, join, lenient_field, lenient_string, lenient_timestamp, optional_str,
    optional_str_array, required_object, required_str, truncate, type_name,
};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// `schemaId` of the common alert schema.
pub const COMMON_SCHEMA: &str = "azureMonitorCommonAlertSchema";
/// `schemaId` of legacy (non-common) metric alerts.
pub const LEGACY_METRIC_SCHEMA: &str = "AzureMonitorMetricAlert";
/// `schemaId` of legacy (non-common) activity-log alerts.
pub const LEGACY_ACTIVITY_LOG_SCHEMA: &str = "Microsoft.Insights/activityLogs";
/// The `schema` given to Log Alerts V1 payloads, which carry no `schemaId`.
pub const LOG_V1_SCHEMA: &str = "LogAlertV1";

/// Longest text kept for one entry of `details`.
const MAX_DETAIL_CHARS: usize = 1000;

/// Parse one action-group webhook body. `raw_body` is the exact bytes received; it is only used
/// to key payloads the hub does not recognise.
pub fn parse(body: &Value, raw_body: &[u8]) -> Result<NormalizedAlert, PayloadError> {
    let obj = body
        .as_object()
        .ok_or_else(|| PayloadError::new("$", "must be a JSON object"))?;
    match obj.get("schemaId") {
        Some(Value::String(id)) if id.eq_ignore_ascii_case(COMMON_SCHEMA) => parse_common(obj),
        Some(Value::String(id)) if id.eq_ignore_ascii_case(LEGACY_METRIC_SCHEMA) => {
            parse_legacy_metric(obj)
        }
        Some(Value::String(id)) if id.eq_ignore_ascii_case(LEGACY_ACTIVITY_LOG_SCHEMA) => {
            parse_legacy_activity_log(obj)
        }
        Some(Value::String(id)) if !id.trim().is_empty() => Ok(unrecognized(Some(id), raw_body)),
        None | Some(Value::Null) if looks_like_log_v1(obj) => parse_log_v1(obj),
        _ => Ok(unrecognized(None, raw_body)),
    }
}

// ---------------------------------------------------------------------------------------------
// Common alert schema

fn parse_common(obj: &Map<String, Value>) -> Result<NormalizedAlert, PayloadError> {
    let data = required_object(obj, "data", "")?;
    let ess = required_object(data, "essentials", "data")?;
    const P: &str = "data.essentials";

    let alert_id = required_str(ess, "alertId", P)?;
    let condition = match required_str(ess, "monitorCondition", P)? {
        c if c.eq_ignore_ascii_case("Fired") => Condition::Fired,
        c if c.eq_ignore_ascii_case("Resolved") => Condition::Resolved,
        other => {
            return Err(PayloadError::new(
                join(P, "monitorCondition"),
                format!("must be \"Fired\" or \"Resolved\", got {other:?}"),
            ))
        }
    };
    let severity = match optional_str(ess, "severity", P)? {
        None => Severity::Medium,
        Some(s) => Severity::from_azure(s).ok_or_else(|| {
            PayloadError::new(
                join(P, "severity"),
                format!("must be one of Sev0, Sev1, Sev2, Sev3, Sev4 or null, got {s:?}"),
            )
        })?,
    };
    let alert_rule = optional_str(ess, "alertRule", P)?.filter(|s| !s.trim().is_empty());
    let rule_id = match optional_str(ess, "alertRuleID", P)? {
        Some(id) => Some(id),
        None => optional_str(ess, "alertRuleId", P)?,
    }
    .filter(|s| !s.trim().is_empty());
    let monitoring_service = optional_str(ess, "monitoringService", P)?;
    let signal_type = optional_str(ess, "signalType", P)?;
    let origin_alert_id = optional_str(ess, "originAlertId", P)?;
    let description = optional_str(ess, "description", P)?;
    let target_rg = optional_str(ess, "targetResourceGroup", P)?;
    let target_type = optional_str(ess, "targetResourceType", P)?;
    let investigation_link = optional_str(ess, "investigationLink", P)?;
    for key in ["essentialsVersion", "alertContextVersion"] {
        optional_str(ess, key, P)?;
    }
    let raw_targets = optional_str_array(ess, "alertTargetIDs", P)?;
    let config_items = optional_str_array(ess, "configurationItems", P)?;

    // Time is read leniently: a timestamp we cannot read is dropped, never a rejection.
    let fired_at = lenient_timestamp(ess.get("firedDateTime"));
    let resolved_at = match condition {
        Condition::Resolved => lenient_timestamp(ess.get("resolvedDateTime")),
        Condition::Fired => None,
    };

    let empty = Map::new();
    let ctx = data
        .get("alertContext")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut details = BTreeMap::new();
    let context_link = extract_context(ctx, &mut details);
    for (k, v) in [
        ("signalType", signal_type),
        ("targetResourceType", target_type),
    ] {
        put(&mut details, k, v.map(str::to_string));
    }
    if !config_items.is_empty() {
        put(
            &mut details,
            "configurationItems",
            Some(config_items.join(", ")),
        );
    }

    let budget = budget_data(ctx);
    let budget_name = budget.and_then(|b| lenient_field(b, "BudgetName"));
    let kind = monitoring_service
        .filter(|s| !s.trim().is_empty())
        .unwrap_or("unknown")
        .to_string();
    let rule = alert_rule
        .map(str::to_string)
        .or_else(|| budget_name.clone())
        .unwrap_or_else(|| kind.clone());
    // The stream is keyed on the rule *name* when there is one: every payload of a rule carries
    // `alertRule`, while `alertRuleID`/`alertRuleId` "may not appear in all alert payloads", and a
    // Fired without it must still meet its Resolved with it. Targets keep rules apart.
    let rule_key = alert_rule
        .map(str::to_string)
        .or_else(|| rule_id.map(str::to_string))
        .or_else(|| {
            budget.and_then(|b| {
                lenient_field(b, "BudgetId")
                    .or_else(|| budget_name.clone())
                    .map(|n| format!("budget:{n}"))
            })
        })
        .or_else(|| origin_alert_id.map(str::to_string))
        .unwrap_or_else(|| alert_id.to_string());
    let targets: Vec<String> = raw_targets.iter().map(|t| t.to_ascii_lowercase()).collect();
    let resource_group = target_rg
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .or_else(|| raw_targets.iter().find_map(|t| resource_group_of(t)));
    let link = investigation_link
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .or(context_link);

    Ok(NormalizedAlert {
        source: Source::AzureMonitor,
        schema: COMMON_SCHEMA.to_string(),
        kind,
        alert_id: alert_id.to_string(),
        rule,
        rule_id: rule_id.map(str::to_string),
        fingerprint: incident_fingerprint(Source::AzureMonitor, &rule_key, &targets),
        targets,
        condition,
        severity,
        fired_at,
        resolved_at,
        description: non_empty(description),
        resource_group,
        link,
        details,
        dedup_key: format!("azmon|{alert_id}|{}", condition.as_str()),
    })
}

/// Take readable facts out of an alert context of any shape, returning the best link found.
/// The shape is recognised by its keys rather than by `monitoringService`, so a new service
/// that reuses a known shape still gets its facts.
fn extract_context(
    ctx: &Map<String, Value>,
    details: &mut BTreeMap<String, String>,
) -> Option<String> {
    let mut link = None;

    // Metric alerts, Log Alerts V2, Simple Log Alert: condition.allOf[].
    if let Some(cond) = ctx.get("condition").and_then(Value::as_object) {
        put_field(details, "conditionType", ctx, "conditionType");
        put_field(details, "windowSize", cond, "windowSize");
        put_field(details, "windowStartTime", cond, "windowStartTime");
        put_field(details, "windowEndTime", cond, "windowEndTime");
        let all_of = cond.get("allOf").and_then(Value::as_array);
        for (i, crit) in all_of.into_iter().flatten().enumerate().take(5) {
            let Some(crit) = crit.as_object() else {
                continue;
            };
            let sfx = if i == 0 {
                String::new()
            } else {
                format!("[{i}]")
            };
            for key in [
                "metricName",
                "metricNamespace",
                "operator",
                "threshold",
                "timeAggregation",
                "metricValue",
                "webTestName",
                "alertSensitivity",
                "searchQuery",
                "metricMeasureColumn",
            ] {
                put_field(details, &format!("{key}{sfx}"), crit, key);
            }
            put(
                details,
                &format!("dimensions{sfx}"),
                dimensions(crit.get("dimensions")),
            );
            if link.is_none() {
                link = first_field(
                    crit,
                    &["linkToSearchResultsUI", "linkToFilteredSearchResultsUI"],
                );
            }
        }
    }

    // Log Alerts V1 (common schema, alertContextVersion 1.1, or the top level of a V1 body).
    if ctx.contains_key("SearchQuery") || ctx.contains_key("SearchIntervalStartTimeUtc") {
        for (detail, key) in [
            ("searchQuery", "SearchQuery"),
            ("searchIntervalStart", "SearchIntervalStartTimeUtc"),
            ("searchIntervalEnd", "SearchIntervalEndtimeUtc"),
            ("resultCount", "ResultCount"),
            ("threshold", "Threshold"),
            ("threshold", "AlertThresholdValue"),
            ("operator", "Operator"),
            ("operator", "AlertThresholdOperator"),
            ("alertType", "AlertType"),
            ("severityDescription", "SeverityDescription"),
            ("workspaceId", "WorkspaceId"),
            ("applicationId", "ApplicationId"),
            ("includedSearchResults", "IncludedSearchResults"),
            ("includeSearchResults", "IncludeSearchResults"),
        ] {
            put_field(details, detail, ctx, key);
        }
        put(details, "dimensions", dimensions(ctx.get("Dimensions")));
        if let Some(items) = ctx
            .get("AffectedConfigurationItems")
            .and_then(Value::as_array)
        {
            let items: Vec<String> = items.iter().filter_map(lenient_string).collect();
            if !items.is_empty() {
                put(
                    details,
                    "affectedConfigurationItems",
                    Some(items.join(", ")),
                );
            }
        }
        if link.is_none() {
            link = first_field(
                ctx,
                &["LinkToSearchResults", "LinkToFilteredSearchResultsUI"],
            );
        }
    }

    // Activity log (Administrative, Policy, Autoscale, Security, ServiceHealth, ResourceHealth).
    if ctx.contains_key("operationName") || ctx.contains_key("eventSource") {
        for key in [
            "operationName",
            "caller",
            "status",
            "subStatus",
            "level",
            "eventSource",
            "channels",
            "correlationId",
            "eventDataId",
            "eventTimestamp",
        ] {
            put_field(details, key, ctx, key);
        }
        put_field(
            details,
            "eventDescription",
            ctx,
            "Activity Log Event Description",
        );
        if let Some(props) = ctx.get("properties").and_then(Value::as_object) {
            for key in [
                // ServiceHealth
                "title",
                "service",
                "region",
                "incidentType",
                "trackingId",
                "stage",
                "impactStartTime",
                "impactMitigationTime",
                // ResourceHealth
                "currentHealthStatus",
                "previousHealthStatus",
                "cause",
                "type",
                // Autoscale, Security, Policy
                "description",
                "oldInstancesCount",
                "newInstancesCount",
                "threatStatus",
                "compromisedEntity",
                "category",
                "severity",
                "resourceLocation",
            ] {
                put_field(details, key, props, key);
            }
            if let Some(services) = props.get("impactedServices").and_then(array_or_json_string) {
                let names: Vec<String> = services
                    .iter()
                    .filter_map(|s| s.get("ServiceName").and_then(lenient_string))
                    .collect();
                if !names.is_empty() {
                    put(details, "impactedServices", Some(names.join(", ")));
                }
            }
        }
    }

    // Smart detection.
    if ctx.contains_key("SmartDetectorId") || ctx.contains_key("SmartDetectorName") {
        for (detail, key) in [
            ("detector", "SmartDetectorId"),
            ("name", "SmartDetectorName"),
            ("detectionSummary", "DetectionSummary"),
            ("detectedValue", "DetectedValue"),
            ("normalValue", "NormalValue"),
            ("occurrenceTime", "FormattedOccurrenceTime"),
        ] {
            put_field(details, detail, ctx, key);
        }
    }

    // Budget (CostAlerts).
    if let Some(b) = budget_data(ctx) {
        put_field(details, "alertCategory", ctx, "AlertCategory");
        for key in [
            "BudgetName",
            "BudgetType",
            "ThresholdType",
            "BudgetThreshold",
            "NotificationThresholdAmount",
            "SpentAmount",
            "SpendingAmount",
            "ForecastedTotalForPeriod",
            "Unit",
            "Scope",
            "BudgetCreator",
        ] {
            put_field(details, &lower_first(key), b, key);
        }
    }

    // Azure Monitor managed Prometheus.
    if ctx.contains_key("expression") {
        for key in [
            "expression",
            "expressionValue",
            "interval",
            "for",
            "ruleGroup",
        ] {
            put_field(details, key, ctx, key);
        }
        for section in ["labels", "annotations"] {
            if let Some(m) = ctx.get(section).and_then(Value::as_object) {
                let prefix = &section[..section.len() - 1];
                for (k, _) in m.iter().take(20) {
                    put_field(details, &format!("{prefix}.{k}"), m, k);
                }
            }
        }
    }

    if link.is_none() {
        link = first_field(
            ctx,
            &["portalLink", "linkToSearchResultsUI", "LinkToSearchResults"],
        );
    }
    link
}

fn budget_data(ctx: &Map<String, Value>) -> Option<&Map<String, Value>> {
    ctx.get("AlertData").and_then(Value::as_object)
}

/// `dimensions` as `name=value, ...`.
fn dimensions(v: Option<&Value>) -> Option<String> {
    let parts: Vec<String> = v?
        .as_array()?
        .iter()
        .filter_map(|d| {
            let name = d.get("name").and_then(lenient_string)?;
            let value = d.get("value").and_then(lenient_string).unwrap_or_default();
            Some(format!("{name}={value}"))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

// ---------------------------------------------------------------------------------------------
// Legacy metric alerts: schemaId "AzureMonitorMetricAlert"

fn parse_legacy_metric(obj: &Map<String, Value>) -> Result<NormalizedAlert, PayloadError> {
    let data = required_object(obj, "data", "")?;
    let status = required_str(data, "status", "data")?;
    let condition = if status.eq_ignore_ascii_case("Activated")
        || status.eq_ignore_ascii_case("Fired")
    {
        Condition::Fired
    } else if status.eq_ignore_ascii_case("Deactivated") || status.eq_ignore_ascii_case("Resolved")
    {
        Condition::Resolved
    } else {
        return Err(PayloadError::new(
            "data.status",
            format!("must be \"Activated\" or \"Deactivated\", got {status:?}"),
        ));
    };
    let ctx = required_object(data, "context", "data")?;
    const P: &str = "data.context";
    let id = required_str(ctx, "id", P)?;
    let name = optional_str(ctx, "name", P)?.filter(|s| !s.trim().is_empty());
    let severity = legacy_severity(ctx.get("severity"), "data.context.severity")?;
    let resource_id = optional_str(ctx, "resourceId", P)?.filter(|s| !s.trim().is_empty());
    let resource_group = optional_str(ctx, "resourceGroupName", P)?;
    let description = optional_str(ctx, "description", P)?;
    let portal_link = optional_str(ctx, "portalLink", P)?;
    let timestamp_raw = ctx
        .get("timestamp")
        .and_then(lenient_string)
        .unwrap_or_default();
    let timestamp = lenient_timestamp(ctx.get("timestamp"));

    let mut details = BTreeMap::new();
    let context_link = extract_context(ctx, &mut details);
    for key in ["resourceName", "resourceType", "subscriptionId"] {
        put_field(&mut details, key, ctx, key);
    }

    let rule = name
        .map(str::to_string)
        .unwrap_or_else(|| last_segment(id).to_string());
    let targets: Vec<String> = resource_id
        .map(str::to_ascii_lowercase)
        .into_iter()
        .collect();
    let (fired_at, resolved_at) = match condition {
        Condition::Fired => (timestamp, None),
        Condition::Resolved => (None, timestamp),
    };
    Ok(NormalizedAlert {
        source: Source::AzureMonitor,
        schema: LEGACY_METRIC_SCHEMA.to_string(),
        kind: "Platform".to_string(),
        alert_id: id.to_string(),
        fingerprint: incident_fingerprint(Source::AzureMonitor, &rule, &targets),
        rule,
        rule_id: Some(id.to_string()),
        targets,
        condition,
        severity,
        fired_at,
        resolved_at,
        description: non_empty(description),
        resource_group: non_empty(resource_group)
            .or_else(|| resource_id.and_then(resource_group_of)),
        link: non_empty(portal_link).or(context_link),
        details,
        dedup_key: format!("azmon-metric|{id}|{}|{timestamp_raw}", condition.as_str()),
    })
}

/// Legacy severity: `"3"` or `3` (also `Sev3`); null or absent is medium.
fn legacy_severity(v: Option<&Value>, field: &str) -> Result<Severity, PayloadError> {
    match v {
        None | Some(Value::Null) => Ok(Severity::Medium),
        Some(v @ (Value::String(_) | Value::Number(_))) => {
            let s = lenient_string(v).unwrap_or_default();
            if s.trim().is_empty() {
                return Ok(Severity::Medium);
            }
            Severity::from_azure(&s).ok_or_else(|| {
                PayloadError::new(field, format!("must be a severity 0 to 4, got {s:?}"))
            })
        }
        Some(other) => Err(PayloadError::new(
            field,
            format!("must be a string or a number, got {}", type_name(other)),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Legacy activity-log alerts: schemaId "Microsoft.Insights/activityLogs"

fn parse_legacy_activity_log(obj: &Map<String, Value>) -> Result<NormalizedAlert, PayloadError> {
    let data = required_object(obj, "data", "")?;
    let ctx = required_object(data, "context", "data")?;
    let log = required_object(ctx, "activityLog", "data.context")?;
    const P: &str = "data.context.activityLog";
    let event_id = optional_str(log, "eventDataId", P)?.filter(|s| !s.trim().is_empty());
    let correlation_id = optional_str(log, "correlationId", P)?.filter(|s| !s.trim().is_empty());
    let instance_id = event_id
        .or(correlation_id)
        .ok_or_else(|| PayloadError::new(join(P, "eventDataId"), "is required"))?;
    let operation = optional_str(log, "operationName", P)?.filter(|s| !s.trim().is_empty());
    let resource_id = optional_str(log, "resourceId", P)?.filter(|s| !s.trim().is_empty());
    let resource_group = optional_str(log, "resourceGroupName", P)?;
    let subscription = lenient_field(log, "subscriptionId");
    let description = optional_str(log, "description", P)?;
    let event_source = lenient_field(log, "eventSource");
    let severity = match lenient_field(log, "level")
        .map(|l| l.to_ascii_lowercase())
        .as_deref()
    {
        Some("critical") => Severity::Critical,
        Some("error") => Severity::High,
        Some("warning") => Severity::Medium,
        Some("informational" | "verbose") => Severity::Info,
        _ => Severity::Medium,
    };

    let mut details = BTreeMap::new();
    let link = extract_context(log, &mut details);
    for key in ["resourceType", "resourceProviderName", "subscriptionId"] {
        put_field(&mut details, key, log, key);
    }

    let kind = match event_source.as_deref() {
        Some(s @ ("ServiceHealth" | "ResourceHealth")) => s.to_string(),
        Some(s) => format!("Activity Log - {s}"),
        None => "Activity Log".to_string(),
    };
    let rule = operation.unwrap_or("activity log event").to_string();
    let targets: Vec<String> = match (resource_id, &subscription) {
        (Some(r), _) => vec![r.to_ascii_lowercase()],
        (None, Some(sub)) => vec![format!("/subscriptions/{}", sub.to_ascii_lowercase())],
        (None, None) => Vec::new(),
    };
    Ok(NormalizedAlert {
        source: Source::AzureMonitor,
        schema: LEGACY_ACTIVITY_LOG_SCHEMA.to_string(),
        kind,
        alert_id: instance_id.to_string(),
        fingerprint: incident_fingerprint(Source::AzureMonitor, &rule, &targets),
        rule,
        rule_id: None,
        targets,
        condition: Condition::Fired,
        severity,
        fired_at: lenient_timestamp(log.get("eventTimestamp")),
        resolved_at: None,
        description: non_empty(description),
        resource_group: non_empty(resource_group)
            .or_else(|| resource_id.and_then(resource_group_of)),
        link,
        details,
        dedup_key: format!("azmon-activity|{instance_id}"),
    })
}

// ---------------------------------------------------------------------------------------------
// Log Alerts V1: no schemaId, fields at the top level

fn looks_like_log_v1(obj: &Map<String, Value>) -> bool {
    obj.contains_key("AlertRuleName")
        || (obj.contains_key("SearchQuery")
            && ["SearchIntervalStartTimeUtc", "WorkspaceId", "ApplicationId"]
                .iter()
                .any(|k| obj.contains_key(*k)))
}

fn parse_log_v1(obj: &Map<String, Value>) -> Result<NormalizedAlert, PayloadError> {
    let rule = required_str(obj, "AlertRuleName", "")?;
    let start = obj
        .get("SearchIntervalStartTimeUtc")
        .and_then(lenient_string)
        .unwrap_or_default();
    let end = obj
        .get("SearchIntervalEndtimeUtc")
        .and_then(lenient_string)
        .unwrap_or_default();
    let severity = legacy_severity(obj.get("Severity"), "Severity")?;
    let description = optional_str(obj, "Description", "")?;

    let mut details = BTreeMap::new();
    let link = extract_context(obj, &mut details);
    put_field(&mut details, "subscriptionId", obj, "SubscriptionId");

    let mut targets: Vec<String> = ["ResourceId", "WorkspaceId", "ApplicationId"]
        .iter()
        .filter_map(|k| lenient_field(obj, k))
        .map(|t| t.to_ascii_lowercase())
        .collect();
    targets.dedup();
    let resource_group = lenient_field(obj, "ResourceId").and_then(|r| resource_group_of(&r));
    Ok(NormalizedAlert {
        source: Source::AzureMonitor,
        schema: LOG_V1_SCHEMA.to_string(),
        kind: "Log Alerts V1".to_string(),
        alert_id: format!("{rule}|{start}|{end}"),
        rule: rule.to_string(),
        rule_id: None,
        fingerprint: incident_fingerprint(Source::AzureMonitor, rule, &targets),
        targets,
        condition: Condition::Fired,
        severity,
        fired_at: lenient_timestamp(obj.get("SearchIntervalEndtimeUtc")),
        resolved_at: None,
        description: non_empty(description),
        resource_group,
        link,
        details,
        dedup_key: format!("azmon-logv1|{rule}|{start}|{end}"),
    })
}

// ---------------------------------------------------------------------------------------------
// Unrecognized payloads

fn unrecognized(schema_id: Option<&str>, raw_body: &[u8]) -> NormalizedAlert {
    let digest = hex::encode(Sha256::digest(raw_body));
    NormalizedAlert {
        source: Source::AzureMonitor,
        schema: UNRECOGNIZED_SCHEMA.to_string(),
        kind: schema_id.unwrap_or("unknown").to_string(),
        alert_id: digest.clone(),
        rule: "unrecognized payload".to_string(),
        rule_id: None,
        targets: Vec::new(),
        condition: Condition::Fired,
        severity: Severity::Medium,
        fired_at: None,
        resolved_at: None,
        description: None,
        resource_group: None,
        link: None,
        details: BTreeMap::new(),
        dedup_key: format!("azmon-unrecognized|{digest}"),
        fingerprint: incident_fingerprint(
            Source::AzureMonitor,
            UNRECOGNIZED_SCHEMA,
            std::slice::from_ref(&digest),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn put(details: &mut BTreeMap<String, String>, key: &str, value: Option<String>) {
    if let Some(v) = value.filter(|v| !v.trim().is_empty()) {
        details
            .entry(key.to_string())
            .or_insert_with(|| truncate(&v, MAX_DETAIL_CHARS));
    }
}

fn put_field(
    details: &mut BTreeMap<String, String>,
    key: &str,
    obj: &Map<String, Value>,
    field: &str,
) {
    put(details, key, lenient_field(obj, field));
}

fn first_field(obj: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| obj.get(*k).and_then(Value::as_str))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The resource group named in an ARM id (`.../resourceGroups/<rg>/...`, any case).
fn resource_group_of(arm_id: &str) -> Option<String> {
    let mut parts = arm_id.split('/');
    while let Some(p) = parts.next() {
        if p.eq_ignore_ascii_case("resourceGroups") {
            return parts.next().filter(|s| !s.is_empty()).map(str::to_string);
        }
    }
    None
}

fn last_segment(id: &str) -> &str {
    id.trim_end_matches('/').rsplit('/').next().unwrap_or(id)
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_lowercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resource_group_from_arm_id() {
        assert_eq!(
            resource_group_of("/subscriptions/x/resourcegroups/test-RG/providers/a/b").as_deref(),
            Some("test-RG")
        );
        assert_eq!(resource_group_of("/subscriptions/x"), None);
        assert_eq!(last_segment("/a/b/rule/"), "rule");
        assert_eq!(lower_first("BudgetName"), "budgetName");
    }

    #[test]
    fn legacy_severity_accepts_string_and_number() {
        assert_eq!(legacy_severity(Some(&json!("3")), "s"), Ok(Severity::Low));
        assert_eq!(
            legacy_severity(Some(&json!(0)), "s"),
            Ok(Severity::Critical)
        );
        assert_eq!(legacy_severity(None, "s"), Ok(Severity::Medium));
        assert!(legacy_severity(Some(&json!("9")), "s").is_err());
        assert!(legacy_severity(Some(&json!([])), "s").is_err());
    }
}
