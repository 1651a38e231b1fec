//! Azure DevOps service-hook deliveries (Web Hooks consumer, PROTOCOLS.md §3) read as run-ledger
//! facts: which run (the build/run id, as `scripts/azdev_ica_hook.sh` uses `$BUILD_BUILDID`), how
//! to start it when the ledger has not seen it, the event to append, and whether the run is done.
//! Pure: no I/O. The route is `http/azdo.rs`; the ledger writes are `runs::record_hook`.
//!
//! A new event type goes in [`HookKind`] and gets its own `parse_*` function below.

use super::alert::PayloadError;
use super::json::{lenient_string, parse_timestamp, truncate, type_name};
use super::run::{RunStart, RunStatus};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// Branch or commit a hook does not carry.
pub const UNKNOWN: &str = "unknown";
/// `triggered_by` when a hook names nobody.
pub const DEFAULT_TRIGGERED_BY: &str = "azure-devops";
/// Longest run id taken from a hook (Azure DevOps ids are integers).
const MAX_RUN_ID: usize = 256;
/// Longest start field (as `run/start` allows).
const MAX_FIELD: usize = 1024;
/// Longest message text kept in an event.
const MAX_MESSAGE: usize = 1000;

/// The service-hook events that become run-ledger records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    BuildComplete,
    RunStateChanged,
    StageStateChanged,
    JobStateChanged,
    ApprovalPending,
    ApprovalCompleted,
}

impl HookKind {
    pub const ALL: [HookKind; 6] = [
        HookKind::BuildComplete,
        HookKind::RunStateChanged,
        HookKind::StageStateChanged,
        HookKind::JobStateChanged,
        HookKind::ApprovalPending,
        HookKind::ApprovalCompleted,
    ];

    /// The Azure DevOps event id (`eventType` of the delivery).
    pub fn ado_event_type(self) -> &'static str {
        match self {
            HookKind::BuildComplete => "build.complete",
            HookKind::RunStateChanged => "ms.vss-pipelines.run-state-changed-event",
            HookKind::StageStateChanged => "ms.vss-pipelines.stage-state-changed-event",
            HookKind::JobStateChanged => "ms.vss-pipelines.job-state-changed-event",
            HookKind::ApprovalPending => "ms.vss-pipelinechecks-events.approval-pending",
            HookKind::ApprovalCompleted => "ms.vss-pipelinechecks-events.approval-completed",
        }
    }

    /// The run ledger's `event_type` for this hook.
    pub fn ledger_event_type(self) -> &'static str {
        match self {
            HookKind::BuildComplete => "azdo.build_complete",
            HookKind::RunStateChanged => "azdo.run_state_changed",
            HookKind::StageStateChanged => "azdo.stage_state_changed",
            HookKind::JobStateChanged => "azdo.job_state_changed",
            HookKind::ApprovalPending => "azdo.approval_pending",
            HookKind::ApprovalCompleted => "azdo.approval_completed",
        }
    }

    pub fn from_event_type(s: &str) -> Option<HookKind> {
        let s = s.trim();
        HookKind::ALL
            .into_iter()
            .find(|k| k.ado_event_type().eq_ignore_ascii_case(s))
    }
}

/// A run the hook says is over.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub status: RunStatus,
    pub end_time: DateTime<Utc>,
}

/// A delivery to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    pub kind: HookKind,
    /// The delivery's envelope `id` (else `subscriptionId:notificationId`).
    pub hook_id: String,
    /// Redeliveries of one event share this: the event type and the hook id (the documentation
    /// samples reuse one id for a stage and a job event).
    pub dedup_key: String,
    pub run_id: String,
    /// What the hook knows, to start the run if the ledger has not seen it.
    pub start: RunStart,
    pub event_data: Value,
    /// Present when this delivery finishes the run (`build.complete`, or a run state change to
    /// `completed` with a result the ledger knows).
    pub completion: Option<Completion>,
    /// A completed run whose result is not one the ledger maps (say `unknown`): the event is
    /// recorded and the run stays open.
    pub unmapped_result: Option<String>,
}

