//! The run ledger API through the real server (embedded store): idempotent start and finish,
//! 409 for a changed finished run, 404 for unknown runs, 400 naming missing fields, roles, the
//! per-run audit hash, rollback incidents, and forwarding to the control plane.

mod support;

use chrono::{Duration as Span, Utc};
use icahub::clock::ManualClock;
use icahub::config::Config;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use support::hub::TestHub;
use support::receiver::Receiver;

const START: &str = "/api/v1/azdev/run/start";
const EVENT: &str = "/api/v1/azdev/run/event";
const FINISH: &str = "/api/v1/azdev/run/finish";

fn start_body(run: &str) -> serde_json::Value {
    json!({"pipeline_name": "payments-deploy", "run_id": run, "branch": "main",
           "commit": "9f2c1e7", "triggered_by": "alice@contoso.com"})
}

#[tokio::test]
async fn a_run_from_start_to_finish() {
    let hub = TestHub::embedded().await;
    let r = hub.post_json(START, start_body("1001").to_string()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["success"], true);
    assert_eq!(r.json["run_id"], "1001");
    let record_id = r.json["record_id"].as_str().unwrap().to_string();
    // The same start again answers as the first did.
    let again = hub.post_json(START, start_body("1001").to_string()).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json, r.json);
    // A different start for the same run id is a conflict.
    let mut other = start_body("1001");
    other["commit"] = json!("0000000");
    hub.post_json(START, other.to_string())
        .await
        .expect_error(409);

    for (i, t) in ["build", "test", "deploy"].iter().enumerate() {
        let e = hub
            .post_json(
                EVENT,
                json!({"run_id": "1001", "event_type": t, "event_data": {"step": i}}).to_string(),
            )
            .await;
        assert_eq!(e.status, 201, "{}", e.text);
        assert_eq!(e.json["event_id"], format!("{record_id}-E{}", i + 1));
    }
    let fin = json!({"run_id": "1001", "status": "success", "end_time": "2026-11-22T10:30:00Z"});
    let f = hub.post_json(FINISH, fin.to_string()).await;
    assert_eq!(f.status, 200, "{}", f.text);
    let hash = f.json["audit_hash"].as_str().unwrap().to_string();
    assert_eq!(hash.len(), 64);
    // Same finish: same answer. Different finish, or any event: 409 (immutable).
    assert_eq!(
        hub.post_json(FINISH, fin.to_string()).await.json["audit_hash"],
        hash.as_str()
    );
    let changed = json!({"run_id": "1001", "status": "failed", "end_time": "2026-11-22T10:30:00Z"});
    hub.post_json(FINISH, changed.to_string())
        .await
        .expect_error(409);
    hub.post_json(
        EVENT,
        json!({"run_id": "1001", "event_type": "late"}).to_string(),
    )
    .await
    .expect_error(409);

    let run = hub.get("/api/v1/azdev/run/1001").await;
    assert_eq!(run.status, 200);
    assert_eq!(run.json["status"], "success");
    assert_eq!(run.json["pipeline_name"], "payments-deploy");
    assert_eq!(run.json["finish"]["audit_hash"], hash.as_str());
    let events = run.json["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2]["event_type"], "deploy");
    assert_eq!(events[0]["by"], "tester");
    // The audit hash chains start, events and finish: recompute it.
    let mut h = icahub::domain::run::chain("", "run.start", &start_body("1001"));
    for e in events {
        let body = json!({"event_id": e["event_id"], "event_type": e["event_type"], "event_data": e["event_data"]});
        h = icahub::domain::run::chain(&h, "run.event", &body);
        assert_eq!(e["chain_hash"], h.as_str());
    }
    let fin_canonical =
        json!({"run_id": "1001", "status": "success", "end_time": "2026-11-22T10:30:00Z"});
    assert_eq!(
        icahub::domain::run::chain(&h, "run.finish", &fin_canonical),
        hash
    );
}

