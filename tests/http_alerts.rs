//! Alert ingestion through the real server (embedded store): samples in, incidents out, and every
//! kind of bad input answered with the right status and a JSON error, losing nothing stored.

mod support;

use serde_json::{json, Value};
use support::hub::TestHub;
use support::{fixture, fixture_json};

const ALERT: &str = "/api/v1/azdev/alert";
const AM: &str = "/api/v1/alertmanager";

async fn event_count(hub: &TestHub) -> u64 {
    hub.app.store.count_events().await.unwrap()
}

#[tokio::test]
async fn azure_monitor_samples_are_accepted_and_stored_raw() {
    let hub = TestHub::embedded().await;
    for (name, severity, condition) in [
        ("azmon-common-metric-static-fired.json", "info", "fired"),
        ("azmon-common-log-v2.json", "info", "fired"),
        ("azmon-activitylog.json", "info", "fired"),
        ("azmon-common-metric-resolved.json", "low", "resolved"),
    ] {
        let body = fixture(name);
        let r = hub.post_json(ALERT, body.clone()).await;
        assert_eq!(r.status, 202, "{name}: {}", r.text);
        assert_eq!(r.json["status"], "accepted", "{name}");
        let ev = &r.json["events"][0];
        assert_eq!(ev["duplicate"], false);
        assert_eq!(ev["severity"], severity, "{name}");
        assert_eq!(ev["condition"], condition, "{name}");
        let stored = hub
            .app
            .store
            .event(ev["event_id"].as_str().unwrap())
            .await
            .unwrap()
            .expect("event stored");
        assert_eq!(
            stored.raw.as_bytes(),
            &body[..],
            "{name}: raw body kept as sent"
        );
        assert_eq!(stored.request_id, r.json["request_id"].as_str().unwrap());
        assert_eq!(
            r.headers["x-request-id"].to_str().unwrap(),
            stored.request_id
        );
    }
    assert_eq!(event_count(&hub).await, 4);
}

#[tokio::test]
async fn fired_then_resolved_resolves_the_incident() {
    let hub = TestHub::embedded().await;
    // The documented resolved sample, and the same alert in its fired state before it.
    let resolved = fixture("azmon-common-metric-resolved.json");
    let mut fired = fixture_json("azmon-common-metric-resolved.json");
    fired["data"]["essentials"]["monitorCondition"] = json!("Fired");
    fired["data"]["essentials"]
        .as_object_mut()
        .unwrap()
        .remove("resolvedDateTime");

    let r1 = hub.post_json(ALERT, fired.to_string()).await;
    assert_eq!(r1.status, 202, "{}", r1.text);
    assert_eq!(r1.json["events"][0]["incident_action"], "opened");
    let id = r1.json["events"][0]["incident_id"]
        .as_str()
        .unwrap()
        .to_string();

    let open = hub.get(&format!("/api/v1/azdev/incident/{id}")).await;
    assert_eq!(open.status, 200);
    assert_eq!(open.json["status"], "open");
    assert_eq!(open.json["severity"], "low"); // Sev3
    assert_eq!(open.json["title"], "WCUS-R2-Gen2");

    let r2 = hub.post_json(ALERT, resolved).await;
    assert_eq!(r2.status, 202, "{}", r2.text);
    assert_eq!(r2.json["events"][0]["incident_action"], "resolved");
    assert_eq!(r2.json["events"][0]["incident_id"], id.as_str());

    let done = hub.get(&format!("/api/v1/azdev/incident/{id}")).await;
    assert_eq!(done.json["status"], "resolved");
    assert_eq!(done.json["event_count"], 2);
    assert!(done.json["resolved_at"].as_str().is_some());
}

