//! One body, one meaning (issue 11): a JSON body with a key twice in one object, at any depth, is
//! refused on every route that parses JSON, with a 400 JSON error whose `code` is
//! `duplicate_key` and whose `field` is the key's path, and nothing is stored. Mattermost's
//! action route answers 200 with the reason in `ephemeral_text` (Mattermost shows a generic error
//! for any other status). And what hyper does with a malformed `Content-Length`: it answers 400
//! itself, before any route runs, with an empty body (so it cannot be a JSON error), and closes
//! the connection; nothing is stored.

mod support;

use serde_json::Value;
use support::fixture;
use support::hub::TestHub;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `text` with `"key": value, ` inserted again right after the first `"key":` object member it
/// holds: the same key twice in that object.
fn duplicate(text: &str, key: &str, again: &str) -> String {
    let at = text.find(&format!("\"{key}\"")).expect("key in the text");
    format!("{}\"{key}\": {again}, {}", &text[..at], &text[at..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_are_refused_on_every_json_route_and_nothing_is_stored() {
    let hub = TestHub::embedded().await;
    let azmon = String::from_utf8(fixture("azmon-common-metric-static-fired.json")).unwrap();
    let am = String::from_utf8(fixture("alertmanager-webhook-v4.json")).unwrap();
    let run = r#"{"pipeline_name": "web", "run_id": "r1", "branch": "main", "commit": "abc", "triggered_by": "dev@contoso.com"}"#;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "/api/v1/azdev/alert",
            duplicate(&azmon, "alertId", "\"/subscriptions/other\""),
            "data.essentials.alertId",
        ),
        (
            "/api/v1/alertmanager",
            duplicate(&am, "alertname", "\"Other\""),
            "alerts[0].labels.alertname",
        ),
        (
            "/api/v1/azdev/run/start",
            duplicate(run, "run_id", "\"r2\""),
            "run_id",
        ),
        (
            "/api/v1/azdev/run/event",
            r#"{"run_id": "r1", "event_type": "deploy", "event_data": {"env": "dev", "env": "prod"}}"#
                .into(),
            "event_data.env",
        ),
        (
            "/api/v1/azdev/run/finish",
            r#"{"run_id": "r1", "status": "succeeded", "status": "failed"}"#.into(),
            "status",
        ),
        (
            "/api/v1/azdev/approval",
            r#"{"run_id": "r1", "environment": "staging", "environment": "production"}"#.into(),
            "environment",
        ),
        (
            "/api/v1/azdev/approval/APR-2026-000001/sign",
            r#"{"decision": "approve", "decision": "reject"}"#.into(),
            "decision",
        ),
        (
            "/api/v1/azdev/approval/APR-2026-000001/override",
            r#"{"reason": "a", "reason": "b"}"#.into(),
            "reason",
        ),
        (
            "/api/v1/azdo/hooks",
            duplicate(
                &String::from_utf8(fixture("azdo/ado-build-complete.json")).unwrap(),
                "eventType",
                "\"git.push\"",
            ),
            "eventType",
        ),
        (
            "/api/v1/azdev/audit/query",
            r#"{"partition": "security", "filter": {"kind": "a", "kind": "b"}}"#.into(),
            "filter.kind",
        ),
    ];
    for (path, body, field) in &cases {
        let r = hub.post_json(path, body.clone()).await;
        let err = r.expect_error(400);
        assert_eq!(err["code"], "duplicate_key", "{path}: {}", r.text);
        assert_eq!(err["field"], *field, "{path}: {}", r.text);
        let key = field.rsplit('.').next().unwrap();
        assert!(
            err["message"].as_str().unwrap().contains(key),
            "{path}: {}",
            r.text
        );
    }

    // The Azure DevOps check, with its documented headers.
    let template = support::fixture_json("ado-check-invoke-function-request-headers.json");
    let mut req = hub
        .client
        .post(hub.url("/api/v1/azdo/check"))
        .header("content-type", "application/json")
        .body(r#"{"run_id": "4711", "environment": "dev", "environment": "production"}"#);
    for (name, v) in template.as_object().unwrap() {
        let v = v.as_str().unwrap();
        let value = match v.to_ascii_lowercase().as_str() {
            "$(system.collectionuri)" => "https://dev.azure.com/fabrikamfiber/".to_string(),
            "$(system.hosttype)" => "build".into(),
            "$(system.accesstoken)" => "eyJ0eXAiOiJKV1QifQ.e30.c2ln".into(),
            "$(build.buildid)" => "4711".into(),
            other if other.starts_with("$(") => "0a6b1c2d-3e4f-4a6b-9c8d-9e0f1a2b3c4d".into(),
            _ => v.to_string(),
        };
        if !name.eq_ignore_ascii_case("content-type") {
            req = req.header(name.as_str(), value);
        }
    }
    let r = support::hub::Reply::read(req.send().await.unwrap()).await;
    let err = r.expect_error(400);
    assert_eq!(
        (err["code"].as_str(), err["field"].as_str()),
        (Some("duplicate_key"), Some("environment")),
        "{}",
        r.text
    );

    // The Functions host's timer envelope.
    let r = hub
        .post_json(
            "/dispatch",
            r#"{"Data": {"timer": {"IsPastDue": false, "IsPastDue": true}}, "Metadata": {}}"#,
        )
        .await;
    let err = r.expect_error(400);
    assert_eq!(err["code"], "duplicate_key", "{}", r.text);
    assert_eq!(err["field"], "Data.timer.IsPastDue", "{}", r.text);

    // Mattermost: 200, with the refusal where Mattermost shows it.
    let r = hub
        .post_json(
            "/api/v1/mattermost/actions",
            r#"{"user_id": "u1", "context": {"token": "a", "token": "b"}}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let text = r.json["ephemeral_text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("Refused") && text.contains("duplicate key") && text.contains("token"),
        "{}",
        r.text
    );
    assert_eq!(r.json["code"], "duplicate_key");
    assert_eq!(r.json["field"], "context.token");

    // Nothing was stored.
    assert_eq!(hub.app.store.count_events().await.unwrap(), 0);
    assert_eq!(hub.get("/api/v1/azdev/run/r1").await.status, 404);
    assert_eq!(hub.get("/api/v1/azdev/run/r2").await.status, 404);
    let incidents = hub.get("/api/v1/azdev/incidents").await;
    assert_eq!(
        incidents.json["incidents"],
        Value::Array(vec![]),
        "{}",
        incidents.text
    );
    let stats = hub
        .app
        .store
        .outbox_stats(chrono::Utc::now())
        .await
        .unwrap();
    assert!(
        stats.values().all(|s| s.pending == 0 && s.dead == 0),
        "{stats:?}"
    );

    // The same bodies without the duplicate are taken (the refusal was the duplicate's).
    let r = hub
        .post_json(
            "/api/v1/azdev/alert",
            fixture("azmon-common-metric-static-fired.json"),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
}

/// Send `head` (a request's start line and headers) and `body` on a fresh connection; the raw
/// answer, read until the server closes the connection.
async fn raw(hub: &TestHub, head: &str, body: &str) -> String {
    let addr = hub.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{head}\r\n{body}").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    // The server closes after a malformed request; read_to_end waits for that (no sleeping).
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_content_length_is_refused_by_hyper_before_any_route() {
    let hub = TestHub::embedded().await;
    let body = String::from_utf8(fixture("azmon-common-metric-static-fired.json")).unwrap();
    let auth = format!("authorization: Bearer {}\r\n", hub.key);
    let head = |cl: &str| {
        format!(
            "POST /api/v1/azdev/alert HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             {auth}{cl}connection: close\r\n"
        )
    };
    for cl in [
        "content-length: abc\r\n".to_string(),
        format!("content-length: {}\r\ncontent-length: 3\r\n", body.len()),
        format!("content-length: {}, 3\r\n", body.len()),
        "content-length: -1\r\n".to_string(),
    ] {
        let answer = raw(&hub, &head(&cl), &body).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{cl:?}: {answer}"
        );
        // hyper answers itself: no body, so no JSON error can be given here.
        let (_, rest) = answer.split_once("\r\n\r\n").unwrap();
        assert_eq!(rest, "", "{cl:?}: {answer}");
    }
    // Two equal Content-Length headers are one length (RFC 9110 §8.6): taken.
    let cl = format!("content-length: {0}\r\ncontent-length: {0}\r\n", body.len());
    let answer = raw(&hub, &head(&cl), &body).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(hub.app.store.count_events().await.unwrap(), 1);
}
