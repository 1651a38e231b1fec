//! The Azure DevOps "Invoke Azure Function" check in callback mode, end to end through the real
//! server: the check's request (the documented default headers, filled in the way Azure Pipelines
//! expands them) is answered 200 at once; once the approval is decided, exactly one
//! `TaskCompleted` reaches a local receiver that checks what Azure DevOps checks (path with
//! api-version, bearer token, body shaped like the sample). Time is simulated for expiry.

mod support;

use chrono::{Duration as Span, Utc};
use icahub::clock::{Clock, ManualClock};
use icahub::config::Config;
use icahub::domain::identity::Role;
use icahub::domain::routing::Sink;
use icahub::sinks::Sinks;
use icahub::storage::{OutboxFilter, OutboxStatus};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use support::hub::{Reply as HubReply, TestHub};
use support::receiver::{Receiver, Reply};

/// The check's URL as Azure Pipelines builds it: `$(function)?code=$(key)&$(queryParameters)`,
/// with no query parameters (so a trailing `&`).
const CHECK: &str = "/api/v1/azdo/check?code=aGVsbG8tZnVuY3Rpb24ta2V5&";
/// A job access token (`$(system.AccessToken)`): a JWT, never to be shown or logged by the hub.
const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJuYW1laWQiOiJidWlsZHNlcnZpY2UiLCJzY3AiOiJhcHBfdG9rZW4ifQ.U2VjcmV0Sm9iVG9rZW5TaWduYXR1cmVfZG9fbm90X2xlYWs";
const PROJECT_ID: &str = "7c2a3b5e-1f4d-4c8a-9b6e-2d1f0a3c4b5d";
const PLAN_ID: &str = "0a6b1c2d-3e4f-4a6b-9c8d-9e0f1a2b3c4d";
/// The task and job of the Post Event sample (ado-check-taskcompleted-event.json).
const TASK_ID: &str = "61153303-347e-5f06-a6a1-ce2102bd68eb";
const JOB_ID: &str = "3a7e60dc-c5b0-5009-86eb-0f217c12e2ea";
const BUILD_ID: &str = "4711";

// ---------------------------------------------------------------------------------------------
// Log capture: every test's logs go to one buffer, which the secrecy test searches.

#[derive(Clone)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let c = Captured(Arc::new(Mutex::new(Vec::new())));
        let writer = c.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug,icahub=trace"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        c
    })
}

fn captured_logs() -> String {
    String::from_utf8_lossy(&logs().0.lock().unwrap()).to_string()
}

// ---------------------------------------------------------------------------------------------
// Set-up

struct World {
    hub: TestHub,
    ado: Receiver,
    clock: Arc<ManualClock>,
    /// Keys: the pipeline's (devops), a technical and a business approver.
    pipeline: String,
    alice: String,
    bob: String,
    _dir: tempfile::TempDir,
}

/// A hub whose checks call back to a local Azure DevOps that accepts `accepted_token`.
async fn world_with(accepted_token: &str) -> World {
    world_of(accepted_token, &[]).await
}

