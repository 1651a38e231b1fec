//! The run ledger: pipeline runs, their events and their finish, kept as documents (one partition
//! per run) with a per-run hash chain, forwarded to the control plane through the outbox. A
//! `rollback` event opens (or attaches to) an incident on the pipeline's rollback stream.
//!
//! Writes go through a [`Ledger`] (the [`Deps`], the routing, the ingest timeout and what else a
//! finished run settles); reads need only the store. Answers are domain records or a
//! [`ServiceError`]; the JSON bodies are built in [`crate::http::runs`] and [`crate::http::azdo`].

use super::{Deps, ServiceError};
use crate::domain::alert::{
    hash_parts, incident_fingerprint, Condition, NormalizedAlert, Severity, Source,
};
use crate::domain::identity::Caller;
use crate::domain::incident::stream_key;
use crate::domain::routing::Routing;
use crate::domain::run::{
    chain, FinishRecord, RunEventIn, RunEventRecord, RunFinish, RunRecord, RunStart, RunStatus,
};
use crate::storage::{
    new_event_id, Delivery, DeliveryAlert, DocCommit, DocWrite, Expect, Store, StoreError,
};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const ATTEMPTS: usize = 20;

/// The document partition of a run: `run` + 16 hex digits of the run id's hash.
pub fn partition(run_id: &str) -> String {
    format!("run{}", &hash_parts([run_id])[..16])
}

fn record_id(run_id: &str) -> String {
    format!("RUN-{}", &hash_parts([run_id])[..16])
}

/// What a failed read of the ledger did not do.
const NOT_READ: &str = "the run was not read";
/// What a failed write to the ledger did not do.
const NOT_RECORDED: &str = "the run ledger was not updated";

fn corrupt(e: serde_json::Error) -> ServiceError {
    ServiceError::storage(NOT_READ)(StoreError::Corrupt(format!("run record: {e}")))
}

fn contention() -> ServiceError {
    ServiceError::Busy {
        message: "too many concurrent updates of this run; retry".into(),
        retry_after: 1,
    }
}

async fn load(
    store: &dyn Store,
    run_id: &str,
) -> Result<Option<(RunRecord, String)>, ServiceError> {
    match store
        .doc_get(&partition(run_id), "run")
        .await
        .map_err(ServiceError::from_store(NOT_READ, "this run"))?
    {
        Some(d) => Ok(Some((
            serde_json::from_value(d.value).map_err(corrupt)?,
            d.version,
        ))),
        None => Ok(None),
    }
}

/// What else must happen when a run finishes, besides its record: the approvals settle the
/// budget estimates they hold for it. Called once, by the call that finished the run.
pub trait RunFinished: Send + Sync {
    fn run_finished<'a>(
        &'a self,
        run_id: &'a str,
        succeeded: bool,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, ()>;
}

/// Nothing else happens when a run finishes.
#[derive(Debug, Default, Clone, Copy)]
pub struct NothingElse;

impl RunFinished for NothingElse {
    fn run_finished<'a>(&'a self, _: &'a str, _: bool, _: DateTime<Utc>) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// The run ledger's writes: what they need, and nothing more.
pub struct Ledger<'a> {
    pub deps: Deps,
    /// Where ledger records and rollback incidents are forwarded.
    pub routing: &'a Routing,
    /// How long storing a rollback's incident may take (`ICAHUB_STORE_TIMEOUT_MS`, as for alerts).
    pub store_timeout: Duration,
    pub on_finish: &'a dyn RunFinished,
}

impl Ledger<'_> {
    fn store(&self) -> &dyn Store {
        self.deps.store.as_ref()
    }

    fn ledger_commit(
        &self,
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
            outbox: self.routing.ledger_drafts(kind, record, payload),
            record_id: record.into(),
            now,
        }
    }

    /// Commit; `false` when the run changed meanwhile.
    async fn commit(&self, c: &DocCommit) -> Result<bool, ServiceError> {
        let written = self
            .store()
            .doc_commit(c)
            .await
            .map_err(ServiceError::from_store(NOT_RECORDED, "this run"))?;
        if written {
            self.deps.metrics.event_ingested("run_ledger");
        }
        Ok(written)
    }
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

/// What `run/event` recorded.
#[derive(Debug)]
pub struct EventRecorded {
    pub event_id: String,
    /// For a `rollback`: the incident it opened or attached to (`Ok(None)` when none was made),
    /// or why the rollback is recorded but its incident could not be opened.
    pub rollback: Option<Result<Option<String>, ServiceError>>,
}

