//! The run ledger's records: a pipeline run's start, events and finish, validated from JSON,
//! and the per-run SHA-256 chain whose last link is the `audit_hash` returned at finish.

use super::alert::PayloadError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Success,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Success => "success",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStart {
    pub pipeline_name: String,
    pub run_id: String,
    pub branch: String,
    pub commit: String,
    pub triggered_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEventIn {
    pub run_id: String,
    pub event_type: String,
    pub event_data: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFinish {
    pub run_id: String,
    pub status: RunStatus,
    pub end_time: DateTime<Utc>,
}

/// What is stored for a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    #[serde(flatten)]
    pub start: RunStart,
    pub record_id: String,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub started_by: String,
    pub events: u64,
    /// The chain hash of the latest record of this run.
    pub chain_head: String,
    pub finish: Option<FinishRecord>,
    /// What started the run when it was not `run/start`: an Azure DevOps service hook
    /// (`azdo:<event type>`), whose start details are partly unknown. A later `run/start` with
    /// the pipeline's own details is then accepted, not refused as different.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinishRecord {
    pub status: RunStatus,
    pub end_time: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub finished_by: String,
    /// The chain hash of the finish record: covers the start, every event and the finish.
    pub audit_hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEventRecord {
    pub event_id: String,
    pub run_id: String,
    pub seq: u64,
    pub event_type: String,
    pub event_data: Value,
    pub received_at: DateTime<Utc>,
    pub by: String,
    pub chain_hash: String,
    #[serde(default)]
    pub incident_id: Option<String>,
}

/// The next link: SHA-256 over the previous link, the record kind and the record's canonical
/// JSON (serde_json writes object keys in sorted order).
pub fn chain(prev: &str, kind: &str, record: &Value) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(kind.as_bytes());
    h.update(b"\n");
    h.update(record.to_string().as_bytes());
    hex::encode(h.finalize())
}

fn required_strings(v: &Value, names: &[&str]) -> Result<Vec<String>, PayloadError> {
    let obj = v
        .as_object()
        .ok_or_else(|| PayloadError::new("$", "must be a JSON object"))?;
    let mut missing = Vec::new();
    let mut out = Vec::new();
    for n in names {
        match obj.get(*n) {
            Some(Value::String(s)) if !s.trim().is_empty() => {
                if s.len() > 1024 {
                    return Err(PayloadError::new(*n, "is longer than 1024 characters"));
                }
                out.push(s.trim().to_string());
            }
            Some(Value::Null) | None => missing.push(*n),
            Some(Value::String(_)) => return Err(PayloadError::new(*n, "must not be empty")),
            Some(other) => {
                return Err(PayloadError::new(
                    *n,
                    format!("must be a string, got {}", super::json::type_name(other)),
                ))
            }
        }
    }
    if !missing.is_empty() {
        return Err(PayloadError::new(
            missing.join(","),
            format!("missing required field(s): {}", missing.join(", ")),
        ));
    }
    Ok(out)
}

pub fn parse_start(v: &Value) -> Result<RunStart, PayloadError> {
    let f = required_strings(
        v,
        &[
            "pipeline_name",
            "run_id",
            "branch",
            "commit",
            "triggered_by",
        ],
    )?;
    let [pipeline_name, run_id, branch, commit, triggered_by]: [String; 5] = f
        .try_into()
        .map_err(|_| PayloadError::new("$", "internal: field count"))?;
    Ok(RunStart {
        pipeline_name,
        run_id,
        branch,
        commit,
        triggered_by,
    })
}

pub fn parse_event(v: &Value) -> Result<RunEventIn, PayloadError> {
    let f = required_strings(v, &["run_id", "event_type"])?;
    let event_data = match v.get("event_data") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(d @ Value::Object(_)) => d.clone(),
        Some(other) => {
            return Err(PayloadError::new(
                "event_data",
                format!("must be an object, got {}", super::json::type_name(other)),
            ))
        }
    };
    Ok(RunEventIn {
        run_id: f[0].clone(),
        event_type: f[1].to_ascii_lowercase(),
        event_data,
    })
}

pub fn parse_finish(v: &Value) -> Result<RunFinish, PayloadError> {
    let f = required_strings(v, &["run_id", "status", "end_time"])?;
    let status = match f[1].to_ascii_lowercase().as_str() {
        "success" | "succeeded" => RunStatus::Success,
        "failed" => RunStatus::Failed,
        "cancelled" | "canceled" => RunStatus::Cancelled,
        other => {
            return Err(PayloadError::new(
                "status",
                format!("{other:?} must be success, failed or cancelled"),
            ))
        }
    };
    let end_time = super::json::parse_timestamp(&f[2]).ok_or_else(|| {
        PayloadError::new(
            "end_time",
            format!(
                "{:?} is not a time (use ISO 8601, e.g. 2026-11-22T10:00:00Z)",
                f[2]
            ),
        )
    })?;
    Ok(RunFinish {
        run_id: f[0].clone(),
        status,
        end_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_fields_are_all_named() {
        let e = parse_start(&json!({"run_id": "1", "branch": "main"})).unwrap_err();
        assert_eq!(e.field, "pipeline_name,commit,triggered_by");
        assert!(e.problem.contains("pipeline_name, commit, triggered_by"));
        let e = parse_start(&json!({"pipeline_name": 5, "run_id": "1", "branch": "m", "commit": "c", "triggered_by": "t"})).unwrap_err();
        assert_eq!(e.field, "pipeline_name");
        assert!(parse_start(&json!([])).is_err());
    }

    #[test]
    fn finish_status_and_time() {
        let f = parse_finish(
            &json!({"run_id": "1", "status": "Succeeded", "end_time": "2026-11-22T10:00:00Z"}),
        )
        .unwrap();
        assert_eq!(f.status, RunStatus::Success);
        let e = parse_finish(
            &json!({"run_id": "1", "status": "maybe", "end_time": "2026-11-22T10:00:00Z"}),
        )
        .unwrap_err();
        assert_eq!(e.field, "status");
        let e = parse_finish(&json!({"run_id": "1", "status": "failed", "end_time": "yesterday"}))
            .unwrap_err();
        assert_eq!(e.field, "end_time");
    }

    #[test]
    fn the_chain_depends_on_order_and_content() {
        let a = chain("", "start", &json!({"x": 1}));
        let b = chain(&a, "event", &json!({"y": 2}));
        assert_ne!(chain(&a, "event", &json!({"y": 3})), b);
        assert_ne!(chain("", "event", &json!({"y": 2})), b);
        // Key order in the input does not matter (canonical JSON).
        let v1: Value = serde_json::from_str(r#"{"b":1,"a":2}"#).unwrap();
        let v2: Value = serde_json::from_str(r#"{"a":2,"b":1}"#).unwrap();
        assert_eq!(chain("", "k", &v1), chain("", "k", &v2));
    }
}