/// A hub that also answers checks of the organizations `also` (collections on the local Azure
/// DevOps).
async fn world_of(accepted_token: &str, also: &[&str]) -> World {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let ado = Receiver::azure_devops(accepted_token).await;
    let env: HashMap<String, String> = [
        ("ICAHUB_STORAGE", "embedded".to_string()),
        ("ICAHUB_DATA_DIR", dir.path().display().to_string()),
        ("ICAHUB_AZDO_PLAN_HOSTS", "127.0.0.1".to_string()),
        (
            "ICAHUB_AZDO_ORGANIZATIONS",
            std::iter::once("fabrikamfiber")
                .chain(also.iter().copied())
                .map(|o| format!("{}/{o}", ado.base.trim_start_matches("http://")))
                .collect::<Vec<_>>()
                .join(","),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let config = Config::from_lookup(|k| env.get(k).cloned(), Some(0)).expect("config");
    let sinks = Sinks::from_lookup(&|k| env.get(k).cloned()).expect("sinks");
    let hub = TestHub::start_with(config, sinks, clock.clone()).await;
    let pipeline = hub.person("azdo-pipeline", &[Role::Devops]).await;
    let alice = hub.person("alice", &[Role::TechnicalApprover]).await;
    let bob = hub.person("bob", &[Role::BusinessApprover]).await;
    World {
        hub,
        ado,
        clock,
        pipeline,
        alice,
        bob,
        _dir: dir,
    }
}

async fn world() -> World {
    world_with(TOKEN).await
}

/// The documented headers (ado-check-invoke-function-request-headers.json) with their `$(...)`
/// variables expanded as Azure Pipelines would; `PlanUrl` is the local Azure DevOps.
fn sample_headers(w: &World) -> Vec<(String, String)> {
    let template = support::fixture_json("ado-check-invoke-function-request-headers.json");
    let collection_uri = format!("{}/fabrikamfiber/", w.ado.base);
    template
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, v)| {
            let v = v.as_str().unwrap();
            let value = match v.to_ascii_lowercase().as_str() {
                "$(system.collectionuri)" => collection_uri.clone(),
                "$(system.teamprojectid)" => PROJECT_ID.into(),
                "$(system.hosttype)" => "build".into(),
                "$(system.planid)" => PLAN_ID.into(),
                "$(system.jobid)" => JOB_ID.into(),
                "$(system.timelineid)" => PLAN_ID.into(),
                "$(system.taskinstanceid)" => TASK_ID.into(),
                "$(system.accesstoken)" => TOKEN.into(),
                "$(build.buildid)" => BUILD_ID.into(),
                other if other.starts_with("$(") => panic!("unexpected template value {v}"),
                _ => v.to_string(),
            };
            (name.clone(), value)
        })
        .collect()
}

fn with_header(mut h: Vec<(String, String)>, name: &str, value: &str) -> Vec<(String, String)> {
    h.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    h.push((name.into(), value.into()));
    h
}

fn without(mut h: Vec<(String, String)>, names: &[&str]) -> Vec<(String, String)> {
    h.retain(|(k, _)| !names.iter().any(|n| k.eq_ignore_ascii_case(n)));
    h
}

fn body(target: &str) -> String {
    json!({"deployment_target": target, "estimated_cost": 120,
           "checklist": ["tests green", "rollback plan"]})
    .to_string()
}

async fn post_check(
    w: &World,
    key: Option<&str>,
    headers: &[(String, String)],
    body: impl Into<reqwest::Body>,
) -> HubReply {
    let mut r = reqwest::Client::new().post(w.hub.url(CHECK)).body(body);
    for (k, v) in headers {
        r = r.header(k.as_str(), v.as_str());
    }
    if let Some(key) = key {
        r = r.header("authorization", format!("Bearer {key}"));
    }
    HubReply::read(r.send().await.unwrap()).await
}

async fn sign(w: &World, key: &str, id: &str, sign: Value) -> HubReply {
    let r = reqwest::Client::new()
        .post(w.hub.url(&format!("/api/v1/azdev/approval/{id}/sign")))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(sign.to_string())
        .send()
        .await
        .unwrap();
    HubReply::read(r).await
}

async fn approve(w: &World, id: &str) {
    let t = sign(
        w,
        &w.alice,
        id,
        json!({"approval_type": "technical", "decision": "approved"}),
    )
    .await;
    assert_eq!(t.status, 200, "{}", t.text);
    let b = sign(
        w,
        &w.bob,
        id,
        json!({"approval_type": "business", "decision": "approved"}),
    )
    .await;
    assert_eq!(b.status, 200, "{}", b.text);
    assert_eq!(b.json["status"], "approved");
}

/// The receiver's requests once the fast path has sent everything it would; at least `n`.
async fn callbacks(w: &World, n: usize) -> Vec<support::receiver::Recorded> {
    let got = settled(w).await;
    assert!(got.len() >= n, "{} callback(s), expected {n}", got.len());
    got
}

/// The receiver's requests once the fast path has sent everything it would.
async fn settled(w: &World) -> Vec<support::receiver::Recorded> {
    w.hub.idle().await;
    w.ado.requests()
}

async fn drain(w: &World) -> icahub::dispatcher::DrainReport {
    w.hub
        .app
        .dispatcher
        .drain(Duration::from_secs(10))
        .await
        .unwrap()
}

async fn check_rows(w: &World, status: OutboxStatus) -> Vec<icahub::storage::OutboxRow> {
    w.hub
        .app
        .store
        .outbox_list(&OutboxFilter {
            status: Some(status),
            sink: Some(Sink::AzureDevops),
            limit: 100,
        })
        .await
        .unwrap()
}

