//! The run ledger: pipeline runs, their events and their finish, kept as documents (one partition
//! per run) with a per-run hash chain, forwarded to the control plane through the outbox. A
//! `rollback` event opens (or attaches to) an incident on the pipeline's rollback stream.

use crate::domain::alert::{
    hash_parts, incident_fingerprint, Condition, NormalizedAlert, Severity, Source,
};
use crate::domain::incident::stream_key;
use crate::domain::run::{
    chain, FinishRecord, RunEventIn, RunEventRecord, RunFinish, RunRecord, RunStart, RunStatus,
};
use crate::error::ApiError;
use crate::identity::Caller;
use crate::startup::App;
use crate::storage::{new_event_id, Delivery, DeliveryAlert, DocCommit, DocWrite, Expect};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::BTreeMap;

const ATTEMPTS: usize = 20;

/// The document partition of a run: `run` + 16 hex digits of the run id's hash.
pub fn partition(run_id: &str) -> String {
    format!("run{}", &hash_parts([run_id])[..16])
}

fn record_id(run_id: &str) -> String {
    format!("RUN-{}", &hash_parts([run_id])[..16])
}

fn corrupt(e: serde_json::Error) -> ApiError {
    crate::ingest::store_error(crate::storage::StoreError::Corrupt(format!(
        "run record: {e}"
    )))
}

fn contention() -> ApiError {
    ApiError::Unavailable {
        message: "too many concurrent updates of this run; retry".into(),
        retry_after: 1,
    }
}

async fn load(app: &App, run_id: &str) -> Result<Option<(RunRecord, String)>, ApiError> {
    match app
        .store
        .doc_get(&partition(run_id), "run")
        .await
        .map_err(crate::ingest::store_error)?
    {
        Some(d) => Ok(Some((
            serde_json::from_value(d.value).map_err(corrupt)?,
            d.version,
        ))),
        None => Ok(None),
    }
}

fn ledger_commit(
    app: &App,
    run_id: &str,
    writes: Vec<DocWrite>,
    kind: &str,
    record: &str,
    payload: Value,
    now: DateTime<Utc>,
) -> DocCommit {
    DocCommit {
        partition: partition(run_id),
        writes,
        outbox: app.config.routing.ledger_drafts(kind, record, payload),
        record_id: record.into(),
        now,
    }
}

/// Commit, mapping storage failures to 503; `false` when the run changed meanwhile.
async fn commit(app: &App, c: &DocCommit) -> Result<bool, ApiError> {
    let written = app
        .store
        .doc_commit(c)
        .await
        .map_err(crate::ingest::store_error)?;
    if written {
        app.metrics.event_ingested("run_ledger");
    }
    Ok(written)
}

fn start_answer(r: &RunRecord) -> Value {
    json!({"success": true, "run_id": r.start.run_id, "record_id": r.record_id})
}

/// A new run's record; `started_from` names what started it when it was not `run/start`.
fn new_record(
    s: RunStart,
    caller: &Caller,
    started_from: Option<String>,
    now: DateTime<Utc>,
) -> RunRecord {
    RunRecord {
        record_id: record_id(&s.run_id),
        status: RunStatus::Running,
        started_at: now,
        started_by: caller.name.clone(),
        events: 0,
        chain_head: chain(
            "",
            "run.start",
            &serde_json::to_value(&s).unwrap_or_default(),
        ),
        finish: None,
        start: s,
        started_from,
    }
}

/// Write a new run's record; `false` when the run appeared meanwhile.
async fn create(app: &App, record: &RunRecord, now: DateTime<Utc>) -> Result<bool, ApiError> {
    let value = serde_json::to_value(record).unwrap_or_default();
    let c = ledger_commit(
        app,
        &record.start.run_id,
        vec![DocWrite {
            key: "run".into(),
            value: value.clone(),
            expect: Expect::Absent,
        }],
        "run.start",
        &record.record_id,
        json!({"record_id": record.record_id, "run": value}),
        now,
    );
    commit(app, &c).await
}

