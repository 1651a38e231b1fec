//! Approval gates, kept in the document store: create, read, sign, override; monthly budgets;
//! deployment locks; and the sweep (run by the timer) that expires, escalates and reminds.
//!
//! Layout: each approval lives alone in partition `apr<year><seq>` (its document `approval`, its
//! `audit|…` entries and its outbox stream, so one approval's notifications go out in order and
//! never wait behind another's). The registry partition [`REGISTRY`] holds the id counter per year
//! (`seq|<year>`), the request index (`req|<hash>`: one open request per run and target), the day
//! index the sweep reads (`index|<yyyymmdd>|<id>`), budgets (`budget|<hash>`) and deployment locks
//! (`lock|<hash>`). Every change is an optimistic commit (document versions): a concurrent writer
//! makes the commit fail and the loser re-reads and re-applies, so no signature is lost and
//! exactly one final state wins.

use crate::domain::alert::hash_parts;
use crate::domain::approval::{
    self, approval_id, parse_approval_id, Approval, ApprovalRequest, ApprovalStatus, Budget,
    Policy, Refusal, SignIn,
};
use crate::domain::identity::{IdentityRecord, Role};
use crate::domain::routing::{OutboxDraft, Sink};
use crate::error::ApiError;
use crate::identity::Caller;
use crate::startup::App;
use crate::storage::{DocCommit, DocWrite, Expect, Store, StoreError};
use chrono::{DateTime, Datelike, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Counters, indexes, budgets and locks.
pub const REGISTRY: &str = "approvals";
const ATTEMPTS: usize = 40;
/// A lock taken by an approval that is not (yet) approved is honoured this long: the approval's
/// own commit follows the lock's within this time.
const LOCK_GRACE_SECS: i64 = 60;

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

// ---------------------------------------------------------------------------------------------
// Helpers

fn store_err(e: StoreError) -> ApiError {
    crate::ingest::store_error(e)
}

fn corrupt(what: &str, e: serde_json::Error) -> ApiError {
    store_err(StoreError::Corrupt(format!("{what}: {e}")))
}

fn contention() -> ApiError {
    ApiError::Unavailable {
        message: "too many concurrent updates of this approval; retry".into(),
        retry_after: 1,
    }
}

fn refusal(r: Refusal) -> ApiError {
    match r {
        Refusal::Forbidden(m) => ApiError::Forbidden(m),
        Refusal::Conflict(m) => ApiError::Conflict(m),
        Refusal::Invalid(m) => ApiError::BadRequest {
            code: "invalid_field",
            message: m,
            field: Some("comments".into()),
        },
    }
}

/// A short hash for keys built from free text (Table Storage keys forbid `/ \ # ?`).
fn key_hash(parts: &[&str]) -> String {
    hash_parts(parts.iter().copied())[..24].to_string()
}

/// The partition of an approval: `apr` + year + sequence.
pub fn partition_of(id: &str) -> Option<String> {
    parse_approval_id(id).map(|(y, s)| format!("apr{y}{s:06}"))
}

fn expect_of(doc: &Option<crate::storage::Doc>) -> Expect {
    match doc {
        Some(d) => Expect::Version(d.version.clone()),
        None => Expect::Absent,
    }
}

async fn pause(attempt: usize) {
    let jitter = uuid::Uuid::new_v4().as_bytes()[0] as u64 % 8;
    tokio::time::sleep(std::time::Duration::from_millis(
        (attempt as u64).min(10) * 3 + jitter,
    ))
    .await;
}

pub async fn load(store: &dyn Store, id: &str) -> Result<Option<(Approval, String)>, ApiError> {
    let Some(p) = partition_of(id) else {
        return Ok(None);
    };
    match store.doc_get(&p, "approval").await.map_err(store_err)? {
        Some(d) => Ok(Some((
            serde_json::from_value(d.value).map_err(|e| corrupt("approval", e))?,
            d.version,
        ))),
        None => Ok(None),
    }
}

/// The API view of an approval: the record, with an overdue one shown as expired and a lapsed
/// override request undone.
pub fn view(a: &Approval, now: DateTime<Utc>) -> Value {
    // An override request nobody confirmed in time shows as the state it lapsed back to.
    let a = &a.settled(now);
    let mut v = serde_json::to_value(a).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("used_tokens");
        o.remove("chain_head");
        o.insert("approval_id".into(), json!(a.id));
        if let Some(check) = o.get_mut("check").and_then(Value::as_object_mut) {
            check.remove("auth_token");
        }
        if a.is_overdue(now) {
            o.insert("status".into(), json!(ApprovalStatus::Expired));
        }
    }
    v
}

async fn identities(store: &dyn Store) -> Result<Vec<IdentityRecord>, ApiError> {
    crate::identity::list_identities(store)
        .await
        .map_err(|e| match e {
            crate::identity::IdentityError::Store(s) => store_err(s),
            other => ApiError::Conflict(other.to_string()),
        })
}

/// Who can sign each half, by role (the requester and the run's trigger excluded).
fn approvers_of(ids: &[IdentityRecord], a: &Approval) -> Value {
    let with = |r: Role| -> Vec<String> {
        ids.iter()
            .filter(|i| i.roles.contains(&r) && !a.is_requester(&i.name))
            .map(|i| i.name.clone())
            .collect()
    };
    json!({
        "technical": with(Role::TechnicalApprover),
        "business": with(a.business_role()),
        "business_role": a.business_role(),
    })
}

pub async fn approvers(store: &dyn Store, a: &Approval) -> Result<Value, ApiError> {
    Ok(approvers_of(&identities(store).await?, a))
}

/// Outbox rows for an approval record: the control plane keeps the ledger; Mattermost hears of
/// requests, reminders, escalations and decisions; Azure DevOps (a check) hears of the outcome.
fn drafts(
    app: &App,
    kind: &str,
    record_id: &str,
    a: &Approval,
    now: DateTime<Utc>,
) -> Vec<OutboxDraft> {
    let cfg = &app.config.approvals;
    let payload = json!({"approval_id": a.id, "record_id": record_id, "approval": view(a, now)});
    let mut out = Vec::new();
    if matches!(
        kind,
        "approval.created" | "approval.signed" | "approval.expired" | "approval.overridden"
    ) {
        out.extend(
            app.config
                .routing
                .ledger_drafts(kind, record_id, payload.clone()),
        );
    }
    if app.config.routing.mattermost {
        let mut mm = |mm_kind: &str, webhook: &Option<String>, channel: &Option<String>| {
            let mut p = payload.clone();
            p["route"] = json!({
                "mattermost_webhook": webhook.as_deref().unwrap_or(crate::sinks::DEFAULT_ROUTE),
                "mattermost_channel": channel,
            });
            out.push(OutboxDraft {
                sink: Sink::Mattermost,
                kind: mm_kind.into(),
                idempotency_key: hash_parts([Sink::Mattermost.as_str(), mm_kind, record_id])[..32]
                    .to_string(),
                payload: p,
            });
        };
        match kind {
            "approval.created" if a.status == ApprovalStatus::Pending => {
                mm("approval.requested", &cfg.webhook, &cfg.channel);
                if a.finance_required {
                    mm(
                        "approval.finance_review",
                        &cfg.webhook,
                        &cfg.finance_channel,
                    );
                }
            }
            "approval.reminder" => mm("approval.reminder", &cfg.webhook, &cfg.channel),
            "approval.expired" => mm(
                "approval.escalated",
                &cfg.escalation_webhook,
                &cfg.escalation_channel,
            ),
            _ => {}
        }
        if a.status.is_final() && kind != "approval.reminder" {
            mm("approval.decided", &cfg.webhook, &cfg.channel);
        }
    }
    out.extend(check_draft(kind, a));
    out
}