#[tokio::test]
async fn a_repeat_is_marked_duplicate_and_stored_once() {
    let hub = TestHub::embedded().await;
    let body = fixture("azmon-common-metric-static-fired.json");
    let first = hub.post_json(ALERT, body.clone()).await;
    let again = hub.post_json(ALERT, body).await;
    assert_eq!(first.status, 202);
    assert_eq!(again.status, 202);
    assert_eq!(again.json["status"], "duplicate");
    assert_eq!(again.json["events"][0]["duplicate"], true);
    assert_eq!(
        again.json["events"][0]["event_id"],
        first.json["events"][0]["event_id"]
    );
    assert_eq!(event_count(&hub).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_valid_alert_repeated_100_times_concurrently_is_one_record_one_incident() {
    let hub = TestHub::embedded().await;
    let body = fixture("azmon-common-metric-static-fired.json");
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (client, url, body) = (hub.client.clone(), hub.url(ALERT), body.clone());
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }));
    }
    let mut new = 0;
    let mut incidents = std::collections::HashSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 202);
        if body["events"][0]["duplicate"] == false {
            new += 1;
        }
        incidents.insert(body["events"][0]["incident_id"].to_string());
    }
    assert_eq!(new, 1);
    assert_eq!(incidents.len(), 1);
    assert_eq!(event_count(&hub).await, 1);
    let list = hub.get("/api/v1/azdev/incidents").await;
    assert_eq!(list.json["count"], 1);
}

#[tokio::test]
async fn alertmanager_webhook_opens_one_incident_per_alert_and_resolves() {
    let hub = TestHub::embedded().await;
    let body = fixture("alertmanager-webhook-v4.json");
    let r = hub.post_json(AM, body.clone()).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let events = r.json["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    for e in events {
        assert_eq!(e["incident_action"], "opened");
        assert_eq!(e["severity"], "critical");
    }
    assert_ne!(events[0]["incident_id"], events[1]["incident_id"]);
    // The whole request body is kept once, each alert with its own JSON.
    let raw = hub
        .app
        .store
        .raw_request(r.json["request_id"].as_str().unwrap())
        .await
        .unwrap()
        .expect("raw request stored");
    assert_eq!(raw.body.as_bytes(), &body[..]);

    // Same notification again (repeat interval): all duplicates.
    let again = hub.post_json(AM, body).await;
    assert_eq!(again.json["status"], "duplicate");
    assert_eq!(event_count(&hub).await, 2);

    // The first alert resolves.
    let mut resolved = fixture_json("alertmanager-webhook-v4.json");
    resolved["status"] = json!("resolved");
    resolved["alerts"] = json!([resolved["alerts"][0].clone()]);
    resolved["alerts"][0]["status"] = json!("resolved");
    resolved["alerts"][0]["endsAt"] = json!("2024-05-01T10:05:00Z");
    let r = hub.post_json(AM, resolved.to_string()).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json["events"][0]["incident_action"], "resolved");
    assert_eq!(r.json["events"][0]["incident_id"], events[0]["incident_id"]);
    let open = hub.get("/api/v1/azdev/incidents?status=open").await;
    assert_eq!(open.json["count"], 1);
}