/// `run/start`: new → (true, answer); the same start again → (false, the same answer). A run that
/// a service hook started (it knew less) takes the pipeline's start too: its details become a
/// `start_details` event and the answer is the run's.
pub async fn start(
    app: &App,
    caller: &Caller,
    s: RunStart,
    now: DateTime<Utc>,
) -> Result<(bool, Value), ApiError> {
    for _ in 0..ATTEMPTS {
        if let Some((existing, _)) = load(app, &s.run_id).await? {
            if existing.start == s {
                return Ok((false, start_answer(&existing)));
            }
            if existing.started_from.is_some() {
                let details = serde_json::to_value(&s).unwrap_or_default();
                let key = format!("start_details|{}", hash_parts([details.to_string()]));
                let e = RunEventIn {
                    run_id: s.run_id.clone(),
                    event_type: "start_details".into(),
                    event_data: details,
                };
                if let Appended::Finished(_) = event_once(app, caller, e, &key, now).await? {
                    tracing::info!(run_id = %s.run_id, "run/start for a finished hook-started run: details not recorded");
                }
                return Ok((false, start_answer(&existing)));
            }
            return Err(ApiError::Conflict(format!(
                "run {} was already started with different details (pipeline {:?}, commit {:?})",
                s.run_id, existing.start.pipeline_name, existing.start.commit
            )));
        }
        let record = new_record(s.clone(), caller, None, now);
        if create(app, &record, now).await? {
            return Ok((true, start_answer(&record)));
        }
    }
    Err(contention())
}

/// Start the run unless the ledger has it already (whatever its details): `true` when this call
/// started it. For senders that know a run only partly, such as service hooks.
pub async fn ensure_started(
    app: &App,
    caller: &Caller,
    s: RunStart,
    started_from: &str,
    now: DateTime<Utc>,
) -> Result<bool, ApiError> {
    for _ in 0..ATTEMPTS {
        if load(app, &s.run_id).await?.is_some() {
            return Ok(false);
        }
        let record = new_record(s.clone(), caller, Some(started_from.to_string()), now);
        if create(app, &record, now).await? {
            return Ok(true);
        }
    }
    Err(contention())
}

/// Append `e` to `run` (at `version`), with `extra` written in the same commit: the new record,
/// or `None` when the run changed meanwhile (re-read and retry).
async fn append(
    app: &App,
    caller: &Caller,
    mut run: RunRecord,
    version: String,
    e: &RunEventIn,
    extra: Option<DocWrite>,
    now: DateTime<Utc>,
) -> Result<Option<(RunRecord, RunEventRecord)>, ApiError> {
    let seq = run.events + 1;
    let event_id = format!("{}-E{seq}", run.record_id);
    let body =
        json!({"event_id": event_id, "event_type": e.event_type, "event_data": e.event_data});
    let rec = RunEventRecord {
        event_id: event_id.clone(),
        run_id: e.run_id.clone(),
        seq,
        event_type: e.event_type.clone(),
        event_data: e.event_data.clone(),
        received_at: now,
        by: caller.name.clone(),
        chain_hash: chain(&run.chain_head, "run.event", &body),
        incident_id: None,
    };
    run.events = seq;
    run.chain_head = rec.chain_hash.clone();
    let rec_value = serde_json::to_value(&rec).unwrap_or_default();
    let mut writes = vec![
        DocWrite {
            key: "run".into(),
            value: serde_json::to_value(&run).unwrap_or_default(),
            expect: Expect::Version(version),
        },
        DocWrite {
            key: format!("event|{seq:08}"),
            value: rec_value.clone(),
            expect: Expect::Absent,
        },
    ];
    writes.extend(extra);
    let c = ledger_commit(
        app,
        &e.run_id,
        writes,
        "run.event",
        &event_id,
        json!({"record_id": run.record_id, "pipeline_name": run.start.pipeline_name, "event": rec_value}),
        now,
    );
    Ok(commit(app, &c).await?.then_some((run, rec)))
}

/// `run/event`: appended to the run's chain; a `rollback` also opens or attaches an incident.
pub async fn event(
    app: &App,
    caller: &Caller,
    e: RunEventIn,
    now: DateTime<Utc>,
) -> Result<Value, ApiError> {
    for _ in 0..ATTEMPTS {
        let Some((run, version)) = load(app, &e.run_id).await? else {
            return Err(ApiError::NotFound(format!(
                "no run {:?}: start it with run/start first",
                e.run_id
            )));
        };
        if run.finish.is_some() {
            return Err(ApiError::Conflict(format!(
                "run {} is finished; a finished run is immutable",
                e.run_id
            )));
        }
        let Some((run, rec)) = append(app, caller, run, version, &e, None, now).await? else {
            continue;
        };
        let event_id = rec.event_id.clone();
        let mut answer = json!({"success": true, "event_id": event_id});
        if e.event_type == "rollback" {
            match rollback_incident(app, &run, &rec, now).await {
                Ok(id) => answer["incident_id"] = json!(id),
                Err(err) => {
                    tracing::error!(error = %err, event_id = %event_id, "rollback recorded, incident not opened");
                    answer["incident_error"] = json!("the rollback is recorded but its incident could not be opened; it will be on the next rollback");
                }
            }
        }
        return Ok(answer);
    }
    Err(contention())
}