/// The Azure DevOps check's callback once the approval is decided: approved → `succeeded`,
/// rejected or expired → `failed`. Written in the commit that makes the approval final (created
/// rejected by the budget, signed, expired, overridden), which happens once: an override of an
/// approval that was already rejected or expired writes none, as the check has already been told
/// (and the same idempotency key twice would fail the commit). The key is stable per approval and
/// check instance ([`attach_check`] may hand a decided approval to a re-run's new check).
fn check_draft(kind: &str, a: &Approval) -> Option<OutboxDraft> {
    let check = a.check.as_ref()?;
    if !a.status.is_final() || kind == "approval.reminder" || kind == "approval.override_requested"
    {
        return None;
    }
    if kind == "approval.overridden"
        && a.override_
            .as_ref()
            .is_some_and(|o| o.previous_status.is_final())
    {
        return None;
    }
    let result = if a.status == ApprovalStatus::Approved {
        "succeeded"
    } else {
        "failed"
    };
    let field = |k: &str| check.get(k).and_then(Value::as_str).unwrap_or_default();
    Some(OutboxDraft {
        sink: Sink::AzureDevops,
        kind: "check.completed".into(),
        idempotency_key: hash_parts([
            Sink::AzureDevops.as_str(),
            "check.completed",
            a.id.as_str(),
            field("plan_id"),
            field("job_id"),
            field("task_instance_id"),
        ])[..32]
            .to_string(),
        // The check as stored: its token's SHA-256 and the secret's key, never the token (the
        // dispatcher reads the secret at delivery time).
        payload: json!({"approval_id": a.id, "status": a.status, "result": result, "check": check_for_audit(Some(check))}),
    })
}

/// Move the token of an approval's check out of the approval (as earlier versions kept it
/// inline): the check keeps `auth_token_sha256`, and with `keep` the token goes to the secret
/// store under [`crate::domain::check::secret_key`] (named in the check's `auth_token_secret`),
/// for the callback still to be made. `Ok(Some(sha256))` when there was a token.
pub async fn detach_token(
    store: &dyn Store,
    a: &mut Approval,
    keep: bool,
    now: DateTime<Utc>,
) -> Result<Option<String>, StoreError> {
    use crate::domain::check::{secret_key, strip_token, token_sha256, SECRET_FIELD};
    let Some(check) = a.check.as_mut() else {
        return Ok(None);
    };
    let task = check
        .get("task_instance_id")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let Some(token) = strip_token(check) else {
        return Ok(None);
    };
    if keep {
        let key = secret_key(&a.id, &task);
        store.secret_put(&key, &token, now).await?;
        check[SECRET_FIELD] = json!(key);
    }
    Ok(Some(token_sha256(&token)))
}

/// The secret holding the token of a stored check, if it names one.
pub fn secret_of(check: Option<&Value>) -> Option<String> {
    check?
        .get(crate::domain::check::SECRET_FIELD)?
        .as_str()
        .map(str::to_string)
}

/// A check's callback without its token, for audit entries.
fn check_for_audit(check: Option<&Value>) -> Value {
    let mut c = check.cloned().unwrap_or(Value::Null);
    if let Some(o) = c.as_object_mut() {
        o.remove("auth_token");
    }
    c
}

fn commit_of(
    partition: String,
    writes: Vec<DocWrite>,
    outbox: Vec<OutboxDraft>,
    record_id: &str,
    now: DateTime<Utc>,
) -> DocCommit {
    DocCommit {
        partition,
        writes,
        outbox,
        record_id: record_id.into(),
        now,
    }
}

/// Write an approval's new state (and an audit entry) if it is still at `version`.
async fn save(
    app: &App,
    next: &Approval,
    version: Option<&str>,
    kind: &str,
    record_id: &str,
    audit: Value,
    now: DateTime<Utc>,
) -> Result<bool, ApiError> {
    let partition = partition_of(&next.id).ok_or_else(|| ApiError::NotFound(next.id.clone()))?;
    // An approval an earlier version wrote keeps its check's token inline: move it to the
    // secret store in this write, so the token never reaches the chain (or an outbox row) again.
    let mut detached = next.clone();
    detach_token(app.store.as_ref(), &mut detached, true, now)
        .await
        .map_err(store_err)?;
    let next = &detached;
    let writes = vec![
        DocWrite {
            key: "approval".into(),
            value: serde_json::to_value(next).unwrap_or_default(),
            expect: match version {
                Some(v) => Expect::Version(v.into()),
                None => Expect::Absent,
            },
        },
        crate::audit::note(now, audit),
    ];
    let outbox = drafts(app, kind, record_id, next, now);
    let any = !outbox.is_empty();
    let ok = app
        .store
        .doc_commit(&commit_of(
            partition.clone(),
            writes,
            outbox,
            record_id,
            now,
        ))
        .await
        .map_err(store_err)?;
    // Reminders rewrite the approval without changing its state: not a state change.
    if ok && kind != "approval.reminder" {
        app.metrics.approval(next.status.as_str());
    }
    if ok && any {
        app.dispatcher.kick(partition);
    }
    Ok(ok)
}

/// [`mark_final`] in the background, off the signer's latency.
fn mark_final_later(app: &App, a: &Approval) {
    let (store, a) = (app.store.clone(), a.clone());
    tokio::spawn(async move { mark_final(store.as_ref(), &a).await });
}

/// Best effort: tell the sweep this approval needs no more attention.
async fn mark_final(store: &dyn Store, a: &Approval) {
    let key = format!("index|{}|{}", a.requested_at.format("%Y%m%d"), a.id);
    for _ in 0..5 {
        let Ok(Some(doc)) = store.doc_get(REGISTRY, &key).await else {
            return;
        };
        if doc.value.get("final") == Some(&json!(true)) {
            return;
        }
        let mut v = doc.value.clone();
        v["final"] = json!(true);
        let c = commit_of(
            REGISTRY.into(),
            vec![DocWrite {
                key: key.clone(),
                value: v,
                expect: Expect::Version(doc.version),
            }],
            Vec::new(),
            &a.id,
            Utc::now(),
        );
        match store.doc_commit(&c).await {
            Ok(true) | Err(_) => return,
            Ok(false) => continue,
        }
    }
}

/// Record a refused attempt on the approval's own trail (best effort: the refusal stands).
async fn audit_refusal(app: &App, id: &str, entry: Value, now: DateTime<Utc>) {
    let Some(p) = partition_of(id) else { return };
    let c = commit_of(p, vec![crate::audit::note(now, entry)], Vec::new(), id, now);
    if let Err(e) = app.store.doc_commit(&c).await {
        tracing::warn!(error = %e, approval_id = id, "could not audit a refused attempt");
    }
}

// ---------------------------------------------------------------------------------------------
// Deployment locks

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lock {
    pub target: String,
    pub holder: Option<String>,
    pub run_id: Option<String>,
    pub acquired_at: Option<DateTime<Utc>>,
}

