//! Approval gates through the real server (embedded store): the dual-approval flow, every
//! separation-of-duties refusal, cost governance (budgets, finance), expiry with escalation and
//! reminders (manual clock), emergency overrides, deployment locks and idempotent requests.

mod support;

use chrono::{Duration as Span, Utc};
use icahub::clock::ManualClock;
use icahub::config::Config;
use icahub::domain::identity::Role;
use serde_json::{json, Value};
use std::sync::Arc;
use support::hub::{Reply, TestHub};

const START: &str = "/api/v1/azdev/run/start";
const FINISH: &str = "/api/v1/azdev/run/finish";
const APPROVAL: &str = "/api/v1/azdev/approval";

/// A person with an API key and these roles.
async fn person(hub: &TestHub, name: &str, roles: &[Role]) -> String {
    hub.person(name, roles).await
}

async fn post_as(hub: &TestHub, key: &str, path: &str, body: Value) -> Reply {
    let r = reqwest::Client::new()
        .post(hub.url(path))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    Reply::read(r).await
}

async fn start_run(hub: &TestHub, run: &str, triggered_by: &str) {
    let r = hub
        .post_json(
            START,
            json!({"pipeline_name": "payments-deploy", "run_id": run, "branch": "main",
                   "commit": "9f2c1e7", "triggered_by": triggered_by})
            .to_string(),
        )
        .await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text);
}

fn request(run: &str, target: &str, cost: f64) -> Value {
    json!({"run_id": run, "deployment_target": target, "estimated_cost": cost,
           "checklist": ["tests green", "rollback plan"]})
}

fn sign_body(t: &str, decision: &str, comments: Option<&str>) -> Value {
    json!({"approval_type": t, "decision": decision, "comments": comments})
}

fn sign_path(id: &str) -> String {
    format!("{APPROVAL}/{id}/sign")
}

struct People {
    alice: String, // technical approver
    bob: String,   // business approver
    fiona: String, // finance
    carol: String, // technical + business; triggers runs
    both: String,  // technical + business
    dave: String,  // devops only
    root: String,  // admin
}

async fn people(hub: &TestHub) -> People {
    People {
        alice: person(hub, "alice", &[Role::TechnicalApprover]).await,
        bob: person(hub, "bob", &[Role::BusinessApprover]).await,
        fiona: person(hub, "fiona", &[Role::Finance]).await,
        carol: person(
            hub,
            "carol",
            &[Role::TechnicalApprover, Role::BusinessApprover],
        )
        .await,
        both: person(
            hub,
            "erin",
            &[Role::TechnicalApprover, Role::BusinessApprover],
        )
        .await,
        dave: person(hub, "dave", &[Role::Devops]).await,
        root: person(hub, "root", &[Role::Admin]).await,
    }
}

#[tokio::test]
async fn a_production_deployment_needs_two_different_approvers() {
    let hub = TestHub::embedded().await;
    let p = people(&hub).await;
    start_run(&hub, "2001", "carol").await;
    let r = post_as(
        &hub,
        &p.dave,
        APPROVAL,
        request("2001", "production", 1200.0),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["approval_id"].as_str().unwrap().to_string();
    assert_eq!(id, format!("APR-{}-000001", Utc::now().format("%Y")));
    assert_eq!(r.json["status"], "pending");
    assert_eq!(
        r.json["project"], "payments-deploy",
        "defaults to the pipeline"
    );
    // Approvers: the roles' holders, minus the requester (dave) and the run's trigger (carol).
    let tech = r.json["approvers"]["technical"].as_array().unwrap();
    assert!(tech.contains(&json!("alice")) && !tech.contains(&json!("carol")));
    assert!(r.json["approvers"]["business"]
        .as_array()
        .unwrap()
        .contains(&json!("bob")));

    let t = post_as(
        &hub,
        &p.alice,
        &sign_path(&id),
        sign_body("technical", "approved", Some("lgtm")),
    )
    .await;
    assert_eq!(t.status, 200, "{}", t.text);
    assert_eq!(t.json["status"], "technical_approved");
    let h1 = t.json["signature_hash"].as_str().unwrap().to_string();
    assert_eq!(h1.len(), 64);
    let b = post_as(
        &hub,
        &p.bob,
        &sign_path(&id),
        sign_body("business", "approved", None),
    )
    .await;
    assert_eq!(b.status, 200, "{}", b.text);
    assert_eq!(b.json["status"], "approved");
    assert_ne!(b.json["signature_hash"], json!(h1));

    let g = hub.get(&format!("{APPROVAL}/{id}")).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.json["status"], "approved");
    let sigs = g.json["signatures"].as_array().unwrap();
    assert_eq!(sigs.len(), 2);
    assert_eq!(sigs[0]["by"], "alice");
    assert_eq!(sigs[1]["by"], "bob");
    assert!(g.json.get("used_tokens").is_none());

    // Decided: a further signature is a conflict.
    post_as(
        &hub,
        &p.both,
        &sign_path(&id),
        sign_body("technical", "approved", None),
    )
    .await
    .expect_error(409);
}

