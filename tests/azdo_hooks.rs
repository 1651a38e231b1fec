//! Azure DevOps service hooks through the real server: every event type from its documented
//! payload lands on the right run as the right event, a completed run is finished with the right
//! status, redeliveries are recorded once, a hook after the pipeline finished its run changes
//! nothing, the pipeline's own run/start shares the run with the hooks (in either order), the hook
//! credentials and API keys are checked, and bad input is a 4xx naming the problem. Embedded store,
//! plus one test on Azurite with two hub instances.

mod support;

use icahub::config::{AzdoHookAuth, Config, Secret, StorageConfig};
use serde_json::{json, Value};
use support::azurite;
use support::fixture_json;
use support::hub::{Reply, TestHub};

const HOOKS: &str = "/api/v1/azdo/hooks";
const USER: &str = "ado-hooks";
const PASSWORD: &str = "correct horse battery staple";
const HEADER: &str = "x-icahub-hook-secret";
const SECRET: &str = "hook-secret-4f9a";

fn hook_auth() -> AzdoHookAuth {
    AzdoHookAuth {
        basic: Some((USER.into(), Secret::new(PASSWORD))),
        header: HEADER.into(),
        secret: Some(Secret::new(SECRET)),
    }
}

/// A hub on a fresh embedded store with the hook credentials configured.
async fn hub() -> (TestHub, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::embedded(dir.path());
    cfg.azdo_hooks = hook_auth();
    (TestHub::start(cfg).await, dir)
}

fn fx(name: &str) -> Value {
    fixture_json(&format!("azdo/{name}"))
}

/// POST as Azure DevOps does with basic auth configured in the subscription.
async fn deliver(hub: &TestHub, body: &Value) -> Reply {
    let r = reqwest::Client::new()
        .post(hub.url(HOOKS))
        .header("content-type", "application/json; charset=utf-8")
        .basic_auth(USER, Some(PASSWORD))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    Reply::read(r).await
}

