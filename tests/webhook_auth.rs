//! Authentication on every ingress, through the real server: Standard Webhooks signatures (the
//! spec's test vector at its own time, the shared fixtures signed by a configured sender, secret
//! rotation; bad signatures, wrong secrets, stale or future timestamps, replays, missing headers
//! and garbage are each a 401 JSON error audited in the `security` partition), the accepted
//! methods of each route group (`ICAHUB_AUTH_METHODS`), and `ICAHUB_AUTH=off` (a warning at
//! start; refused under the Functions host).

mod support;

use icahub::config::Config;
use icahub::sinks::signature::{sign, SigningKey};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::fixture;
use support::hub::{free_port, Reply, TestHub};

const ALERT: &str = "/api/v1/azdev/alert";
const ALERTMANAGER: &str = "/api/v1/alertmanager";
const RUN_START: &str = "/api/v1/azdev/run/start";

// The Standard Webhooks spec's test vector (standard-webhooks `libraries/rust`, `test_sign`).
const SPEC_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const SPEC_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
const SPEC_TS: i64 = 1649367553;
const SPEC_BODY: &str = r#"{"email":"test@example.com","username":"test_user"}"#;
const SPEC_SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

/// `monitoring` is rotating from OLD to NEW; `ci` may write the run ledger.
const OLD: &str = "whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
const NEW: &str = "whsec_ZWZnaGlqa2xtbm9wcXJzdHV2d3h5ent8fX5/gIGCg4Q=";
const CI: &str = "whsec_ycrLzM3Oz9DR0tPU1dbX2Nna29zd3t/g4eLj5OXm5+g=";
/// Configured nowhere.
const STRANGER: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn config(dir: &std::path::Path, vars: &[(&str, &str)]) -> Config {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut c = Config::from_lookup(
        |k| {
            if k == "ICAHUB_STORAGE" {
                Some("embedded".into())
            } else if k == "ICAHUB_DATA_DIR" {
                Some(dir.display().to_string())
            } else {
                get(k)
            }
        },
        Some(0),
    )
    .expect("config");
    c.dispatch_interval = None;
    c
}

fn senders() -> String {
    format!("monitoring={OLD},monitoring={NEW},ci={CI}")
}

