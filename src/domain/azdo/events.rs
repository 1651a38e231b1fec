//! The resource of each service-hook event type: its run id, start details, event data and
//! completion, with the JSON-path helpers they share. A new event type gets a function here.

use super::{run_status, Completion, MAX_FIELD, MAX_MESSAGE, MAX_RUN_ID};
use crate::domain::alert::PayloadError;
use crate::domain::json::{lenient_string, parse_timestamp, truncate, type_name};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// One delivery, as the event readers see it.
pub(super) struct Ctx<'a> {
    /// The delivery's `resource`.
    pub(super) r: &'a Value,
    pub(super) created: Option<DateTime<Utc>>,
    pub(super) now: DateTime<Utc>,
}

/// What one event type yields besides its event data.
#[derive(Default)]
pub(super) struct Found {
    pub(super) run_id: String,
    pub(super) pipeline: Option<String>,
    pub(super) branch: Option<String>,
    pub(super) commit: Option<String>,
    pub(super) triggered_by: Option<String>,
    pub(super) completion: Option<Completion>,
    pub(super) unmapped_result: Option<String>,
}

impl Ctx<'_> {
    /// The completion (or the unmapped result) of a finished run; `end` is the hook's finish time.
    fn complete(&self, found: &mut Found, result: &str, end: Option<DateTime<Utc>>) {
        match run_status(result) {
            Some(status) => {
                found.completion = Some(Completion {
                    status,
                    end_time: end.or(self.created).unwrap_or(self.now),
                })
            }
            None => found.unmapped_result = Some(result.to_string()),
        }
    }
}

/// The value at `path` (object keys; array indices as digits).
fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| match cur {
        Value::Object(m) => m.get(*k),
        Value::Array(items) => k.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// A scalar at `path` as trimmed, non-empty text; anything else is absent.
pub(super) fn text(v: &Value, path: &[&str]) -> Option<String> {
    at(v, path)
        .and_then(lenient_string)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// [`text`], at most [`MAX_FIELD`] characters.
fn short(v: &Value, path: &[&str]) -> Option<String> {
    text(v, path).map(|s| truncate(&s, MAX_FIELD))
}

/// A scalar at `path` as it is (null when absent or not a scalar).
pub(super) fn field(v: &Value, path: &[&str]) -> Value {
    match at(v, path) {
        Some(s @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => s.clone(),
        _ => Value::Null,
    }
}

/// A state or result, lower case (the samples send lower case, the filters capitalise).
fn lower(v: &Value, path: &[&str]) -> Option<String> {
    text(v, path).map(|s| s.to_ascii_lowercase())
}

pub(super) fn put(data: &mut Map<String, Value>, key: &str, value: Value) {
    if !value.is_null() {
        data.insert(key.to_string(), value);
    }
}

fn opt(s: Option<String>) -> Value {
    s.map_or(Value::Null, Value::String)
}

/// The JSON path of a field of `resource`.
fn rpath(path: &[&str]) -> String {
    let mut out = String::from("resource");
    for p in path {
        if p.parse::<usize>().is_ok() {
            out.push_str(&format!("[{p}]"));
        } else {
            out.push('.');
            out.push_str(p);
        }
    }
    out
}

/// A run or build id at `path` of the resource: a positive number or a non-empty string; `0`,
/// null or absent is no id. Any other type is an error naming the path.
fn run_id_at(r: &Value, path: &[&str]) -> Result<Option<String>, PayloadError> {
    let id = match at(r, path) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(other) => {
            return Err(PayloadError::new(
                rpath(path),
                format!("must be a number or a string, got {}", type_name(other)),
            ))
        }
    };
    if id.is_empty() || id == "0" {
        return Ok(None);
    }
    if id.len() > MAX_RUN_ID {
        return Err(PayloadError::new(
            rpath(path),
            format!("is longer than {MAX_RUN_ID} characters"),
        ));
    }
    Ok(Some(id))
}

fn required_run_id(r: &Value, path: &[&str]) -> Result<String, PayloadError> {
    run_id_at(r, path)?.ok_or_else(|| {
        PayloadError::new(
            rpath(path),
            "is required: the run id puts the event on its run",
        )
    })
}

/// A state or result the ledger needs: a non-empty string, lower case.
fn required_lower(r: &Value, path: &[&str], why: &str) -> Result<String, PayloadError> {
    match at(r, path) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_ascii_lowercase()),
        None | Some(Value::Null) | Some(Value::String(_)) => Err(PayloadError::new(
            rpath(path),
            format!("is required: {why}"),
        )),
        Some(other) => Err(PayloadError::new(
            rpath(path),
            format!("must be a string, got {}", type_name(other)),
        )),
    }
}