async fn run(hub: &TestHub, id: &str) -> Value {
    let r = hub.get(&format!("/api/v1/azdev/run/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json
}

fn event_types(run: &Value) -> Vec<String> {
    run["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_string())
        .collect()
}

/// A documented payload as another delivery: a new envelope id (and the changes `f` makes).
fn variant(name: &str, id: &str, f: impl FnOnce(&mut Value)) -> Value {
    let mut v = fx(name);
    v["id"] = json!(id);
    f(&mut v);
    v
}

#[tokio::test]
async fn run_state_changed_starts_and_finishes_the_run() {
    let (hub, _dir) = hub().await;
    let r = deliver(&hub, &fx("ado-run-state-changed.json")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["status"], "recorded");
    assert_eq!(r.json["run_id"], "11");
    assert_eq!(r.json["event_type"], "azdo.run_state_changed");
    assert_eq!(r.json["run_started"], true);
    assert_eq!(r.json["finished"]["status"], "success");
    assert_eq!(r.json["finished"]["end_time"], "2019-12-13T04:46:13.613Z");
    let audit_hash = r.json["finished"]["audit_hash"]
        .as_str()
        .unwrap()
        .to_string();

    let run = run(&hub, "11").await;
    assert_eq!(run["pipeline_name"], "TEST-CI");
    assert_eq!(run["branch"], "unknown");
    assert_eq!(run["commit"], "unknown");
    assert_eq!(run["triggered_by"], "azure-devops");
    assert_eq!(run["started_by"], "azure-devops");
    assert_eq!(
        run["started_from"],
        "azdo:ms.vss-pipelines.run-state-changed-event"
    );
    assert_eq!(run["status"], "success");
    assert_eq!(run["finish"]["audit_hash"], audit_hash.as_str());
    assert_eq!(run["finish"]["finished_by"], "azure-devops");
    assert_eq!(event_types(&run), ["azdo.run_state_changed"]);
    let e = &run["events"][0];
    assert_eq!(e["by"], "azure-devops");
    assert_eq!(e["event_data"]["state"], "completed");
    assert_eq!(e["event_data"]["result"], "succeeded");
    assert_eq!(e["event_data"]["message"], "Run 11 succeeded.");
    assert_eq!(
        e["event_data"]["hook_id"],
        "62e4351f-1c24-40f9-8510-7af03692ab45"
    );
    assert_eq!(e["event_data"]["created_date"], "2019-12-13T04:46:13.683Z");
    assert_eq!(e["event_data"]["resource_version"], "5.1-preview.1");

    // The chain from GET recomputes to the audit hash.
    let start = json!({"pipeline_name": "TEST-CI", "run_id": "11", "branch": "unknown",
                       "commit": "unknown", "triggered_by": "azure-devops"});
    let mut h = icahub::domain::run::chain("", "run.start", &start);
    let body = json!({"event_id": e["event_id"], "event_type": e["event_type"], "event_data": e["event_data"]});
    h = icahub::domain::run::chain(&h, "run.event", &body);
    let fin = json!({"run_id": "11", "status": "success", "end_time": "2019-12-13T04:46:13.613Z"});
    assert_eq!(
        icahub::domain::run::chain(&h, "run.finish", &fin),
        audit_hash
    );
}

#[tokio::test]
async fn build_complete_starts_the_run_from_the_build_and_finishes_it() {
    let (hub, _dir) = hub().await;
    let r = deliver(&hub, &fx("ado-build-complete.json")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["event_type"], "azdo.build_complete");
    assert_eq!(r.json["finished"]["status"], "success");
    let run = run(&hub, "2").await;
    assert_eq!(run["pipeline_name"], "ConsumerAddressModule");
    assert_eq!(run["branch"], "refs/heads/master");
    assert_eq!(run["commit"], "600c52d2d5b655caa111abfd863e5a9bd304bb0e");
    assert_eq!(run["triggered_by"], "fabrikamfiber16@hotmail.com");
    assert_eq!(run["status"], "success");
    assert_eq!(run["finish"]["end_time"], "2015-04-07T18:06:10.690Z");
    let data = &run["events"][0]["event_data"];
    assert_eq!(data["build_number"], "ConsumerAddressModule_20150407.1");
    assert_eq!(data["result"], "succeeded");
    assert_eq!(data["definition_name"], "ConsumerAddressModule");
}

#[tokio::test]
async fn stage_job_and_approval_events_append_without_finishing() {
    let (hub, _dir) = hub().await;
    let s = deliver(&hub, &fx("ado-stage-state-changed.json")).await;
    assert_eq!(s.status, 201, "{}", s.text);
    assert_eq!(s.json["run_id"], "2");
    assert_eq!(s.json["run_started"], true);
    assert!(
        s.json.get("finished").is_none(),
        "a stage never finishes the run"
    );
    // Same envelope id as the stage sample (the docs reuse it), another event type: recorded.
    let j = deliver(&hub, &fx("ado-job-state-changed.json")).await;
    assert_eq!(j.status, 201, "{}", j.text);
    assert_eq!(j.json["status"], "recorded");
    assert_eq!(j.json["run_started"], false);

    // The documented approval payloads name no run: accepted, nothing recorded, reason given.
    for f in ["ado-approval-pending.json", "ado-approval-completed.json"] {
        let a = deliver(&hub, &fx(f)).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.json["status"], "ignored");
        assert!(a.json["reason"].as_str().unwrap().contains("no run"));
    }
    // The same payloads as a real delivery sends them, naming their run (resource.id) and
    // stage: changed here, not in the fixture.
    for (f, id) in [
        ("ado-approval-pending.json", "a-pending"),
        ("ado-approval-completed.json", "a-done"),
    ] {
        let v = variant(f, id, |v| {
            v["resource"]["id"] = json!(2);
            v["resource"]["stageName"] = json!("Prod");
        });
        let a = deliver(&hub, &v).await;
        assert_eq!(a.status, 201, "{}", a.text);
    }

    let run = run(&hub, "2").await;
    assert_eq!(run["status"], "running");
    assert!(run["finish"].is_null());
    assert_eq!(run["pipeline_name"], "TEST-CI");
    assert_eq!(
        event_types(&run),
        [
            "azdo.stage_state_changed",
            "azdo.job_state_changed",
            "azdo.approval_pending",
            "azdo.approval_completed"
        ]
    );
    let ev = run["events"].as_array().unwrap();
    assert_eq!(ev[0]["event_data"]["stage_name"], "__default");
    assert_eq!(ev[0]["event_data"]["state"], "completed");
    assert_eq!(ev[1]["event_data"]["job_name"], "__default");
    assert_eq!(ev[1]["event_data"]["notification_id"], 3);
    assert_eq!(ev[2]["event_data"]["approval_status"], "pending");
    assert_eq!(ev[3]["event_data"]["approval_status"], "approved");
    assert_eq!(ev[3]["event_data"]["stage_name"], "Prod");
    assert_eq!(ev[3]["event_data"]["instructions"], "Instructions");
    assert_eq!(ev[3]["event_data"]["steps"][0]["status"], "approved");
}

#[tokio::test]
async fn results_map_to_run_statuses() {
    let (hub, _dir) = hub().await;
    let cases = [
        ("failed", "failed"),
        ("canceled", "cancelled"),
        ("partiallySucceeded", "success"),
    ];
    for (i, (result, status)) in cases.iter().enumerate() {
        let run_id = 100 + i;
        let v = variant("ado-run-state-changed.json", &format!("r{i}"), |v| {
            v["resource"]["run"]["id"] = json!(run_id);
            v["resource"]["run"]["result"] = json!(result);
        });
        let r = deliver(&hub, &v).await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(r.json["finished"]["status"], *status, "{result}");
        assert_eq!(run(&hub, &run_id.to_string()).await["status"], *status);
    }
    let v = variant("ado-build-complete.json", "b-stopped", |v| {
        v["resource"]["id"] = json!(200);
        v["resource"]["status"] = json!("stopped");
    });
    assert_eq!(
        deliver(&hub, &v).await.json["finished"]["status"],
        "cancelled"
    );
    // A newer build resource: status completed, result failed.
    let v = variant("ado-build-complete.json", "b-new", |v| {
        v["resource"]["id"] = json!(201);
        v["resource"]["status"] = json!("completed");
        v["resource"]["result"] = json!("failed");
    });
    assert_eq!(deliver(&hub, &v).await.json["finished"]["status"], "failed");

    // In progress: an event, the run stays open.
    let v = variant("ado-run-state-changed.json", "r-running", |v| {
        v["resource"]["run"]["id"] = json!(300);
        v["resource"]["run"]["state"] = json!("inProgress");
        v["resource"]["run"]["result"] = Value::Null;
        v["resource"]["run"]["finishedDate"] = Value::Null;
    });
    let r = deliver(&hub, &v).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.json.get("finished").is_none());
    assert_eq!(run(&hub, "300").await["status"], "running");
    // Completed with a result the ledger does not map: recorded, left open, and said so.
    let v = variant("ado-run-state-changed.json", "r-unknown", |v| {
        v["resource"]["run"]["id"] = json!(301);
        v["resource"]["run"]["result"] = json!("unknown");
    });
    let r = deliver(&hub, &v).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.json["note"].as_str().unwrap().contains("unknown"));
    assert_eq!(run(&hub, "301").await["status"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redeliveries_are_recorded_once() {
    let (hub, _dir) = hub().await;
    let running = variant("ado-run-state-changed.json", "inprogress-1", |v| {
        v["resource"]["run"]["state"] = json!("inProgress");
        v["resource"]["run"]["result"] = Value::Null;
    });
    let first = deliver(&hub, &running).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let again = deliver(&hub, &running).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json["status"], "duplicate");
    assert_eq!(again.json["event_id"], first.json["event_id"]);

    // Ten copies of the completion at once: one event, one finish.
    let done = fx("ado-run-state-changed.json");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (url, body) = (hub.url(HOOKS), done.to_string());
        tasks.push(tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .basic_auth(USER, Some(PASSWORD))
                .body(body)
                .send()
                .await
                .unwrap();
            Reply::read(r).await
        }));
    }
    let mut statuses = Vec::new();
    let mut hashes = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.status == 201 || r.status == 200, "{}", r.text);
        statuses.push(r.json["status"].as_str().unwrap().to_string());
        if let Some(h) = r.json["finished"]["audit_hash"].as_str() {
            hashes.insert(h.to_string());
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| *s == "recorded").count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(hashes.len(), 1, "finished once");
    let run = run(&hub, "11").await;
    assert_eq!(
        event_types(&run),
        ["azdo.run_state_changed", "azdo.run_state_changed"]
    );
    assert_eq!(run["status"], "success");
    // After the finish, a redelivery is still a duplicate (not "already finished").
    let late = deliver(&hub, &done).await;
    assert_eq!(late.status, 200);
    assert_eq!(late.json["status"], "duplicate");
}