fn expected_path(task_plan: &str) -> String {
    format!("/fabrikamfiber/{PROJECT_ID}/_apis/distributedtask/hubs/build/plans/{task_plan}/events")
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approved_request_completes_the_check_once() {
    let w = world().await;
    let started = Instant::now();
    let r = post_check(&w, Some(&w.pipeline), &sample_headers(&w), body("staging")).await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(took < Duration::from_secs(3), "answered in {took:?}");
    assert_eq!(r.json["success"], true);
    assert_eq!(r.json["created"], true);
    assert_eq!(r.json["status"], "pending");
    assert_eq!(r.json["task_instance_id"], TASK_ID);
    let id = r.json["approval_id"].as_str().unwrap().to_string();

    // The approval: run id from BuildId, callback kept (without its token), normalized URL.
    let a = w.hub.get(&format!("/api/v1/azdev/approval/{id}")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json["run_id"], BUILD_ID);
    assert_eq!(a.json["source"], "azdo_check");
    assert_eq!(a.json["requested_by"], "azdo-pipeline");
    assert_eq!(a.json["check"]["task_instance_id"], TASK_ID);
    assert_eq!(
        a.json["check"]["plan_url"],
        format!("{}/fabrikamfiber/", w.ado.base)
    );
    assert!(a.json["check"].get("auth_token").is_none());
    assert!(!a.text.contains(TOKEN), "GET approval shows the job token");

    // Nothing is said to Azure DevOps until the decision.
    assert_eq!(drain(&w).await.total(), 0);
    let t = sign(
        &w,
        &w.alice,
        &id,
        json!({"approval_type": "technical", "decision": "approved"}),
    )
    .await;
    assert_eq!(t.json["status"], "technical_approved", "{}", t.text);
    assert_eq!(drain(&w).await.total(), 0);
    assert!(w.ado.requests().is_empty());
    let b = sign(
        &w,
        &w.bob,
        &id,
        json!({"approval_type": "business", "decision": "approved"}),
    )
    .await;
    assert_eq!(b.json["status"], "approved", "{}", b.text);

    let got = callbacks(&w, 1).await;
    w.ado.assert_no_rejections();
    assert_eq!(got.len(), 1, "exactly one TaskCompleted");
    let cb = &got[0];
    assert_eq!(cb.method, "POST");
    assert_eq!(cb.path, expected_path(PLAN_ID));
    assert_eq!(cb.query, "api-version=2.0-preview.1");
    assert_eq!(
        cb.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let mut want = support::fixture_json("ado-check-taskcompleted-event.json");
    want["taskId"] = json!(TASK_ID);
    want["jobId"] = json!(JOB_ID);
    want["result"] = json!("succeeded");
    assert_eq!(cb.json(), want);
    assert_eq!(drain(&w).await.total(), 0);
    assert_eq!(check_rows(&w, OutboxStatus::Delivered).await.len(), 1);

    // The same check again (a retried request): the same approval, nothing new sent.
    let again = post_check(&w, Some(&w.pipeline), &sample_headers(&w), body("staging")).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json["approval_id"], id.as_str());
    assert_eq!(again.json["created"], false);
    assert_eq!(again.json["status"], "approved");
    assert_eq!(settled(&w).await.len(), 1);

    // A re-run of the stage evaluates the check again (new job and task): the run's approval
    // answers it at once.
    let rerun_task = "8c2f3e4d-5a6b-4c7d-8e9f-0a1b2c3d4e5f";
    let rerun_job = "9d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a";
    let h = with_header(sample_headers(&w), "TaskInstanceId", rerun_task);
    let h = with_header(h, "JobId", rerun_job);
    let rerun = post_check(&w, Some(&w.pipeline), &h, body("staging")).await;
    assert_eq!(rerun.status, 200, "{}", rerun.text);
    assert_eq!(rerun.json["approval_id"], id.as_str());
    assert_eq!(rerun.json["status"], "approved");
    let got = callbacks(&w, 2).await;
    w.ado.assert_no_rejections();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].json()["taskId"], rerun_task);
    assert_eq!(got[1].json()["jobId"], rerun_job);
    assert_eq!(got[1].json()["result"], "succeeded");
    assert_eq!(drain(&w).await.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejection_fails_the_check() {
    let w = world().await;
    let r = post_check(&w, Some(&w.pipeline), &sample_headers(&w), body("staging")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json["approval_id"].as_str().unwrap();
    let s = sign(
        &w,
        &w.alice,
        id,
        json!({"approval_type": "technical", "decision": "rejected", "comments": "no rollback plan"}),
    )
    .await;
    assert_eq!(s.json["status"], "rejected", "{}", s.text);
    let got = callbacks(&w, 1).await;
    w.ado.assert_no_rejections();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["result"], "failed");
    assert_eq!(got[0].json()["taskId"], TASK_ID);
    // An admin's override of the rejected request does not call back again: the check failed.
    let o = w
        .hub
        .post_json(
            &format!("/api/v1/azdev/approval/{id}/override"),
            json!({"reason": "hotfix for an outage"}).to_string(),
        )
        .await;
    assert_eq!(o.status, 200, "{}", o.text);
    assert_eq!(drain(&w).await.total(), 0);
    assert_eq!(settled(&w).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_request_fails_the_check_from_the_timer() {
    let w = world().await;
    let r = post_check(&w, Some(&w.pipeline), &sample_headers(&w), body("staging")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json["approval_id"].as_str().unwrap().to_string();
    w.hub.idle().await;
    w.clock.advance(Span::hours(4) + Span::minutes(1));
    // The `dispatch` timer function: sweep (expire) then drain.
    let t = w
        .hub
        .post_json(
            "/dispatch",
            support::fixture("functions-host-timer-invocation.json"),
        )
        .await;
    assert_eq!(t.status, 200, "{}", t.text);
    assert!(t.text.contains("expired 1"), "{}", t.text);
    let got = callbacks(&w, 1).await;
    w.ado.assert_no_rejections();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["result"], "failed");
    let a = w.hub.get(&format!("/api/v1/azdev/approval/{id}")).await;
    assert_eq!(a.json["status"], "expired");
    // The next tick finds nothing more to say.
    let t = w
        .hub
        .post_json(
            "/dispatch",
            support::fixture("functions-host-timer-invocation.json"),
        )
        .await;
    assert_eq!(t.status, 200, "{}", t.text);
    assert_eq!(settled(&w).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_rejected_by_its_budget_fails_the_check_at_once() {
    let w = world().await;
    icahub::approvals::set_budget(
        w.hub.app.store.as_ref(),
        "payments",
        1000.0,
        Some(990.0),
        "fiona",
        w.clock.now(),
    )
    .await
    .unwrap();
    // The run is on the ledger: its pipeline decides the budget.
    let r = reqwest::Client::new()
        .post(w.hub.url("/api/v1/azdev/run/start"))
        .header("authorization", format!("Bearer {}", w.pipeline))
        .header("content-type", "application/json")
        .body(
            json!({"pipeline_name": "payments", "run_id": BUILD_ID, "branch": "main",
                   "commit": "9f2c1e7", "triggered_by": "dave"})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // PlanUrl without its trailing slash, and with a doubled one: never `//` in the callback.
    let h = with_header(
        sample_headers(&w),
        "PlanUrl",
        &format!("{}//fabrikamfiber", w.ado.base),
    );
    let r = post_check(&w, Some(&w.pipeline), &h, body("staging")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "rejected");
    assert!(
        r.json["reason"].as_str().unwrap().contains("budget"),
        "{}",
        r.text
    );
    let got = callbacks(&w, 1).await;
    w.ado.assert_no_rejections();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, expected_path(PLAN_ID));
    assert_eq!(got[0].json()["result"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_azure_devops_is_retried_and_told_once() {
    let w = world().await;
    w.ado
        .script([Reply::new(500, "{\"message\":\"try again\"}")]);
    let r = post_check(&w, Some(&w.pipeline), &sample_headers(&w), body("staging")).await;
    let id = r.json["approval_id"].as_str().unwrap().to_string();
    approve(&w, &id).await;
    assert_eq!(callbacks(&w, 1).await.len(), 1, "the fast path tried once");
    let pending = check_rows(&w, OutboxStatus::Pending).await;
    assert_eq!(pending.len(), 1);
    assert!(pending[0].last_error.as_deref().unwrap().contains("500"));
    // Not due yet; a minute later it is.
    assert_eq!(drain(&w).await.total(), 0);
    w.clock.advance(Span::minutes(1));
    let report = drain(&w).await;
    assert_eq!(report.delivered, 1, "{report:?}");
    let got = w.ado.requests();
    w.ado.assert_no_rejections();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body, got[1].body, "the retry sends the same event");
    assert_eq!(got[1].json()["result"], "succeeded");
    assert_eq!(check_rows(&w, OutboxStatus::Delivered).await.len(), 1);
    w.clock.advance(Span::hours(1));
    assert_eq!(drain(&w).await.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_token_is_a_dead_letter() {
    // Azure DevOps accepts another token than the one the job sent: 401.
    let w = world_with("a-different-token").await;
    let r = post_check(&w, Some(&w.pipeline), &sample_headers(&w), body("staging")).await;
    approve(&w, r.json["approval_id"].as_str().unwrap()).await;
    assert_eq!(callbacks(&w, 1).await.len(), 1);
    assert_eq!(w.ado.rejections(), ["bad bearer token"]);
    let dead = check_rows(&w, OutboxStatus::Dead).await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].last_error.as_deref().unwrap().contains("401"));
    w.clock.advance(Span::hours(2));
    assert_eq!(drain(&w).await.total(), 0, "a dead letter is not retried");
    assert_eq!(w.ado.requests().len(), 1);

    // A 203 (Azure DevOps' sign-in page for a token it does not take) is not a success either.
    let w = world().await;
    w.ado.script([Reply::new(203, "<html>Sign in</html>")]);
    let r = post_check(&w, Some(&w.pipeline), &sample_headers(&w), body("staging")).await;
    approve(&w, r.json["approval_id"].as_str().unwrap()).await;
    assert_eq!(callbacks(&w, 1).await.len(), 1);
    let dead = check_rows(&w, OutboxStatus::Dead).await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].last_error.as_deref().unwrap().contains("203"));
}

/// A check for the same build number and target from another organization (or another
/// project) must not take over the callback of the check that created the approval, and an
/// organization the hub does not list cannot create approvals at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_check_from_elsewhere_cannot_take_over() {
    let w = world_of(TOKEN, &["contoso"]).await;
    let r = post_check(&w, Some(&w.pipeline), &sample_headers(&w), body("staging")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json["approval_id"].as_str().unwrap().to_string();
    let before = w
        .hub
        .get(&format!("/api/v1/azdev/approval/{id}"))
        .await
        .json["check"]
        .clone();

    // Another listed organization, same BuildId and target, a new check instance.
    let other_org = with_header(
        with_header(
            sample_headers(&w),
            "PlanUrl",
            &format!("{}/contoso/", w.ado.base),
        ),
        "TaskInstanceId",
        "99999999-347e-5f06-a6a1-ce2102bd68eb",
    );
    let e = post_check(&w, Some(&w.pipeline), &other_org, body("staging")).await;
    assert!(e.expect_error(409)["message"]
        .as_str()
        .unwrap()
        .contains("cannot answer it"));
    // The same organization, another project.
    let other_project = with_header(
        with_header(
            sample_headers(&w),
            "ProjectId",
            "00000000-1f4d-4c8a-9b6e-2d1f0a3c4b5d",
        ),
        "TaskInstanceId",
        "88888888-347e-5f06-a6a1-ce2102bd68eb",
    );
    post_check(&w, Some(&w.pipeline), &other_project, body("staging"))
        .await
        .expect_error(409);
    assert_eq!(
        w.hub
            .get(&format!("/api/v1/azdev/approval/{id}"))
            .await
            .json["check"],
        before,
        "the callback is unchanged"
    );

    // An organization the hub does not list: refused before anything is stored.
    let unlisted = with_header(
        with_header(
            sample_headers(&w),
            "PlanUrl",
            &format!("{}/mallory-org/", w.ado.base),
        ),
        "BuildId",
        "5000",
    );
    let e = post_check(&w, Some(&w.pipeline), &unlisted, body("staging")).await;
    assert!(e.expect_error(403)["message"]
        .as_str()
        .unwrap()
        .contains("ICAHUB_AZDO_ORGANIZATIONS"));
    // A plain-http callback to a host that is not loopback is refused.
    let http = with_header(
        sample_headers(&w),
        "PlanUrl",
        "http://dev.azure.com/fabrikamfiber/",
    );
    let e = post_check(&w, Some(&w.pipeline), &http, body("staging")).await;
    assert!(e.expect_error(400)["message"]
        .as_str()
        .unwrap()
        .contains("https"));
    approve(&w, &id).await;
    let got = callbacks(&w, 1).await;
    assert_eq!(
        got[0].path,
        expected_path(PLAN_ID),
        "the first check is answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_check_requests_are_named() {
    let w = world().await;
    let h = sample_headers(&w);
    let mut texts = Vec::new();

    let r = post_check(
        &w,
        Some(&w.pipeline),
        &without(h.clone(), &["PlanUrl", "JobId", "AuthToken"]),
        body("staging"),
    )
    .await;
    let e = r.expect_error(400);
    assert_eq!(e["field"], "header:PlanUrl,header:JobId,header:AuthToken");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("PlanUrl, JobId, AuthToken"),
        "{}",
        r.text
    );
    texts.push(r.text);

    // Header names in any case.
    let lower: Vec<(String, String)> = h
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let r = post_check(&w, Some(&w.pipeline), &lower, body("dev")).await;
    assert_eq!(r.status, 200, "{}", r.text);

    for (name, value) in [
        ("PlanId", "$(system.PlanId)"),
        ("PlanUrl", "https://attacker.example.net/fabrikamfiber/"),
        ("HubName", "build/../../x"),
    ] {
        let r = post_check(
            &w,
            Some(&w.pipeline),
            &with_header(h.clone(), name, value),
            body("staging"),
        )
        .await;
        assert_eq!(r.expect_error(400)["field"], format!("header:{name}"));
        texts.push(r.text);
    }

    // The body: no body at all names what is missing; bad JSON and bad fields are named.
    let r = post_check(
        &w,
        Some(&w.pipeline),
        &without(h.clone(), &["Content-Type"]),
        "",
    )
    .await;
    assert_eq!(r.expect_error(400)["field"], "deployment_target");
    texts.push(r.text);
    let r = post_check(&w, Some(&w.pipeline), &h, "{\"deployment_target\": ").await;
    assert_eq!(r.expect_error(400)["field"], "$");
    texts.push(r.text);
    let r = post_check(
        &w,
        Some(&w.pipeline),
        &h,
        json!({"deployment_target": "production"}).to_string(),
    )
    .await;
    assert_eq!(r.expect_error(400)["field"], "estimated_cost");
    texts.push(r.text);
    let r = post_check(
        &w,
        Some(&w.pipeline),
        &with_header(h.clone(), "Content-Type", "text/plain"),
        body("staging"),
    )
    .await;
    r.expect_error(415);

    // Authentication: no key, and a key without the devops role.
    let r = post_check(&w, None, &h, body("staging")).await;
    r.expect_error(401);
    let r = post_check(&w, Some(&w.alice), &h, body("staging")).await;
    r.expect_error(403);

    for t in texts {
        assert!(!t.contains(TOKEN), "an error shows the job token: {t}");
    }
    assert_eq!(drain(&w).await.total(), 0);
    assert!(w.ado.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_job_token_never_reaches_answers_or_logs() {
    let w = world().await;
    // A refusal, a creation, a decision with a failing first callback, the approval read back.
    post_check(
        &w,
        Some(&w.pipeline),
        &without(sample_headers(&w), &["PlanId"]),
        body("staging"),
    )
    .await
    .expect_error(400);
    w.ado.script([Reply::new(503, "down")]);
    let r = post_check(&w, Some(&w.pipeline), &sample_headers(&w), body("staging")).await;
    assert!(!r.text.contains(TOKEN));
    let id = r.json["approval_id"].as_str().unwrap().to_string();
    approve(&w, &id).await;
    callbacks(&w, 1).await;
    w.clock.advance(Span::minutes(1));
    assert_eq!(drain(&w).await.delivered, 1);
    let a = w.hub.get(&format!("/api/v1/azdev/approval/{id}")).await;
    assert_eq!(a.status, 200);
    assert!(!a.text.contains(TOKEN));
    // Every delivery has ended (callbacks awaited the fast path, drain its own), and the
    // subscriber writes each line as it is logged: the logs are complete.
    let logs = captured_logs();
    assert!(
        logs.contains("check request accepted") && logs.contains("delivery failed"),
        "the logs were captured: {} bytes",
        logs.len()
    );
    assert!(!logs.contains(TOKEN), "the job token was logged");
    // Not even its signature part alone.
    let sig = TOKEN.rsplit('.').next().unwrap();
    assert!(!logs.contains(sig), "part of the job token was logged");
}