#[tokio::test]
async fn bad_run_requests_are_named() {
    let hub = TestHub::embedded().await;
    let e = hub
        .post_json(START, json!({"run_id": "1"}).to_string())
        .await;
    let err = e.expect_error(400);
    assert_eq!(err["field"], "pipeline_name,branch,commit,triggered_by");
    let e = hub
        .post_json(
            EVENT,
            json!({"run_id": "nope", "event_type": "x"}).to_string(),
        )
        .await;
    e.expect_error(404);
    let e = hub
        .post_json(
            FINISH,
            json!({"run_id": "nope", "status": "success", "end_time": "2026-11-22T10:30:00Z"})
                .to_string(),
        )
        .await;
    e.expect_error(404);
    let e = hub
        .post_json(
            FINISH,
            json!({"run_id": "nope", "status": "done", "end_time": "2026-11-22T10:30:00Z"})
                .to_string(),
        )
        .await;
    assert_eq!(e.expect_error(400)["field"], "status");
    hub.post_json(START, start_body("2").to_string()).await;
    let e = hub
        .post_json(
            EVENT,
            json!({"run_id": "2", "event_type": "x", "event_data": [1]}).to_string(),
        )
        .await;
    assert_eq!(e.expect_error(400)["field"], "event_data");
    hub.post_json(START, "{oops").await.expect_error(400);
    hub.get("/api/v1/azdev/run/unknown").await.expect_error(404);

    // Without the devops role: 403.
    let (key, _) =
        icahub::identity::issue_key(hub.app.store.as_ref(), "viewer", "test", Utc::now())
            .await
            .unwrap();
    let r = reqwest::Client::new()
        .post(hub.url(START))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(start_body("3").to_string())
        .send()
        .await
        .unwrap();
    support::hub::Reply::read(r).await.expect_error(403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollbacks_within_an_hour_share_an_incident_and_records_reach_the_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let cp = Receiver::control_plane(None, vec![]).await;
    let env: HashMap<String, String> = [
        ("ICAHUB_STORAGE", "embedded".to_string()),
        ("ICAHUB_DATA_DIR", dir.path().display().to_string()),
        ("ICAHUB_CONTROL_PLANE_URL", cp.base.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let config = Config::from_lookup(|k| env.get(k).cloned(), Some(0)).unwrap();
    let sinks = icahub::sinks::Sinks::from_lookup(&|k| env.get(k).cloned()).unwrap();
    let hub = TestHub::start_with(config, sinks, clock.clone()).await;

    let rollback = |run: &str| {
        json!({"run_id": run, "event_type": "rollback", "event_data": {"reason": "error rate"}})
            .to_string()
    };
    hub.post_json(START, start_body("r1").to_string()).await;
    let a = hub.post_json(EVENT, rollback("r1")).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let first = a.json["incident_id"]
        .as_str()
        .expect("incident opened")
        .to_string();
    // Let the fast path finish before moving simulated time (a jump past a live lease while a
    // send is in flight is something real time never does).
    hub.idle().await;
    clock.advance(Span::minutes(40));
    hub.post_json(START, start_body("r2").to_string()).await;
    let b = hub.post_json(EVENT, rollback("r2")).await;
    assert_eq!(
        b.json["incident_id"],
        first.as_str(),
        "within the hour: same incident"
    );
    hub.idle().await;
    clock.advance(Span::minutes(90));
    hub.post_json(START, start_body("r3").to_string()).await;
    let c = hub.post_json(EVENT, rollback("r3")).await;
    let second = c.json["incident_id"].as_str().unwrap().to_string();
    assert_ne!(second, first, "after a quiet hour: a new incident");
    let old = hub.get(&format!("/api/v1/azdev/incident/{first}")).await;
    assert_eq!(old.json["status"], "resolved");
    assert_eq!(old.json["event_count"], 2);
    let new = hub.get(&format!("/api/v1/azdev/incident/{second}")).await;
    assert_eq!(new.json["status"], "open");
    assert_eq!(new.json["source"], "pipeline");

    // Everything reached the control plane on the ICA paths, once each.
    hub.idle().await;
    hub.app
        .dispatcher
        .drain(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    cp.assert_no_rejections();
    let paths: Vec<String> = cp.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths
            .iter()
            .filter(|p| *p == "/api/v1/azdev/run/start")
            .count(),
        3
    );
    assert_eq!(
        paths
            .iter()
            .filter(|p| *p == "/api/v1/azdev/run/event")
            .count(),
        3
    );
    assert!(paths.iter().any(|p| p == "/api/v1/azdev/incident"));
    let mut seen = std::collections::HashMap::new();
    for r in cp.requests() {
        *seen
            .entry((
                r.header("idempotency-key").unwrap().to_string(),
                r.path.clone(),
            ))
            .or_insert(0) += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "delivered twice: {dups:?}");
    let keys: std::collections::HashSet<_> = cp
        .requests()
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), cp.requests().len(), "each record once");
}