#[tokio::test]
async fn a_hook_after_the_pipeline_finished_its_run_changes_nothing() {
    let (hub, _dir) = hub().await;
    let start = json!({"pipeline_name": "TEST-CI", "run_id": "11", "branch": "refs/heads/main",
                       "commit": "9f2c1e7", "triggered_by": "alice@contoso.com"});
    assert_eq!(
        hub.post_json("/api/v1/azdev/run/start", start.to_string())
            .await
            .status,
        201
    );
    let fin = json!({"run_id": "11", "status": "failed", "end_time": "2019-12-13T04:40:00Z"});
    let f = hub
        .post_json("/api/v1/azdev/run/finish", fin.to_string())
        .await;
    assert_eq!(f.status, 200, "{}", f.text);
    let before = run(&hub, "11").await;

    let r = deliver(&hub, &fx("ado-run-state-changed.json")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "already_finished");
    assert_eq!(r.json["run_status"], "failed");
    assert!(r.json["message"].as_str().unwrap().contains("finished"));
    let s = deliver(
        &hub,
        &variant("ado-stage-state-changed.json", "s11", |v| {
            v["resource"]["run"]["id"] = json!(11);
        }),
    )
    .await;
    assert_eq!(s.json["status"], "already_finished");
    assert_eq!(run(&hub, "11").await, before, "nothing changed");
    assert_eq!(before["finish"]["audit_hash"], f.json["audit_hash"]);
}