#[tokio::test]
async fn bad_input_gets_a_specific_error_and_loses_nothing() {
    let hub = TestHub::embedded().await;
    let good = fixture("azmon-common-metric-static-fired.json");
    assert_eq!(hub.post_json(ALERT, good.clone()).await.status, 202);
    assert_eq!(
        hub.post_json(AM, fixture("alertmanager-webhook-v4.json"))
            .await
            .status,
        202
    );
    let before = event_count(&hub).await;
    assert_eq!(before, 3);

    // Empty body.
    let e = hub.post_json(ALERT, "").await;
    assert!(e.expect_error(400)["message"]
        .as_str()
        .unwrap()
        .contains("empty"));
    // Truncated JSON.
    let e = hub.post_json(ALERT, good[..good.len() / 2].to_vec()).await;
    let err = e.expect_error(400);
    assert!(
        err["message"].as_str().unwrap().contains("ends early"),
        "{err}"
    );
    // JSON that is not an object.
    for body in ["[1,2,3]", "\"alert\"", "42", "null"] {
        let e = hub.post_json(ALERT, body).await;
        assert_eq!(e.expect_error(400)["field"], "$", "{body}");
        let e = hub.post_json(AM, body).await;
        e.expect_error(400);
    }
    // Wrong types in essentials, named by path.
    let mut wrong = fixture_json("azmon-common-metric-static-fired.json");
    wrong["data"]["essentials"]["alertId"] = json!(12345);
    let e = hub.post_json(ALERT, wrong.to_string()).await;
    assert_eq!(e.expect_error(400)["field"], "data.essentials.alertId");
    let mut wrong = fixture_json("azmon-common-metric-static-fired.json");
    wrong["data"]["essentials"]["alertTargetIDs"] = json!("not-a-list");
    let e = hub.post_json(ALERT, wrong.to_string()).await;
    assert_eq!(
        e.expect_error(400)["field"],
        "data.essentials.alertTargetIDs"
    );
    let mut missing = fixture_json("azmon-common-metric-static-fired.json");
    missing["data"]["essentials"]
        .as_object_mut()
        .unwrap()
        .remove("monitorCondition");
    let e = hub.post_json(ALERT, missing.to_string()).await;
    assert_eq!(
        e.expect_error(400)["field"],
        "data.essentials.monitorCondition"
    );
    let mut am_bad = fixture_json("alertmanager-webhook-v4.json");
    am_bad["alerts"][1]["status"] = json!("exploded");
    let e = hub.post_json(AM, am_bad.to_string()).await;
    assert_eq!(e.expect_error(400)["field"], "alerts[1].status");
    // Invalid UTF-8.
    let e = hub.post_json(ALERT, vec![b'{', 0xff, 0xfe, b'}']).await;
    e.expect_error(400);
    // A 10 MB body.
    let big = vec![b' '; 10 * 1024 * 1024];
    let e = hub.post_json(ALERT, big).await;
    assert_eq!(e.expect_error(413)["code"], "payload_too_large");
    // Wrong content type, and none.
    let r = hub
        .client
        .post(hub.url(ALERT))
        .header("content-type", "text/plain")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    support::hub::Reply::read(r).await.expect_error(415);
    let r = hub
        .client
        .post(hub.url(ALERT))
        .body(good.clone())
        .send()
        .await
        .unwrap();
    support::hub::Reply::read(r).await.expect_error(415);

    // Nothing stored before was lost or changed; the good alert is still a duplicate of itself.
    assert_eq!(event_count(&hub).await, before);
    let again = hub.post_json(ALERT, good).await;
    assert_eq!(again.json["status"], "duplicate");
}