/// What [`Ledger::event_once`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// Recorded as this event.
    New(String),
    /// Recorded before, as this event: nothing written.
    Duplicate(String),
    /// The run is finished (with this status): nothing written.
    Finished(RunStatus),
}

/// What [`Ledger::finish_if_open`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Closed {
    /// Finished by this call.
    Now(FinishRecord),
    /// Finished before (by whatever finish came first): left as it was.
    Already(FinishRecord),
}

/// The document that marks `dedup_key` as recorded in a run's partition.
fn dedup_doc_key(dedup_key: &str) -> String {
    format!("dedup|{}", &hash_parts([dedup_key])[..32])
}

impl Ledger<'_> {
    /// Write a new run's record; `false` when the run appeared meanwhile.
    async fn create(&self, record: &RunRecord, now: DateTime<Utc>) -> Result<bool, ServiceError> {
        let value = serde_json::to_value(record).unwrap_or_default();
        let c = self.ledger_commit(
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
        self.commit(&c).await
    }

    /// `run/start`: new → (true, its record); the same start again → (false, the same record). A
    /// run that a service hook started (it knew less) takes the pipeline's start too: its details
    /// become a `start_details` event and the answer is the run's record.
    pub async fn start(
        &self,
        caller: &Caller,
        s: RunStart,
        now: DateTime<Utc>,
    ) -> Result<(bool, RunRecord), ServiceError> {
        for _ in 0..ATTEMPTS {
            if let Some((existing, _)) = load(self.store(), &s.run_id).await? {
                if existing.start == s {
                    return Ok((false, existing));
                }
                if existing.started_from.is_some() {
                    let details = serde_json::to_value(&s).unwrap_or_default();
                    let key = format!("start_details|{}", hash_parts([details.to_string()]));
                    let e = RunEventIn {
                        run_id: s.run_id.clone(),
                        event_type: "start_details".into(),
                        event_data: details,
                    };
                    if let Appended::Finished(_) = self.event_once(caller, e, &key, now).await? {
                        tracing::info!(run_id = %s.run_id, "run/start for a finished hook-started run: details not recorded");
                    }
                    return Ok((false, existing));
                }
                return Err(ServiceError::Conflict(format!(
                    "run {} was already started with different details (pipeline {:?}, commit {:?})",
                    s.run_id, existing.start.pipeline_name, existing.start.commit
                )));
            }
            let record = new_record(s.clone(), caller, None, now);
            if self.create(&record, now).await? {
                return Ok((true, record));
            }
        }
        Err(contention())
    }

    /// Start the run unless the ledger has it already (whatever its details): `true` when this
    /// call started it. For senders that know a run only partly, such as service hooks.
    pub async fn ensure_started(
        &self,
        caller: &Caller,
        s: RunStart,
        started_from: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, ServiceError> {
        for _ in 0..ATTEMPTS {
            if load(self.store(), &s.run_id).await?.is_some() {
                return Ok(false);
            }
            let record = new_record(s.clone(), caller, Some(started_from.to_string()), now);
            if self.create(&record, now).await? {
                return Ok(true);
            }
        }
        Err(contention())
    }

    /// Append `e` to `run` (at `version`), with `extra` written in the same commit: the new
    /// record, or `None` when the run changed meanwhile (re-read and retry).
    async fn append(
        &self,
        caller: &Caller,
        mut run: RunRecord,
        version: String,
        e: &RunEventIn,
        extra: Option<DocWrite>,
        now: DateTime<Utc>,
    ) -> Result<Option<(RunRecord, RunEventRecord)>, ServiceError> {
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
        let c = self.ledger_commit(
            &e.run_id,
            writes,
            "run.event",
            &event_id,
            json!({"record_id": run.record_id, "pipeline_name": run.start.pipeline_name, "event": rec_value}),
            now,
        );
        Ok(self.commit(&c).await?.then_some((run, rec)))
    }

    /// `run/event`: appended to the run's chain; a `rollback` also opens or attaches an incident.
    pub async fn event(
        &self,
        caller: &Caller,
        e: RunEventIn,
        now: DateTime<Utc>,
    ) -> Result<EventRecorded, ServiceError> {
        for _ in 0..ATTEMPTS {
            let Some((run, version)) = load(self.store(), &e.run_id).await? else {
                return Err(ServiceError::NotFound(format!(
                    "no run {:?}: start it with run/start first",
                    e.run_id
                )));
            };
            if run.finish.is_some() {
                return Err(ServiceError::Conflict(format!(
                    "run {} is finished; a finished run is immutable",
                    e.run_id
                )));
            }
            let Some((run, rec)) = self.append(caller, run, version, &e, None, now).await? else {
                continue;
            };
            let rollback = if e.event_type == "rollback" {
                let incident = self.rollback_incident(&run, &rec, now).await;
                if let Err(err) = &incident {
                    tracing::error!(error = %err, event_id = %rec.event_id, "rollback recorded, incident not opened");
                }
                Some(incident)
            } else {
                None
            };
            return Ok(EventRecorded {
                event_id: rec.event_id,
                rollback,
            });
        }
        Err(contention())
    }

    /// Append `e` unless an event with `dedup_key` was appended to the run before: the key's
    /// marker is written in the same atomic commit as the event, so a redelivery racing the
    /// first delivery still yields one event. The run must exist (404 otherwise); a finished run
    /// is left alone.
    pub async fn event_once(
        &self,
        caller: &Caller,
        e: RunEventIn,
        dedup_key: &str,
        now: DateTime<Utc>,
    ) -> Result<Appended, ServiceError> {
        let partition = partition(&e.run_id);
        let marker = dedup_doc_key(dedup_key);
        for _ in 0..ATTEMPTS {
            let Some((run, version)) = load(self.store(), &e.run_id).await? else {
                return Err(ServiceError::NotFound(format!("no run {:?}", e.run_id)));
            };
            if let Some(d) = self
                .store()
                .doc_get(&partition, &marker)
                .await
                .map_err(ServiceError::from_store(NOT_READ, "this run"))?
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
            if let Some((_, rec)) = self
                .append(caller, run, version, &e, Some(extra), now)
                .await?
            {
                return Ok(Appended::New(rec.event_id));
            }
        }
        Err(contention())
    }

    /// The pipeline's rollback stream: one incident for rollbacks less than an hour apart.
    async fn rollback_incident(
        &self,
        run: &RunRecord,
        rec: &RunEventRecord,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, ServiceError> {
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
        let alert =
            NormalizedAlert {
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
                description: Some(reason.unwrap_or_else(|| {
                    format!("run {} of {pipeline} rolled back", run.start.run_id)
                })),
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
        // The ingest service wakes the dispatcher for the incident's outbox rows.
        let outcomes =
            super::ingest::store(&self.deps, self.routing, self.store_timeout, &delivery).await?;
        Ok(outcomes.into_iter().next().and_then(|o| o.incident_id))
    }

    /// Finish `run` (at `version`) with `f`: the finish record, or `None` when the run changed
    /// meanwhile (re-read and retry).
    async fn close(
        &self,
        caller: &Caller,
        mut run: RunRecord,
        version: String,
        f: &RunFinish,
        now: DateTime<Utc>,
    ) -> Result<Option<FinishRecord>, ServiceError> {
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
        let c = self.ledger_commit(
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
        let closed = self.commit(&c).await?;
        if closed {
            // Approved estimates held for this run become spend, or are released.
            self.on_finish
                .run_finished(&f.run_id, f.status == RunStatus::Success, now)
                .await;
        }
        Ok(closed.then_some(rec))
    }

    /// `run/finish`: the same finish again answers as the first did (its record); a different
    /// one is 409.
    pub async fn finish(
        &self,
        caller: &Caller,
        f: RunFinish,
        now: DateTime<Utc>,
    ) -> Result<FinishRecord, ServiceError> {
        for _ in 0..ATTEMPTS {
            let Some((run, version)) = load(self.store(), &f.run_id).await? else {
                return Err(ServiceError::NotFound(format!("no run {:?}", f.run_id)));
            };
            if let Some(done) = run.finish {
                if done.status == f.status && done.end_time == f.end_time {
                    return Ok(done);
                }
                return Err(ServiceError::Conflict(format!(
                    "run {} already finished as {} at {}; a finished run is immutable",
                    f.run_id,
                    done.status.as_str(),
                    done.end_time.to_rfc3339()
                )));
            }
            if let Some(rec) = self.close(caller, run, version, &f, now).await? {
                return Ok(rec);
            }
        }
        Err(contention())
    }

    /// Finish the run unless it is finished already, whatever that finish said (unlike
    /// [`Ledger::finish`], which refuses a different one). The run must exist.
    pub async fn finish_if_open(
        &self,
        caller: &Caller,
        f: RunFinish,
        now: DateTime<Utc>,
    ) -> Result<Closed, ServiceError> {
        for _ in 0..ATTEMPTS {
            let Some((run, version)) = load(self.store(), &f.run_id).await? else {
                return Err(ServiceError::NotFound(format!("no run {:?}", f.run_id)));
            };
            if let Some(done) = run.finish {
                return Ok(Closed::Already(done));
            }
            if let Some(rec) = self.close(caller, run, version, &f, now).await? {
                return Ok(Closed::Now(rec));
            }
        }
        Err(contention())
    }
}

/// A run as `GET run/{run_id}` shows it: its record and its events (as stored), oldest first.
#[derive(Debug, Clone)]
pub struct RunWithEvents {
    pub run: RunRecord,
    pub events: Vec<Value>,
}

/// `GET run/{run_id}`: the run and its events, oldest first.
pub async fn get(store: &dyn Store, run_id: &str) -> Result<RunWithEvents, ServiceError> {
    let Some((run, _)) = load(store, run_id).await? else {
        return Err(ServiceError::NotFound(format!("no run {run_id:?}")));
    };
    let events = store
        .doc_list(&partition(run_id), "event|")
        .await
        .map_err(ServiceError::from_store(NOT_READ, "this run"))?;
    Ok(RunWithEvents {
        run,
        events: events.into_iter().map(|d| d.value).collect(),
    })
}

/// The run's record, if it was started.
pub async fn run_record(
    store: &dyn Store,
    run_id: &str,
) -> Result<Option<RunRecord>, ServiceError> {
    Ok(load(store, run_id).await?.map(|(r, _)| r))
}

/// The run's status, if it was started.
pub async fn run_status(
    store: &dyn Store,
    run_id: &str,
) -> Result<Option<RunStatus>, ServiceError> {
    Ok(run_record(store, run_id).await?.map(|r| r.status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::domain::identity::Role;
    use crate::services::NoNotify;
    use crate::storage::sqlite::SqliteStore;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts the finishes it is told of.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl RunFinished for Counting {
        fn run_finished<'a>(&'a self, _: &'a str, _: bool, _: DateTime<Utc>) -> BoxFuture<'a, ()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {})
        }
    }

    fn start(run_id: &str) -> RunStart {
        RunStart {
            pipeline_name: "web".into(),
            run_id: run_id.into(),
            branch: "main".into(),
            commit: "abc123".into(),
            triggered_by: "alice".into(),
        }
    }

    /// The ledger needs a store, the counters and its settings: no app, no HTTP.
    #[tokio::test]
    async fn the_ledger_runs_on_its_narrow_dependencies() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new("2026-01-31T12:00:00Z".parse().unwrap()));
        let deps = Deps {
            store: Arc::new(SqliteStore::open(dir.path()).unwrap()),
            clock: clock.clone(),
            notify: Arc::new(NoNotify),
            metrics: Arc::new(crate::metrics::Metrics::new()),
        };
        let routing = Routing::default();
        let finished = Counting::default();
        let ledger = Ledger {
            deps: deps.clone(),
            routing: &routing,
            store_timeout: Duration::from_secs(5),
            on_finish: &finished,
        };
        let caller = Caller {
            name: "ci".into(),
            roles: vec![Role::Devops],
        };
        let now = clock.now();

        let (new, first) = ledger.start(&caller, start("r1"), now).await.unwrap();
        let (again, second) = ledger.start(&caller, start("r1"), now).await.unwrap();
        assert!(new && !again);
        assert_eq!(first.record_id, second.record_id);
        let mut other = start("r1");
        other.commit = "def456".into();
        assert!(matches!(
            ledger.start(&caller, other, now).await,
            Err(ServiceError::Conflict(_))
        ));

        let unknown = RunEventIn {
            run_id: "nope".into(),
            event_type: "deploy".into(),
            event_data: json!({}),
        };
        assert!(matches!(
            ledger.event(&caller, unknown, now).await,
            Err(ServiceError::NotFound(_))
        ));

        let f = RunFinish {
            run_id: "r1".into(),
            status: RunStatus::Success,
            end_time: now,
        };
        let done = ledger.finish(&caller, f.clone(), now).await.unwrap();
        assert_eq!(ledger.finish(&caller, f, now).await.unwrap(), done);
        assert_eq!(
            finished.0.load(Ordering::SeqCst),
            1,
            "only the finish that closed the run settles it"
        );
        let got = get(deps.store.as_ref(), "r1").await.unwrap();
        assert_eq!(got.run.status, RunStatus::Success);
        assert_eq!(
            run_status(deps.store.as_ref(), "r1").await.unwrap(),
            Some(RunStatus::Success)
        );
    }
}