#[tokio::test]
async fn every_separation_of_duties_refusal() {
    let hub = TestHub::embedded().await;
    let p = people(&hub).await;
    start_run(&hub, "2002", "carol").await;
    let r = post_as(&hub, &p.dave, APPROVAL, request("2002", "staging", 10.0)).await;
    let id = r.json["approval_id"].as_str().unwrap().to_string();
    let path = sign_path(&id);

    // The requester, even with every role.
    let dave_all = person(&hub, "dave", &Role::ALL).await;
    let e = post_as(
        &hub,
        &dave_all,
        &path,
        sign_body("technical", "approved", None),
    )
    .await;
    assert!(e.expect_error(403)["message"]
        .as_str()
        .unwrap()
        .contains("requested"));
    // Whoever triggered the run.
    let e = post_as(
        &hub,
        &p.carol,
        &path,
        sign_body("technical", "approved", None),
    )
    .await;
    e.expect_error(403);
    // Without the role for that half.
    let e = post_as(
        &hub,
        &p.bob,
        &path,
        sign_body("technical", "approved", None),
    )
    .await;
    assert!(e.expect_error(403)["message"]
        .as_str()
        .unwrap()
        .contains("technical_approver"));
    let e = post_as(
        &hub,
        &p.alice,
        &path,
        sign_body("business", "approved", None),
    )
    .await;
    e.expect_error(403);
    // A rejection needs a reason.
    let e = post_as(
        &hub,
        &p.alice,
        &path,
        sign_body("technical", "rejected", None),
    )
    .await;
    assert_eq!(e.expect_error(400)["field"], "comments");
    // One person cannot give both halves.
    let ok = post_as(
        &hub,
        &p.both,
        &path,
        sign_body("technical", "approved", None),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let e = post_as(
        &hub,
        &p.both,
        &path,
        sign_body("business", "approved", None),
    )
    .await;
    assert!(e.expect_error(403)["message"]
        .as_str()
        .unwrap()
        .contains("two different people"));
    // The same half twice.
    let e = post_as(
        &hub,
        &p.alice,
        &path,
        sign_body("technical", "approved", None),
    )
    .await;
    assert!(e.expect_error(409)["message"]
        .as_str()
        .unwrap()
        .contains("already given by erin"));
    // Nothing of that changed the approval.
    let g = hub.get(&format!("{APPROVAL}/{id}")).await;
    assert_eq!(g.json["status"], "technical_approved");
    assert_eq!(g.json["signatures"].as_array().unwrap().len(), 1);
    // Every refusal is on the approval's audit trail.
    let audit = hub
        .app
        .store
        .doc_list(&icahub::approvals::partition_of(&id).unwrap(), "audit|")
        .await
        .unwrap();
    let refused = audit
        .iter()
        .filter(|d| d.value["action"] == "approval.sign_refused")
        .count();
    // Six refusals reached the rules (the reasonless rejection was a malformed request).
    assert_eq!(refused, 6, "{audit:#?}");

    // A rejection with a reason decides it; nothing can be signed after.
    let r = post_as(
        &hub,
        &p.bob,
        &path,
        sign_body("business", "rejected", Some("not this week")),
    )
    .await;
    assert_eq!(r.json["status"], "rejected", "{}", r.text);
    post_as(&hub, &p.bob, &path, sign_body("business", "approved", None))
        .await
        .expect_error(409);

    // Unknown and malformed ids; requests without the devops role; bad bodies.
    hub.get(&format!("{APPROVAL}/APR-2026-999999"))
        .await
        .expect_error(404);
    hub.get(&format!("{APPROVAL}/nonsense"))
        .await
        .expect_error(404);
    post_as(&hub, &p.alice, APPROVAL, request("2002", "dev", 1.0))
        .await
        .expect_error(403);
    let e = post_as(&hub, &p.dave, APPROVAL, json!({"deployment_target": "dev"})).await;
    assert_eq!(e.expect_error(400)["field"], "run_id");
    let e = post_as(
        &hub,
        &p.dave,
        APPROVAL,
        json!({"run_id": "1", "deployment_target": "production"}),
    )
    .await;
    assert_eq!(e.expect_error(400)["field"], "estimated_cost");
    let e = post_as(
        &hub,
        &p.alice,
        &path,
        json!({"approval_type": "legal", "decision": "approved"}),
    )
    .await;
    assert_eq!(e.expect_error(400)["field"], "approval_type");
}

#[tokio::test]
async fn budgets_reject_over_95_percent_and_big_estimates_need_finance() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.routing.mattermost = true;
    config.approvals.finance_channel = Some("finance".into());
    let hub = TestHub::start(config).await;
    let p = people(&hub).await;
    icahub::approvals::set_budget(
        hub.app.store.as_ref(),
        "payments",
        10_000.0,
        Some(9_000.0),
        "fiona",
        Utc::now(),
    )
    .await
    .unwrap();
    // The pipeline's runs spend the payments budget.
    icahub::approvals::set_budget_map(
        hub.app.store.as_ref(),
        "payments-deploy",
        Some("payments"),
        "fiona",
        Utc::now(),
    )
    .await
    .unwrap();
    for run in ["3001", "3002"] {
        start_run(&hub, run, "dave").await;
    }
    // Another pipeline's run, whose project has no budget.
    let r = hub
        .post_json(
            START,
            json!({"pipeline_name": "ledger-deploy", "run_id": "3003", "branch": "main",
                   "commit": "9f2c1e7", "triggered_by": "dave"})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let mut body = request("3001", "staging", 600.0);
    body["project"] = json!("payments");
    let r = post_as(&hub, &p.dave, APPROVAL, body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["status"], "rejected");
    assert_eq!(r.json["budget"]["utilization"], 0.96);
    assert!(
        r.json["reason"].as_str().unwrap().contains("96.0%"),
        "{}",
        r.json["reason"]
    );

    let r = post_as(&hub, &p.dave, APPROVAL, request("3002", "staging", 200.0)).await;
    assert_eq!(r.json["status"], "pending", "{}", r.text);
    assert_eq!(r.json["project"], "payments");

    // Above $5,000/month: the business half must come from finance, who is told.
    let r = post_as(
        &hub,
        &p.dave,
        APPROVAL,
        request("3003", "production", 7_500.0),
    )
    .await;
    assert_eq!(r.json["finance_required"], true, "{}", r.text);
    let business = r.json["approvers"]["business"].as_array().unwrap();
    assert!(business.contains(&json!("fiona")) && !business.contains(&json!("bob")));
    let id = r.json["approval_id"].as_str().unwrap().to_string();
    let rows = hub
        .app
        .store
        .stream_outbox(&icahub::approvals::partition_of(&id).unwrap())
        .await
        .unwrap();
    let finance: Vec<_> = rows
        .iter()
        .filter(|r| r.kind == "approval.finance_review")
        .collect();
    assert_eq!(finance.len(), 1, "{rows:#?}");
    assert_eq!(finance[0].payload["route"]["mattermost_channel"], "finance");
    assert!(rows.iter().any(|r| r.kind == "approval.requested"));
    let e = post_as(
        &hub,
        &p.bob,
        &sign_path(&id),
        sign_body("business", "approved", None),
    )
    .await;
    assert!(e.expect_error(403)["message"]
        .as_str()
        .unwrap()
        .contains("finance"));
    let ok = post_as(
        &hub,
        &p.fiona,
        &sign_path(&id),
        sign_body("business", "approved", None),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(
        ok.json["status"], "pending",
        "business first: still waiting for technical"
    );
}

#[tokio::test]
async fn pending_requests_are_reminded_hourly_then_expire_and_escalate() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.routing.mattermost = true;
    config.routing.control_plane = true;
    config.approvals.escalation_channel = Some("oncall-leads".into());
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let sinks = icahub::sinks::Sinks::default();
    let hub = TestHub::start_with(config, sinks, clock.clone()).await;
    let p = people(&hub).await;
    let r = post_as(&hub, &p.dave, APPROVAL, request("4001", "staging", 5.0)).await;
    let id = r.json["approval_id"].as_str().unwrap().to_string();
    let sweep = |hub: &TestHub| {
        let app = hub.app.clone();
        let now = clock.now();
        async move { app.approvals.sweep(now).await.unwrap() }
    };
    use icahub::clock::Clock;
    assert_eq!(sweep(&hub).await.reminded, 0);
    clock.advance(Span::minutes(61));
    assert_eq!(sweep(&hub).await.reminded, 1);
    assert_eq!(sweep(&hub).await.reminded, 0, "once per hour");
    clock.advance(Span::minutes(30));
    assert_eq!(sweep(&hub).await.reminded, 0);
    clock.advance(Span::minutes(31));
    assert_eq!(sweep(&hub).await.reminded, 1);
    // 4 hours after the request: expired and escalated.
    clock.advance(Span::minutes(120));
    let s = sweep(&hub).await;
    assert_eq!((s.expired, s.reminded), (1, 0));
    let g = hub.get(&format!("{APPROVAL}/{id}")).await;
    assert_eq!(g.json["status"], "expired");
    assert!(g.json["escalated_at"].is_string());
    post_as(
        &hub,
        &p.alice,
        &sign_path(&id),
        sign_body("technical", "approved", None),
    )
    .await
    .expect_error(409);
    assert_eq!(
        sweep(&hub).await.checked,
        0,
        "a decided approval leaves the sweep"
    );

    let rows = hub
        .app
        .store
        .stream_outbox(&icahub::approvals::partition_of(&id).unwrap())
        .await
        .unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "approval.reminder").count(),
        2,
        "{kinds:?}"
    );
    let esc = rows
        .iter()
        .find(|r| r.kind == "approval.escalated")
        .unwrap();
    assert_eq!(esc.payload["route"]["mattermost_channel"], "oncall-leads");
    assert!(
        kinds.contains(&"approval.expired"),
        "the control plane hears of it: {kinds:?}"
    );
    assert!(kinds.contains(&"approval.decided"));
}

