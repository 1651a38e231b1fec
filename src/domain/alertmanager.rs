//! Prometheus Alertmanager webhook payloads (docs/protocols.md §7): webhook `version` "4" as sent by
//! Alertmanager 0.25–0.34 (with or without `notification_reason`, `routeLabels`,
//! `truncatedAlerts`). One [`NormalizedAlert`] per entry of `alerts[]`, each with its own JSON.
//! Also the prometheus/common label-set fingerprint, for alerts that arrive without one.

use super::alert::{
    incident_fingerprint, Condition, NormalizedAlert, PayloadError, Severity, Source,
};
use super::json::{lenient_string, parse_timestamp, type_name};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The `schema` of every alert from this parser.
pub const SCHEMA: &str = "alertmanager/v4";
/// The only webhook payload version Alertmanager has ever sent.
pub const VERSION: &str = "4";

const FNV_OFFSET: u64 = 14_695_981_039_346_656_037;
const FNV_PRIME: u64 = 1_099_511_628_211;
const SEPARATOR: u8 = 0xff;

/// The prometheus/common `model.LabelsToSignature` fingerprint of a label set: FNV-1a 64 over
/// the labels sorted by name, each as name, 0xff, value, 0xff; as 16 lowercase hex digits.
pub fn label_fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h = FNV_OFFSET;
    for (name, value) in labels {
        for b in name
            .bytes()
            .chain([SEPARATOR])
            .chain(value.bytes())
            .chain([SEPARATOR])
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
    }
    format!("{h:016x}")
}

/// Parse one webhook body into its alerts, each paired with that alert object's JSON.
pub fn parse(body: &Value) -> Result<Vec<(NormalizedAlert, String)>, PayloadError> {
    let obj = body
        .as_object()
        .ok_or_else(|| PayloadError::new("$", "must be a JSON object"))?;
    match obj.get("version") {
        None | Some(Value::Null) => return Err(PayloadError::new("version", "is required")),
        Some(Value::String(v)) if v == VERSION => {}
        Some(Value::String(v)) => {
            return Err(PayloadError::new(
                "version",
                format!("webhook version {v:?} is not supported (only \"4\")"),
            ))
        }
        Some(other) => {
            return Err(PayloadError::new(
                "version",
                format!("must be a string, got {}", type_name(other)),
            ))
        }
    }
    let alerts = match obj.get("alerts") {
        None | Some(Value::Null) => return Err(PayloadError::new("alerts", "is required")),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(PayloadError::new(
                "alerts",
                format!("must be an array, got {}", type_name(other)),
            ))
        }
    };
    let receiver = obj.get("receiver").and_then(lenient_string);
    alerts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let alert = parse_alert(a, &format!("alerts[{i}]"), receiver.as_deref())?;
            // Serializing a Value cannot fail (its map keys are strings).
            let json = serde_json::to_string(a).unwrap_or_default();
            Ok((alert, json))
        })
        .collect()
}