async fn hub_with(vars: &[(&str, &str)]) -> TestHub {
    let dir = tempfile::tempdir().unwrap();
    let mut h = TestHub::start(config(dir.path(), vars)).await;
    h.keep(dir);
    h
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn key(secret: &str) -> SigningKey {
    SigningKey::parse(secret).unwrap()
}

/// A request as a Standard Webhooks sender makes it; `headers` replace or (with "") drop the
/// signed ones.
struct Signed {
    id: String,
    ts: String,
    signature: String,
    body: Vec<u8>,
}

impl Signed {
    fn new(secrets: &[&str], id: &str, ts: i64, body: &[u8]) -> Signed {
        let keys: Vec<SigningKey> = secrets.iter().map(|s| key(s)).collect();
        Signed {
            id: id.into(),
            ts: ts.to_string(),
            signature: sign(&keys, id, ts, body),
            body: body.to_vec(),
        }
    }

    async fn post(&self, hub: &TestHub, path: &str) -> Reply {
        self.post_with(hub, path, &[]).await
    }

    async fn post_with(&self, hub: &TestHub, path: &str, extra: &[(&str, &str)]) -> Reply {
        let mut headers = vec![
            ("webhook-id", self.id.as_str()),
            ("webhook-timestamp", self.ts.as_str()),
            ("webhook-signature", self.signature.as_str()),
            ("content-type", "application/json"),
        ];
        for (k, v) in extra {
            headers.retain(|(n, _)| n != k);
            headers.push((k, v));
        }
        // No API key: `reqwest::Client::new()`, not the hub's client.
        let mut r = reqwest::Client::new()
            .post(hub.url(path))
            .body(self.body.clone());
        for (k, v) in headers {
            if !v.is_empty() {
                r = r.header(k, v);
            }
        }
        Reply::read(r.send().await.unwrap()).await
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The kinds of the security audit entries, once at least `n` were written (in the background).
async fn audited(hub: &TestHub, n: usize) -> Vec<String> {
    let kinds = support::refused_kinds(&hub.app).await;
    assert!(kinds.len() >= n, "{kinds:?}");
    kinds
}

fn message(r: &Reply, status: u16) -> String {
    r.expect_error(status)["message"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_alerts_are_accepted_and_every_bad_signature_is_refused_and_audited() {
    let hub = hub_with(&[("ICAHUB_WEBHOOK_SECRETS", &senders())]).await;
    let body = fixture("azmon-common-metric-static-fired.json");

    // Signed with the current secret: accepted as the sender, and stored.
    let ok = Signed::new(&[NEW], &unique("msg"), now(), &body)
        .post(&hub, ALERT)
        .await;
    assert_eq!(ok.status, 202, "{}", ok.text);
    assert_eq!(ok.json["accepted"], 1);
    // Rotation: the old secret alone, and both signatures in one header, verify too.
    for secrets in [&[OLD][..], &[OLD, NEW][..], &[STRANGER, NEW][..]] {
        let r = Signed::new(secrets, &unique("msg"), now(), &body)
            .post(&hub, ALERT)
            .await;
        assert_eq!(r.status, 202, "{secrets:?}: {}", r.text);
    }
    // Alertmanager can be fronted by a signing relay too.
    let am = Signed::new(
        &[NEW],
        &unique("msg"),
        now(),
        &fixture("alertmanager-webhook-v4.json"),
    )
    .post(&hub, ALERTMANAGER)
    .await;
    assert_eq!(am.status, 202, "{}", am.text);
    let stored = hub.app.store.count_events().await.unwrap();

    // Every refusal is a 401 JSON error.
    let fresh = || Signed::new(&[NEW], &unique("msg"), now(), &body);
    // The body changed after signing.
    let mut tampered = fresh();
    tampered.body = fixture("azmon-common-metric-resolved.json");
    let m = message(&tampered.post(&hub, ALERT).await, 401);
    assert!(m.contains("no v1 signature matches"), "{m}");
    // A secret the hub does not know.
    let m = message(
        &Signed::new(&[STRANGER], &unique("msg"), now(), &body)
            .post(&hub, ALERT)
            .await,
        401,
    );
    assert!(m.contains("no v1 signature matches"), "{m}");
    // Six minutes old, six minutes ahead.
    let m = message(
        &Signed::new(&[NEW], &unique("msg"), now() - 360, &body)
            .post(&hub, ALERT)
            .await,
        401,
    );
    assert!(m.contains("behind the hub's clock"), "{m}");
    let m = message(
        &Signed::new(&[NEW], &unique("msg"), now() + 360, &body)
            .post(&hub, ALERT)
            .await,
        401,
    );
    assert!(m.contains("ahead of the hub's clock"), "{m}");
    // A replay of a request that was accepted.
    let first = fresh();
    assert_eq!(first.post(&hub, ALERT).await.status, 202);
    let m = message(&first.post(&hub, ALERT).await, 401);
    assert!(m.contains("replay") && m.contains(&first.id), "{m}");
    // Even re-signed with a new timestamp, the id was used.
    let again = Signed::new(&[NEW], &first.id, now() + 1, &body);
    let m = message(&again.post(&hub, ALERT).await, 401);
    assert!(m.contains("replay"), "{m}");
    // Missing headers, each named.
    for h in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let m = message(&fresh().post_with(&hub, ALERT, &[(h, "")]).await, 401);
        assert!(m.contains("missing") && m.contains(h), "{h}: {m}");
    }
    // `v1,` with garbage, other versions only, an id with a dot, a timestamp that is no number.
    for (h, v, needle) in [
        ("webhook-signature", "v1,@@@not*base64@@@", "carries no v1 signature"),
        ("webhook-signature", "v1,", "no v1 signature"),
        (
            "webhook-signature",
            "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg==",
            "carries no v1 signature",
        ),
        ("webhook-id", "msg.1", "webhook-id"),
        ("webhook-timestamp", "yesterday", "integer"),
    ] {
        let m = message(&fresh().post_with(&hub, ALERT, &[(h, v)]).await, 401);
        assert!(m.contains(needle), "{h}={v}: {m}");
    }
    // The signature is checked, so a valid API key beside a bad signature does not help.
    let with_key = format!("Bearer {}", hub.key);
    let r = tampered
        .post_with(&hub, ALERT, &[("authorization", &with_key)])
        .await;
    r.expect_error(401);
    assert!(r.headers.contains_key("www-authenticate"));
    // Nothing was stored by any refused request.
    assert_eq!(hub.app.store.count_events().await.unwrap(), stored);

    // API keys still work on the same route.
    let r = hub.post_json(ALERT, body.clone()).await;
    assert_eq!(r.status, 202, "{}", r.text);

    // Every refusal is on the security audit trail.
    let kinds = audited(&hub, 15).await;
    for k in [
        "webhook_signature_mismatch",
        "webhook_timestamp",
        "webhook_replayed",
        "webhook_headers_missing",
        "webhook_signature_malformed",
        "webhook_id_invalid",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} not audited: {kinds:?}");
    }
    assert!(kinds.len() >= 15, "{kinds:?}");
    let details = support::refusal_summaries(&hub.app).await;
    let replayed = details
        .iter()
        .find(|d| d["kind"] == "webhook_replayed")
        .unwrap();
    assert_eq!(replayed["group"], "alerts", "{replayed}");
    let examples = replayed["examples"].to_string();
    assert!(examples.contains(&first.id), "{examples}");
    // No secret reaches the audit trail.
    let all = serde_json::to_string(&details).unwrap();
    for s in [OLD, NEW, CI] {
        assert!(!all.contains(&s[6..]), "a secret in the audit trail");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_roles_decide_what_a_signed_request_may_do() {
    let hub = hub_with(&[
        ("ICAHUB_WEBHOOK_SECRETS", &senders()),
        ("ICAHUB_WEBHOOK_ROLES", r#"{"ci": ["devops"]}"#),
    ])
    .await;
    let start = |run: &str| {
        json!({"pipeline_name": "web", "run_id": run, "branch": "main", "commit": "abc",
               "triggered_by": "dev@contoso.com"})
        .to_string()
        .into_bytes()
    };
    // monitoring has the default alert_sender role: signed, but not allowed on the ledger.
    let r = Signed::new(&[NEW], &unique("msg"), now(), &start("w1"))
        .post(&hub, RUN_START)
        .await;
    let m = message(&r, 403);
    assert!(m.contains("webhook:monitoring"), "{m}");
    // ci has devops and is recorded as webhook:ci.
    let r = Signed::new(&[CI], &unique("msg"), now(), &start("w2"))
        .post(&hub, RUN_START)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        hub.get("/api/v1/azdev/run/w2").await.json["started_by"],
        "webhook:ci"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_test_vector_is_accepted_at_its_own_time_and_ids_expire_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(icahub::clock::ManualClock::new(
        chrono::DateTime::from_timestamp(SPEC_TS + 10, 0).unwrap(),
    ));
    let config = config(
        dir.path(),
        &[("ICAHUB_WEBHOOK_SECRETS", &format!("spec={SPEC_SECRET}"))],
    );
    let sinks = icahub::sinks::Sinks::from_lookup(&|_| None).unwrap();
    let mut hub = TestHub::start_with(config, sinks, clock.clone()).await;
    hub.keep(dir);
    let vector = Signed {
        id: SPEC_ID.into(),
        ts: SPEC_TS.to_string(),
        signature: SPEC_SIG.into(),
        body: SPEC_BODY.as_bytes().to_vec(),
    };
    // The exact published headers and body: an unknown schema, stored raw.
    let r = vector.post(&hub, ALERT).await;
    assert_eq!(r.status, 202, "{}", r.text);
    // The same request again is a replay.
    assert!(message(&vector.post(&hub, ALERT).await, 401).contains("replay"));
    // Past the window, the copy fails the time check instead...
    clock.advance(chrono::Duration::seconds(301));
    assert!(message(&vector.post(&hub, ALERT).await, 401).contains("behind"));
    // ...and the id was forgotten: the sender may use it again with a fresh timestamp.
    let later = Signed::new(&[SPEC_SECRET], SPEC_ID, SPEC_TS + 311, SPEC_BODY.as_bytes());
    assert_eq!(later.post(&hub, ALERT).await.status, 202);
    assert_eq!(hub.app.replay.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_request_the_hub_failed_can_be_retried_with_the_same_id() {
    let own = support::azurite::Azurite::start();
    let mut c = config(
        std::path::Path::new("unused"),
        &[("ICAHUB_WEBHOOK_SECRETS", &senders())],
    );
    c.storage = icahub::config::StorageConfig::Tables {
        connection_string: icahub::config::Secret::new(own.connection_string()),
        table_prefix: support::azurite::unique_prefix("whook"),
    };
    c.store_timeout = Duration::from_secs(5);
    let hub = TestHub::start(c).await;
    let body = fixture("azmon-common-log-v2.json");
    let ok = Signed::new(&[NEW], &unique("msg"), now(), &body)
        .post(&hub, ALERT)
        .await;
    assert_eq!(ok.status, 202, "{}", ok.text);
    assert_eq!(hub.app.replay.len(), 1);
    drop(own); // storage goes away
    let id = unique("msg");
    let r = Signed::new(&[NEW], &id, now(), &body)
        .post(&hub, ALERT)
        .await;
    r.expect_error(503);
    assert_eq!(hub.app.replay.len(), 1, "the failed message keeps no id");
    // The sender's retry keeps the id and is no replay (it meets the same outage: 503, not 401).
    let r = Signed::new(&[NEW], &id, now() + 1, &body)
        .post(&hub, ALERT)
        .await;
    r.expect_error(503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_group_accepts_only_its_configured_methods() {
    let hub = hub_with(&[
        ("ICAHUB_WEBHOOK_SECRETS", &senders()),
        ("ICAHUB_WEBHOOK_ROLES", "alert_sender,devops"),
        (
            "ICAHUB_AUTH_METHODS",
            r#"{"alerts": ["webhook_signature"], "ledger": ["api_key"]}"#,
        ),
    ])
    .await;
    let body = fixture("azmon-activitylog.json");

    // Alerts: signatures only. An API key is refused, naming what is accepted.
    let r = hub.post_json(ALERT, body.clone()).await;
    let m = message(&r, 401);
    assert!(
        m.contains("api_key is not accepted on alerts routes")
            && m.contains("accepted: webhook_signature"),
        "{m}"
    );
    assert!(m.contains("ICAHUB_AUTH_METHODS"), "{m}");
    // No credentials at all: told how to sign.
    let anon = reqwest::Client::new();
    let r = Reply::read(
        anon.post(hub.url(ALERT))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(message(&r, 401).contains("Standard Webhooks signature"));
    let r = Signed::new(&[NEW], &unique("msg"), now(), &body)
        .post(&hub, ALERT)
        .await;
    assert_eq!(r.status, 202, "{}", r.text);

    // Ledger: API keys only, even for a signer with the devops role.
    let start = json!({"pipeline_name": "web", "run_id": "g1", "branch": "main",
                       "commit": "abc", "triggered_by": "dev@contoso.com"})
    .to_string();
    let r = Signed::new(&[CI], &unique("msg"), now(), start.as_bytes())
        .post(&hub, RUN_START)
        .await;
    let m = message(&r, 401);
    assert!(
        m.contains("webhook_signature is not accepted on ledger routes")
            && m.contains("accepted: api_key"),
        "{m}"
    );
    assert_eq!(hub.post_json(RUN_START, start.clone()).await.status, 201);
    // Approvals keep the defaults (signatures included, since secrets are configured).
    let approval = json!({"run_id": "g1", "deployment_target": "staging", "checklist": []});
    let r = Signed::new(
        &[CI],
        &unique("msg"),
        now(),
        approval.to_string().as_bytes(),
    )
    .post(&hub, "/api/v1/azdev/approval")
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    // Reads keep theirs: API keys.
    assert_eq!(hub.get("/api/v1/azdev/run/g1").await.status, 200);

    let kinds = audited(&hub, 3).await;
    assert!(
        kinds.iter().filter(|k| *k == "method_not_allowed").count() >= 2,
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k == "no_credentials"), "{kinds:?}");
}

/// `icahub serve` with these variables (nothing inherited that would change the outcome).
fn serve(vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_icahub"));
    cmd.args(["serve", "--port", &free_port().to_string()])
        .env("ICAHUB_LOG", "info")
        .env("ICAHUB_LOG_FORMAT", "text")
        .env_remove("FUNCTIONS_CUSTOMHANDLER_PORT")
        .env_remove("AzureWebJobsStorage")
        .env_remove("ICAHUB_TABLES_CONNECTION_STRING")
        .env_remove("ICAHUB_AUTH")
        .env_remove("ICAHUB_AUTH_METHODS")
        .env_remove("ICAHUB_WEBHOOK_SECRETS")
        .env_remove("ICAHUB_WEBHOOK_ROLES");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

#[test]
fn auth_off_is_announced_at_start_and_refused_under_the_functions_host() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let mut child = serve(&[("ICAHUB_AUTH", "off"), ("ICAHUB_DATA_DIR", &data)])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let warning = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains("ICAHUB_AUTH=off") => break Some(line),
            Ok(line) => seen.push(line),
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let warning = warning.unwrap_or_else(|| panic!("no warning; stderr: {seen:#?}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("local development only"), "{warning}");

    // Under the Functions host it is a start-up error (before storage is touched).
    let out = serve(&[
        ("ICAHUB_AUTH", "off"),
        ("FUNCTIONS_CUSTOMHANDLER_PORT", &free_port().to_string()),
        ("AzureWebJobsStorage", "UseDevelopmentStorage=true"),
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ICAHUB_AUTH=off") && err.contains("Functions host"),
        "{err}"
    );
}

#[test]
fn invalid_authentication_settings_are_start_up_errors_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    for (vars, var) in [
        (
            vec![("ICAHUB_AUTH_METHODS", r#"{"alerts": ["password"]}"#)],
            "ICAHUB_AUTH_METHODS",
        ),
        (
            vec![(
                "ICAHUB_AUTH_METHODS",
                r#"{"alerts": ["webhook_signature"]}"#,
            )],
            "ICAHUB_AUTH_METHODS",
        ),
        (
            vec![("ICAHUB_WEBHOOK_SECRETS", "monitoring=not-a-secret")],
            "ICAHUB_WEBHOOK_SECRETS",
        ),
        (
            vec![
                (
                    "ICAHUB_WEBHOOK_SECRETS",
                    "monitoring=whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
                ),
                ("ICAHUB_WEBHOOK_ROLES", "boss"),
            ],
            "ICAHUB_WEBHOOK_ROLES",
        ),
    ] {
        let mut all = vars.clone();
        all.push(("ICAHUB_DATA_DIR", &data));
        let out = serve(&all).output().unwrap();
        assert!(!out.status.success(), "{vars:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var), "{vars:?}: {err}");
        assert!(
            !err.contains("AQIDBAUGBwgJ"),
            "a secret in the error: {err}"
        );
    }
}
