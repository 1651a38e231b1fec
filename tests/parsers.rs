//! Parser tests: every shared sample (tests/fixtures/*.json, used as they are) and every variant
//! (tests/fixtures/variants/, sources in its README) through `azure_monitor::parse` and
//! `alertmanager::parse`; fired/resolved pairs; every typing quirk of PROTOCOLS.md §2.1; bad
//! inputs and the JSON path they name; and property tests that neither parser panics.

use chrono::{TimeZone, Utc};
use icahub::domain::alert::{
    Condition, NormalizedAlert, PayloadError, Severity, Source, UNRECOGNIZED_SCHEMA,
};
use icahub::domain::{alertmanager, azure_monitor};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn raw(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn value(name: &str) -> Value {
    serde_json::from_slice(&raw(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn azmon(name: &str) -> NormalizedAlert {
    let bytes = raw(name);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    azure_monitor::parse(&v, &bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn azmon_value(v: &Value) -> Result<NormalizedAlert, PayloadError> {
    azure_monitor::parse(v, serde_json::to_string(v).unwrap().as_bytes())
}

fn azmon_err(v: &Value) -> PayloadError {
    azmon_value(v).expect_err("expected a payload error")
}

fn am(name: &str) -> Vec<(NormalizedAlert, String)> {
    alertmanager::parse(&value(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn am_err(v: &Value) -> PayloadError {
    alertmanager::parse(v).expect_err("expected a payload error")
}

// ---------------------------------------------------------------------------------------------
// Azure Monitor: every sample and variant

struct Expect {
    file: &'static str,
    schema: &'static str,
    kind: &'static str,
    condition: Condition,
    severity: Severity,
    rule: &'static str,
    /// Expected targets (already lower-cased), in order.
    targets: &'static [&'static str],
}

const FIRED: Condition = Condition::Fired;
const RESOLVED: Condition = Condition::Resolved;
const COMMON: &str = "azureMonitorCommonAlertSchema";

fn expectations() -> Vec<Expect> {
    const SA: &str = "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/test-rg/providers/microsoft.storage/storageaccounts/test-storageaccount";
    const VM: &str = "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/test-rg/providers/microsoft.compute/virtualmachines/test-vm";
    const WS: &str = "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/test-rg/providers/microsoft.operationalinsights/workspaces/test-loganalyticsworkspace";
    const AI: &str = "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/test-rg/providers/microsoft.insights/components/test-applicationinsights";
    const APPI: &str = "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/test/providers/microsoft.insights/components/myapp";
    const SUBSCOPE: &str = "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e";
    const WCUS: &str = "/subscriptions/<subscription id>/resourcegroups/pipelinealertrg/providers/microsoft.compute/virtualmachines/wcus-r2-gen2";
    use Severity::*;
    let e = |file, schema, kind, condition, severity, rule, targets| Expect {
        file,
        schema,
        kind,
        condition,
        severity,
        rule,
        targets,
    };
    vec![
        // Shared samples, as they are.
        e("azmon-common-metric-static-fired.json", COMMON, "Platform", FIRED, Info, "test-metricAlertRule", &[SA]),
        e("azmon-common-metric-resolved.json", COMMON, "Platform", RESOLVED, Low, "WCUS-R2-Gen2", &[WCUS]),
        e("azmon-common-log-v2.json", COMMON, "Log Alerts V2", FIRED, Info, "test-logAlertRule-v2", &[WS]),
        e("azmon-activitylog.json", COMMON, "Activity Log - Administrative", FIRED, Info, "test-activityLogAlertRule", &[VM]),
        // Common-schema variants.
        e("variants/azmon-common-metric-dynamic-fired.json", COMMON, "Platform", FIRED, Info, "test-dynamicMetricAlertRule", &[SA]),
        e("variants/azmon-common-metric-static-resolved.json", COMMON, "Platform", RESOLVED, Info, "test-metricAlertRule", &[SA]),
        e("variants/azmon-common-metric-fired-wcus.json", COMMON, "Platform", FIRED, Low, "WCUS-R2-Gen2", &[WCUS]),
        e("variants/azmon-common-availability-test.json", COMMON, "Platform", FIRED, Info, "test-availabilityTest-test-applicationInsights", &[AI]),
        e("variants/azmon-common-budget.json", COMMON, "CostAlerts", FIRED, Medium, "Test_forcasted_budget", &[]),
        e("variants/azmon-common-cost-budget.json", COMMON, "CostAlerts", FIRED, Medium, "Test_actual_cost_budget", &[]),
        e("variants/azmon-common-forecasted-budget.json", COMMON, "CostAlerts", FIRED, Medium, "Test_forcasted_budget", &[]),
        e("variants/azmon-common-log-v1-metric-measurement.json", COMMON, "Log Analytics", FIRED, Info, "test-logAlertRule-v1-metricMeasurement", &[WS]),
        e("variants/azmon-common-log-v1-num-results.json", COMMON, "Log Analytics", FIRED, Info, "test-logAlertRule-v1-numResults", &[WS]),
        e("variants/azmon-common-log-analytics-v1-oldtime.json", COMMON, "Log Analytics", FIRED, Low, "INC-Gen2Alert-cpu", &["/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/test/providers/microsoft.operationalinsights/workspaces/test"]),
        e("variants/azmon-common-application-insights-v1.json", COMMON, "Application Insights", FIRED, High, "requests-500", &[APPI]),
        e("variants/azmon-common-log-v2-cas.json", COMMON, "Log Alerts V2", FIRED, High, "Contoso-heartbeat", &["/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/contoso/providers/microsoft.compute/virtualmachines/contoso"]),
        e("variants/azmon-common-simple-log-alert.json", COMMON, "Simple Log Alert", FIRED, Medium, "exceptions-simple", &[APPI]),
        e("variants/azmon-common-activity-policy.json", COMMON, "Activity Log - Policy", FIRED, Medium, "policy-audit", &[SUBSCOPE]),
        e("variants/azmon-common-activity-autoscale.json", COMMON, "Activity Log - Autoscale", FIRED, Info, "autoscale-scaleup", &["/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/testrg/providers/microsoft.compute/virtualmachinescalesets/testvmss"]),
        e("variants/azmon-common-activity-security.json", COMMON, "Activity Log - Security", FIRED, High, "defender-virus", &[VM]),
        e("variants/azmon-common-service-health-test.json", COMMON, "ServiceHealth", FIRED, Info, "test-ServiceHealthAlertRule", &[SUBSCOPE]),
        e("variants/azmon-common-service-health-maintenance.json", COMMON, "ServiceHealth", FIRED, Info, "synapse-maintenance", &[SUBSCOPE]),
        e("variants/azmon-common-service-health-cas.json", COMMON, "ServiceHealth", FIRED, Info, "synapse-maintenance", &[SUBSCOPE]),
        e("variants/azmon-common-resource-health.json", COMMON, "Resource Health", FIRED, Info, "test-ResourceHealthAlertRule", &[VM]),
        e("variants/azmon-common-resourcehealth-nospace.json", COMMON, "ResourceHealth", FIRED, Medium, "vm-health", &[VM]),
        e("variants/azmon-common-smart-detector.json", COMMON, "SmartDetector", FIRED, Info, "test-SmartAlertRule", &[AI]),
        e("variants/azmon-common-prometheus.json", COMMON, "Prometheus", FIRED, Medium, "sql-availability", &["/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/myresourcegroup/providers/microsoft.containerservice/managedclusters/mycluster1"]),
        e("variants/azmon-common-unknown-service.json", COMMON, "Some Future Service", FIRED, Critical, "future-rule", &["/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/future-rg/providers/microsoft.future/things/thing1"]),
        // Legacy schemas.
        e("variants/azmon-legacy-metric-static.json", "AzureMonitorMetricAlert", "Platform", FIRED, Low, "test-metricAlertRule", &[SA]),
        e("variants/azmon-legacy-metric-dynamic.json", "AzureMonitorMetricAlert", "Platform", FIRED, Low, "test-metricAlertRule", &[SA]),
        e("variants/azmon-legacy-metric-deactivated.json", "AzureMonitorMetricAlert", "Platform", RESOLVED, Low, "test-metricAlertRule", &[SA]),
        e("variants/azmon-legacy-activitylog-administrative.json", "Microsoft.Insights/activityLogs", "Activity Log - Administrative", FIRED, Info, "Microsoft.Compute/virtualMachines/restart/action", &[VM]),
        e("variants/azmon-legacy-activitylog-servicehealth.json", "Microsoft.Insights/activityLogs", "ServiceHealth", FIRED, Medium, "Microsoft.ServiceHealth/incident/action", &[SUBSCOPE]),
        e("variants/azmon-legacy-activitylog-resourcehealth.json", "Microsoft.Insights/activityLogs", "ResourceHealth", FIRED, Info, "Microsoft.Resourcehealth/healthevent/Activated/action", &[VM]),
        e("variants/azmon-logv1-metric-measurement.json", "LogAlertV1", "Log Alerts V1", FIRED, Low, "test-logAlertRule-v1-metricMeasurement", &[WS, "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"]),
        e("variants/azmon-logv1-num-results.json", "LogAlertV1", "Log Alerts V1", FIRED, Low, "test-logAlertRule-v1-numResults", &[WS, "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"]),
        e("variants/azmon-logv1-application-insights.json", "LogAlertV1", "Log Alerts V1", FIRED, High, "requests-500-v1", &["00001111-aaaa-2222-bbbb-3333cccc4444"]),
        // Not a schema the hub knows: stored as unrecognized, not rejected.
        e("variants/azmon-legacy-budget-aip.json", UNRECOGNIZED_SCHEMA, "AIP Budget Notification", FIRED, Medium, "unrecognized payload", &[]),
    ]
}

#[test]
fn every_azure_sample_and_variant_parses_as_expected() {
    for x in expectations() {
        let a = azmon(x.file);
        let f = x.file;
        assert_eq!(a.source, Source::AzureMonitor, "{f}");
        assert_eq!(a.schema, x.schema, "{f}");
        assert_eq!(a.kind, x.kind, "{f}");
        assert_eq!(a.condition, x.condition, "{f}");
        assert_eq!(a.severity, x.severity, "{f}");
        assert_eq!(a.rule, x.rule, "{f}");
        assert_eq!(a.targets, x.targets, "{f}");
        assert_eq!(a.fingerprint.len(), 32, "{f}");
        assert!(!a.alert_id.is_empty(), "{f}");
        assert!(!a.dedup_key.is_empty(), "{f}");
        if a.schema != UNRECOGNIZED_SCHEMA {
            assert!(!a.details.is_empty(), "{f}: no details extracted");
        }
        if x.condition == FIRED {
            assert_eq!(a.resolved_at, None, "{f}");
        }
    }
}

#[test]
fn no_azure_fixture_is_left_untested() {
    let listed: Vec<&str> = expectations().iter().map(|x| x.file).collect();
    for dir in ["", "variants/"] {
        for entry in std::fs::read_dir(fixture_path(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.starts_with("azmon-") && name.ends_with(".json") {
                let rel = format!("{dir}{name}");
                assert!(listed.contains(&rel.as_str()), "{rel} has no expectation");
            }
        }
    }
}

#[test]
fn fired_and_resolved_share_a_stream() {
    let pairs = [
        // Fired without alertRuleID, Resolved with it: still one stream.
        (
            "azmon-common-metric-static-fired.json",
            "variants/azmon-common-metric-static-resolved.json",
        ),
        (
            "variants/azmon-common-metric-fired-wcus.json",
            "azmon-common-metric-resolved.json",
        ),
        (
            "variants/azmon-legacy-metric-static.json",
            "variants/azmon-legacy-metric-deactivated.json",
        ),
    ];
    for (f, r) in pairs {
        let (fired, resolved) = (azmon(f), azmon(r));
        assert_eq!(fired.condition, Condition::Fired);
        assert_eq!(resolved.condition, Condition::Resolved);
        assert_eq!(fired.fingerprint, resolved.fingerprint, "{f} / {r}");
        assert_ne!(fired.dedup_key, resolved.dedup_key, "{f} / {r}");
    }
    // The same rule on the same resource lands in the same stream in either schema.
    assert_eq!(
        azmon("azmon-common-metric-static-fired.json").fingerprint,
        azmon("variants/azmon-legacy-metric-static.json").fingerprint
    );
}

#[test]
fn different_rules_or_resources_get_different_streams() {
    let files = [
        "azmon-common-metric-static-fired.json",
        "variants/azmon-common-metric-dynamic-fired.json",
        "azmon-common-metric-resolved.json",
        "azmon-common-log-v2.json",
        "azmon-activitylog.json",
        "variants/azmon-common-budget.json",
        "variants/azmon-common-cost-budget.json",
        "variants/azmon-common-resource-health.json",
        "variants/azmon-common-service-health-test.json",
        "variants/azmon-common-smart-detector.json",
        "variants/azmon-legacy-activitylog-administrative.json",
        "variants/azmon-logv1-num-results.json",
    ];
    let fps: Vec<String> = files.iter().map(|f| azmon(f).fingerprint).collect();
    for i in 0..fps.len() {
        for j in i + 1..fps.len() {
            assert_ne!(fps[i], fps[j], "{} / {}", files[i], files[j]);
        }
    }
    // Same rule, another resource.
    let mut v = value("azmon-common-metric-static-fired.json");
    v["data"]["essentials"]["alertTargetIDs"] =
        json!(["/subscriptions/x/resourceGroups/rg/providers/a/b/other"]);
    assert_ne!(
        azmon_value(&v).unwrap().fingerprint,
        azmon("azmon-common-metric-static-fired.json").fingerprint
    );
}

#[test]
fn common_schema_fields() {
    let a = azmon("azmon-common-metric-resolved.json");
    assert_eq!(
        a.alert_id,
        "/subscriptions/<subscription ID>/providers/Microsoft.AlertsManagement/alerts/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e"
    );
    assert_eq!(a.dedup_key, format!("azmon|{}|resolved", a.alert_id));
    assert_eq!(
        a.rule_id.as_deref(),
        Some("/subscriptions/<subscription ID>/resourceGroups/<resource-group>/providers/microsoft.insights/metricAlerts/WCUS-R2-Gen2")
    );
    assert_eq!(a.resource_group.as_deref(), Some("pipelinealertrg"));
    assert_eq!(a.description, None, "empty description is None");
    let fired = Utc.with_ymd_and_hms(2019, 3, 22, 13, 58, 24).unwrap();
    assert_eq!(a.fired_at.map(|t| t.timestamp()), Some(fired.timestamp()));
    let resolved = Utc.with_ymd_and_hms(2019, 3, 22, 14, 3, 16).unwrap();
    assert_eq!(
        a.resolved_at.map(|t| t.timestamp()),
        Some(resolved.timestamp())
    );
    // threshold is a string, metricValue a number: both become text.
    assert_eq!(a.details["metricName"], "Percentage CPU");
    assert_eq!(a.details["operator"], "GreaterThan");
    assert_eq!(a.details["threshold"], "25");
    assert_eq!(a.details["metricValue"], "7.727");
    assert_eq!(
        a.details["dimensions"],
        "ResourceId=a0a0a0a0-bbbb-cccc-dddd-e1e1e1e1e1e1"
    );
    assert_eq!(a.link, None);

    let f = azmon("azmon-common-metric-static-fired.json");
    assert_eq!(f.dedup_key, format!("azmon|{}|fired", f.alert_id));
    assert_eq!(f.resource_group.as_deref(), Some("test-RG"));
    assert_eq!(f.description.as_deref(), Some("Alertruledescription"));
}

#[test]
fn log_alert_facts_and_links() {
    let v2 = azmon("azmon-common-log-v2.json");
    assert_eq!(v2.details["searchQuery"], "Heartbeat");
    assert_eq!(v2.details["metricValue"], "3.0");
    assert!(v2
        .link
        .as_deref()
        .unwrap()
        .starts_with("https://portal.azure.com#@cccc2222"));

    let v1 = azmon("variants/azmon-common-log-v1-metric-measurement.json");
    assert_eq!(v1.details["includeSearchResults"], "true");
    assert_eq!(v1.details["includedSearchResults"], "True");
    assert_eq!(v1.details["resultCount"], "2");
    assert_eq!(v1.details["threshold"], "0");
    assert!(v1.link.is_some());

    let old = azmon("variants/azmon-common-log-analytics-v1-oldtime.json");
    assert_eq!(old.details["searchIntervalStart"], "3/22/2019 1:36:31 PM");
    assert_eq!(old.details["dimensions"], "Computer=INC-Gen2Alert");
    assert!(old.link.as_deref().unwrap().contains("Analyticsblade"));

    // firedDateTime in the old M/D/YYYY h:mm:ss PM form.
    let ai = azmon("variants/azmon-common-application-insights-v1.json");
    assert_eq!(
        ai.fired_at,
        Some(Utc.with_ymd_and_hms(2019, 3, 22, 13, 51, 33).unwrap())
    );
    assert_eq!(
        ai.details["applicationId"],
        "00001111-aaaa-2222-bbbb-3333cccc4444"
    );

    let simple = azmon("variants/azmon-common-simple-log-alert.json");
    assert!(simple.details["searchQuery"].starts_with("exceptions"));
    assert!(
        !simple.details.contains_key("threshold"),
        "null threshold is skipped"
    );
    assert!(!simple.details.contains_key("windowSize"));
}

#[test]
fn activity_log_and_health_facts() {
    let a = azmon("azmon-activitylog.json");
    assert_eq!(
        a.details["operationName"],
        "Microsoft.Compute/virtualMachines/restart/action"
    );
    assert_eq!(a.details["caller"], "user@contoso.com");
    assert_eq!(a.details["status"], "Succeeded");
    assert_eq!(a.details["level"], "Informational");

    // channels 1, eventSource 2, level 3 (integers); impactedServices a real array.
    let sh = azmon("variants/azmon-common-service-health-test.json");
    assert_eq!(sh.details["channels"], "1");
    assert_eq!(sh.details["eventSource"], "2");
    assert_eq!(sh.details["level"], "3");
    assert_eq!(sh.details["impactedServices"], "AzureServiceName");
    assert_eq!(sh.details["trackingId"], "TEST-TTT");
    assert_eq!(
        sh.details["title"],
        "TestActionGroup-TestServiceHealthAlert"
    );
    assert!(!sh.details.contains_key("configurationItems"));

    // impactedServices as JSON inside a string.
    let m = azmon("variants/azmon-common-service-health-maintenance.json");
    assert_eq!(m.details["impactedServices"], "Azure Synapse Analytics");
    assert_eq!(m.details["region"], "East US");
    assert_eq!(m.details["service"], "Azure Synapse Analytics");
    let cas = azmon("variants/azmon-common-service-health-cas.json");
    assert_eq!(cas.details["eventSource"], "ServiceHealth");
    assert_eq!(cas.fingerprint, m.fingerprint);

    for f in [
        "variants/azmon-common-resource-health.json",
        "variants/azmon-common-resourcehealth-nospace.json",
        "variants/azmon-legacy-activitylog-resourcehealth.json",
    ] {
        let r = azmon(f);
        assert_eq!(r.details["currentHealthStatus"], "Unavailable", "{f}");
        assert_eq!(r.details["previousHealthStatus"], "Available", "{f}");
        assert_eq!(r.details["cause"], "UserInitiated", "{f}");
    }

    let sd = azmon("variants/azmon-common-smart-detector.json");
    assert_eq!(
        sd.details["detector"],
        "DependencyPerformanceDegradationDetector"
    );
    assert_eq!(
        sd.details["name"],
        "Dependency Performance Degradation Detector"
    );

    let p = azmon("variants/azmon-common-prometheus.json");
    assert_eq!(p.details["expression"], "sql_up > 0");
    assert_eq!(p.details["label.cluster"], "myCluster1");
    assert_eq!(p.details["annotation.summary"], "alert on SQL availability");
}

#[test]
fn budgets_with_null_essentials() {
    let b = azmon("variants/azmon-common-budget.json");
    let f = azmon("variants/azmon-common-forecasted-budget.json");
    let c = azmon("variants/azmon-common-cost-budget.json");
    assert_eq!(b.rule_id, None);
    assert_eq!(b.details["budgetName"], "Test_forcasted_budget");
    assert_eq!(b.details["spentAmount"], "$999.99");
    assert_eq!(c.details["notificationThresholdAmount"], "$25.00");
    assert_eq!(b.fingerprint, f.fingerprint, "same budget, same stream");
    assert_ne!(
        b.fingerprint, c.fingerprint,
        "different budgets, different streams"
    );
    assert!(b.targets.is_empty());
}

#[test]
fn quirky_essentials_are_accepted() {
    let u = azmon("variants/azmon-common-unknown-service.json");
    // lower-case "fired", firedDateTime without offset, investigationLink, targetResourceGroup.
    assert_eq!(u.condition, Condition::Fired);
    assert_eq!(
        u.fired_at.map(|t| t.timestamp()),
        Some(
            Utc.with_ymd_and_hms(2025, 4, 15, 18, 17, 12)
                .unwrap()
                .timestamp()
        )
    );
    assert!(u.link.as_deref().unwrap().contains("Investigation"));
    assert_eq!(u.resource_group.as_deref(), Some("Future-RG"));
    assert_eq!(u.details["targetResourceType"], "microsoft.future/things");

    // Unreadable or oddly typed timestamps are dropped, never a rejection.
    for bad in [
        json!("not a time"),
        json!(12345),
        json!(null),
        json!({"t": 1}),
    ] {
        let mut v = value("azmon-common-metric-resolved.json");
        v["data"]["essentials"]["firedDateTime"] = bad.clone();
        v["data"]["essentials"]["resolvedDateTime"] = bad.clone();
        let a = azmon_value(&v).unwrap_or_else(|e| panic!("{bad}: {e}"));
        assert_eq!(a.fired_at, None);
        assert_eq!(a.resolved_at, None);
    }

    // Whatever the alertContext holds, it is not a reason to reject.
    for ctx in [
        json!(null),
        json!("text"),
        json!([1, 2]),
        json!({"condition": "x", "AlertData": 5}),
    ] {
        let mut v = value("azmon-common-metric-static-fired.json");
        v["data"]["alertContext"] = ctx.clone();
        azmon_value(&v).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    }
    let mut v = value("azmon-common-metric-static-fired.json");
    v["data"].as_object_mut().unwrap().remove("alertContext");
    azmon_value(&v).unwrap();

    // Null severity is medium; missing optional essentials are fine.
    let v = json!({"schemaId": "azureMonitorCommonAlertSchema",
        "data": {"essentials": {"alertId": "a1", "monitorCondition": "RESOLVED", "severity": null}}});
    let a = azmon_value(&v).unwrap();
    assert_eq!(a.severity, Severity::Medium);
    assert_eq!(a.condition, Condition::Resolved);
    assert_eq!(a.kind, "unknown");
    assert_eq!(a.rule, "unknown");
}

#[test]
fn legacy_schemas() {
    let m = azmon("variants/azmon-legacy-metric-static.json");
    let id = "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourceGroups/test-RG/providers/microsoft.insights/metricAlerts/test-metricAlertRule";
    assert_eq!(m.alert_id, id);
    assert_eq!(m.rule_id.as_deref(), Some(id));
    assert_eq!(
        m.dedup_key,
        format!("azmon-metric|{id}|fired|2021-11-15T09:35:12.9703687Z")
    );
    assert!(m
        .link
        .as_deref()
        .unwrap()
        .starts_with("https://portal.azure.com/#resource"));
    assert_eq!(m.resource_group.as_deref(), Some("test-RG"));
    assert_eq!(m.details["metricName"], "Transactions");
    let d = azmon("variants/azmon-legacy-metric-deactivated.json");
    assert!(d.resolved_at.is_some());
    assert_eq!(d.fired_at, None);

    let a = azmon("variants/azmon-legacy-activitylog-administrative.json");
    assert_eq!(a.alert_id, "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb");
    assert_eq!(
        a.dedup_key,
        "azmon-activity|bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"
    );
    assert_eq!(a.details["caller"], "user-email@domain.com");
    let sh = azmon("variants/azmon-legacy-activitylog-servicehealth.json");
    assert_eq!(sh.details["impactedServices"], "Azure Service Name");
    assert_eq!(sh.severity, Severity::Medium, "level Warning");

    // Activity-log level mapping.
    for (level, sev) in [
        ("Critical", Severity::Critical),
        ("Error", Severity::High),
        ("Warning", Severity::Medium),
        ("Informational", Severity::Info),
    ] {
        let mut v = value("variants/azmon-legacy-activitylog-administrative.json");
        v["data"]["context"]["activityLog"]["level"] = json!(level);
        assert_eq!(azmon_value(&v).unwrap().severity, sev, "{level}");
    }

    let l = azmon("variants/azmon-logv1-metric-measurement.json");
    assert_eq!(
        l.dedup_key,
        "azmon-logv1|test-logAlertRule-v1-metricMeasurement|2021-11-15T15:16:49Z|2021-11-16T15:16:49Z"
    );
    assert_eq!(l.details["operator"], "Greater Than");
    assert_eq!(l.details["threshold"], "0");
    assert_eq!(l.resource_group.as_deref(), Some("test-RG"));
    assert_eq!(l.description.as_deref(), Some("Alert rule description"));
    assert!(l.link.is_some());
    let ai = azmon("variants/azmon-logv1-application-insights.json");
    assert_eq!(
        ai.fired_at,
        Some(Utc.with_ymd_and_hms(2019, 3, 22, 13, 51, 33).unwrap())
    );
}

#[test]
fn unrecognized_objects_are_kept_not_rejected() {
    let bytes = raw("variants/azmon-legacy-budget-aip.json");
    let a = azmon("variants/azmon-legacy-budget-aip.json");
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    assert_eq!(a.alert_id, sha);
    assert!(a.dedup_key.contains(&sha));
    assert_eq!(a.condition, Condition::Fired);

    for (body, kind) in [
        (json!({}), "unknown"),
        (json!({"hello": "world"}), "unknown"),
        (json!({"schemaId": 5, "data": {}}), "unknown"),
        (
            json!({"schemaId": "SomethingNew", "data": {}}),
            "SomethingNew",
        ),
    ] {
        let a = azmon_value(&body).unwrap();
        assert_eq!(a.schema, UNRECOGNIZED_SCHEMA, "{body}");
        assert_eq!(a.kind, kind, "{body}");
        assert_eq!(a.rule, "unrecognized payload");
        assert_eq!(a.severity, Severity::Medium);
    }
    // A repeat of the same bytes is a duplicate; other bytes are not.
    let v = json!({"x": 1});
    let a1 = azure_monitor::parse(&v, br#"{"x":1}"#).unwrap();
    let a2 = azure_monitor::parse(&v, br#"{"x":1}"#).unwrap();
    let a3 = azure_monitor::parse(&v, br#"{"x": 1}"#).unwrap();
    assert_eq!(a1.dedup_key, a2.dedup_key);
    assert_eq!(a1.fingerprint, a2.fingerprint);
    assert_ne!(a1.dedup_key, a3.dedup_key);
}

#[test]
fn bad_azure_payloads_name_the_field() {
    for body in [json!([]), json!("x"), json!(3), json!(null), json!(true)] {
        let e = azmon_err(&body);
        assert_eq!(
            (e.field.as_str(), e.problem.as_str()),
            ("$", "must be a JSON object")
        );
    }

    let base = value("azmon-common-metric-static-fired.json");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v);
        azmon_err(&v)
    };
    fn ess(v: &mut Value) -> &mut serde_json::Map<String, Value> {
        v["data"]["essentials"].as_object_mut().unwrap()
    }

    let e = with(&|v| {
        ess(v).remove("alertId");
    });
    assert_eq!(
        (e.field.as_str(), e.problem.as_str()),
        ("data.essentials.alertId", "is required")
    );
    let e = with(&|v| {
        ess(v).insert("alertId".into(), json!(""));
    });
    assert_eq!(e.field, "data.essentials.alertId");
    let e = with(&|v| {
        ess(v).insert("alertId".into(), json!(7));
    });
    assert_eq!(e.problem, "must be a string, got a number");

    let e = with(&|v| {
        ess(v).insert("alertRule".into(), json!(42));
    });
    assert_eq!(
        (e.field.as_str(), e.problem.as_str()),
        (
            "data.essentials.alertRule",
            "must be a string, got a number"
        )
    );

    let e = with(&|v| {
        ess(v).insert("alertTargetIDs".into(), json!("/subscriptions/x"));
    });
    assert_eq!(
        (e.field.as_str(), e.problem.as_str()),
        (
            "data.essentials.alertTargetIDs",
            "must be an array of strings, got a string"
        )
    );
    let e = with(&|v| {
        ess(v).insert("alertTargetIDs".into(), json!(["/a", 5]));
    });
    assert_eq!(e.field, "data.essentials.alertTargetIDs[1]");
    let e = with(&|v| {
        ess(v).insert("configurationItems".into(), json!({"a": 1}));
    });
    assert_eq!(e.field, "data.essentials.configurationItems");

    let e = with(&|v| {
        ess(v).insert("monitorCondition".into(), json!("Maybe"));
    });
    assert_eq!(e.field, "data.essentials.monitorCondition");
    assert!(e.problem.contains("\"Maybe\""), "{}", e.problem);
    let e = with(&|v| {
        ess(v).remove("monitorCondition");
    });
    assert_eq!(
        (e.field.as_str(), e.problem.as_str()),
        ("data.essentials.monitorCondition", "is required")
    );

    for sev in [json!("Sev9"), json!("high"), json!(3)] {
        let e = with(&|v| {
            ess(v).insert("severity".into(), sev.clone());
        });
        assert_eq!(e.field, "data.essentials.severity", "{sev}");
    }

    let e = with(&|v| {
        v.as_object_mut().unwrap().remove("data");
    });
    assert_eq!(
        (e.field.as_str(), e.problem.as_str()),
        ("data", "is required")
    );
    let e = with(&|v| {
        v["data"] = json!("nope");
    });
    assert_eq!(
        (e.field.as_str(), e.problem.as_str()),
        ("data", "must be an object, got a string")
    );
    let e = with(&|v| {
        v["data"].as_object_mut().unwrap().remove("essentials");
    });
    assert_eq!(
        (e.field.as_str(), e.problem.as_str()),
        ("data.essentials", "is required")
    );

    // Legacy schemas.
    let mut v = value("variants/azmon-legacy-metric-static.json");
    v["data"]["status"] = json!("Sleeping");
    assert_eq!(azmon_err(&v).field, "data.status");
    let mut v = value("variants/azmon-legacy-metric-static.json");
    v["data"]["context"].as_object_mut().unwrap().remove("id");
    assert_eq!(azmon_err(&v).field, "data.context.id");
    let mut v = value("variants/azmon-legacy-metric-static.json");
    v["data"]["context"]["severity"] = json!("7");
    assert_eq!(azmon_err(&v).field, "data.context.severity");
    let mut v = value("variants/azmon-legacy-activitylog-administrative.json");
    v["data"]["context"] = json!({});
    assert_eq!(azmon_err(&v).field, "data.context.activityLog");
    let mut v = value("variants/azmon-logv1-num-results.json");
    v["AlertRuleName"] = json!(12);
    let e = azmon_err(&v);
    assert_eq!(
        (e.field.as_str(), e.problem.as_str()),
        ("AlertRuleName", "must be a string, got a number")
    );
}

// ---------------------------------------------------------------------------------------------
// Alertmanager

#[test]
fn alertmanager_sample_parses() {
    let body = value("alertmanager-webhook-v4.json");
    let alerts = am("alertmanager-webhook-v4.json");
    assert_eq!(alerts.len(), 2);
    let (a, json_text) = &alerts[0];
    assert_eq!(a.source, Source::Alertmanager);
    assert_eq!(a.schema, "alertmanager/v4");
    assert_eq!(a.kind, "prometheus");
    assert_eq!(a.alert_id, "9692e376846c2652");
    assert_eq!(a.rule, "InstanceDown");
    assert_eq!(a.severity, Severity::Critical);
    assert_eq!(a.condition, Condition::Fired);
    // `severity` is part of the alert's identity (and of its incident stream), as in Alertmanager.
    assert_eq!(
        a.targets,
        ["instance=node1:9100", "job=node", "severity=critical"]
    );
    assert_eq!(a.description.as_deref(), Some("Instance node1:9100 down"));
    assert_eq!(
        a.link.as_deref(),
        Some("http://prometheus:9090/graph?g0.expr=up+%3D%3D+0&g0.tab=1")
    );
    assert_eq!(a.resolved_at, None, "0001-01-01 endsAt means not ended");
    assert_eq!(
        a.fired_at.map(|t| t.timestamp_nanos_opt()),
        Some(
            Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0)
                .unwrap()
                .timestamp_nanos_opt()
                .map(|n| n + 123_456_789)
        )
    );
    assert_eq!(
        a.dedup_key,
        "am|9692e376846c2652|firing|2024-05-01T10:00:00.123456789Z"
    );
    assert_eq!(a.details["summary"], "Instance node1:9100 down");
    assert_eq!(a.details["receiver"], "webhook-gateway");
    // The per-alert JSON is that alert object.
    let back: Value = serde_json::from_str(json_text).unwrap();
    assert_eq!(back, body["alerts"][0]);
    assert_eq!(alerts[1].0.alert_id, "4645ac3326787d2d");
    assert_ne!(alerts[0].0.fingerprint, alerts[1].0.fingerprint);
}

#[test]
fn alertmanager_fired_and_resolved_share_a_stream() {
    let fired = &am("alertmanager-webhook-v4.json")[0].0;
    let resolved = &am("variants/alertmanager-v4-resolved.json")[0].0;
    assert_eq!(resolved.condition, Condition::Resolved);
    assert_eq!(fired.fingerprint, resolved.fingerprint);
    assert_ne!(fired.dedup_key, resolved.dedup_key);
    assert_eq!(
        resolved.resolved_at.map(|t| t.timestamp()),
        Some(
            Utc.with_ymd_and_hms(2024, 5, 1, 10, 15, 0)
                .unwrap()
                .timestamp()
        )
    );

    // v0.32: notification_reason, mixed firing and resolved.
    let mixed = am("variants/alertmanager-v4-0.32-notification-reason.json");
    assert_eq!(mixed.len(), 2);
    assert_eq!(mixed[0].0.condition, Condition::Fired);
    assert_eq!(mixed[1].0.condition, Condition::Resolved);
    assert_eq!(
        mixed[0].0.fingerprint,
        am("alertmanager-webhook-v4.json")[1].0.fingerprint
    );
    assert_eq!(mixed[1].0.fingerprint, fired.fingerprint);
}

#[test]
fn alertmanager_newer_fields_and_missing_fingerprint() {
    let alerts = am("variants/alertmanager-v4-0.34-route-labels.json");
    assert_eq!(alerts.len(), 2);
    let a = &alerts[0].0;
    assert_eq!(a.severity, Severity::Medium, "warning");
    assert_eq!(a.rule, "PostgresReplicationLag");
    assert_eq!(
        a.targets,
        [
            "cluster=prod-eu",
            "instance=pg-1:9187",
            "job=postgres",
            "severity=warning"
        ]
    );
    assert_eq!(
        a.description.as_deref(),
        Some("Replica pg-1 is 120s behind & rising")
    );
    assert_eq!(
        a.details["runbook_url"],
        "https://runbooks.example.com/pg-lag"
    );
    assert_eq!(
        a.fired_at,
        Some(Utc.with_ymd_and_hms(2025, 6, 1, 6, 0, 0).unwrap()),
        "+02:00 offset"
    );
    // No fingerprint in the payload: the prometheus/common label signature is used.
    let mut labels = std::collections::BTreeMap::new();
    for (k, v) in [
        ("alertname", "PostgresReplicationLag"),
        ("cluster", "prod-eu"),
        ("instance", "pg-1:9187"),
        ("job", "postgres"),
        ("severity", "warning"),
    ] {
        labels.insert(k.to_string(), v.to_string());
    }
    assert_eq!(a.alert_id, alertmanager::label_fingerprint(&labels));
    assert_eq!(a.alert_id.len(), 16);
    assert_ne!(a.alert_id, alerts[1].0.alert_id);
    assert_eq!(alerts[1].0.link, None, "empty generatorURL");
    assert_eq!(
        alerts[1].0.description.as_deref(),
        Some("Replication lag high")
    );

    // The computed fingerprint reproduces the ones Alertmanager sent in the shared sample.
    let mut v = value("alertmanager-webhook-v4.json");
    for a in v["alerts"].as_array_mut().unwrap() {
        a.as_object_mut().unwrap().remove("fingerprint");
    }
    let computed = alertmanager::parse(&v).unwrap();
    assert_eq!(computed[0].0.alert_id, "9692e376846c2652");
    assert_eq!(computed[1].0.alert_id, "4645ac3326787d2d");

    assert!(am("variants/alertmanager-v4-empty-alerts.json").is_empty());
}

#[test]
fn alertmanager_labels_without_alertname_or_severity() {
    let v = json!({"version": "4", "alerts": [{"status": "firing", "labels": {},
        "startsAt": "2024-05-01T10:00:00Z"}]});
    let a = &alertmanager::parse(&v).unwrap()[0].0;
    assert_eq!(a.rule, "unnamed");
    assert_eq!(a.severity, Severity::Medium);
    assert!(a.targets.is_empty());
    assert_eq!(a.alert_id, "cbf29ce484222325");
}

#[test]
fn bad_alertmanager_payloads_name_the_field() {
    for body in [json!([]), json!("x"), json!(1), json!(null)] {
        let e = am_err(&body);
        assert_eq!(
            (e.field.as_str(), e.problem.as_str()),
            ("$", "must be a JSON object")
        );
    }
    let base = value("alertmanager-webhook-v4.json");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v);
        am_err(&v)
    };
    let e = with(&|v| {
        v.as_object_mut().unwrap().remove("version");
    });
    assert_eq!(
        (e.field.as_str(), e.problem.as_str()),
        ("version", "is required")
    );
    let e = with(&|v| v["version"] = json!("3"));
    assert_eq!(e.field, "version");
    assert!(e.problem.contains("\"3\""), "{}", e.problem);
    let e = with(&|v| v["version"] = json!(4));
    assert_eq!(
        (e.field.as_str(), e.problem.as_str()),
        ("version", "must be a string, got a number")
    );
    let e = with(&|v| {
        v.as_object_mut().unwrap().remove("alerts");
    });
    assert_eq!(
        (e.field.as_str(), e.problem.as_str()),
        ("alerts", "is required")
    );
    let e = with(&|v| v["alerts"] = json!({}));
    assert_eq!(
        (e.field.as_str(), e.problem.as_str()),
        ("alerts", "must be an array, got an object")
    );
    let e = with(&|v| v["alerts"][1] = json!("alert"));
    assert_eq!(e.field, "alerts[1]");
    let e = with(&|v| v["alerts"][1]["status"] = json!("pending"));
    assert_eq!(e.field, "alerts[1].status");
    assert!(e.problem.contains("\"pending\""));
    let e = with(&|v| {
        v["alerts"][0].as_object_mut().unwrap().remove("status");
    });
    assert_eq!(
        (e.field.as_str(), e.problem.as_str()),
        ("alerts[0].status", "is required")
    );
    let e = with(&|v| v["alerts"][0]["labels"] = json!(["a"]));
    assert_eq!(
        (e.field.as_str(), e.problem.as_str()),
        ("alerts[0].labels", "must be an object, got an array")
    );
    let e = with(&|v| {
        v["alerts"][1].as_object_mut().unwrap().remove("labels");
    });
    assert_eq!(
        (e.field.as_str(), e.problem.as_str()),
        ("alerts[1].labels", "is required")
    );
    let e = with(&|v| v["alerts"][0]["labels"]["job"] = json!(5));
    assert_eq!(
        (e.field.as_str(), e.problem.as_str()),
        ("alerts[0].labels.job", "must be a string, got a number")
    );
    let e = with(&|v| {
        v["alerts"][0].as_object_mut().unwrap().remove("startsAt");
    });
    assert_eq!(
        (e.field.as_str(), e.problem.as_str()),
        ("alerts[0].startsAt", "is required")
    );
    let e = with(&|v| v["alerts"][0]["startsAt"] = json!("soon"));
    assert_eq!(e.field, "alerts[0].startsAt");
}

// ---------------------------------------------------------------------------------------------
// Property tests: no input makes either parser panic

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("Fired"),
            Just("Resolved"),
            Just("firing"),
            Just("resolved"),
            Just("4"),
            Just("Sev2"),
            Just("3"),
            Just("Activated"),
            Just("Deactivated"),
            Just("azureMonitorCommonAlertSchema"),
            Just("AzureMonitorMetricAlert"),
            Just("Microsoft.Insights/activityLogs"),
            Just("0001-01-01T00:00:00Z"),
            Just("2019-03-22T13:58:24.3713213Z"),
            Just("3/22/2019 1:36:31 PM"),
            Just("[{\"ServiceName\":\"x\"}]"),
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop_oneof![
            Just("schemaId".to_string()),
            Just("data".to_string()),
            Just("essentials".to_string()),
            Just("alertContext".to_string()),
            Just("alertId".to_string()),
            Just("monitorCondition".to_string()),
            Just("severity".to_string()),
            Just("alertTargetIDs".to_string()),
            Just("condition".to_string()),
            Just("allOf".to_string()),
            Just("properties".to_string()),
            Just("impactedServices".to_string()),
            Just("AlertData".to_string()),
            Just("context".to_string()),
            Just("activityLog".to_string()),
            Just("status".to_string()),
            Just("AlertRuleName".to_string()),
            Just("SearchQuery".to_string()),
            Just("version".to_string()),
            Just("alerts".to_string()),
            Just("labels".to_string()),
            Just("startsAt".to_string()),
            Just("endsAt".to_string()),
            Just("annotations".to_string()),
            Just("fingerprint".to_string()),
            "[a-zA-Z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn check_azmon(v: &Value) {
    let bytes = serde_json::to_vec(v).unwrap();
    if let Ok(a) = azure_monitor::parse(v, &bytes) {
        assert_eq!(a.fingerprint.len(), 32);
        assert!(!a.dedup_key.is_empty());
        assert!(!a.alert_id.is_empty());
    }
}

fn check_am(v: &Value) {
    if let Ok(alerts) = alertmanager::parse(v) {
        for (a, text) in alerts {
            assert_eq!(a.fingerprint.len(), 32);
            assert!(!a.alert_id.is_empty());
            serde_json::from_str::<Value>(&text).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn azure_monitor_never_panics(v in arb_json()) {
        check_azmon(&v);
    }

    #[test]
    fn alertmanager_never_panics(v in arb_json()) {
        check_am(&v);
    }

    /// Arbitrary values inside a well-formed envelope reach the deeper code paths.
    #[test]
    fn azure_monitor_envelopes_never_panic(
        schema in prop_oneof![
            Just("azureMonitorCommonAlertSchema"),
            Just("AzureMonitorMetricAlert"),
            Just("Microsoft.Insights/activityLogs"),
        ],
        ess in prop::collection::btree_map(
            prop_oneof![
                Just("alertId"), Just("alertRule"), Just("severity"), Just("monitorCondition"),
                Just("alertTargetIDs"), Just("firedDateTime"), Just("monitoringService"),
                Just("configurationItems"), Just("alertRuleID"),
            ],
            arb_json(),
            0..9,
        ),
        ctx in arb_json(),
        raw in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut essentials = serde_json::Map::new();
        essentials.insert("alertId".into(), json!("a"));
        essentials.insert("monitorCondition".into(), json!("Fired"));
        for (k, v) in ess {
            essentials.insert(k.to_string(), v);
        }
        let v = json!({"schemaId": schema, "data": {
            "essentials": essentials, "alertContext": ctx.clone(), "status": "Activated",
            "context": {"id": "x", "activityLog": ctx, "eventDataId": "e"},
        }});
        check_azmon(&v);
        let _ = azure_monitor::parse(&v, &raw);
    }

    #[test]
    fn alertmanager_envelopes_never_panic(
        alert in prop::collection::btree_map(
            prop_oneof![
                Just("status"), Just("labels"), Just("annotations"), Just("startsAt"),
                Just("endsAt"), Just("generatorURL"), Just("fingerprint"),
            ],
            arb_json(),
            0..7,
        ),
        labels in prop::collection::btree_map(".{0,8}", ".{0,8}", 0..5),
    ) {
        let mut a: serde_json::Map<String, Value> = serde_json::Map::new();
        a.insert("status".into(), json!("firing"));
        a.insert("labels".into(), json!(labels));
        a.insert("startsAt".into(), json!("2024-05-01T10:00:00Z"));
        for (k, v) in alert {
            a.insert(k.to_string(), v);
        }
        check_am(&json!({"version": "4", "alerts": [a]}));
    }
}

#[test]
fn fixtures_used_here_exist_and_are_json() {
    // Guards against a renamed fixture silently dropping out of the tests above.
    for name in [
        "alertmanager-webhook-v4.json",
        "variants/alertmanager-v4-resolved.json",
        "variants/alertmanager-v4-0.32-notification-reason.json",
        "variants/alertmanager-v4-0.34-route-labels.json",
        "variants/alertmanager-v4-empty-alerts.json",
    ] {
        value(name);
    }
}
