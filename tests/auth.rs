//! API keys: required on the API, accepted as Bearer or Basic password, refused when unknown or
//! revoked, managed with `icahub keys` and `icahub roles`, every change recorded.

mod support;

use base64::Engine;
use support::fixture;
use support::hub::TestHub;

const ALERT: &str = "/api/v1/azdev/alert";

#[tokio::test]
async fn requests_without_a_valid_key_are_refused_with_401() {
    let hub = TestHub::embedded().await;
    let anon = reqwest::Client::new();
    let post = |auth: Option<String>| {
        let mut r = anon
            .post(hub.url(ALERT))
            .header("content-type", "application/json")
            .body(fixture("azmon-activitylog.json"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        async move { support::hub::Reply::read(r.send().await.unwrap()).await }
    };
    let r = post(None).await;
    assert_eq!(r.expect_error(401)["code"], "unauthorized");
    assert!(r.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    post(Some(
        "Bearer icak_0000000000000000000000000000000000000000".into(),
    ))
    .await
    .expect_error(401);
    post(Some("Bearer not-even-a-key".into()))
        .await
        .expect_error(401);
    post(Some("Digest whatever".into())).await.expect_error(401);
    // Nothing was stored by the refused requests.
    assert_eq!(hub.app.store.count_events().await.unwrap(), 0);
    // The right key works as Bearer, and as the Basic password (Azure Monitor puts credentials in
    // the webhook URL).
    assert_eq!(post(Some(format!("Bearer {}", hub.key))).await.status, 202);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("azmon:{}", hub.key));
    let r = post(Some(format!("Basic {basic}"))).await;
    assert_eq!(r.status, 202, "{}", r.text);
    // Reads need a key too; health and readiness do not.
    let r = support::hub::Reply::read(
        anon.get(hub.url("/api/v1/azdev/incidents"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.expect_error(401);
    assert_eq!(
        anon.get(hub.url("/api/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(anon.get(hub.url("/")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn keys_and_roles_from_the_cli_with_an_audit_record() {
    let dir = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_icahub"))
            .args(args)
            .env("ICAHUB_STORAGE", "embedded")
            .env("ICAHUB_DATA_DIR", dir.path())
            .env_remove("FUNCTIONS_CUSTOMHANDLER_PORT")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, _) = cli(&[
        "keys",
        "issue",
        "--identity",
        "pipeline-prod",
        "--json",
        "--by",
        "alice",
    ]);
    assert!(ok);
    let issued: serde_json::Value = serde_json::from_str(&out).unwrap();
    let key = issued["key"].as_str().unwrap().to_string();
    let id = issued["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("icak_"));
    let (ok, out, _) = cli(&["keys", "list"]);
    assert!(ok);
    assert!(out.contains(&id) && out.contains("pipeline-prod"));
    assert!(!out.contains(&key), "the key itself is never shown again");

    let (ok, out, _) = cli(&["roles", "grant", "pipeline-prod", "devops"]);
    assert!(ok, "{out}");
    let (ok, out, _) = cli(&["roles", "grant", "pipeline-prod", "devops"]);
    assert!(ok && out.contains("already has"));
    let (ok, _, err) = cli(&["roles", "grant", "pipeline-prod", "boss"]);
    assert!(!ok && err.contains("not a role"), "{err}");
    let (_, out, _) = cli(&["roles", "list", "--json"]);
    let ids: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ids[0]["roles"], serde_json::json!(["devops"]));
    // Alerts need alert_sender: a pipeline's devops key alone cannot page on-call.
    let (ok, out, _) = cli(&["roles", "grant", "pipeline-prod", "alert_sender"]);
    assert!(ok, "{out}");

    // The key works against a hub on the same store, until it is revoked.
    let config = icahub::config::Config::embedded(dir.path());
    let hub = TestHub::start(config).await;
    let send = |k: String| {
        let c = reqwest::Client::new();
        let url = hub.url(ALERT);
        async move {
            c.post(url)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {k}"))
                .body(fixture("azmon-common-log-v2.json"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let (_, out, _) = cli(&["keys", "issue", "--identity", "temp", "--json"]);
    let temp: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (ok, _, err) = cli(&["keys", "revoke", temp["id"].as_str().unwrap()]);
    assert!(ok);
    assert!(err.contains("within 10 seconds"), "{err}");
    assert_eq!(send(temp["key"].as_str().unwrap().to_string()).await, 401);
    assert_eq!(send(key).await, 202);

    // Every change left an audit entry naming who made it.
    let audit = hub
        .app
        .store
        .doc_list(icahub::identity::KEYS, "audit|")
        .await
        .unwrap();
    assert!(audit
        .iter()
        .any(|d| d.value["action"] == "key.issued" && d.value["by"] == "alice"));
    assert!(audit.iter().any(|d| d.value["action"] == "key.revoked"));
    let audit = hub
        .app
        .store
        .doc_list(icahub::identity::IDENTITIES, "audit|")
        .await
        .unwrap();
    assert!(audit
        .iter()
        .any(|d| d.value["action"] == "role.granted" && d.value["role"] == "devops"));
}