/// What [`event_once`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// Recorded as this event.
    New(String),
    /// Recorded before, as this event: nothing written.
    Duplicate(String),
    /// The run is finished (with this status): nothing written.
    Finished(RunStatus),
}

/// The document that marks `dedup_key` as recorded in a run's partition.
fn dedup_doc_key(dedup_key: &str) -> String {
    format!("dedup|{}", &hash_parts([dedup_key])[..32])
}

/// Append `e` unless an event with `dedup_key` was appended to the run before: the key's marker
/// is written in the same atomic commit as the event, so a redelivery racing the first delivery
/// still yields one event. The run must exist (404 otherwise); a finished run is left alone.
pub async fn event_once(
    app: &App,
    caller: &Caller,
    e: RunEventIn,
    dedup_key: &str,
    now: DateTime<Utc>,
) -> Result<Appended, ApiError> {
    let partition = partition(&e.run_id);
    let marker = dedup_doc_key(dedup_key);
    for _ in 0..ATTEMPTS {
        let Some((run, version)) = load(app, &e.run_id).await? else {
            return Err(ApiError::NotFound(format!("no run {:?}", e.run_id)));
        };
        if let Some(d) = app
            .store
            .doc_get(&partition, &marker)
            .await
            .map_err(crate::ingest::store_error)?
        {
            let id = d.value["event_id"].as_str().unwrap_or_default().to_string();
            return Ok(Appended::Duplicate(id));
        }
        if let Some(f) = &run.finish {
            return Ok(Appended::Finished(f.status));
        }
        let seq = run.events + 1;
        let extra = DocWrite {
            key: marker.clone(),
            value: json!({
                "event_id": format!("{}-E{seq}", run.record_id),
                "dedup_key": crate::domain::json::truncate(dedup_key, 300),
                "recorded_at": now,
            }),
            expect: Expect::Absent,
        };
        if let Some((_, rec)) = append(app, caller, run, version, &e, Some(extra), now).await? {
            return Ok(Appended::New(rec.event_id));
        }
    }
    Err(contention())
}

/// The pipeline's rollback stream: one incident for rollbacks less than an hour apart.
async fn rollback_incident(
    app: &App,
    run: &RunRecord,
    rec: &RunEventRecord,
    now: DateTime<Utc>,
) -> Result<Option<String>, ApiError> {
    let pipeline = &run.start.pipeline_name;
    let targets = vec![format!("pipeline={pipeline}")];
    let mut details = BTreeMap::new();
    details.insert("run_id".to_string(), run.start.run_id.clone());
    details.insert("branch".to_string(), run.start.branch.clone());
    details.insert("commit".to_string(), run.start.commit.clone());
    details.insert("event_id".to_string(), rec.event_id.clone());
    let reason = rec
        .event_data
        .get("reason")
        .and_then(Value::as_str)
        .map(str::to_string);
    let alert = NormalizedAlert {
        source: Source::Pipeline,
        schema: "icahub/run-ledger".into(),
        kind: "rollback".into(),
        alert_id: rec.event_id.clone(),
        rule: format!("rollback: {pipeline}"),
        rule_id: None,
        fingerprint: incident_fingerprint(Source::Pipeline, pipeline, &targets),
        targets,
        condition: Condition::Fired,
        severity: Severity::High,
        fired_at: Some(now),
        resolved_at: None,
        description: Some(
            reason.unwrap_or_else(|| format!("run {} of {pipeline} rolled back", run.start.run_id)),
        ),
        resource_group: None,
        link: None,
        details,
        dedup_key: format!("rollback|{}", rec.event_id),
    };
    let delivery = Delivery {
        request_id: rec.event_id.clone(),
        invocation_id: None,
        source: Source::Pipeline,
        received_at: now,
        raw_body: serde_json::to_string(rec).unwrap_or_default(),
        alerts: vec![DeliveryAlert {
            event_id: new_event_id(stream_key(&alert), now),
            alert,
            raw_alert: None,
        }],
    };
    let outcomes = crate::ingest::store(app, &delivery).await?;
    if outcomes.iter().any(|o| o.outbox_rows > 0) {
        app.dispatcher
            .kick(stream_key(&delivery.alerts[0].alert).to_string());
    }
    Ok(outcomes.into_iter().next().and_then(|o| o.incident_id))
}