fn lock_key(target: &str) -> String {
    format!("lock|{}", key_hash(&[&target.trim().to_ascii_lowercase()]))
}

/// The approval holding `lock`, if the lock still binds: held, younger than the TTL, its holder
/// approved (or just taking it) and the holder's run not finished.
async fn live_holder(app: &App, lock: &Lock, now: DateTime<Utc>) -> Result<Option<Lock>, ApiError> {
    let (Some(holder), Some(at)) = (&lock.holder, lock.acquired_at) else {
        return Ok(None);
    };
    if now - at > app.config.approvals.policy.lock_ttl {
        return Ok(None);
    }
    let fresh = now - at < Duration::seconds(LOCK_GRACE_SECS);
    match load(app.store.as_ref(), holder).await? {
        Some((a, _)) if a.status == ApprovalStatus::Approved => {
            let finished = crate::runs::run_status(app, &a.run_id)
                .await?
                .is_some_and(|s| s != crate::domain::run::RunStatus::Running);
            Ok((!finished).then(|| lock.clone()))
        }
        Some((a, _)) if a.status.is_final() => Ok(None),
        _ => Ok(fresh.then(|| lock.clone())),
    }
}

fn held_by(target: &str, l: &Lock) -> ApiError {
    ApiError::Conflict(format!(
        "deployment target {target:?} is locked by {} (run {}, approved {}): one approved production deployment at a time; finish that run first",
        l.holder.as_deref().unwrap_or("?"),
        l.run_id.as_deref().unwrap_or("?"),
        l.acquired_at.map(|t| t.to_rfc3339()).unwrap_or_default()
    ))
}

async fn read_lock(
    app: &App,
    target: &str,
) -> Result<(Option<crate::storage::Doc>, Option<Lock>), ApiError> {
    let doc = app
        .store
        .doc_get(REGISTRY, &lock_key(target))
        .await
        .map_err(store_err)?;
    let lock = match &doc {
        Some(d) => Some(serde_json::from_value(d.value.clone()).map_err(|e| corrupt("lock", e))?),
        None => None,
    };
    Ok((doc, lock))
}

/// 409 when another approval holds the target's lock.
async fn check_lock(
    app: &App,
    target: &str,
    me: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    if let (_, Some(lock)) = read_lock(app, target).await? {
        if let Some(l) = live_holder(app, &lock, now).await? {
            if l.holder.as_deref() != me {
                return Err(held_by(target, &l));
            }
        }
    }
    Ok(())
}

/// Take the target's lock for `a` (idempotent when `a` holds it already).
async fn acquire_lock(app: &App, a: &Approval, now: DateTime<Utc>) -> Result<(), ApiError> {
    for attempt in 0..ATTEMPTS {
        let (doc, lock) = read_lock(app, &a.deployment_target).await?;
        if let Some(lock) = &lock {
            if lock.holder.as_deref() == Some(a.id.as_str()) {
                return Ok(());
            }
            if let Some(l) = live_holder(app, lock, now).await? {
                return Err(held_by(&a.deployment_target, &l));
            }
        }
        let new = Lock {
            target: a.deployment_target.clone(),
            holder: Some(a.id.clone()),
            run_id: Some(a.run_id.clone()),
            acquired_at: Some(now),
        };
        let c = commit_of(
            REGISTRY.into(),
            vec![
                DocWrite {
                    key: lock_key(&a.deployment_target),
                    value: serde_json::to_value(&new).unwrap_or_default(),
                    expect: expect_of(&doc),
                },
                crate::audit::note(
                    now,
                    json!({"action": "lock.acquired", "target": a.deployment_target, "approval_id": a.id, "run_id": a.run_id, "previous": lock, "at": now}),
                ),
            ],
            Vec::new(),
            &a.id,
            now,
        );
        if app.store.doc_commit(&c).await.map_err(store_err)? {
            return Ok(());
        }
        pause(attempt).await;
    }
    Err(contention())
}

/// Give the lock back if `id` holds it (its approval did not go through after all).
async fn release_lock(app: &App, target: &str, id: &str, now: DateTime<Utc>) {
    for _ in 0..10 {
        let Ok((Some(doc), Some(lock))) = read_lock(app, target).await else {
            return;
        };
        if lock.holder.as_deref() != Some(id) {
            return;
        }
        let free = Lock {
            target: target.into(),
            holder: None,
            run_id: None,
            acquired_at: None,
        };
        let c = commit_of(
            REGISTRY.into(),
            vec![
                DocWrite {
                    key: lock_key(target),
                    value: serde_json::to_value(&free).unwrap_or_default(),
                    expect: Expect::Version(doc.version),
                },
                crate::audit::note(
                    now,
                    json!({"action": "lock.released", "target": target, "approval_id": id, "at": now}),
                ),
            ],
            Vec::new(),
            id,
            now,
        );
        if let Ok(true) = app.store.doc_commit(&c).await {
            return;
        }
    }
    tracing::warn!(
        approval_id = id,
        target,
        "could not release a deployment lock; it lapses on its own"
    );
}

// ---------------------------------------------------------------------------------------------
// Budgets

fn budget_key(project: &str) -> String {
    format!(
        "budget|{}",
        key_hash(&[&project.trim().to_ascii_lowercase()])
    )
}

pub async fn budget(store: &dyn Store, project: &str) -> Result<Option<Budget>, StoreError> {
    match store.doc_get(REGISTRY, &budget_key(project)).await? {
        Some(d) => {
            Ok(Some(serde_json::from_value(d.value).map_err(|e| {
                StoreError::Corrupt(format!("budget: {e}"))
            })?))
        }
        None => Ok(None),
    }
}

/// One change of a budget document, with the audit note saying what changed.
fn budget_write(
    key: &str,
    b: &Budget,
    expect: Expect,
    note: Value,
    record_id: &str,
    now: DateTime<Utc>,
) -> DocCommit {
    commit_of(
        REGISTRY.into(),
        vec![
            DocWrite {
                key: key.into(),
                value: serde_json::to_value(b).unwrap_or_default(),
                expect,
            },
            crate::audit::note(now, note),
        ],
        Vec::new(),
        record_id,
        now,
    )
}

pub async fn list_budgets(store: &dyn Store) -> Result<Vec<Budget>, StoreError> {
    store
        .doc_list(REGISTRY, "budget|")
        .await?
        .into_iter()
        .map(|d| {
            serde_json::from_value(d.value).map_err(|e| StoreError::Corrupt(format!("budget: {e}")))
        })
        .collect()
}

