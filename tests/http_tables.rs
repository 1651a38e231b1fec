//! The real server on Azure Table Storage (Azurite): two hub instances on the same tables never
//! store an alert twice or open an incident twice, and storage that goes away is a 503 with
//! Retry-After, never a 500.

mod support;

use icahub::config::{Config, Secret, StorageConfig};
use std::time::Duration;
use support::azurite::{self, Azurite};
use support::fixture;
use support::hub::TestHub;

const ALERT: &str = "/api/v1/azdev/alert";

fn tables_config(cs: String, prefix: String) -> Config {
    let mut c = Config::embedded("unused");
    c.storage = StorageConfig::Tables {
        connection_string: Secret::new(cs),
        table_prefix: prefix,
    };
    c.store_timeout = Duration::from_secs(5);
    c
}

async fn two_hubs() -> (TestHub, TestHub) {
    let prefix = azurite::unique_prefix("hubs");
    let a = TestHub::start(tables_config(azurite::connection_string(), prefix.clone())).await;
    let b = TestHub::start(tables_config(azurite::connection_string(), prefix)).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_alert_sent_to_two_instances_100_times_is_one_record_one_incident() {
    let (a, b) = two_hubs().await;
    let body = fixture("azmon-common-metric-static-fired.json");
    let mut tasks = Vec::new();
    for i in 0..100 {
        let hub = if i % 2 == 0 { &a } else { &b };
        let (client, url, body) = (hub.client.clone(), hub.url(ALERT), body.clone());
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            r.json::<serde_json::Value>().await.unwrap()
        }));
    }
    let mut new = 0;
    let mut incidents = std::collections::HashSet::new();
    for t in tasks {
        let v = t.await.unwrap();
        if v["events"][0]["duplicate"] == false {
            new += 1;
        }
        incidents.insert(v["events"][0]["incident_id"].to_string());
    }
    assert_eq!(new, 1);
    assert_eq!(incidents.len(), 1);
    assert_eq!(a.app.store.count_events().await.unwrap(), 1);
    let list = b.get("/api/v1/azdev/incidents").await;
    assert_eq!(list.json["count"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_attach_to_one_incident_without_losing_updates() {
    let (a, b) = two_hubs().await;
    let template = support::fixture_json("azmon-common-metric-static-fired.json");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let hub = if i % 2 == 0 { &a } else { &b };
        let mut body = template.clone();
        body["data"]["essentials"]["alertId"] = format!("/alerts/distinct-{i}").into();
        let (client, url) = (hub.client.clone(), hub.url(ALERT));
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            r.json::<serde_json::Value>().await.unwrap()
        }));
    }
    let mut opened = 0;
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let v = t.await.unwrap();
        if v["events"][0]["incident_action"] == "opened" {
            opened += 1;
        }
        ids.insert(v["events"][0]["incident_id"].as_str().unwrap().to_string());
    }
    assert_eq!(opened, 1, "one instance opened it, the others attached");
    assert_eq!(ids.len(), 1);
    let id = ids.into_iter().next().unwrap();
    let inc = a.get(&format!("/api/v1/azdev/incident/{id}")).await;
    assert_eq!(inc.json["event_count"], 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_that_goes_away_is_a_503_with_retry_after() {
    let own = Azurite::start();
    let hub = TestHub::start(tables_config(
        own.connection_string(),
        azurite::unique_prefix("down"),
    ))
    .await;
    let ok = hub
        .post_json(ALERT, fixture("azmon-activitylog.json"))
        .await;
    assert_eq!(ok.status, 202, "{}", ok.text);
    drop(own); // Azurite stops
    let r = hub
        .post_json(ALERT, fixture("azmon-common-metric-static-fired.json"))
        .await;
    let err = r.expect_error(503);
    assert_eq!(err["code"], "unavailable");
    let retry: u32 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 0);
    // A client's mistake is still a 4xx while storage is down.
    hub.post_json(ALERT, "[]").await.expect_error(400);
    let r = hub.get("/api/v1/azdev/incidents").await;
    r.expect_error(503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_ledger_on_table_storage_with_two_instances_writing_events() {
    let (a, b) = two_hubs().await;
    let start = serde_json::json!({"pipeline_name": "api-deploy", "run_id": "77", "branch": "main",
                                   "commit": "abc", "triggered_by": "ci"});
    assert_eq!(
        a.post_json("/api/v1/azdev/run/start", start.to_string())
            .await
            .status,
        201
    );
    assert_eq!(
        b.post_json("/api/v1/azdev/run/start", start.to_string())
            .await
            .status,
        200
    );
    let mut tasks = Vec::new();
    for i in 0..20 {
        let hub = if i % 2 == 0 { &a } else { &b };
        let (client, url) = (hub.client.clone(), hub.url("/api/v1/azdev/run/event"));
        tasks.push(tokio::spawn(async move {
            let body =
                serde_json::json!({"run_id": "77", "event_type": "step", "event_data": {"i": i}});
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let fin =
        serde_json::json!({"run_id": "77", "status": "failed", "end_time": "2026-11-22T11:00:00Z"});
    let f = b
        .post_json("/api/v1/azdev/run/finish", fin.to_string())
        .await;
    assert_eq!(f.status, 200, "{}", f.text);
    let run = a.get("/api/v1/azdev/run/77").await;
    let events = run.json["events"].as_array().unwrap();
    assert_eq!(events.len(), 20, "no event lost between two instances");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    assert_eq!(run.json["status"], "failed");
    assert_eq!(run.json["finish"]["audit_hash"], f.json["audit_hash"]);
}