/// What a delivery asks of the ledger.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Record(Box<Hook>),
    /// Accepted, nothing recorded: an event type the hub does not record, or an approval event
    /// that names no run.
    Ignored {
        event_type: String,
        reason: String,
    },
}

/// The ledger status of a run result (lower case in the pipeline events, any case accepted).
pub fn run_status(result: &str) -> Option<RunStatus> {
    match result.trim().to_ascii_lowercase().as_str() {
        "succeeded" | "partiallysucceeded" => Some(RunStatus::Success),
        "failed" => Some(RunStatus::Failed),
        "canceled" | "cancelled" | "stopped" => Some(RunStatus::Cancelled),
        _ => None,
    }
}

/// Read a delivery. `now` stands in for a completion time the hook does not give.
pub fn parse(v: &Value, now: DateTime<Utc>) -> Result<Parsed, PayloadError> {
    let env = v
        .as_object()
        .ok_or_else(|| PayloadError::new("$", "must be a JSON object"))?;
    let event_type = match env.get("eventType") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        None | Some(Value::Null) => {
            return Err(PayloadError::new(
                "eventType",
                "is required: this is not an Azure DevOps service-hook delivery",
            ))
        }
        Some(Value::String(_)) => return Err(PayloadError::new("eventType", "must not be empty")),
        Some(other) => {
            return Err(PayloadError::new(
                "eventType",
                format!("must be a string, got {}", type_name(other)),
            ))
        }
    };
    let Some(kind) = HookKind::from_event_type(&event_type) else {
        return Ok(Parsed::Ignored {
            reason: format!(
                "event type {:?} is not recorded; the hub records {}",
                truncate(&event_type, 200),
                HookKind::ALL.map(HookKind::ado_event_type).join(", ")
            ),
            event_type,
        });
    };
    let resource = match env.get("resource") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => return Err(PayloadError::new(
            "resource",
            "is required: set \"Resource details to send\" to All in the service-hook subscription",
        )),
        Some(other) => {
            return Err(PayloadError::new(
                "resource",
                format!("must be an object, got {}", type_name(other)),
            ))
        }
    };
    let hook_id = hook_id(env)?;
    let created = text(v, &["createdDate"]).and_then(|s| parse_timestamp(&s));
    let mut data = Map::new();
    put(&mut data, "hook_id", json!(hook_id));
    put(&mut data, "notification_id", field(v, &["notificationId"]));
    put(&mut data, "subscription_id", field(v, &["subscriptionId"]));
    put(&mut data, "ado_event_type", json!(kind.ado_event_type()));
    put(
        &mut data,
        "resource_version",
        field(v, &["resourceVersion"]),
    );
    put(&mut data, "created_date", field(v, &["createdDate"]));
    put(
        &mut data,
        "message",
        text(v, &["message", "text"]).map_or(Value::Null, |m| json!(truncate(&m, MAX_MESSAGE))),
    );
    let r = Value::Object(resource.clone());
    let ctx = Ctx {
        r: &r,
        created,
        now,
    };
    let found = match kind {
        HookKind::BuildComplete => build_complete(&ctx, &mut data)?,
        HookKind::RunStateChanged => run_state_changed(&ctx, &mut data)?,
        HookKind::StageStateChanged => stage_state_changed(&ctx, &mut data)?,
        HookKind::JobStateChanged => job_state_changed(&ctx, &mut data)?,
        HookKind::ApprovalPending | HookKind::ApprovalCompleted => {
            match approval(&ctx, &mut data)? {
                Some(found) => found,
                None => {
                    return Ok(Parsed::Ignored {
                        event_type,
                        reason: "the approval event names no run (resource.run is null and \
                                 resource.id is 0, as in the documented sample), so it is \
                                 recorded against nothing"
                            .into(),
                    })
                }
            }
        }
    };
    Ok(Parsed::Record(Box::new(Hook {
        kind,
        dedup_key: format!("{}|{hook_id}", kind.ado_event_type()),
        hook_id,
        start: RunStart {
            pipeline_name: found.pipeline.unwrap_or_else(|| UNKNOWN.into()),
            run_id: found.run_id.clone(),
            branch: found.branch.unwrap_or_else(|| UNKNOWN.into()),
            commit: found.commit.unwrap_or_else(|| UNKNOWN.into()),
            triggered_by: found
                .triggered_by
                .unwrap_or_else(|| DEFAULT_TRIGGERED_BY.into()),
        },
        run_id: found.run_id,
        event_data: Value::Object(data),
        completion: found.completion,
        unmapped_result: found.unmapped_result,
    })))
}