#[tokio::test]
async fn an_emergency_override_takes_an_admin_and_a_second_person() {
    let hub = TestHub::embedded().await;
    let p = people(&hub).await;
    let ceo = person(&hub, "ceo", &[Role::OverrideApprover]).await;
    let r = post_as(&hub, &p.dave, APPROVAL, request("5001", "staging", 5.0)).await;
    let id = r.json["approval_id"].as_str().unwrap().to_string();
    let path = format!("{APPROVAL}/{id}/override");
    post_as(&hub, &p.alice, &path, json!({"reason": "outage"}))
        .await
        .expect_error(403);
    // The exceptional signer cannot start one alone either.
    post_as(&hub, &ceo, &path, json!({"reason": "outage"}))
        .await
        .expect_error(403);
    let e = post_as(&hub, &p.root, &path, json!({})).await;
    assert_eq!(e.expect_error(400)["field"], "reason");
    let o = post_as(
        &hub,
        &p.root,
        &path,
        json!({"reason": "payment outage, CAB call 14:05"}),
    )
    .await;
    assert_eq!(o.status, 200, "{}", o.text);
    assert_eq!(o.json["status"], "override_pending");
    assert_eq!(
        hub.get(&format!("{APPROVAL}/{id}")).await.json["status"],
        "override_pending"
    );
    // The same admin again is not a second person.
    let again = post_as(&hub, &p.root, &path, json!({"reason": "really"})).await;
    assert!(again.expect_error(403)["message"]
        .as_str()
        .unwrap()
        .contains("second"));
    let c = post_as(&hub, &ceo, &path, json!({"reason": "confirmed, CAB 14:07"})).await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.json["status"], "approved");
    assert_eq!(c.json["previous_status"], "pending");
    assert_eq!(
        (
            c.json["requested_by"].as_str(),
            c.json["confirmed_by"].as_str()
        ),
        (Some("root"), Some("ceo"))
    );
    let exc = c.json["exception_id"].as_str().unwrap();
    assert!(exc.starts_with("EXC-"));
    let g = hub.get(&format!("{APPROVAL}/{id}")).await;
    assert_eq!(g.json["override"]["by"], "root");
    assert_eq!(g.json["override"]["confirmed_by"], "ceo");
    let audit = hub
        .app
        .store
        .doc_list(&icahub::approvals::partition_of(&id).unwrap(), "audit|")
        .await
        .unwrap();
    assert!(audit.iter().any(
        |d| d.value["action"] == "approval.override_requested" && d.value["exception"] == true
    ));
    assert!(audit
        .iter()
        .any(|d| d.value["action"] == "approval.overridden"
            && d.value["exception"] == true
            && d.value["confirmed_by"] == "ceo"));
    post_as(&hub, &p.root, &path, json!({"reason": "again"}))
        .await
        .expect_error(409);
}