#[tokio::test]
async fn the_pipelines_own_start_and_the_hooks_share_one_run() {
    let (hub, _dir) = hub().await;
    // The pipeline calls scripts/azdev_ica_hook.sh (run_id = $BUILD_BUILDID = 2) ...
    let start = json!({"pipeline_name": "TEST-CI", "run_id": "2", "branch": "refs/heads/main",
                       "commit": "9f2c1e7", "triggered_by": "alice@contoso.com"});
    let s = hub
        .post_json("/api/v1/azdev/run/start", start.to_string())
        .await;
    assert_eq!(s.status, 201, "{}", s.text);
    let e = hub
        .post_json(
            "/api/v1/azdev/run/event",
            json!({"run_id": "2", "event_type": "deploy", "event_data": {"env": "prod"}})
                .to_string(),
        )
        .await;
    assert_eq!(e.status, 201, "{}", e.text);
    // ... and the project has service hooks for its stages, jobs and run state.
    for body in [
        fx("ado-stage-state-changed.json"),
        fx("ado-job-state-changed.json"),
        variant("ado-run-state-changed.json", "run2-done", |v| {
            v["resource"]["run"]["id"] = json!(2);
        }),
    ] {
        let r = deliver(&hub, &body).await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(r.json["run_started"], false);
    }
    let run = run(&hub, "2").await;
    assert_eq!(run["record_id"], s.json["record_id"]);
    // The pipeline's details stand; the hooks did not compare or replace them.
    assert_eq!(run["commit"], "9f2c1e7");
    assert_eq!(run["started_by"], "tester");
    assert!(run.get("started_from").is_none());
    assert_eq!(
        event_types(&run),
        [
            "deploy",
            "azdo.stage_state_changed",
            "azdo.job_state_changed",
            "azdo.run_state_changed"
        ]
    );
    assert_eq!(run["status"], "success");
    assert_eq!(run["finish"]["finished_by"], "azure-devops");
}

