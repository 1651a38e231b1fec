//! Issue 11's attacks on the gate, each performed against the real server and asserted refused,
//! on both backends (embedded SQLite and Table Storage on Azurite): the run's trigger approving
//! a run reported after its approval was requested, a one-person emergency override, keys
//! without the right role sending alerts or reading, a request picking a project without a
//! budget, and two approvals spending the same budget.

mod support;

use chrono::Utc;
use icahub::clock::ManualClock;
use icahub::config::{Config, Secret, StorageConfig};
use icahub::domain::identity::Role;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use support::azurite;
use support::hub::{Reply, TestHub};

const START: &str = "/api/v1/azdev/run/start";
const FINISH: &str = "/api/v1/azdev/run/finish";
const APPROVAL: &str = "/api/v1/azdev/approval";
const ALERT: &str = "/api/v1/azdev/alert";

/// A hub on the manual clock, and the clock.
async fn on_clock(c: Config) -> (TestHub, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let sinks = icahub::sinks::Sinks::from_lookup(&|_| None).unwrap();
    (TestHub::start_with(c, sinks, clock.clone()).await, clock)
}

async fn embedded(tweak: fn(&mut Config)) -> (TestHub, Arc<ManualClock>) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::embedded(dir.path());
    tweak(&mut c);
    let (mut hub, clock) = on_clock(c).await;
    hub.keep(dir);
    (hub, clock)
}

async fn tables(tweak: fn(&mut Config)) -> (TestHub, Arc<ManualClock>) {
    let mut c = Config::embedded("unused");
    c.storage = StorageConfig::Tables {
        connection_string: Secret::new(azurite::connection_string()),
        table_prefix: azurite::unique_prefix("gate"),
    };
    c.store_timeout = Duration::from_secs(10);
    tweak(&mut c);
    on_clock(c).await
}

/// One scenario, run once per backend.
macro_rules! both {
    ($scenario:ident, $tweak:expr) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let (hub, clock) = super::embedded($tweak).await;
                super::$scenario(hub, clock).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tables() {
                let (hub, clock) = super::tables($tweak).await;
                super::$scenario(hub, clock).await;
            }
        }
    };
    ($scenario:ident) => {
        both!($scenario, |_| {});
    };
}

async fn person(hub: &TestHub, name: &str, roles: &[Role]) -> String {
    hub.person(name, roles).await
}