/// Set a project's monthly budget and, optionally, its spend so far this month. Audited.
pub async fn set_budget(
    store: &dyn Store,
    project: &str,
    monthly_budget: f64,
    current_spend: Option<f64>,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Budget, StoreError> {
    if project.trim().is_empty() || project.len() > 128 {
        return Err(StoreError::Config(
            "a project name is 1-128 characters".into(),
        ));
    }
    if !(monthly_budget.is_finite() && monthly_budget > 0.0) {
        return Err(StoreError::Config(
            "the monthly budget must be a positive number of US dollars".into(),
        ));
    }
    if current_spend.is_some_and(|s| !(s.is_finite() && s >= 0.0)) {
        return Err(StoreError::Config(
            "the current spend must be zero or more US dollars".into(),
        ));
    }
    let key = budget_key(project);
    for _ in 0..ATTEMPTS {
        let doc = store.doc_get(REGISTRY, &key).await?;
        let before: Option<Budget> = match &doc {
            Some(d) => serde_json::from_value(d.value.clone()).ok(),
            None => None,
        };
        let b = Budget {
            project: project.trim().to_string(),
            monthly_budget,
            current_spend: current_spend
                .or(before.as_ref().map(|b| b.current_spend))
                .unwrap_or(0.0),
            updated_at: now,
            updated_by: by.into(),
            committed: before
                .as_ref()
                .map(|b| b.committed.clone())
                .unwrap_or_default(),
        };
        let c = budget_write(
            &key,
            &b,
            expect_of(&doc),
            json!({"action": "budget.set", "project": b.project, "before": before, "after": b, "by": by, "at": now}),
            "budget-change",
            now,
        );
        if store.doc_commit(&c).await? {
            return Ok(b);
        }
    }
    Err(StoreError::Contention("budget changed concurrently".into()))
}

fn budget_map_key(pipeline: &str) -> String {
    format!(
        "budgetmap|{}",
        key_hash(&[&pipeline.trim().to_ascii_lowercase()])
    )
}

/// A pipeline's project, as `icahub budget map` keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetMap {
    pub pipeline: String,
    pub project: String,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

/// Map `pipeline` to `project` (`None`: remove the map). Audited.
pub async fn set_budget_map(
    store: &dyn Store,
    pipeline: &str,
    project: Option<&str>,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Option<BudgetMap>, StoreError> {
    let pipeline = pipeline.trim();
    if pipeline.is_empty() || pipeline.len() > 256 {
        return Err(StoreError::Config(
            "a pipeline name is 1-256 characters".into(),
        ));
    }
    if project.is_some_and(|p| p.trim().is_empty() || p.len() > 128) {
        return Err(StoreError::Config(
            "a project name is 1-128 characters".into(),
        ));
    }
    let key = budget_map_key(pipeline);
    for _ in 0..ATTEMPTS {
        let doc = store.doc_get(REGISTRY, &key).await?;
        let before: Option<BudgetMap> = doc
            .as_ref()
            .and_then(|d| serde_json::from_value(d.value.clone()).ok());
        let after = project.map(|p| BudgetMap {
            pipeline: pipeline.to_string(),
            project: p.trim().to_string(),
            updated_at: now,
            updated_by: by.into(),
        });
        // A removed map is a tombstone: documents are never deleted from the chained store.
        let value = match &after {
            Some(m) => serde_json::to_value(m).unwrap_or_default(),
            None => {
                json!({"pipeline": pipeline, "project": null, "updated_at": now, "updated_by": by})
            }
        };
        let c = commit_of(
            REGISTRY.into(),
            vec![
                DocWrite {
                    key: key.clone(),
                    value,
                    expect: expect_of(&doc),
                },
                crate::audit::note(
                    now,
                    json!({"action": "budget.mapped", "pipeline": pipeline, "before": before, "after": after, "by": by, "at": now}),
                ),
            ],
            Vec::new(),
            "budget-change",
            now,
        );
        if store.doc_commit(&c).await? {
            return Ok(after);
        }
    }
    Err(StoreError::Contention(
        "budget map changed concurrently".into(),
    ))
}

pub async fn list_budget_maps(store: &dyn Store) -> Result<Vec<BudgetMap>, StoreError> {
    Ok(store
        .doc_list(REGISTRY, "budgetmap|")
        .await?
        .into_iter()
        .filter_map(|d| serde_json::from_value(d.value).ok())
        .collect())
}

/// The project whose budget an approval spends: decided by the run's pipeline (its map, then
/// `ICAHUB_BUDGET_PROJECTS`, then the pipeline's own name), never by the request, so a caller
/// cannot pick a project without a budget. A run not on the ledger spends its target's.
async fn project_for(app: &App, pipeline: Option<&str>, target: &str) -> Result<String, ApiError> {
    let Some(pipeline) = pipeline.map(str::trim).filter(|p| !p.is_empty()) else {
        return Ok(target.to_string());
    };
    if let Some(d) = app
        .store
        .doc_get(REGISTRY, &budget_map_key(pipeline))
        .await
        .map_err(store_err)?
    {
        if let Some(p) = d.value.get("project").and_then(Value::as_str) {
            return Ok(p.to_string());
        }
    }
    let name = pipeline.to_ascii_lowercase();
    for (pattern, project) in &app.config.approvals.budget_projects {
        let hit = match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *pattern,
        };
        if hit {
            return Ok(project.clone());
        }
    }
    Ok(pipeline.to_string())
}

/// Hold `a`'s estimate against its project's budget as it becomes approved. With `enforce`
/// (a signature), refused when the budget, with every other commitment, would go above the
/// limit; an override commits without the check. `Ok(true)`: a commitment was written (to
/// release if the approval's own commit then fails).
async fn commit_estimate(
    app: &App,
    a: &Approval,
    enforce: bool,
    now: DateTime<Utc>,
) -> Result<bool, ApiError> {
    let Some(estimate) = a.estimated_cost.filter(|e| *e > 0.0) else {
        return Ok(false);
    };
    let key = budget_key(&a.project);
    for attempt in 0..ATTEMPTS {
        let Some(doc) = app.store.doc_get(REGISTRY, &key).await.map_err(store_err)? else {
            return Ok(false);
        };
        let mut b: Budget =
            serde_json::from_value(doc.value.clone()).map_err(|e| corrupt("budget", e))?;
        if b.committed.contains_key(&a.id) {
            return Ok(false);
        }
        let check = b.check(estimate, Some(&a.id), now);
        if enforce {
            if let Some(why) =
                approval::over_budget(&check, app.config.approvals.policy.max_utilization)
            {
                return Err(ApiError::Conflict(format!(
                    "{} cannot be approved now: {why}; other approved deployments of {} have not finished yet",
                    a.id, a.project
                )));
            }
        }
        b.committed.insert(
            a.id.clone(),
            approval::Commitment {
                estimate,
                run_id: a.run_id.clone(),
                at: now,
            },
        );
        let c = budget_write(
            &key,
            &b,
            Expect::Version(doc.version),
            json!({"action": "budget.committed", "project": b.project, "approval_id": a.id, "run_id": a.run_id, "estimate": estimate, "utilization": check.utilization, "at": now}),
            &a.id,
            now,
        );
        if app.store.doc_commit(&c).await.map_err(store_err)? {
            return Ok(true);
        }
        pause(attempt).await;
    }
    Err(contention())
}

/// Take `id`'s commitment off `project`'s budget; with `spent`, add its estimate to the
/// recorded spend (its run finished successfully). Best effort, audited.
async fn release_estimate(app: &App, project: &str, id: &str, spent: bool, now: DateTime<Utc>) {
    let key = budget_key(project);
    for attempt in 0..ATTEMPTS {
        let Ok(Some(doc)) = app.store.doc_get(REGISTRY, &key).await else {
            return;
        };
        let Ok(mut b) = serde_json::from_value::<Budget>(doc.value.clone()) else {
            return;
        };
        let Some(c) = b.committed.remove(id) else {
            return;
        };
        if spent {
            b.current_spend += c.estimate;
        }
        let write = budget_write(
            &key,
            &b,
            Expect::Version(doc.version),
            json!({"action": if spent { "budget.spent" } else { "budget.released" }, "project": b.project, "approval_id": id, "run_id": c.run_id, "estimate": c.estimate, "at": now}),
            id,
            now,
        );
        match app.store.doc_commit(&write).await {
            Ok(true) => return,
            Ok(false) => pause(attempt).await,
            Err(e) => {
                tracing::warn!(error = %e, approval_id = id, "could not release a budget commitment");
                return;
            }
        }
    }
}

/// A run finished: the approved estimates held for it become spend (succeeded) or are released.
pub async fn settle_run_estimates(app: &App, run_id: &str, succeeded: bool, now: DateTime<Utc>) {
    let Ok(all) = list_budgets(app.store.as_ref()).await else {
        return;
    };
    for b in all {
        for (id, c) in &b.committed {
            if c.run_id == run_id {
                release_estimate(app, &b.project, id, succeeded, now).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Id allocation

/// Hands out approval numbers from the yearly counter in the registry. Requests that arrive
/// together on one instance share one counter commit (the first to get the lock serves everyone
/// queued), so they do not fight over the counter document; instances still race each other
/// optimistically. A number is lost (a gap) only when its request then fails.
#[derive(Default)]
pub struct IdAllocator {
    waiting: std::sync::Mutex<Vec<Waiter>>,
    leader: tokio::sync::Mutex<()>,
}

/// A request for a number of this year, and where to send it.
type Waiter = (i32, tokio::sync::oneshot::Sender<Result<u64, String>>);

impl IdAllocator {
    pub async fn next(&self, store: &dyn Store, year: i32) -> Result<u64, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.push((year, tx));
        }
        {
            let _leader = self.leader.lock().await;
            let batch: Vec<_> = match self.waiting.lock() {
                Ok(mut w) => w.drain(..).collect(),
                Err(_) => Vec::new(),
            };
            let mut years: Vec<i32> = batch.iter().map(|(y, _)| *y).collect();
            years.sort_unstable();
            years.dedup();
            let mut batch = batch;
            for y in years {
                let (mine, rest): (Vec<_>, Vec<_>) =
                    batch.into_iter().partition(|(by, _)| *by == y);
                batch = rest;
                match Self::reserve(store, y, mine.len() as u64).await {
                    Ok(first) => {
                        for (i, (_, tx)) in mine.into_iter().enumerate() {
                            let _ = tx.send(Ok(first + i as u64));
                        }
                    }
                    Err(e) => {
                        for (_, tx) in mine {
                            let _ = tx.send(Err(e.to_string()));
                        }
                    }
                }
            }
        }
        match rx.await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(store_err(StoreError::Unavailable(e))),
            Err(_) => Err(contention()),
        }
    }

    /// Move the counter on by `k`; the first of the reserved numbers.
    async fn reserve(store: &dyn Store, year: i32, k: u64) -> Result<u64, StoreError> {
        let key = format!("seq|{year}");
        for attempt in 0..ATTEMPTS {
            let doc = store.doc_get(REGISTRY, &key).await?;
            let last = doc
                .as_ref()
                .and_then(|d| d.value.get("last").and_then(Value::as_u64))
                .unwrap_or(0);
            let c = commit_of(
                REGISTRY.into(),
                vec![DocWrite {
                    key: key.clone(),
                    value: json!({"last": last + k}),
                    expect: expect_of(&doc),
                }],
                Vec::new(),
                &key,
                Utc::now(),
            );
            if store.doc_commit(&c).await? {
                return Ok(last + 1);
            }
            pause(attempt).await;
        }
        Err(StoreError::Contention(
            "the approval counter is busy".into(),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Create

/// Extra facts a request carries beyond its body (the Azure DevOps check adds its callback).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub source: Option<String>,
    /// The check's callback, token included: [`create`] keeps the token in the secret store and
    /// the rest ([`crate::domain::check::CheckCallback::stored`]) with the approval.
    pub check: Option<crate::domain::check::CheckCallback>,
}

/// `POST approval`: `(true, answer)` for a new request; `(false, answer)` when the run already
/// has an open request for this target (a retried call gets the same approval back).
pub async fn create(
    app: &App,
    caller: &Caller,
    req: ApprovalRequest,
    origin: Origin,
    now: DateTime<Utc>,
) -> Result<(bool, Value), ApiError> {
    let policy = &app.config.approvals.policy;
    let store = app.store.as_ref();
    let req_key = format!(
        "req|{}",
        key_hash(&[&req.run_id, &req.deployment_target.to_ascii_lowercase()])
    );
    // Independent reads at once: one round trip of latency instead of four.
    let (run, req_doc, ids) = tokio::join!(
        crate::runs::run_record(app, &req.run_id),
        store.doc_get(REGISTRY, &req_key),
        identities(store),
    );
    let (run, mut req_doc, ids) = (run?, req_doc.map_err(store_err)?, ids?);
    let project = project_for(
        app,
        run.as_ref().map(|r| r.start.pipeline_name.as_str()),
        &req.deployment_target,
    )
    .await?;
    if let Some(asked) = &req.project {
        if !asked.eq_ignore_ascii_case(&project) {
            return Err(ApiError::bad_request(
                Some("project".into()),
                format!(
                    "the project is decided by the run's pipeline, not the request: run {} spends the budget of {project:?} (`icahub budget map` changes it), not {asked:?}",
                    req.run_id
                ),
            ));
        }
    }
    let answer = |a: &Approval| {
        let mut v = view(a, now);
        v["success"] = json!(true);
        v["approvers"] = approvers_of(&ids, a);
        v
    };
    let mut allocated: Option<String> = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            req_doc = store.doc_get(REGISTRY, &req_key).await.map_err(store_err)?;
        }
        let mut reuse_id: Option<String> = None;
        if let Some(d) = &req_doc {
            if let Some(id) = d.value.get("approval_id").and_then(Value::as_str) {
                match load(store, id).await? {
                    Some((a, _))
                        if !a.is_overdue(now)
                            && matches!(
                                a.status,
                                ApprovalStatus::Pending
                                    | ApprovalStatus::TechnicalApproved
                                    | ApprovalStatus::Approved
                                    | ApprovalStatus::OverridePending
                            ) =>
                    {
                        return Ok((false, answer(&a)));
                    }
                    Some(_) => {}
                    // Indexed but never written (a crash between the two commits): use the id.
                    None => reuse_id = Some(id.to_string()),
                }
            }
        }
        if policy.is_production(&req.deployment_target) {
            check_lock(app, &req.deployment_target, None, now).await?;
        }
        let found = budget(store, &project).await.map_err(store_err)?;
        if found.is_none()
            && app.config.approvals.budget_required
            && policy.is_production(&req.deployment_target)
        {
            return Err(ApiError::Conflict(format!(
                "project {project:?} has no budget, and production requests need one (ICAHUB_BUDGET_REQUIRED): set it with `icahub budget set {project} --monthly USD`"
            )));
        }
        let check = match req.estimated_cost {
            Some(est) => found.map(|b| b.check(est, None, now)),
            None => None,
        };
        let id = match reuse_id {
            Some(id) => id,
            None => {
                let id = match allocated.take() {
                    Some(id) => id,
                    None => {
                        approval_id(now.year(), app.approval_ids.next(store, now.year()).await?)
                    }
                };
                let c = commit_of(
                    REGISTRY.into(),
                    vec![
                        DocWrite {
                            key: req_key.clone(),
                            value: json!({"approval_id": id, "run_id": req.run_id, "deployment_target": req.deployment_target}),
                            expect: expect_of(&req_doc),
                        },
                        DocWrite {
                            key: format!("index|{}|{id}", now.format("%Y%m%d")),
                            value: json!({"approval_id": id, "requested_at": now, "final": false}),
                            expect: Expect::Absent,
                        },
                    ],
                    Vec::new(),
                    &id,
                    now,
                );
                if !store.doc_commit(&c).await.map_err(store_err)? {
                    // Another request for this run and target got in first: look again.
                    allocated = Some(id);
                    pause(attempt).await;
                    continue;
                }
                id
            }
        };
        let mut a = Approval::new(
            id.clone(),
            req.clone(),
            project.clone(),
            caller.name.clone(),
            run.as_ref().map(|r| r.start.triggered_by.clone()),
            check,
            policy,
            now,
        );
        if let Some(s) = &origin.source {
            a.source = s.clone();
        }
        if let Some(check) = &origin.check {
            // The token first, so that the approval never names a secret that is not there.
            let key = crate::domain::check::secret_key(&id, &check.task_instance_id);
            store
                .secret_put(&key, &check.auth_token, now)
                .await
                .map_err(store_err)?;
            a.check = Some(check.stored(&key));
        }
        let audit = json!({"action": "approval.created", "approval_id": id, "by": caller.name, "status": a.status, "reason": a.reason, "at": now});
        if !save(
            app,
            &a,
            None,
            "approval.created",
            &format!("{id}-created"),
            audit,
            now,
        )
        .await?
        {
            // Someone else wrote this id meanwhile (only possible when reusing): look again.
            continue;
        }
        if a.status.is_final() {
            mark_final(store, &a).await;
        }
        return Ok((true, answer(&a)));
    }
    Err(contention())
}

/// The Azure DevOps check asked about a run and target that already have an open or approved
/// request (a re-run stage evaluates its checks again, or the pipeline asked through the API
/// first): from now on the approval answers this check. Already approved: the outcome goes to
/// this check at once. Still open: this check replaces the earlier one, whose evaluation Azure
/// DevOps no longer waits on. A repeat of the same check instance changes nothing.
pub async fn attach_check(
    app: &App,
    id: &str,
    check: &crate::domain::check::CheckCallback,
    now: DateTime<Utc>,
) -> Result<Approval, ApiError> {
    let key = crate::domain::check::secret_key(id, &check.task_instance_id);
    let check_value = check.stored(&key);
    let mut secret_written = false;
    for attempt in 0..ATTEMPTS {
        let Some((a, version)) = load(app.store.as_ref(), id).await? else {
            return Err(not_found(id));
        };
        let current: Option<crate::domain::check::CheckCallback> = a
            .check
            .as_ref()
            .and_then(|c| serde_json::from_value(c.clone()).ok());
        if let Some(c) = &current {
            if c.same_instance(check) {
                return Ok(a);
            }
            // Only a check of the same organization and project may take over the callback:
            // another organization's check for the same build number and target must not
            // redirect the decision (and the job token) to itself.
            if !c.same_project(check) {
                return Err(ApiError::Conflict(format!(
                    "{id} was requested by a check of the Azure DevOps organization {:?}, project {}; a check from organization {:?}, project {} cannot answer it",
                    c.organization(),
                    c.project_id,
                    check.organization(),
                    check.project_id
                )));
            }
        }
        if !secret_written {
            app.store
                .secret_put(&key, &check.auth_token, now)
                .await
                .map_err(store_err)?;
            secret_written = true;
        }
        let mut next = a.clone();
        next.check = Some(check_value.clone());
        let record_id = format!("{id}-check-{}", check.task_instance_id);
        let audit = json!({"action": "approval.check_attached", "approval_id": id,
                           "check": check_for_audit(next.check.as_ref()),
                           "previous": check_for_audit(a.check.as_ref()), "status": a.status, "at": now});
        let outbox: Vec<OutboxDraft> = check_draft("approval.check_attached", &next)
            .into_iter()
            .collect();
        let any = !outbox.is_empty();
        let partition = partition_of(id).ok_or_else(|| not_found(id))?;
        let c = commit_of(
            partition.clone(),
            vec![
                DocWrite {
                    key: "approval".into(),
                    value: serde_json::to_value(&next).unwrap_or_default(),
                    expect: Expect::Version(version),
                },
                crate::audit::note(now, audit),
            ],
            outbox,
            &record_id,
            now,
        );
        if app.store.doc_commit(&c).await.map_err(store_err)? {
            // The replaced check of an approval still open gets no callback (Azure DevOps no
            // longer waits on it): its token is of no more use. A decided approval's earlier
            // check keeps its token until its own callback is settled (the dispatcher deletes
            // it then).
            if !a.status.is_final() {
                if let Some(old) = secret_of(a.check.as_ref()).filter(|k| *k != key) {
                    if let Err(e) = app.store.secret_delete(&old).await {
                        tracing::warn!(approval_id = id, error = %e, "could not delete a replaced check's token");
                    }
                }
            }
            if any {
                app.dispatcher.kick(partition);
            }
            return Ok(next);
        }
        pause(attempt).await;
    }
    Err(contention())
}

pub async fn get(app: &App, id: &str) -> Result<Value, ApiError> {
    let now = app.clock.now();
    match load(app.store.as_ref(), id).await? {
        Some((a, _)) => {
            let mut v = view(&a, now);
            v["approvers"] = approvers(app.store.as_ref(), &a).await?;
            Ok(v)
        }
        None => Err(not_found(id)),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(if parse_approval_id(id).is_some() {
        format!("no approval {id}")
    } else {
        format!("{id:?} is not an approval id (APR-<year>-<number>)")
    })
}

// ---------------------------------------------------------------------------------------------
// Sign and override

/// Who is signing, and how they reached us.
#[derive(Debug, Clone)]
pub struct Signer {
    pub name: String,
    pub roles: Vec<Role>,
    /// `api` or `mattermost`.
    pub via: String,
    /// The Mattermost button token's id: each token works once.
    pub token_id: Option<String>,
}

impl Signer {
    pub fn api(caller: &Caller) -> Signer {
        Signer {
            name: caller.name.clone(),
            roles: caller.roles.clone(),
            via: "api".into(),
            token_id: None,
        }
    }
}

/// Expire an overdue approval now (escalating it); returns the refusal to give the signer.
async fn expire_now(
    app: &App,
    a: &Approval,
    version: &str,
    now: DateTime<Utc>,
) -> Result<ApiError, ApiError> {
    let next = approval::expire(a, now);
    let audit =
        json!({"action": "approval.expired", "approval_id": a.id, "at": now, "escalated": true});
    if save(
        app,
        &next,
        Some(version),
        "approval.expired",
        &format!("{}-expired", a.id),
        audit,
        now,
    )
    .await?
    {
        mark_final(app.store.as_ref(), &next).await;
    }
    Ok(ApiError::Conflict(format!(
        "{} expired at {}; ask for a new approval",
        a.id,
        a.expires_at.to_rfc3339()
    )))
}

/// `POST approval/{id}/sign`.
pub async fn sign(
    app: &App,
    signer: &Signer,
    id: &str,
    input: &SignIn,
    now: DateTime<Utc>,
) -> Result<Value, ApiError> {
    let (mut took_lock, mut took_budget) = (None, None);
    let result = sign_inner(
        app,
        signer,
        id,
        input,
        now,
        &mut took_lock,
        &mut took_budget,
    )
    .await;
    if result.is_err() {
        if let Some(target) = took_lock {
            release_lock(app, &target, id, now).await;
        }
        if let Some(project) = took_budget {
            release_estimate(app, &project, id, false, now).await;
        }
    }
    result
}

async fn sign_inner(
    app: &App,
    signer: &Signer,
    id: &str,
    input: &SignIn,
    now: DateTime<Utc>,
    took_lock: &mut Option<String>,
    took_budget: &mut Option<String>,
) -> Result<Value, ApiError> {
    for attempt in 0..ATTEMPTS {
        let Some((a, version)) = load(app.store.as_ref(), id).await? else {
            return Err(not_found(id));
        };
        let a = a.settled(now);
        if a.is_overdue(now) {
            return Err(expire_now(app, &a, &version, now).await?);
        }
        let refuse = |why: String| {
            json!({"action": "approval.sign_refused", "approval_id": id, "by": signer.name, "via": signer.via,
                   "approval_type": input.approval_type, "decision": input.decision, "reason": why, "at": now})
        };
        if let Some(t) = &signer.token_id {
            if a.used_tokens.contains(t) {
                let msg = format!("this button was already used on {id}; a token works once");
                audit_refusal(app, id, refuse(msg.clone()), now).await;
                return Err(ApiError::Conflict(msg));
            }
        }
        // Who triggered the run, as the ledger says now (the run may have been reported after
        // the request was made).
        let run = crate::runs::run_record(app, &a.run_id).await?;
        let trigger = run.as_ref().map(|r| r.start.triggered_by.clone());
        // A request made before its run was on the ledger had no pipeline to take its project
        // from; now that there is one, its budget applies (asking early must not dodge it). The
        // budget itself is checked when the approval would become approved.
        let mut a = a;
        if let (None, Some(r)) = (&a.run_triggered_by, &run) {
            a.project =
                project_for(app, Some(&r.start.pipeline_name), &a.deployment_target).await?;
        }
        let (mut next, sig) = match a
            .with_ledger(trigger.as_deref())
            .and_then(|a| approval::sign(&a, &signer.name, &signer.roles, input, &signer.via, now))
        {
            Ok(x) => x,
            Err(r) => {
                audit_refusal(app, id, refuse(r.to_string()), now).await;
                return Err(refusal(r));
            }
        };
        if let Some(t) = &signer.token_id {
            next.used_tokens.push(t.clone());
        }
        if next.status == ApprovalStatus::Approved {
            match commit_estimate(app, &next, true, now).await {
                Ok(true) => *took_budget = Some(next.project.clone()),
                Ok(false) => {}
                Err(e) => {
                    audit_refusal(app, id, refuse(e.to_string()), now).await;
                    return Err(e);
                }
            }
        }
        if next.status == ApprovalStatus::Approved && next.production {
            if let Err(e) = acquire_lock(app, &next, now).await {
                audit_refusal(app, id, refuse(e.to_string()), now).await;
                return Err(e);
            }
            *took_lock = Some(next.deployment_target.clone());
        }
        let record_id = format!("{id}-S{}", next.signatures.len());
        let audit = json!({"action": "approval.signed", "approval_id": id, "signature": sig, "status": next.status, "at": now});
        if save(
            app,
            &next,
            Some(&version),
            "approval.signed",
            &record_id,
            audit,
            now,
        )
        .await?
        {
            if next.status.is_final() {
                mark_final_later(app, &next);
            }
            *took_lock = None;
            *took_budget = None;
            return Ok(json!({
                "success": true, "approval_id": id, "signature_hash": sig.signature_hash,
                "status": next.status, "approval_type": sig.approval_type, "decision": sig.decision,
                "signed_by": sig.by, "signed_at": sig.at,
            }));
        }
        pause(attempt).await;
    }
    Err(contention())
}

/// `POST approval/{id}/override`: an emergency override, a two-person act
/// ([`approval::emergency_override`]). The first call (an admin, with a reason) leaves the
/// approval `override_pending`; the second (a different person holding `override_approver`,
/// with a reason, within the override window) approves it, recorded as an exception.
pub async fn emergency_override(
    app: &App,
    caller: &Caller,
    id: &str,
    reason: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Value, ApiError> {
    let policy = &app.config.approvals.policy;
    for attempt in 0..ATTEMPTS {
        let Some((a, version)) = load(app.store.as_ref(), id).await? else {
            return Err(not_found(id));
        };
        let trigger = crate::runs::run_record(app, &a.run_id)
            .await?
            .map(|r| r.start.triggered_by);
        // An override does not need the run on the ledger (an outage may be why it is asked
        // for), but a trigger the ledger knows is excluded.
        let mut a = a;
        if let Some(t) = trigger.filter(|t| !t.trim().is_empty()) {
            a.run_triggered_by = Some(t);
        }
        let (next, step) = match approval::emergency_override(
            &a,
            &caller.name,
            &caller.roles,
            reason,
            policy,
            now,
        ) {
            Ok(n) => n,
            Err(r) => {
                audit_refusal(app, id, json!({"action": "approval.override_refused", "approval_id": id, "by": caller.name, "reason": r.to_string(), "at": now}), now).await;
                return Err(match r {
                    Refusal::Invalid(m) => ApiError::BadRequest {
                        code: "invalid_field",
                        message: m,
                        field: Some("reason".into()),
                    },
                    other => refusal(other),
                });
            }
        };
        if step == approval::OverrideStep::Requested {
            let Some(r) = next.override_request.clone() else {
                return Err(contention());
            };
            let audit = json!({"action": "approval.override_requested", "exception": true, "approval_id": id,
                               "by": caller.name, "reason": r.reason, "previous_status": r.previous_status,
                               "expires_at": r.expires_at, "at": now});
            if save(
                app,
                &next,
                Some(&version),
                "approval.override_requested",
                &format!("{id}-override-request-{}", now.timestamp_micros()),
                audit,
                now,
            )
            .await?
            {
                tracing::warn!(approval_id = id, by = %caller.name, "emergency override requested; waiting for a second person");
                return Ok(
                    json!({"success": true, "approval_id": id, "status": next.status,
                                 "requested_by": r.by, "expires_at": r.expires_at,
                                 "previous_status": r.previous_status, "signature_hash": r.signature_hash,
                                 "next": "a different person holding override_approver confirms with POST …/override and a reason"}),
                );
            }
            pause(attempt).await;
            continue;
        }
        let mut took = false;
        if next.production {
            acquire_lock(app, &next, now).await?;
            took = true;
        }
        // An override passes the budget (that is what it is for), but its estimate still counts.
        let took_budget = commit_estimate(app, &next, false, now).await?;
        let Some(o) = next.override_.clone() else {
            return Err(contention());
        };
        let audit = json!({"action": "approval.overridden", "exception": true, "approval_id": id, "exception_id": o.exception_id,
                           "by": o.by, "reason": o.reason, "confirmed_by": o.confirmed_by,
                           "confirm_reason": o.confirm_reason, "requested_at": o.requested_at,
                           "previous_status": o.previous_status, "at": now});
        if save(
            app,
            &next,
            Some(&version),
            "approval.overridden",
            &format!("{id}-override"),
            audit,
            now,
        )
        .await?
        {
            mark_final_later(app, &next);
            tracing::warn!(approval_id = id, by = %o.by, confirmed_by = %caller.name, exception_id = %o.exception_id, "emergency override");
            return Ok(
                json!({"success": true, "approval_id": id, "status": next.status, "exception_id": o.exception_id,
                       "requested_by": o.by, "confirmed_by": o.confirmed_by,
                       "signature_hash": o.signature_hash, "previous_status": o.previous_status}),
            );
        }
        if took {
            // Re-read: the next attempt decides again (and takes the lock again if still right).
            release_lock(app, &next.deployment_target, id, now).await;
        }
        if took_budget {
            release_estimate(app, &next.project, id, false, now).await;
        }
        pause(attempt).await;
    }
    Err(contention())
}

// ---------------------------------------------------------------------------------------------
// The sweep: expiry, escalation, reminders

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SweepReport {
    pub checked: usize,
    pub expired: usize,
    pub reminded: usize,
}

/// Expire and escalate overdue requests and remind approvers of pending ones. Reads the day
/// index back over the expiry period plus two days; safe to run from several instances at once.
pub async fn sweep(app: &App, now: DateTime<Utc>) -> Result<SweepReport, StoreError> {
    let policy = &app.config.approvals.policy;
    let days = policy.expiry.num_days() + 2;
    let mut report = SweepReport::default();
    for d in 0..=days {
        let day = (now - Duration::days(d)).format("%Y%m%d").to_string();
        for doc in app
            .store
            .doc_list(REGISTRY, &format!("index|{day}|"))
            .await?
        {
            if doc.value.get("final") == Some(&json!(true)) {
                continue;
            }
            let Some(id) = doc.value.get("approval_id").and_then(Value::as_str) else {
                continue;
            };
            report.checked += 1;
            match sweep_one(app, id, now).await {
                Ok(Swept::Expired) => report.expired += 1,
                Ok(Swept::Reminded) => report.reminded += 1,
                Ok(Swept::Nothing) => {}
                Err(e) => {
                    tracing::warn!(approval_id = id, error = %e, "approval sweep failed; next tick retries")
                }
            }
        }
    }
    Ok(report)
}

enum Swept {
    Expired,
    Reminded,
    Nothing,
}

async fn sweep_one(app: &App, id: &str, now: DateTime<Utc>) -> Result<Swept, ApiError> {
    let policy = &app.config.approvals.policy;
    for _ in 0..5 {
        let Some((a, version)) = load(app.store.as_ref(), id).await? else {
            return Ok(Swept::Nothing);
        };
        if a.status.is_final() {
            mark_final(app.store.as_ref(), &a).await;
            return Ok(Swept::Nothing);
        }
        if a.is_overdue(now) {
            expire_now(app, &a, &version, now).await?;
            return Ok(Swept::Expired);
        }
        if !a.reminder_due(now, policy) {
            return Ok(Swept::Nothing);
        }
        let mut next = a.clone();
        next.reminders_sent += 1;
        next.last_reminder_at = Some(now);
        let record_id = format!("{id}-R{}", next.reminders_sent);
        let audit = json!({"action": "approval.reminded", "approval_id": id, "reminder": next.reminders_sent, "at": now});
        if save(
            app,
            &next,
            Some(&version),
            "approval.reminder",
            &record_id,
            audit,
            now,
        )
        .await?
        {
            return Ok(Swept::Reminded);
        }
    }
    Ok(Swept::Nothing)
}

// ---------------------------------------------------------------------------------------------
// Redacting tokens chained by earlier versions (`icahub audit redact-tokens`)

/// What [`redact_tokens`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RedactReport {
    /// Approval partitions read.
    pub approvals: usize,
    /// Approvals whose current document held a token: redacted (or, dry run, to redact).
    pub redacted: Vec<String>,
    /// Of those, the open ones, whose token moved to the secret store for their callback.
    pub moved_to_secret: Vec<String>,
    /// Earlier chain entries that hold a token: kept as stored (the chain is never rewritten),
    /// masked in `audit query`, `audit export` and `audit archive`.
    pub chain_entries_with_token: u64,
    /// Azure DevOps outbox rows (not chained) whose payload carries a token inline.
    pub outbox_rows_with_token: u64,
    pub dry_run: bool,
}

/// For every approval whose current document holds its check's token inline (as versions before
/// the secret store wrote it), append a new version without it (the token's SHA-256 instead; an
/// approval still open keeps the token in the secret store for its callback) and an audit note
/// `audit.redacted`, in one commit. Nothing is rewritten: older chain entries keep their bodies
/// (and so their hashes) and are counted. `dry_run` only counts. Safe to run again, and while
/// the hub runs (each write is an optimistic commit).
pub async fn redact_tokens(
    store: &dyn Store,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<RedactReport, StoreError> {
    let mut report = RedactReport {
        dry_run,
        ..Default::default()
    };
    for p in store.audit_partitions().await? {
        if !p.starts_with("apr") {
            continue;
        }
        report.approvals += 1;
        let st = store.audit_state(&p).await?;
        report.chain_entries_with_token += st
            .entries
            .iter()
            .filter(|e| !crate::audit::mask_tokens(&mut e.body.clone()).is_empty())
            .count() as u64;
        for _ in 0..ATTEMPTS {
            let Some(doc) = store.doc_get(&p, "approval").await? else {
                break;
            };
            let has_token = doc.value["check"]
                .get("auth_token")
                .and_then(Value::as_str)
                .is_some_and(|t| !t.is_empty());
            if !has_token {
                break;
            }
            let mut a: Approval = serde_json::from_value(doc.value.clone())
                .map_err(|e| StoreError::Corrupt(format!("approval in {p}: {e}")))?;
            let open = !a.status.is_final();
            if dry_run {
                report.redacted.push(a.id.clone());
                if open {
                    report.moved_to_secret.push(a.id.clone());
                }
                break;
            }
            let Some(sha) = detach_token(store, &mut a, open, now).await? else {
                break;
            };
            let note = json!({"action": "audit.redacted", "approval_id": a.id,
                              "field": "check.auth_token", "sha256": sha,
                              "moved_to_secret": open, "at": now});
            let c = commit_of(
                p.clone(),
                vec![
                    DocWrite {
                        key: "approval".into(),
                        value: serde_json::to_value(&a).unwrap_or_default(),
                        expect: Expect::Version(doc.version.clone()),
                    },
                    crate::audit::note(now, note),
                ],
                Vec::new(),
                &format!("{}-redacted", a.id),
                now,
            );
            if store.doc_commit(&c).await? {
                report.redacted.push(a.id.clone());
                if open {
                    report.moved_to_secret.push(a.id.clone());
                }
                break;
            }
            pause(0).await;
        }
    }
    for status in [
        crate::storage::OutboxStatus::Pending,
        crate::storage::OutboxStatus::Dead,
        crate::storage::OutboxStatus::Delivered,
    ] {
        let rows = store
            .outbox_list(&crate::storage::OutboxFilter {
                status: Some(status),
                sink: Some(Sink::AzureDevops),
                limit: usize::MAX >> 1,
            })
            .await?;
        report.outbox_rows_with_token += rows
            .iter()
            .filter(|r| r.payload["check"].get("auth_token").is_some())
            .count() as u64;
    }
    Ok(report)
}