#[tokio::test]
async fn a_hook_first_then_the_pipelines_start_is_one_run_too() {
    let (hub, _dir) = hub().await;
    // Run state "inProgress" fires before the pipeline's first step runs the script.
    let running = variant("ado-run-state-changed.json", "early", |v| {
        v["resource"]["run"]["state"] = json!("inProgress");
        v["resource"]["run"]["result"] = Value::Null;
    });
    let h = deliver(&hub, &running).await;
    assert_eq!(h.status, 201, "{}", h.text);
    let start = json!({"pipeline_name": "TEST-CI", "run_id": "11", "branch": "refs/heads/main",
                       "commit": "9f2c1e7", "triggered_by": "alice@contoso.com"});
    let s = hub
        .post_json("/api/v1/azdev/run/start", start.to_string())
        .await;
    assert_eq!(s.status, 200, "not a conflict: {}", s.text);
    let again = hub
        .post_json("/api/v1/azdev/run/start", start.to_string())
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json, s.json);
    let e = hub
        .post_json(
            "/api/v1/azdev/run/event",
            json!({"run_id": "11", "event_type": "deploy"}).to_string(),
        )
        .await;
    assert_eq!(e.status, 201, "{}", e.text);
    let run = run(&hub, "11").await;
    assert_eq!(run["record_id"], s.json["record_id"]);
    // The pipeline's details are kept, once, as an event.
    assert_eq!(
        event_types(&run),
        ["azdo.run_state_changed", "start_details", "deploy"]
    );
    assert_eq!(run["events"][1]["event_data"], start);
    // A run that run/start started is still strict about different details.
    let other = json!({"pipeline_name": "x", "run_id": "12", "branch": "b", "commit": "c", "triggered_by": "t"});
    hub.post_json("/api/v1/azdev/run/start", other.to_string())
        .await;
    let mut changed = other.clone();
    changed["commit"] = json!("d");
    hub.post_json("/api/v1/azdev/run/start", changed.to_string())
        .await
        .expect_error(409);
}