async fn call(hub: &TestHub, key: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
    let c = reqwest::Client::new();
    let mut r = match method {
        "GET" => c.get(hub.url(path)),
        _ => c.post(hub.url(path)),
    }
    .header("authorization", format!("Bearer {key}"));
    if let Some(b) = body {
        r = r
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    Reply::read(r.send().await.unwrap()).await
}

async fn post(hub: &TestHub, key: &str, path: &str, body: Value) -> Reply {
    hub.post_as(key, path, &body).await
}

async fn start_run(hub: &TestHub, key: &str, run: &str, pipeline: &str, trigger: &str) {
    let r = post(
        hub,
        key,
        START,
        json!({"pipeline_name": pipeline, "run_id": run, "branch": "main",
               "commit": "9f2c1e7", "triggered_by": trigger}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

fn request(run: &str, target: &str, cost: f64) -> Value {
    json!({"run_id": run, "deployment_target": target, "estimated_cost": cost,
           "checklist": ["tests green"]})
}

fn approve(half: &str) -> Value {
    json!({"approval_type": half, "decision": "approved"})
}

fn sign_path(id: &str) -> String {
    format!("{APPROVAL}/{id}/sign")
}

async fn approval(hub: &TestHub, id: &str) -> Value {
    hub.get(&format!("{APPROVAL}/{id}")).await.json
}

/// The audit notes of an approval's partition with this action.
async fn notes(hub: &TestHub, id: &str, action: &str) -> Vec<Value> {
    hub.audit_notes(&icahub::approvals::partition_of(id).unwrap(), action)
        .await
}

// ---------------------------------------------------------------------------------------------

/// The approval is requested before the run is on the ledger; then mallory, a technical
/// approver, starts the run and tries to approve her own deployment.
async fn the_trigger_of_a_run_reported_later_cannot_approve(
    hub: TestHub,
    _clock: Arc<ManualClock>,
) {
    let dave = person(&hub, "dave", &[Role::Devops]).await;
    let mallory = person(&hub, "mallory", &[Role::TechnicalApprover]).await;
    let alice = person(&hub, "alice", &[Role::TechnicalApprover]).await;
    let bob = person(&hub, "bob", &[Role::BusinessApprover]).await;
    let r = post(&hub, &dave, APPROVAL, request("7001", "production", 100.0)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["run_triggered_by"], Value::Null);
    let id = r.json["approval_id"].as_str().unwrap().to_string();

    // While the run is unknown nobody can tell who started it: production waits for the ledger.
    let early = post(&hub, &mallory, &sign_path(&id), approve("technical")).await;
    assert!(early.expect_error(409)["message"]
        .as_str()
        .unwrap()
        .contains("not on the run ledger"));

    start_run(&hub, &dave, "7001", "payments-deploy", "mallory").await;
    let own = post(&hub, &mallory, &sign_path(&id), approve("technical")).await;
    assert!(own.expect_error(403)["message"]
        .as_str()
        .unwrap()
        .contains("triggered its run"));
    let a = approval(&hub, &id).await;
    assert_eq!(a["status"], "pending");
    assert!(a["signatures"].as_array().unwrap().is_empty());
    assert_eq!(notes(&hub, &id, "approval.sign_refused").await.len(), 2);

    // Two other people still can.
    let t = post(&hub, &alice, &sign_path(&id), approve("technical")).await;
    assert_eq!(t.status, 200, "{}", t.text);
    let b = post(&hub, &bob, &sign_path(&id), approve("business")).await;
    assert_eq!(b.json["status"], "approved", "{}", b.text);
    assert_eq!(approval(&hub, &id).await["run_triggered_by"], "mallory");
}
both!(the_trigger_of_a_run_reported_later_cannot_approve);

/// One admin turns a rejected approval into approved: it takes a second, different person
/// holding override_approver, and neither may be the requester.
async fn an_emergency_override_takes_two_people(hub: TestHub, _clock: Arc<ManualClock>) {
    let dave = person(&hub, "dave", &[Role::Devops, Role::Admin]).await;
    let root = person(&hub, "root", &[Role::Admin, Role::OverrideApprover]).await;
    let admin2 = person(&hub, "admin2", &[Role::Admin]).await;
    let ceo = person(&hub, "ceo", &[Role::OverrideApprover]).await;
    let alice = person(&hub, "alice", &[Role::TechnicalApprover]).await;
    start_run(&hub, &dave, "7101", "payments-deploy", "carol").await;
    let r = post(&hub, &dave, APPROVAL, request("7101", "production", 10.0)).await;
    let id = r.json["approval_id"].as_str().unwrap().to_string();
    let rej = post(
        &hub,
        &alice,
        &sign_path(&id),
        json!({"approval_type": "technical", "decision": "rejected", "comments": "no rollback plan"}),
    )
    .await;
    assert_eq!(rej.json["status"], "rejected", "{}", rej.text);
    let path = format!("{APPROVAL}/{id}/override");

    // The requester, although an admin, cannot override their own request.
    post(&hub, &dave, &path, json!({"reason": "mine"}))
        .await
        .expect_error(403);
    // One admin: only a request for the second signature.
    let first = post(&hub, &root, &path, json!({"reason": "payments down"})).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json["status"], "override_pending");
    // Holding both roles does not make one person two.
    let same = post(&hub, &root, &path, json!({"reason": "still me"})).await;
    assert_eq!(same.status, 403, "{}", same.text);
    // Another admin without override_approver cannot confirm.
    post(&hub, &admin2, &path, json!({"reason": "me too"}))
        .await
        .expect_error(403);
    // A confirmation needs its own reason.
    post(&hub, &ceo, &path, json!({})).await.expect_error(400);
    let a = approval(&hub, &id).await;
    assert_eq!(a["status"], "override_pending");
    assert!(a["override"].is_null());

    let ok = post(&hub, &ceo, &path, json!({"reason": "CAB call 14:07"})).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.json["status"], "approved");
    assert_eq!(ok.json["previous_status"], "rejected");
    let a = approval(&hub, &id).await;
    assert_eq!(a["override"]["by"], "root");
    assert_eq!(a["override"]["confirmed_by"], "ceo");
    assert_eq!(a["override"]["confirm_reason"], "CAB call 14:07");
    let done = notes(&hub, &id, "approval.overridden").await;
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["exception"], true);
    assert_eq!(done[0]["confirmed_by"], "ceo");
    assert_eq!(notes(&hub, &id, "approval.override_refused").await.len(), 4);
}
both!(an_emergency_override_takes_two_people);

/// An admin asks for an override before the run is on the ledger, then the ledger names that
/// admin as the run's trigger: a second person's confirmation would let the trigger push their
/// own deployment through, so it is refused, and the approval stays as it was.
async fn an_override_asked_by_the_later_named_trigger_cannot_be_confirmed(
    hub: TestHub,
    _clock: Arc<ManualClock>,
) {
    let dave = person(&hub, "dave", &[Role::Devops]).await;
    let root = person(&hub, "root", &[Role::Admin]).await;
    let ceo = person(&hub, "ceo", &[Role::OverrideApprover]).await;
    let r = post(&hub, &dave, APPROVAL, request("7151", "production", 10.0)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["approval_id"].as_str().unwrap().to_string();
    let path = format!("{APPROVAL}/{id}/override");
    let asked = post(&hub, &root, &path, json!({"reason": "pipeline outage"})).await;
    assert_eq!(asked.json["status"], "override_pending", "{}", asked.text);

    start_run(&hub, &dave, "7151", "payments-deploy", "root").await;
    let confirm = post(&hub, &ceo, &path, json!({"reason": "looks fine"})).await;
    assert!(confirm.expect_error(409)["message"]
        .as_str()
        .unwrap()
        .contains("root asked for this override but triggered its run"));
    let a = approval(&hub, &id).await;
    assert_eq!(a["status"], "override_pending");
    assert!(a["override"].is_null());
    assert!(notes(&hub, &id, "approval.overridden").await.is_empty());
    assert_eq!(notes(&hub, &id, "approval.override_refused").await.len(), 1);
}
both!(an_override_asked_by_the_later_named_trigger_cannot_be_confirmed);

/// An override nobody confirms within the window lapses: the approval is back where it was, and
/// a late confirmation is refused.
async fn an_unconfirmed_override_lapses(hub: TestHub, clock: Arc<ManualClock>) {
    let dave = person(&hub, "dave", &[Role::Devops]).await;
    let root = person(&hub, "root", &[Role::Admin]).await;
    let ceo = person(&hub, "ceo", &[Role::OverrideApprover]).await;
    let r = post(&hub, &dave, APPROVAL, request("7201", "staging", 1.0)).await;
    let id = r.json["approval_id"].as_str().unwrap().to_string();
    let path = format!("{APPROVAL}/{id}/override");
    let first = post(&hub, &root, &path, json!({"reason": "hotfix"})).await;
    assert_eq!(first.json["status"], "override_pending", "{}", first.text);
    clock.advance(chrono::Duration::seconds(61));
    // Too late: the confirmation finds no request to confirm, and a confirmer cannot ask.
    let late = post(&hub, &ceo, &path, json!({"reason": "ok"})).await;
    assert_eq!(late.status, 403, "{}", late.text);
    let a = approval(&hub, &id).await;
    assert_eq!(a["status"], "pending", "{a}");
    // A new request starts over, and a timely confirmation works.
    let again = post(&hub, &root, &path, json!({"reason": "hotfix, again"})).await;
    assert_eq!(again.json["status"], "override_pending", "{}", again.text);
    let ok = post(&hub, &ceo, &path, json!({"reason": "ok"})).await;
    assert_eq!(ok.json["status"], "approved", "{}", ok.text);
}
both!(an_unconfirmed_override_lapses, |c| c
    .approvals
    .policy
    .override_window =
    chrono::Duration::seconds(60));

/// Keys with the wrong role: no role, the auditor's read-only key and a pipeline's devops key
/// cannot open incidents; the action group's alert_sender key reads nothing.
async fn roles_mean_what_they_say(hub: TestHub, _clock: Arc<ManualClock>) {
    let nobody = person(&hub, "nobody", &[]).await;
    let auditor = person(&hub, "auditor", &[Role::Auditor]).await;
    let pipeline = person(&hub, "pipeline", &[Role::Devops]).await;
    let sender = person(&hub, "azmon", &[Role::AlertSender]).await;
    let reader = person(&hub, "viewer", &[Role::Reader]).await;
    let alert =
        String::from_utf8(support::fixture("azmon-common-metric-static-fired.json")).unwrap();
    for (who, key) in [
        ("nobody", &nobody),
        ("auditor", &auditor),
        ("pipeline", &pipeline),
        ("reader", &reader),
    ] {
        let r = reqwest::Client::new()
            .post(hub.url(ALERT))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(alert.clone())
            .send()
            .await
            .unwrap();
        let r = Reply::read(r).await;
        let e = r.expect_error(403);
        assert!(
            e["message"].as_str().unwrap().contains("alert_sender"),
            "{who}: {}",
            r.text
        );
    }
    assert_eq!(
        hub.app.store.count_events().await.unwrap(),
        0,
        "nothing stored"
    );
    // The sender's alert goes through.
    let ok = reqwest::Client::new()
        .post(hub.url(ALERT))
        .header("authorization", format!("Bearer {sender}"))
        .header("content-type", "application/json")
        .body(alert)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    let incident = Reply::read(ok).await.json["events"][0]["incident_id"]
        .as_str()
        .unwrap()
        .to_string();

    start_run(&hub, &pipeline, "7301", "payments-deploy", "carol").await;
    let r = post(&hub, &pipeline, APPROVAL, request("7301", "staging", 1.0)).await;
    let id = r.json["approval_id"].as_str().unwrap().to_string();
    let reads = [
        format!("/api/v1/azdev/incident/{incident}"),
        "/api/v1/azdev/incidents".to_string(),
        "/api/v1/azdev/run/7301".to_string(),
        format!("{APPROVAL}/{id}"),
    ];
    for path in &reads {
        for key in [&sender, &nobody] {
            let r = call(&hub, key, "GET", path, None).await;
            assert!(
                r.expect_error(403)["message"]
                    .as_str()
                    .unwrap()
                    .contains("reader"),
                "{path}: {}",
                r.text
            );
        }
        for key in [&reader, &auditor, &pipeline] {
            let r = call(&hub, key, "GET", path, None).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text);
        }
    }
}
both!(roles_mean_what_they_say);

/// The caller picks `"project": "misc"` to dodge the budget; the pipeline's project is used.
/// Then two $13,000 approvals against a $20,000 budget: the second cannot be approved while
/// the first run is unfinished.
async fn budgets_cannot_be_dodged_or_spent_twice(hub: TestHub, _clock: Arc<ManualClock>) {
    let dave = person(&hub, "dave", &[Role::Devops]).await;
    let alice = person(&hub, "alice", &[Role::TechnicalApprover]).await;
    let fiona = person(&hub, "fiona", &[Role::Finance]).await;
    let store = hub.app.store.as_ref();
    icahub::approvals::set_budget(store, "payments", 20_000.0, Some(0.0), "fiona", Utc::now())
        .await
        .unwrap();
    icahub::approvals::set_budget_map(
        store,
        "payments-deploy",
        Some("payments"),
        "fiona",
        Utc::now(),
    )
    .await
    .unwrap();
    for run in ["7401", "7402", "7403"] {
        start_run(&hub, &dave, run, "payments-deploy", "carol").await;
    }
    let mut dodge = request("7401", "production", 23_200.0);
    dodge["project"] = json!("misc");
    let e = post(&hub, &dave, APPROVAL, dodge).await;
    assert_eq!(e.expect_error(400)["field"], "project");
    // Without the field the pipeline's budget applies: 116% is rejected at once.
    let r = post(
        &hub,
        &dave,
        APPROVAL,
        request("7401", "production", 23_200.0),
    )
    .await;
    assert_eq!(r.json["status"], "rejected", "{}", r.text);
    assert_eq!(r.json["project"], "payments");

    let first = post(
        &hub,
        &dave,
        APPROVAL,
        request("7402", "production-eu", 13_000.0),
    )
    .await;
    let second = post(
        &hub,
        &dave,
        APPROVAL,
        request("7403", "production-us", 13_000.0),
    )
    .await;
    assert_eq!(first.json["budget"]["utilization"], 0.65, "{}", first.text);
    assert_eq!(
        second.json["budget"]["utilization"], 0.65,
        "{}",
        second.text
    );
    let (a, b) = (
        first.json["approval_id"].as_str().unwrap().to_string(),
        second.json["approval_id"].as_str().unwrap().to_string(),
    );
    for id in [&a, &b] {
        let t = post(&hub, &alice, &sign_path(id), approve("technical")).await;
        assert_eq!(t.status, 200, "{}", t.text);
    }
    let ok = post(&hub, &fiona, &sign_path(&a), approve("business")).await;
    assert_eq!(ok.json["status"], "approved", "{}", ok.text);
    let refused = post(&hub, &fiona, &sign_path(&b), approve("business")).await;
    let msg = refused.expect_error(409)["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("130.0%") && msg.contains("committed $13000.00"),
        "{msg}"
    );
    assert_eq!(approval(&hub, &b).await["status"], "technical_approved");
    // A new request sees the commitment too.
    start_run(&hub, &dave, "7404", "payments-deploy", "carol").await;
    let third = post(
        &hub,
        &dave,
        APPROVAL,
        request("7404", "production-ap", 5_000.0),
    )
    .await;
    assert_eq!(
        third.json["budget"]["committed"], 13_000.0,
        "{}",
        third.text
    );
    assert_eq!(third.json["budget"]["utilization"], 0.9);

    // The first run finishes: its estimate becomes recorded spend, no longer a commitment.
    let f = post(
        &hub,
        &dave,
        FINISH,
        json!({"run_id": "7402", "status": "success", "end_time": "2026-11-22T10:30:00Z"}),
    )
    .await;
    assert_eq!(f.status, 200, "{}", f.text);
    let budget = icahub::approvals::budget(store, "payments")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(budget.current_spend, 13_000.0);
    assert!(budget.committed.is_empty(), "{budget:?}");
}
both!(budgets_cannot_be_dodged_or_spent_twice);

/// Asking before the run is on the ledger (so no pipeline decides the project yet) does not
/// dodge the budget: once the run is recorded, its pipeline's budget applies to the signature.
async fn asking_early_does_not_dodge_the_budget(hub: TestHub, _clock: Arc<ManualClock>) {
    let dave = person(&hub, "dave", &[Role::Devops]).await;
    let alice = person(&hub, "alice", &[Role::TechnicalApprover]).await;
    let bob = person(&hub, "bob", &[Role::BusinessApprover]).await;
    let store = hub.app.store.as_ref();
    icahub::approvals::set_budget(
        store,
        "payments",
        20_000.0,
        Some(19_000.0),
        "fiona",
        Utc::now(),
    )
    .await
    .unwrap();
    icahub::approvals::set_budget_map(
        store,
        "payments-deploy",
        Some("payments"),
        "fiona",
        Utc::now(),
    )
    .await
    .unwrap();
    let r = post(&hub, &dave, APPROVAL, request("7601", "staging", 4_000.0)).await;
    assert_eq!(r.json["status"], "pending", "{}", r.text);
    assert_eq!(
        r.json["project"], "staging",
        "no pipeline yet: the target's (no budget)"
    );
    let id = r.json["approval_id"].as_str().unwrap().to_string();
    start_run(&hub, &dave, "7601", "payments-deploy", "carol").await;
    let t = post(&hub, &alice, &sign_path(&id), approve("technical")).await;
    assert_eq!(t.status, 200, "{}", t.text);
    let b = post(&hub, &bob, &sign_path(&id), approve("business")).await;
    let msg = b.expect_error(409)["message"].as_str().unwrap().to_string();
    assert!(msg.contains("115.0%") && msg.contains("payments"), "{msg}");
    let a = approval(&hub, &id).await;
    assert_eq!(a["status"], "technical_approved");
    assert_eq!(a["project"], "payments");
}
both!(asking_early_does_not_dodge_the_budget);

/// `ICAHUB_BUDGET_REQUIRED=true`: a production request whose project has no budget is refused.
async fn production_needs_a_budget_when_required(hub: TestHub, _clock: Arc<ManualClock>) {
    let dave = person(&hub, "dave", &[Role::Devops]).await;
    start_run(&hub, &dave, "7501", "unbudgeted-deploy", "carol").await;
    let e = post(&hub, &dave, APPROVAL, request("7501", "production", 10.0)).await;
    assert!(e.expect_error(409)["message"]
        .as_str()
        .unwrap()
        .contains("has no budget"));
    // Staging does not need one.
    let ok = post(&hub, &dave, APPROVAL, request("7501", "staging", 10.0)).await;
    assert_eq!(ok.status, 201, "{}", ok.text);
}
both!(production_needs_a_budget_when_required, |c| c
    .approvals
    .budget_required =
    true);
