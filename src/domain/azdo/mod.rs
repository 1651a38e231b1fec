//! Azure DevOps service-hook deliveries (Web Hooks consumer, docs/protocols.md §3) read as run-ledger
//! facts: which run (the build/run id, as `scripts/azdev_ica_hook.sh` uses `$BUILD_BUILDID`), how
//! to start it when the ledger has not seen it, the event to append, and whether the run is done.
//! Pure: no I/O. The route is `http/azdo.rs`, which writes through `runs`.
//!
//! Here: the event types, the envelope and [`parse`]; `events` reads each event type's resource.
//! A new event type goes in [`HookKind`] and gets its function in `events`.

mod events;

use super::alert::PayloadError;
use super::json::{lenient_string, parse_timestamp, truncate, type_name};
use super::run::{RunStart, RunStatus};
use chrono::{DateTime, Utc};
use events::{field, put, text, Ctx};
use serde_json::{json, Map, Value};

/// Branch or commit a hook does not carry.
pub const UNKNOWN: &str = "unknown";
/// `triggered_by` when a hook names nobody.
pub const DEFAULT_TRIGGERED_BY: &str = "azure-devops";
/// Longest run id taken from a hook (Azure DevOps ids are integers).
pub(crate) const MAX_RUN_ID: usize = 256;
/// Longest start field (as `run/start` allows).
pub(crate) const MAX_FIELD: usize = 1024;
/// Longest message text kept in an event.
pub(crate) const MAX_MESSAGE: usize = 1000;

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
        HookKind::BuildComplete => events::build_complete(&ctx, &mut data)?,
        HookKind::RunStateChanged => events::run_state_changed(&ctx, &mut data)?,
        HookKind::StageStateChanged => events::stage_state_changed(&ctx, &mut data)?,
        HookKind::JobStateChanged => events::job_state_changed(&ctx, &mut data)?,
        HookKind::ApprovalPending | HookKind::ApprovalCompleted => {
            match events::approval(&ctx, &mut data)? {
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
            events::split_get_version("LG:refs/heads/main:abc"),
            (Some("refs/heads/main".into()), Some("abc".into()))
        );
        assert_eq!(
            events::split_get_version("C123"),
            (None, Some("C123".into()))
        );
    }

    #[test]
    fn notification_id_stands_in_for_a_missing_id() {
        let mut v = fixture("ado-job-state-changed.json");
        v.as_object_mut().unwrap().remove("id");
        let h = record(&v);
        assert_eq!(h.hook_id, "00000000-0000-0000-0000-000000000000:3");
    }
}
