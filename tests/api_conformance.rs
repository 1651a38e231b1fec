//! Regressions found by the Schemathesis run (scripts/schemathesis.sh) against
//! api/icahub-openapi.yaml: each test is a request the generated suite made and the hub answered
//! wrongly.

mod support;

use serde_json::json;
use support::hub::TestHub;

/// Path parameters are percent-decoded: a run started as `a b/é` is found at
/// `run/a%20b%2F%C3%A9` (it used to look for the run `a%20b%2F%C3%A9` and answer 404), and so are
/// approvals and incidents.
#[tokio::test]
async fn path_parameters_are_percent_decoded() {
    let hub = TestHub::embedded().await;
    let r = hub
        .post_json(
            "/api/v1/azdev/run/start",
            json!({"pipeline_name": "web deploy", "run_id": "a b/é", "branch": "main",
                   "commit": "9f2c1e7", "triggered_by": "alice@contoso.com"})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = hub.get("/api/v1/azdev/run/a%20b%2F%C3%A9").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["run_id"], "a b/é");

    let r = hub
        .post_json(
            "/api/v1/azdev/approval",
            json!({"run_id": "a b/é", "deployment_target": "staging", "estimated_cost": 10})
                .to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["approval_id"].as_str().unwrap().to_string();
    let encoded: String = id.bytes().map(|b| format!("%{b:02X}")).collect();
    let r = hub.get(&format!("/api/v1/azdev/approval/{encoded}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["approval_id"], id.as_str());
    // The test key requested it; another admin asks for the override through the encoded path.
    let admin = hub
        .person("root", &[icahub::domain::identity::Role::Admin])
        .await;
    let r = hub
        .post_as(
            &admin,
            &format!("/api/v1/azdev/approval/{encoded}/override"),
            &json!({"reason": "hotfix for INC-1"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["approval_id"], id.as_str());
    assert_eq!(r.json["status"], "override_pending");

    let r = hub
        .post_json(
            "/api/v1/azdev/alert",
            support::fixture("azmon-common-metric-static-fired.json"),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let inc = r.json["events"][0]["incident_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = hub
        .get(&format!(
            "/api/v1/azdev/incident/{}",
            inc.replace('-', "%2D")
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["id"], inc.as_str());

    // Bytes that are not UTF-8 name nothing: a 404 from the route, not "no route".
    let r = hub.get("/api/v1/azdev/run/%FF%FE").await;
    r.expect_error(404);
    assert_eq!(r.json["error"]["code"], "not_found");
}

/// The timer route's body: over the limit is a 413 that names the limit (it said "the limit of
/// 0 bytes"), and a chunked body (no Content-Length) is read (it was a 400 "Content-Length is
/// required").
#[tokio::test]
async fn dispatch_body_limit_and_chunked_envelopes() {
    let hub = TestHub::embedded().await;
    let limit = icahub::http::timer::MAX_ENVELOPE_BYTES;
    let r = hub.post_json("/dispatch", vec![b' '; limit + 1]).await;
    let err = r.expect_error(413);
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains(&limit.to_string()),
        "{}",
        r.text
    );

    // reqwest sends a body of known size with Content-Length: write the chunked request by hand.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = hub.base.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = ["{\"Data\": {}, ", "\"Metadata\": {}}"];
    let mut req = format!(
        "POST /dispatch HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    for c in body {
        req.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
    }
    req.push_str("0\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"Logs\""), "{answer}");
}