#[tokio::test]
async fn an_unknown_schema_is_accepted_and_kept_raw_without_an_incident() {
    let hub = TestHub::embedded().await;
    let body = json!({"schemaId": "contosoFutureAlertSchema", "data": {"whatever": [1, 2, 3]}})
        .to_string();
    let r = hub.post_json(ALERT, body.clone()).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let ev = &r.json["events"][0];
    assert_eq!(ev["schema"], "unrecognized");
    assert!(ev["incident_id"].is_null());
    let stored = hub
        .app
        .store
        .event(ev["event_id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.raw, body);
    // And a repeat of it is a duplicate.
    let again = hub.post_json(ALERT, body).await;
    assert_eq!(again.json["status"], "duplicate");
}

#[tokio::test]
async fn incident_read_api_filters_and_validates() {
    let hub = TestHub::embedded().await;
    for n in 0..6u64 {
        let body = icahub::cli::bench::azure_alert(n, 6, true);
        assert_eq!(hub.post_json(ALERT, body.to_string()).await.status, 202);
    }
    let all = hub.get("/api/v1/azdev/incidents").await;
    assert_eq!(all.status, 200);
    assert_eq!(all.json["count"], 6);
    // bench alerts: stream s has severity Sev(s % 5): Sev0 for s = 0 and 5.
    let crit = hub.get("/api/v1/azdev/incidents?severity=critical").await;
    assert_eq!(crit.json["count"], 2);
    let crit = hub
        .get("/api/v1/azdev/incidents?severity=Sev0&status=open&limit=1")
        .await;
    assert_eq!(crit.json["count"], 1);
    let none = hub.get("/api/v1/azdev/incidents?status=resolved").await;
    assert_eq!(none.json["count"], 0);
    let since = hub
        .get("/api/v1/azdev/incidents?since=2999-01-01T00:00:00Z")
        .await;
    assert_eq!(since.json["count"], 0);

    for (q, field) in [
        ("status=maybe", "query:status"),
        ("severity=urgent", "query:severity"),
        ("since=yesterday", "query:since"),
        ("limit=0", "query:limit"),
        ("limit=100000", "query:limit"),
    ] {
        let e = hub.get(&format!("/api/v1/azdev/incidents?{q}")).await;
        assert_eq!(e.expect_error(400)["field"], field, "{q}");
    }
    let e = hub
        .get("/api/v1/azdev/incident/INC-0000000000000000-9")
        .await;
    assert_eq!(e.expect_error(404)["code"], "not_found");
    let e = hub.get("/api/v1/azdev/incident/garbage").await;
    e.expect_error(404);
}

#[tokio::test]
async fn readiness_unknown_routes_and_wrong_methods() {
    let hub = TestHub::embedded().await;
    for method in [
        reqwest::Method::GET,
        reqwest::Method::POST,
        reqwest::Method::HEAD,
    ] {
        let r = hub
            .client
            .request(method, hub.url("/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let h = hub.get("/api/healthz").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json["storage"], "embedded");
    let e = hub.get("/api/v1/nothing-here").await;
    assert_eq!(e.expect_error(404)["code"], "no_route");
    let e = hub.get(ALERT).await;
    e.expect_error(405);
}

#[tokio::test]
async fn a_sane_request_id_is_kept_and_an_insane_one_replaced() {
    let hub = TestHub::embedded().await;
    let r = hub
        .client
        .post(hub.url(ALERT))
        .header("content-type", "application/json")
        .header("x-request-id", "abc-123")
        .header("x-azure-functions-invocationid", "inv-9")
        .body(fixture("azmon-activitylog.json"))
        .send()
        .await
        .unwrap();
    let r = support::hub::Reply::read(r).await;
    assert_eq!(r.json["request_id"], "abc-123");
    let ev = hub
        .app
        .store
        .event(r.json["events"][0]["event_id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.invocation_id.as_deref(), Some("inv-9"));
    let r = hub
        .client
        .post(hub.url(ALERT))
        .header("content-type", "application/json")
        .header("x-request-id", "bad id with spaces")
        .body("")
        .send()
        .await
        .unwrap();
    let r = support::hub::Reply::read(r).await;
    assert_ne!(r.json["request_id"], "bad id with spaces");
}

/// Every payload variant PROTOCOLS.md lists (tests/fixtures/variants/) goes through the server:
/// 202, stored raw, and a recognized schema for all but the one body no schema describes.
#[tokio::test]
async fn every_variant_is_accepted_end_to_end() {
    let hub = TestHub::embedded().await;
    let dir = support::fixture_path("variants");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(names.len() >= 30, "variants: {names:?}");
    for name in names {
        let body = std::fs::read(dir.join(&name)).unwrap();
        let path = if name.starts_with("alertmanager") {
            AM
        } else {
            ALERT
        };
        let r = hub.post_json(path, body.clone()).await;
        assert_eq!(r.status, 202, "{name}: {}", r.text);
        for ev in r.json["events"].as_array().unwrap() {
            let expect_unrecognized = name == "azmon-legacy-budget-aip.json";
            assert_eq!(
                ev["schema"] == "unrecognized",
                expect_unrecognized,
                "{name}: {ev}"
            );
            let stored = hub
                .app
                .store
                .event(ev["event_id"].as_str().unwrap())
                .await
                .unwrap()
                .expect("stored");
            // Some documentation samples share placeholder alert ids; a repeat is a duplicate.
            if path == ALERT && ev["duplicate"] == false {
                assert!(
                    stored.raw.as_bytes() == &body[..],
                    "{name}: raw body differs"
                );
            }
        }
    }
}