fn timestamp(r: &Value, path: &[&str]) -> Option<DateTime<Utc>> {
    text(r, path).and_then(|s| parse_timestamp(&s))
}

/// `sourceGetVersion` of a build: `LG:<ref>:<commit>` for Git, else a TFVC version (`C123`).
pub(super) fn split_get_version(s: &str) -> (Option<String>, Option<String>) {
    match s.strip_prefix("LG:").and_then(|rest| rest.rsplit_once(':')) {
        Some((branch, commit)) => (
            Some(branch.to_string()).filter(|b| !b.is_empty()),
            Some(commit.to_string()).filter(|c| !c.is_empty()),
        ),
        None => (None, Some(s.to_string())),
    }
}

/// The Pipelines run's repository ref and commit, when the run carries them.
fn run_repository(r: &Value) -> (Option<String>, Option<String>) {
    let repo = ["run", "resources", "repositories", "self"];
    let get = |k: &str| {
        let mut p = repo.to_vec();
        p.push(k);
        short(r, &p)
    };
    (get("refName"), get("version"))
}

pub(super) fn build_complete(
    c: &Ctx<'_>,
    data: &mut Map<String, Value>,
) -> Result<Found, PayloadError> {
    let r = c.r;
    let mut found = Found {
        run_id: required_run_id(r, &["id"])?,
        pipeline: short(r, &["definition", "name"]),
        ..Found::default()
    };
    // Newer build resources say `status: completed` and `result: succeeded`; the documented
    // (XAML-era) sample has only `status: succeeded`.
    let result = match lower(r, &["result"]) {
        Some(result) => result,
        None => required_lower(
            r,
            &["status"],
            "build.complete must say how the build ended (resource.result or resource.status)",
        )?,
    };
    let (got_branch, got_commit) = text(r, &["sourceGetVersion"])
        .map(|s| split_get_version(&s))
        .unwrap_or_default();
    found.branch = short(r, &["sourceBranch"]).or(got_branch.map(|b| truncate(&b, MAX_FIELD)));
    found.commit = short(r, &["sourceVersion"]).or(got_commit.map(|b| truncate(&b, MAX_FIELD)));
    found.triggered_by = short(r, &["requestedFor", "uniqueName"])
        .or_else(|| short(r, &["requests", "0", "requestedFor", "uniqueName"]))
        .or_else(|| short(r, &["lastChangedBy", "uniqueName"]));
    let finish = timestamp(r, &["finishTime"]);
    c.complete(&mut found, &result, finish);
    put(data, "build_number", field(r, &["buildNumber"]));
    put(data, "status", opt(lower(r, &["status"])));
    put(data, "result", json!(result));
    put(data, "reason", field(r, &["reason"]));
    put(data, "definition_id", field(r, &["definition", "id"]));
    put(data, "definition_name", field(r, &["definition", "name"]));
    put(data, "start_time", field(r, &["startTime"]));
    put(data, "finish_time", field(r, &["finishTime"]));
    put(data, "source_branch", opt(found.branch.clone()));
    put(data, "source_version", opt(found.commit.clone()));
    put(data, "url", field(r, &["url"]));
    Ok(found)
}

/// The pipeline's name in the pipeline events: `resource.pipeline`, else the run's.
fn pipeline_name(r: &Value) -> Option<String> {
    short(r, &["pipeline", "name"]).or_else(|| short(r, &["run", "pipeline", "name"]))
}

fn pipeline_found(r: &Value, run_id: String) -> Found {
    let (branch, commit) = run_repository(r);
    Found {
        run_id,
        pipeline: pipeline_name(r),
        branch,
        commit,
        ..Found::default()
    }
}

fn run_data(r: &Value, data: &mut Map<String, Value>) {
    put(data, "pipeline_id", field(r, &["pipeline", "id"]));
    put(data, "pipeline_name", opt(pipeline_name(r)));
    put(data, "run_name", field(r, &["run", "name"]));
}