struct Ctx<'a> {
    /// The delivery's `resource`.
    r: &'a Value,
    created: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

/// What one event type yields besides its event data.
#[derive(Default)]
struct Found {
    run_id: String,
    pipeline: Option<String>,
    branch: Option<String>,
    commit: Option<String>,
    triggered_by: Option<String>,
    completion: Option<Completion>,
    unmapped_result: Option<String>,
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

/// The envelope id, else `subscriptionId:notificationId`.
fn hook_id(env: &Map<String, Value>) -> Result<String, PayloadError> {
    if let Some(id) = env.get("id").and_then(lenient_string) {
        let id = id.trim();
        if !id.is_empty() && id.len() <= MAX_FIELD {
            return Ok(id.to_string());
        }
    }
    if let Some(n) = env.get("notificationId").and_then(lenient_string) {
        let sub = env
            .get("subscriptionId")
            .and_then(lenient_string)
            .unwrap_or_default();
        return Ok(truncate(&format!("{sub}:{n}"), MAX_FIELD));
    }
    Err(PayloadError::new(
        "id",
        "is required (with notificationId as a fallback): it tells redeliveries apart from new events",
    ))
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| match cur {
        Value::Object(m) => m.get(*k),
        Value::Array(items) => k.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// A scalar at `path` as trimmed, non-empty text; anything else is absent.
fn text(v: &Value, path: &[&str]) -> Option<String> {
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
fn field(v: &Value, path: &[&str]) -> Value {
    match at(v, path) {
        Some(s @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => s.clone(),
        _ => Value::Null,
    }
}

/// A state or result, lower case (the samples send lower case, the filters capitalise).
fn lower(v: &Value, path: &[&str]) -> Option<String> {
    text(v, path).map(|s| s.to_ascii_lowercase())
}

fn put(data: &mut Map<String, Value>, key: &str, value: Value) {
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
fn split_get_version(s: &str) -> (Option<String>, Option<String>) {
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

fn build_complete(c: &Ctx<'_>, data: &mut Map<String, Value>) -> Result<Found, PayloadError> {
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

fn run_state_changed(c: &Ctx<'_>, data: &mut Map<String, Value>) -> Result<Found, PayloadError> {
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

fn stage_state_changed(c: &Ctx<'_>, data: &mut Map<String, Value>) -> Result<Found, PayloadError> {
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

fn job_state_changed(c: &Ctx<'_>, data: &mut Map<String, Value>) -> Result<Found, PayloadError> {
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
fn approval(c: &Ctx<'_>, data: &mut Map<String, Value>) -> Result<Option<Found>, PayloadError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn fixture(name: &str) -> Value {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/azdo")
            .join(name);
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    fn record(v: &Value) -> Hook {
        match parse(v, now()).unwrap() {
            Parsed::Record(h) => *h,
            other => panic!("expected a record, got {other:?}"),
        }
    }

    #[test]
    fn build_complete_sample() {
        let h = record(&fixture("ado-build-complete.json"));
        assert_eq!(h.kind, HookKind::BuildComplete);
        assert_eq!(h.run_id, "2");
        assert_eq!(h.start.pipeline_name, "ConsumerAddressModule");
        assert_eq!(h.start.branch, "refs/heads/master");
        assert_eq!(h.start.commit, "600c52d2d5b655caa111abfd863e5a9bd304bb0e");
        assert_eq!(h.start.triggered_by, "fabrikamfiber16@hotmail.com");
        let c = h.completion.unwrap();
        assert_eq!(c.status, RunStatus::Success);
        assert_eq!(c.end_time.to_rfc3339(), "2015-04-07T18:06:10.690+00:00");
        assert_eq!(
            h.event_data["build_number"],
            "ConsumerAddressModule_20150407.1"
        );
        assert_eq!(h.event_data["result"], "succeeded");
        assert_eq!(
            h.dedup_key,
            "build.complete|4a5d99d6-1c75-4e53-91b9-ee80057d4ce3"
        );
    }

    #[test]
    fn run_state_changed_sample() {
        let h = record(&fixture("ado-run-state-changed.json"));
        assert_eq!(h.run_id, "11");
        assert_eq!(h.start.pipeline_name, "TEST-CI");
        assert_eq!(h.start.branch, UNKNOWN);
        assert_eq!(h.start.triggered_by, DEFAULT_TRIGGERED_BY);
        assert_eq!(h.event_data["state"], "completed");
        assert_eq!(h.event_data["message"], "Run 11 succeeded.");
        let c = h.completion.unwrap();
        assert_eq!(c.status, RunStatus::Success);
        assert_eq!(c.end_time.to_rfc3339(), "2019-12-13T04:46:13.613+00:00");
    }

    #[test]
    fn stage_and_job_samples_are_events_only() {
        let s = record(&fixture("ado-stage-state-changed.json"));
        assert_eq!(s.run_id, "2");
        assert_eq!(s.event_data["stage_name"], "__default");
        assert_eq!(s.event_data["result"], "succeeded");
        assert!(s.completion.is_none(), "only run state changes finish");
        let j = record(&fixture("ado-job-state-changed.json"));
        assert_eq!(j.run_id, "2");
        assert_eq!(j.event_data["job_name"], "__default");
        assert_eq!(j.event_data["notification_id"], 3);
        assert!(j.completion.is_none());
        // The samples share an id; the event type keeps their dedup keys apart.
        assert_eq!(s.hook_id, j.hook_id);
        assert_ne!(s.dedup_key, j.dedup_key);
    }

    #[test]
    fn approval_samples_name_no_run() {
        for f in ["ado-approval-pending.json", "ado-approval-completed.json"] {
            match parse(&fixture(f), now()).unwrap() {
                Parsed::Ignored { reason, .. } => assert!(reason.contains("no run"), "{reason}"),
                other => panic!("{f}: {other:?}"),
            }
        }
        let mut v = fixture("ado-approval-completed.json");
        v["resource"]["id"] = json!(2);
        v["resource"]["stageName"] = json!("Prod");
        let h = record(&v);
        assert_eq!(h.run_id, "2");
        assert_eq!(h.start.pipeline_name, UNKNOWN);
        assert_eq!(h.event_data["approval_status"], "approved");
        assert_eq!(h.event_data["stage_name"], "Prod");
        assert_eq!(h.event_data["steps"][0]["status"], "approved");
        v["resource"]["run"] = json!({"id": "77", "pipeline": {"name": "web"}});
        assert_eq!(record(&v).run_id, "77");
    }

    #[test]
    fn results_map_to_ledger_statuses() {
        assert_eq!(run_status("partiallySucceeded"), Some(RunStatus::Success));
        assert_eq!(run_status("Failed"), Some(RunStatus::Failed));
        assert_eq!(run_status("canceled"), Some(RunStatus::Cancelled));
        assert_eq!(run_status("stopped"), Some(RunStatus::Cancelled));
        assert_eq!(run_status("unknown"), None);
        let mut v = fixture("ado-run-state-changed.json");
        v["resource"]["run"]["result"] = json!("unknown");
        let h = record(&v);
        assert!(h.completion.is_none());
        assert_eq!(h.unmapped_result.as_deref(), Some("unknown"));
        // In progress: no result needed, nothing finished.
        let mut v = fixture("ado-run-state-changed.json");
        v["resource"]["run"]["state"] = json!("inProgress");
        v["resource"]["run"]["result"] = Value::Null;
        let h = record(&v);
        assert!(h.completion.is_none() && h.unmapped_result.is_none());
        assert_eq!(h.event_data["state"], "inprogress");
    }

    #[test]
    fn missing_fields_name_their_path() {
        type Case = (&'static str, fn(&mut Value), &'static str);
        let cases: Vec<Case> = vec![
            (
                "ado-run-state-changed.json",
                |v| v["resource"]["run"]["id"] = Value::Null,
                "resource.run.id",
            ),
            (
                "ado-run-state-changed.json",
                |v| v["resource"]["run"]["state"] = json!(3),
                "resource.run.state",
            ),
            (
                "ado-run-state-changed.json",
                |v| {
                    v["resource"]["run"]
                        .as_object_mut()
                        .unwrap()
                        .remove("result");
                },
                "resource.run.result",
            ),
            (
                "ado-run-state-changed.json",
                |v| v["resource"]["run"]["id"] = json!({"x": 1}),
                "resource.run.id",
            ),
            (
                "ado-build-complete.json",
                |v| {
                    v["resource"].as_object_mut().unwrap().remove("id");
                },
                "resource.id",
            ),
            (
                "ado-build-complete.json",
                |v| {
                    v["resource"].as_object_mut().unwrap().remove("status");
                },
                "resource.status",
            ),
            (
                "ado-stage-state-changed.json",
                |v| v["resource"]["run"] = Value::Null,
                "resource.run.id",
            ),
            (
                "ado-job-state-changed.json",
                |v| {
                    v.as_object_mut().unwrap().remove("resource");
                },
                "resource",
            ),
            (
                "ado-approval-pending.json",
                |v| v["resource"]["approval"] = json!("x"),
                "resource.approval",
            ),
            (
                "ado-build-complete.json",
                |v| {
                    v.as_object_mut().unwrap().remove("id");
                },
                "id",
            ),
            (
                "ado-build-complete.json",
                |v| v["eventType"] = json!(5),
                "eventType",
            ),
        ];
        for (f, change, field) in cases {
            let mut v = fixture(f);
            change(&mut v);
            let e = parse(&v, now()).unwrap_err();
            assert_eq!(e.field, field, "{f}: {}", e.problem);
        }
        assert_eq!(parse(&json!({}), now()).unwrap_err().field, "eventType");
        assert_eq!(parse(&json!([]), now()).unwrap_err().field, "$");
    }

    #[test]
    fn unknown_event_types_are_ignored_with_a_reason() {
        let Parsed::Ignored { event_type, reason } =
            parse(&json!({"eventType": "git.push", "resource": {}}), now()).unwrap()
        else {
            panic!()
        };
        assert_eq!(event_type, "git.push");
        assert!(reason.contains("build.complete"));
    }

    #[test]
    fn get_versions() {
        assert_eq!(
            split_get_version("LG:refs/heads/main:abc"),
            (Some("refs/heads/main".into()), Some("abc".into()))
        );
        assert_eq!(split_get_version("C123"), (None, Some("C123".into())));
    }

    #[test]
    fn notification_id_stands_in_for_a_missing_id() {
        let mut v = fixture("ado-job-state-changed.json");
        v.as_object_mut().unwrap().remove("id");
        let h = record(&v);
        assert_eq!(h.hook_id, "00000000-0000-0000-0000-000000000000:3");
    }
}