#[tokio::test]
async fn one_approved_production_deployment_per_environment() {
    let hub = TestHub::embedded().await;
    let p = people(&hub).await;
    for run in ["6001", "6002", "6003"] {
        start_run(&hub, run, "someone").await;
    }
    let approve = |id: String| {
        let (a, b) = (p.alice.clone(), p.bob.clone());
        let hub = &hub;
        async move {
            let t = post_as(
                hub,
                &a,
                &sign_path(&id),
                sign_body("technical", "approved", None),
            )
            .await;
            assert_eq!(t.status, 200, "{}", t.text);
            post_as(
                hub,
                &b,
                &sign_path(&id),
                sign_body("business", "approved", None),
            )
            .await
        }
    };
    // Two requests pending at once are fine.
    let a = post_as(&hub, &p.dave, APPROVAL, request("6001", "production", 10.0)).await;
    let a_id = a.json["approval_id"].as_str().unwrap().to_string();
    let b = post_as(&hub, &p.dave, APPROVAL, request("6002", "Production", 10.0)).await;
    let b_id = b.json["approval_id"].as_str().unwrap().to_string();
    assert_eq!(approve(a_id.clone()).await.json["status"], "approved");
    // While A is approved and its run unfinished: B cannot become approved, and a new request
    // for the same environment is refused, both naming the holder.
    let e = approve(b_id.clone()).await;
    assert!(e.expect_error(409)["message"]
        .as_str()
        .unwrap()
        .contains(&a_id));
    let e = post_as(&hub, &p.dave, APPROVAL, request("6003", "production", 10.0)).await;
    assert!(e.expect_error(409)["message"]
        .as_str()
        .unwrap()
        .contains(&a_id));
    // Other environments are not locked.
    let s = post_as(&hub, &p.dave, APPROVAL, request("6003", "staging", 10.0)).await;
    assert_eq!(s.status, 201, "{}", s.text);
    // A's run finishes: the lock is gone.
    let f = hub
        .post_json(
            FINISH,
            json!({"run_id": "6001", "status": "success", "end_time": "2026-11-22T10:00:00Z"})
                .to_string(),
        )
        .await;
    assert_eq!(f.status, 200, "{}", f.text);
    let ok = post_as(
        &hub,
        &p.bob,
        &sign_path(&b_id),
        sign_body("business", "approved", None),
    )
    .await;
    assert_eq!(ok.json["status"], "approved", "{}", ok.text);
}

#[tokio::test]
async fn a_repeated_request_gets_the_same_approval_until_it_is_decided() {
    let hub = TestHub::embedded().await;
    let p = people(&hub).await;
    let a = post_as(&hub, &p.dave, APPROVAL, request("7001", "staging", 5.0)).await;
    assert_eq!(a.status, 201);
    let again = post_as(&hub, &p.dave, APPROVAL, request("7001", "staging", 5.0)).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json["approval_id"], a.json["approval_id"]);
    let id = a.json["approval_id"].as_str().unwrap();
    post_as(
        &hub,
        &p.alice,
        &sign_path(id),
        sign_body("technical", "rejected", Some("flaky tests")),
    )
    .await;
    let new = post_as(&hub, &p.dave, APPROVAL, request("7001", "staging", 5.0)).await;
    assert_eq!(new.status, 201, "{}", new.text);
    assert_ne!(new.json["approval_id"], a.json["approval_id"]);
}