fn finish_answer(f: &FinishRecord) -> Value {
    json!({"success": true, "audit_hash": f.audit_hash})
}

/// Finish `run` (at `version`) with `f`: the finish record, or `None` when the run changed
/// meanwhile (re-read and retry).
async fn close(
    app: &App,
    caller: &Caller,
    mut run: RunRecord,
    version: String,
    f: &RunFinish,
    now: DateTime<Utc>,
) -> Result<Option<FinishRecord>, ApiError> {
    let body = serde_json::to_value(f).unwrap_or_default();
    let rec = FinishRecord {
        status: f.status,
        end_time: f.end_time,
        finished_at: now,
        finished_by: caller.name.clone(),
        audit_hash: chain(&run.chain_head, "run.finish", &body),
    };
    run.status = f.status;
    run.chain_head = rec.audit_hash.clone();
    run.finish = Some(rec.clone());
    let value = serde_json::to_value(&run).unwrap_or_default();
    let c = ledger_commit(
        app,
        &f.run_id,
        vec![DocWrite {
            key: "run".into(),
            value: value.clone(),
            expect: Expect::Version(version),
        }],
        "run.finish",
        &format!("{}-F", run.record_id),
        json!({"record_id": run.record_id, "run": value}),
        now,
    );
    let closed = commit(app, &c).await?;
    if closed {
        // Approved estimates held for this run become spend, or are released.
        crate::approvals::settle_run_estimates(
            app.store.as_ref(),
            &f.run_id,
            f.status == crate::domain::run::RunStatus::Success,
            now,
        )
        .await;
    }
    Ok(closed.then_some(rec))
}

/// `run/finish`: the same finish again answers as the first did; a different one is 409.
pub async fn finish(
    app: &App,
    caller: &Caller,
    f: RunFinish,
    now: DateTime<Utc>,
) -> Result<Value, ApiError> {
    for _ in 0..ATTEMPTS {
        let Some((run, version)) = load(app, &f.run_id).await? else {
            return Err(ApiError::NotFound(format!("no run {:?}", f.run_id)));
        };
        if let Some(done) = &run.finish {
            if done.status == f.status && done.end_time == f.end_time {
                return Ok(finish_answer(done));
            }
            return Err(ApiError::Conflict(format!(
                "run {} already finished as {} at {}; a finished run is immutable",
                f.run_id,
                done.status.as_str(),
                done.end_time.to_rfc3339()
            )));
        }
        if let Some(rec) = close(app, caller, run, version, &f, now).await? {
            return Ok(finish_answer(&rec));
        }
    }
    Err(contention())
}

/// What [`finish_if_open`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Closed {
    /// Finished by this call.
    Now(FinishRecord),
    /// Finished before (by whatever finish came first): left as it was.
    Already(FinishRecord),
}

/// Finish the run unless it is finished already, whatever that finish said (unlike
/// [`finish`], which refuses a different one). The run must exist.
pub async fn finish_if_open(
    app: &App,
    caller: &Caller,
    f: RunFinish,
    now: DateTime<Utc>,
) -> Result<Closed, ApiError> {
    for _ in 0..ATTEMPTS {
        let Some((run, version)) = load(app, &f.run_id).await? else {
            return Err(ApiError::NotFound(format!("no run {:?}", f.run_id)));
        };
        if let Some(done) = run.finish {
            return Ok(Closed::Already(done));
        }
        if let Some(rec) = close(app, caller, run, version, &f, now).await? {
            return Ok(Closed::Now(rec));
        }
    }
    Err(contention())
}

/// `GET run/{run_id}`: the run and its events, oldest first.
pub async fn get(app: &App, run_id: &str) -> Result<Value, ApiError> {
    let Some((run, _)) = load(app, run_id).await? else {
        return Err(ApiError::NotFound(format!("no run {run_id:?}")));
    };
    let events = app
        .store
        .doc_list(&partition(run_id), "event|")
        .await
        .map_err(crate::ingest::store_error)?;
    let events: Vec<Value> = events.into_iter().map(|d| d.value).collect();
    let mut v = serde_json::to_value(&run).map_err(corrupt)?;
    v["events"] = json!(events);
    Ok(v)
}

/// The run's record, if it was started.
pub async fn run_record(app: &App, run_id: &str) -> Result<Option<RunRecord>, ApiError> {
    Ok(load(app, run_id).await?.map(|(r, _)| r))
}

/// The run's status, if it was started.
pub async fn run_status(app: &App, run_id: &str) -> Result<Option<RunStatus>, ApiError> {
    Ok(run_record(app, run_id).await?.map(|r| r.status))
}