fn parse_alert(
    v: &Value,
    path: &str,
    receiver: Option<&str>,
) -> Result<NormalizedAlert, PayloadError> {
    let a = v.as_object().ok_or_else(|| {
        PayloadError::new(path, format!("must be an object, got {}", type_name(v)))
    })?;
    let field = |k: &str| format!("{path}.{k}");

    let status = match a.get("status") {
        None | Some(Value::Null) => return Err(PayloadError::new(field("status"), "is required")),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(PayloadError::new(
                field("status"),
                format!("must be a string, got {}", type_name(other)),
            ))
        }
    };
    let condition = if status.eq_ignore_ascii_case("firing") {
        Condition::Fired
    } else if status.eq_ignore_ascii_case("resolved") {
        Condition::Resolved
    } else {
        return Err(PayloadError::new(
            field("status"),
            format!("must be \"firing\" or \"resolved\", got {status:?}"),
        ));
    };

    let labels = string_map(a.get("labels"), &field("labels"), true)?;

    let starts_raw = match a.get("startsAt") {
        None | Some(Value::Null) => {
            return Err(PayloadError::new(field("startsAt"), "is required"))
        }
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(PayloadError::new(
                field("startsAt"),
                format!("must be a string, got {}", type_name(other)),
            ))
        }
    };
    let starts_at = parse_timestamp(starts_raw).ok_or_else(|| {
        PayloadError::new(
            field("startsAt"),
            format!("must be an RFC 3339 timestamp, got {starts_raw:?}"),
        )
    })?;
    // Firing alerts carry the Go zero time `0001-01-01T00:00:00Z` ("not ended"); an end time
    // only counts for a resolved alert.
    let ends_at = a
        .get("endsAt")
        .and_then(Value::as_str)
        .and_then(parse_timestamp)
        .filter(|t| t.timestamp() > 0);
    let resolved_at = match condition {
        Condition::Resolved => ends_at,
        Condition::Fired => None,
    };

    // Annotations are for humans: taken leniently, never a reason to reject.
    let annotations = string_map(a.get("annotations"), &field("annotations"), false)?;
    let fingerprint = a
        .get("fingerprint")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| label_fingerprint(&labels));

    let alertname = labels
        .get("alertname")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty());
    let rule = alertname.unwrap_or("unnamed").to_string();
    let severity = Severity::from_label(labels.get("severity").map(String::as_str));
    let targets: Vec<String> = labels
        .iter()
        // `severity` stays: Alertmanager treats `severity=warning` and `severity=critical` of
        // one alert as two alerts (two fingerprints), and so must the incident streams, or a
        // resolved critical would close the incident of a still-firing warning.
        .filter(|(k, _)| k.as_str() != "alertname")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let description = ["description", "summary"]
        .iter()
        .find_map(|k| annotations.get(*k))
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let link = a
        .get("generatorURL")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let mut details = annotations.clone();
    if let Some(sev) = labels.get("severity") {
        details
            .entry("severity".into())
            .or_insert_with(|| sev.clone());
    }
    if let Some(r) = receiver.filter(|r| !r.is_empty()) {
        details
            .entry("receiver".into())
            .or_insert_with(|| r.to_string());
    }

    Ok(NormalizedAlert {
        source: Source::Alertmanager,
        schema: SCHEMA.to_string(),
        kind: "prometheus".to_string(),
        dedup_key: format!(
            "am|{fingerprint}|{}|{starts_raw}",
            status.to_ascii_lowercase()
        ),
        alert_id: fingerprint,
        fingerprint: incident_fingerprint(Source::Alertmanager, &rule, &targets),
        rule,
        rule_id: None,
        targets,
        condition,
        severity,
        fired_at: Some(starts_at),
        resolved_at,
        description,
        resource_group: None,
        link,
        details,
    })
}

/// An object of string values. With `strict`, the object is required and every value must be a
/// string (errors name `path.key`); otherwise anything unusable is skipped.
fn string_map(
    v: Option<&Value>,
    path: &str,
    strict: bool,
) -> Result<BTreeMap<String, String>, PayloadError> {
    let m: &Map<String, Value> = match v {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) if strict => return Err(PayloadError::new(path, "is required")),
        Some(other) if strict => {
            return Err(PayloadError::new(
                path,
                format!("must be an object, got {}", type_name(other)),
            ))
        }
        _ => return Ok(BTreeMap::new()),
    };
    let mut out = BTreeMap::new();
    for (k, v) in m {
        match v {
            Value::String(s) => {
                out.insert(k.clone(), s.clone());
            }
            other if strict => {
                return Err(PayloadError::new(
                    format!("{path}.{k}"),
                    format!("must be a string, got {}", type_name(other)),
                ))
            }
            other => {
                if let Some(s) = lenient_string(other) {
                    out.insert(k.clone(), s);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_label_set_is_the_fnv_offset() {
        assert_eq!(label_fingerprint(&BTreeMap::new()), "cbf29ce484222325");
    }

    #[test]
    fn matches_prometheus_common_test_vector() {
        // prometheus/common model/signature_test.go TestLabelsToSignature.
        let fp = label_fingerprint(&labels(&[
            ("name", "garland, briggs"),
            ("fear", "love is not enough"),
        ]));
        assert_eq!(
            u64::from_str_radix(&fp, 16).unwrap(),
            5_799_056_148_416_392_346
        );
    }

    #[test]
    fn matches_the_sample_fingerprints() {
        let node1 = labels(&[
            ("alertname", "InstanceDown"),
            ("instance", "node1:9100"),
            ("job", "node"),
            ("severity", "critical"),
        ]);
        assert_eq!(label_fingerprint(&node1), "9692e376846c2652");
        let mut node2 = node1.clone();
        node2.insert("instance".into(), "node2:9100".into());
        assert_eq!(label_fingerprint(&node2), "4645ac3326787d2d");
    }
}