pub(super) fn run_state_changed(
    c: &Ctx<'_>,
    data: &mut Map<String, Value>,
) -> Result<Found, PayloadError> {
    let r = c.r;
    let mut found = pipeline_found(r, required_run_id(r, &["run", "id"])?);
    let state = required_lower(
        r,
        &["run", "state"],
        "a run state change must say the new state",
    )?;
    let result = if state == "completed" {
        let result = required_lower(
            r,
            &["run", "result"],
            "a completed run must say how it ended",
        )?;
        c.complete(&mut found, &result, timestamp(r, &["run", "finishedDate"]));
        Some(result)
    } else {
        lower(r, &["run", "result"])
    };
    put(data, "state", json!(state));
    put(data, "result", opt(result));
    run_data(r, data);
    put(data, "run_created_date", field(r, &["run", "createdDate"]));
    put(data, "finished_date", field(r, &["run", "finishedDate"]));
    put(data, "url", field(r, &["run", "url"]));
    Ok(found)
}

pub(super) fn stage_state_changed(
    c: &Ctx<'_>,
    data: &mut Map<String, Value>,
) -> Result<Found, PayloadError> {
    let r = c.r;
    let found = pipeline_found(r, required_run_id(r, &["run", "id"])?);
    put(data, "stage_name", field(r, &["stage", "name"]));
    put(
        data,
        "stage_display_name",
        field(r, &["stage", "displayName"]),
    );
    put(data, "state", opt(lower(r, &["stage", "state"])));
    put(data, "result", opt(lower(r, &["stage", "result"])));
    run_data(r, data);
    put(data, "run_state", opt(lower(r, &["run", "state"])));
    put(data, "run_result", opt(lower(r, &["run", "result"])));
    Ok(found)
}

pub(super) fn job_state_changed(
    c: &Ctx<'_>,
    data: &mut Map<String, Value>,
) -> Result<Found, PayloadError> {
    let r = c.r;
    let found = pipeline_found(r, required_run_id(r, &["run", "id"])?);
    put(data, "job_name", field(r, &["job", "name"]));
    put(data, "stage_name", field(r, &["stage", "name"]));
    put(data, "state", opt(lower(r, &["job", "state"])));
    put(data, "result", opt(lower(r, &["job", "result"])));
    put(data, "start_time", field(r, &["job", "startTime"]));
    put(data, "finish_time", field(r, &["job", "finishTime"]));
    run_data(r, data);
    Ok(found)
}

/// `None` when the approval names no run (the documented samples).
pub(super) fn approval(
    c: &Ctx<'_>,
    data: &mut Map<String, Value>,
) -> Result<Option<Found>, PayloadError> {
    let r = c.r;
    match at(r, &["approval"]) {
        Some(Value::Object(_)) => {}
        None | Some(Value::Null) => {
            return Err(PayloadError::new(
                "resource.approval",
                "is required: an approval event carries its approval",
            ))
        }
        Some(other) => {
            return Err(PayloadError::new(
                "resource.approval",
                format!("must be an object, got {}", type_name(other)),
            ))
        }
    }
    // The run, else the run (build) id the resource itself carries; 0 in the samples.
    let Some(run_id) = run_id_at(r, &["run", "id"])?.or(run_id_at(r, &["id"])?) else {
        return Ok(None);
    };
    let found = pipeline_found(r, run_id);
    put(data, "approval_id", field(r, &["approval", "id"]));
    put(
        data,
        "approval_status",
        opt(lower(r, &["approval", "status"])),
    );
    put(
        data,
        "stage_name",
        opt(text(r, &["stageName"]).or_else(|| text(r, &["stage", "name"]))),
    );
    put(
        data,
        "environment",
        opt(text(r, &["environment", "name"]).or_else(|| text(r, &["resource", "name"]))),
    );
    put(
        data,
        "instructions",
        field(r, &["approval", "instructions"]),
    );
    put(
        data,
        "min_required_approvers",
        field(r, &["approval", "minRequiredApprovers"]),
    );
    put(data, "attempt", field(r, &["attemptId"]));
    if let Some(Value::Array(steps)) = at(r, &["approval", "steps"]) {
        let steps: Vec<Value> = steps
            .iter()
            .take(50)
            .map(|s| {
                let mut m = Map::new();
                put(&mut m, "approver_id", field(s, &["assignedApprover", "id"]));
                put(
                    &mut m,
                    "approver",
                    field(s, &["assignedApprover", "displayName"]),
                );
                put(&mut m, "status", opt(lower(s, &["status"])));
                put(
                    &mut m,
                    "comment",
                    opt(text(s, &["comment"]).map(|t| truncate(&t, MAX_MESSAGE))),
                );
                put(&mut m, "initiated_on", field(s, &["initiatedOn"]));
                Value::Object(m)
            })
            .collect();
        put(data, "steps", json!(steps));
    }
    run_data(r, data);
    Ok(Some(found))
}