async fn post_raw(hub: &TestHub, headers: &[(&str, String)], body: &Value) -> Reply {
    let mut req = reqwest::Client::new()
        .post(hub.url(HOOKS))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    Reply::read(req.send().await.unwrap()).await
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test]
async fn hook_credentials_and_api_keys() {
    let (hub, _dir) = hub().await;
    let body = |i: u32| {
        variant("ado-stage-state-changed.json", &format!("auth-{i}"), |v| {
            v["resource"]["run"]["id"] = json!(500 + i);
        })
    };
    let auth = |v: String| vec![("authorization", v)];

    // The subscription's basic auth, and the secret header.
    let r = post_raw(&hub, &auth(basic(USER, PASSWORD)), &body(1)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = post_raw(&hub, &[(HEADER, SECRET.to_string())], &body(2)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(run(&hub, "502").await["events"][0]["by"], "azure-devops");

    // Wrong ones, and none.
    for headers in [
        auth(basic(USER, "wrong")),
        auth(basic("someone", PASSWORD)),
        auth("Bearer not-a-key".into()),
        vec![(HEADER, "wrong".to_string())],
        vec![(HEADER, SECRET.to_string() + "x")],
        vec![],
    ] {
        let r = post_raw(&hub, &headers, &body(3)).await;
        let err = r.expect_error(401);
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains("ICAHUB_AZDO_HOOK"),
            "{}",
            r.text
        );
    }
    // Each refusal is counted on the security audit trail, without secrets.
    let refused: Vec<_> = support::refusal_summaries(&hub.app)
        .await
        .into_iter()
        .filter(|d| d["kind"] == "azdo_hook_credentials")
        .collect();
    let count: u64 = refused.iter().map(|d| d["count"].as_u64().unwrap()).sum();
    assert_eq!(count, 6, "{refused:?}");
    assert!(
        refused.iter().all(|d| d["group"] == "azdo_hooks"),
        "{refused:?}"
    );
    assert!(!format!("{refused:?}").contains(PASSWORD) && !format!("{refused:?}").contains(SECRET));
    // The hook's basic auth is checked first: with it, a stray secret header does not matter.
    let r = post_raw(
        &hub,
        &[
            ("authorization", basic(USER, PASSWORD)),
            (HEADER, "wrong".into()),
        ],
        &body(4),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // An API key of a devops identity: as Bearer, or as the basic password (any user name).
    let r = post_raw(&hub, &auth(format!("Bearer {}", hub.key)), &body(5)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(run(&hub, "505").await["events"][0]["by"], "tester");
    let r = post_raw(&hub, &auth(basic("whoever", &hub.key)), &body(6)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    // A key without the devops role: 403.
    let (viewer, _) =
        icahub::identity::issue_key(hub.app.store.as_ref(), "viewer", "test", chrono::Utc::now())
            .await
            .unwrap();
    post_raw(&hub, &auth(format!("Bearer {viewer}")), &body(7))
        .await
        .expect_error(403);
    // Nothing was recorded by the refused requests.
    hub.get("/api/v1/azdev/run/503").await.expect_error(404);
    hub.get("/api/v1/azdev/run/507").await.expect_error(404);
}

#[tokio::test]
async fn without_hook_credentials_configured_the_refusal_says_what_to_set() {
    let hub = TestHub::embedded().await;
    let r = post_raw(&hub, &[], &fx("ado-stage-state-changed.json")).await;
    let err = r.expect_error(401);
    let m = err["message"].as_str().unwrap();
    for name in [
        "ICAHUB_AZDO_HOOK_USERNAME",
        "ICAHUB_AZDO_HOOK_PASSWORD",
        "ICAHUB_AZDO_HOOK_SECRET",
        "API key",
    ] {
        assert!(m.contains(name), "{m}");
    }
    // A secret header means nothing when no secret is configured.
    post_raw(
        &hub,
        &[(HEADER, "anything".into())],
        &fx("ado-stage-state-changed.json"),
    )
    .await
    .expect_error(401);
    // The API key still works.
    let r = hub
        .post_json(HOOKS, fx("ado-stage-state-changed.json").to_string())
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

#[tokio::test]
async fn with_auth_off_anything_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::embedded(dir.path());
    cfg.auth_required = false;
    let hub = TestHub::start(cfg).await;
    let r = post_raw(&hub, &[], &fx("ado-run-state-changed.json")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(run(&hub, "11").await["started_by"], "anonymous");
}

#[tokio::test]
async fn bad_input_is_a_4xx_naming_the_problem() {
    let (hub, _dir) = hub().await;
    let send = |ct: &'static str, body: String| {
        let url = hub.url(HOOKS);
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .header("content-type", ct)
                .basic_auth(USER, Some(PASSWORD))
                .body(body)
                .send()
                .await
                .unwrap();
            Reply::read(r).await
        }
    };
    let r = send("application/json", "{not json".into()).await;
    assert_eq!(r.expect_error(400)["field"], "$");
    let r = send("application/json", "".into()).await;
    assert_eq!(r.expect_error(400)["field"], "$");
    let r = send("application/json", "[1,2]".into()).await;
    assert_eq!(r.expect_error(400)["field"], "$");
    send("text/plain", fx("ado-run-state-changed.json").to_string())
        .await
        .expect_error(415);
    let r = send("application/json", "{}".into()).await;
    assert_eq!(r.expect_error(400)["field"], "eventType");

    // Known event types without the fields the ledger needs name the JSON path.
    let cases: Vec<(Value, &str)> = vec![
        (
            variant("ado-run-state-changed.json", "x1", |v| {
                v["resource"]["run"]["id"] = Value::Null;
            }),
            "resource.run.id",
        ),
        (
            variant("ado-run-state-changed.json", "x2", |v| {
                v["resource"]["run"]
                    .as_object_mut()
                    .unwrap()
                    .remove("state");
            }),
            "resource.run.state",
        ),
        (
            variant("ado-run-state-changed.json", "x3", |v| {
                v["resource"]["run"]["result"] = Value::Null;
            }),
            "resource.run.result",
        ),
        (
            variant("ado-build-complete.json", "x4", |v| {
                v.as_object_mut().unwrap().remove("resource");
            }),
            "resource",
        ),
        (
            variant("ado-job-state-changed.json", "x5", |v| {
                v["resource"]["run"]["id"] = json!([1]);
            }),
            "resource.run.id",
        ),
    ];
    for (body, field) in cases {
        let r = send("application/json", body.to_string()).await;
        let err = r.expect_error(400);
        assert_eq!(err["field"], field, "{}", r.text);
        assert!(err["message"].as_str().unwrap().contains(field));
    }
    hub.get("/api/v1/azdev/run/11").await.expect_error(404);

    // An event type the hub does not record: 200, ignored, with the reason; nothing stored.
    let mut push = fx("ado-build-complete.json");
    push["eventType"] = json!("git.push");
    let r = send("application/json", push.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "ignored");
    assert_eq!(r.json["event_type"], "git.push");
    assert!(r.json["reason"].as_str().unwrap().contains("not recorded"));
    hub.get("/api/v1/azdev/run/2").await.expect_error(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_table_storage_record_a_redelivered_completion_once() {
    let prefix = azurite::unique_prefix("azdohooks");
    let cfg = || {
        let mut c = Config::embedded("unused");
        c.storage = StorageConfig::Tables {
            connection_string: Secret::new(azurite::connection_string()),
            table_prefix: prefix.clone(),
        };
        c.store_timeout = std::time::Duration::from_secs(5);
        c.azdo_hooks = hook_auth();
        c
    };
    let a = TestHub::start(cfg()).await;
    let b = TestHub::start(cfg()).await;
    let stage = deliver(&a, &fx("ado-stage-state-changed.json")).await;
    assert_eq!(stage.status, 201, "{}", stage.text);
    let done = variant("ado-run-state-changed.json", "tables-done", |v| {
        v["resource"]["run"]["id"] = json!(2);
    });
    let mut tasks = Vec::new();
    for i in 0..6 {
        let hub_url = if i % 2 == 0 {
            a.url(HOOKS)
        } else {
            b.url(HOOKS)
        };
        let body = done.to_string();
        tasks.push(tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(hub_url)
                .header("content-type", "application/json")
                .basic_auth(USER, Some(PASSWORD))
                .body(body)
                .send()
                .await
                .unwrap();
            Reply::read(r).await
        }));
    }
    let mut recorded = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.status == 201 || r.status == 200, "{}", r.text);
        if r.json["status"] == "recorded" {
            recorded += 1;
        }
    }
    assert_eq!(recorded, 1);
    let run = run(&b, "2").await;
    assert_eq!(
        event_types(&run),
        ["azdo.stage_state_changed", "azdo.run_state_changed"]
    );
    assert_eq!(run["status"], "success");
    let late = deliver(&b, &fx("ado-job-state-changed.json")).await;
    assert_eq!(late.json["status"], "already_finished");
}
