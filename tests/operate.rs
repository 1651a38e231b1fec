//! Operating the hub: `GET /api/metrics` counts what an operator would graph, `GET /api/readyz`
//! reports storage and sinks and answers fast even when storage hangs, and the access log is one
//! JSON line per request with no secret in it.

mod support;

use icahub::config::{Config, Secret, StorageConfig};
use icahub::sinks::Sinks;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use support::hub::{free_port, TestHub};
use support::receiver::{Receiver, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALERT: &str = "/api/v1/azdev/alert";
const PD_KEY: &str = "R0123456789abcdefghijklmnopqrstu";

fn alert(rule: &str, fired: bool) -> String {
    let mut v = support::fixture_json("azmon-common-metric-static-fired.json");
    let e = &mut v["data"]["essentials"];
    e["alertRule"] = json!(rule);
    e["severity"] = json!("Sev1");
    e["monitorCondition"] = json!(if fired { "Fired" } else { "Resolved" });
    e["alertId"] = json!(format!("/alerts/{rule}-{fired}"));
    v.to_string()
}

/// `name{labels}` → value, for every sample line of a text exposition. Panics on a line that is
/// not a comment or `series value`.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {line:?}"));
        out.insert(series.to_string(), v);
    }
    out
}

async fn metrics(hub: &TestHub) -> BTreeMap<String, f64> {
    let r = hub
        .client
        .get(hub.url("/api/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    parse_metrics(&r.text().await.unwrap())
}

fn get(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no series {series} in {:#?}", m.keys().collect::<Vec<_>>()))
}

#[tokio::test]
async fn metrics_count_requests_events_incidents_deliveries_outbox_and_approvals() {
    let dir = tempfile::tempdir().unwrap();
    let mm = Receiver::mattermost().await;
    let pd = Receiver::pagerduty().await;
    pd.down(Reply::new(503, "maintenance"));
    let env: HashMap<String, String> = [
        ("ICAHUB_STORAGE", "embedded".to_string()),
        ("ICAHUB_DATA_DIR", dir.path().display().to_string()),
        ("ICAHUB_MATTERMOST_WEBHOOK_URL", mm.url("/hooks/abc123")),
        ("ICAHUB_PAGERDUTY_ROUTING_KEY", PD_KEY.to_string()),
        ("ICAHUB_PAGERDUTY_EVENTS_URL", pd.url("/v2/enqueue")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let config = Config::from_lookup(|k| env.get(k).cloned(), Some(0)).unwrap();
    let sinks = Sinks::from_lookup(&|k| env.get(k).cloned()).unwrap();
    let hub = TestHub::start_with(config, sinks, Arc::new(icahub::clock::SystemClock)).await;

    assert_eq!(hub.post_json(ALERT, alert("cpu", true)).await.status, 202);
    assert_eq!(hub.post_json(ALERT, alert("cpu", true)).await.status, 202); // duplicate
    assert_eq!(hub.post_json(ALERT, alert("cpu", false)).await.status, 202);
    hub.idle().await;
    let posts = |mm: &Receiver| mm.requests().iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts(&mm), 2, "two Mattermost messages");
    assert!(!pd.requests().is_empty(), "a PagerDuty attempt");
    assert_eq!(
        hub.get("/api/v1/azdev/incident/INC-0000000000000000-9")
            .await
            .status,
        404
    );

    // An approval request (a state change the approvals counter sees).
    let start = json!({"pipeline_name": "payments-deploy", "run_id": "run-m1", "branch": "main",
                       "commit": "9f2c1e7", "triggered_by": "carol"});
    assert_eq!(
        hub.post_json("/api/v1/azdev/run/start", start.to_string())
            .await
            .status,
        201
    );
    let req = json!({"run_id": "run-m1", "deployment_target": "staging", "estimated_cost": 10.0,
                     "checklist": ["tests green"]});
    let r = hub
        .post_json("/api/v1/azdev/approval", req.to_string())
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    // The approval request is posted to Mattermost too.
    hub.idle().await;
    assert_eq!(posts(&mm), 3, "three Mattermost messages");

    let m = metrics(&hub).await;
    let alert_202 = r#"{method="POST",route="/api/v1/azdev/alert",status="202"}"#;
    assert_eq!(
        get(&m, &format!("icahub_http_requests_total{alert_202}")),
        3.0
    );
    assert_eq!(
        get(
            &m,
            r#"icahub_http_request_duration_seconds_count{route="/api/v1/azdev/alert",status="202"}"#
        ),
        3.0
    );
    // The incident id is a parameter: the series is the template, never the raw path.
    assert_eq!(
        get(
            &m,
            r#"icahub_http_requests_total{method="GET",route="/api/v1/azdev/incident/{id}",status="404"}"#
        ),
        1.0
    );
    assert!(m.keys().all(|k| !k.contains("INC-0000000000000000-9")));
    assert_eq!(
        get(
            &m,
            r#"icahub_events_ingested_total{source="azure_monitor"}"#
        ),
        2.0,
        "the duplicate is not an event"
    );
    assert_eq!(
        get(&m, r#"icahub_events_ingested_total{source="run_ledger"}"#),
        1.0
    );
    assert_eq!(
        get(
            &m,
            r#"icahub_incidents_opened_total{source="azure_monitor"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            r#"icahub_incidents_resolved_total{source="azure_monitor"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            r#"icahub_deliveries_total{outcome="delivered",sink="mattermost"}"#
        ),
        3.0
    );
    assert!(get(&m, r#"icahub_delivery_failures_total{sink="pagerduty"}"#) >= 1.0);
    // PagerDuty is down: its trigger (and the resolve behind it) wait in the outbox.
    assert_eq!(get(&m, r#"icahub_outbox_depth{sink="pagerduty"}"#), 2.0);
    assert!(get(&m, r#"icahub_outbox_oldest_age_seconds{sink="pagerduty"}"#) >= 0.0);
    assert_eq!(get(&m, r#"icahub_outbox_depth{sink="mattermost"}"#), 0.0);
    assert_eq!(
        get(&m, r#"icahub_outbox_dead_letters{sink="pagerduty"}"#),
        0.0
    );
    assert_eq!(get(&m, r#"icahub_approvals_total{status="pending"}"#), 1.0);
    assert_eq!(get(&m, "icahub_outbox_snapshot_age_seconds"), 0.0);

    // readyz: storage fine, PagerDuty's last attempt failed → degraded, still 200.
    let r = hub.get("/api/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "degraded");
    assert_eq!(r.json["storage"]["ok"], true);
    assert_eq!(r.json["storage"]["backend"], "embedded");
    assert_eq!(
        r.json["sinks"]["mattermost"]["last"]["outcome"],
        "delivered"
    );
    assert_eq!(r.json["sinks"]["pagerduty"]["last"]["outcome"], "retry");
    assert!(r.json["sinks"]["pagerduty"]["last"]["error"]
        .as_str()
        .unwrap()
        .contains("503"));
    assert_eq!(r.json["failing_sinks"], json!(["pagerduty"]));
    assert!(
        r.json["sinks"].get("control_plane").is_none(),
        "not configured"
    );
}

/// A TCP proxy that can turn into a black hole: connections stay open, nothing comes back.
struct Proxy {
    port: u16,
    /// `true` while the proxy is a black hole.
    hole: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hole = Arc::new(tokio::sync::watch::channel(false).0);
        let h = hole.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let h = h.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let h2 = h.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16384];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            let open = !*h2.borrow();
                            if open && sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                    let mut buf = vec![0u8; 16384];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let open = !*h.borrow();
                        if open && cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    // Keep the client's side open while the hole lasts.
                    let _ = h.subscribe().wait_for(|hole| !*hole).await;
                });
            }
        });
        Proxy { port, hole }
    }
}

#[tokio::test]
async fn readyz_and_metrics_answer_fast_when_storage_hangs() {
    let azurite = support::azurite::shared();
    let proxy = Proxy::start(azurite.port).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::embedded(dir.path());
    c.storage = StorageConfig::Tables {
        connection_string: Secret::new(format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={};TableEndpoint=http://127.0.0.1:{}/devstoreaccount1;",
            support::azurite::ACCOUNT_KEY,
            proxy.port
        )),
        table_prefix: support::azurite::unique_prefix("ready"),
    };
    let hub = TestHub::start(c).await;
    let r = hub.get("/api/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "ready");
    assert_eq!(r.json["storage"]["backend"], "azure_tables");

    // The hole never answers: an answer at all means the hub's own probe timeout cut the read
    // off (the guard only keeps a broken hub from hanging the suite; it does not time anything).
    proxy.hole.send_replace(true);
    let r = answered("readyz", hub.get("/api/readyz")).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json["status"], "unavailable");
    assert_eq!(r.json["storage"]["ok"], false);

    let r = answered("metrics", async {
        hub.client
            .get(hub.url("/api/metrics"))
            .send()
            .await
            .unwrap()
    })
    .await;
    assert_eq!(r.status(), 200);
    let m = parse_metrics(&r.text().await.unwrap());
    assert_eq!(get(&m, "icahub_outbox_read_errors_total"), 1.0);
    assert_eq!(
        get(&m, "icahub_outbox_snapshot_age_seconds"),
        -1.0,
        "never read yet"
    );

    // Liveness never touches storage: it answers while storage hangs.
    assert_eq!(
        answered("healthz", hub.get("/api/healthz")).await.status,
        200
    );

    // Storage back: the gauges get a reading again (the slow read was not cut off for good).
    // Each scrape made once the read stuck in the hole has ended starts a fresh read.
    proxy.hole.send_replace(false);
    support::wait::guarded(
        "the outbox gauges to get a reading after storage came back",
        async {
            loop {
                hub.app.metrics.outbox_read_idle().await;
                let r = hub
                    .client
                    .get(hub.url("/api/metrics"))
                    .send()
                    .await
                    .unwrap();
                let m = parse_metrics(&r.text().await.unwrap());
                if get(&m, "icahub_outbox_snapshot_age_seconds") >= 0.0 {
                    break;
                }
            }
        },
    )
    .await;
    assert_eq!(hub.get("/api/readyz").await.status, 200);
}

/// Issue an API key with every role in the embedded store at `dir` via the CLI.
fn issue_key(dir: &std::path::Path) -> String {
    let run = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_icahub"))
            .args(args)
            .env("ICAHUB_DATA_DIR", dir)
            .env("ICAHUB_STORAGE", "embedded")
            .env("ICAHUB_LOG", "warn")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let key = run(&["keys", "issue", "--identity", "ops"])
        .trim()
        .to_string();
    run(&["roles", "grant", "ops", "admin"]);
    key
}

#[tokio::test]
async fn the_access_log_is_one_json_line_per_request_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let key = issue_key(dir.path());
    let mm = Receiver::mattermost().await;
    let hook_secret = "SecretHookKey0987654321";
    let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let action_secret = "ActionSecretActionSecretActionSecret42";
    let log = dir.path().join("hub.log");
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_icahub"))
        .args(["serve", "--port", &port.to_string()])
        .env_remove("FUNCTIONS_CUSTOMHANDLER_PORT")
        .env_remove("AzureWebJobsStorage")
        .env_remove("ICAHUB_TABLES_CONNECTION_STRING")
        .env("ICAHUB_DATA_DIR", dir.path())
        .env("ICAHUB_STORAGE", "embedded")
        .env("ICAHUB_LOG", "debug")
        .env("ICAHUB_LOG_FORMAT", "json")
        .env(
            "ICAHUB_MATTERMOST_WEBHOOK_URL",
            mm.url(&format!("/hooks/{hook_secret}")),
        )
        .env("ICAHUB_PAGERDUTY_ROUTING_KEY", PD_KEY)
        .env(
            "ICAHUB_PAGERDUTY_EVENTS_URL",
            "http://127.0.0.1:9/v2/enqueue",
        )
        .env("ICAHUB_WEBHOOK_SECRETS", format!("ci={whsec}"))
        .env("ICAHUB_PUBLIC_URL", "https://hub.example.com")
        .env("ICAHUB_MATTERMOST_ACTION_SECRETS", action_secret)
        .env("ICAHUB_CONTROL_PLANE_URL", "http://127.0.0.1:9")
        .env("ICAHUB_CONTROL_PLANE_TOKEN", "cp-token-do-not-log-123")
        .env(
            "ICAHUB_CONTROL_PLANE_SIGNING_SECRETS",
            "whsec_Q1BTaWduaW5nU2VjcmV0MTIzNDU2Nzg5MGFiY2RlZg==",
        )
        .env("ICAHUB_MATTERMOST_URL", mm.base.clone())
        .env("ICAHUB_MATTERMOST_TOKEN", "mm-token-do-not-log-456")
        .env("ICAHUB_AZDO_HOOK_USERNAME", "azdo")
        .env("ICAHUB_AZDO_HOOK_PASSWORD", "azdo-password-do-not-log-789")
        .env("ICAHUB_AZDO_HOOK_SECRET", "azdo-secret-do-not-log-012")
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    support::wait::answers(&format!("{base}/")).await;

    let r = client
        .post(format!("{base}{ALERT}?code=FunctionKeySecret555"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .header("x-request-id", "req-log-1")
        .header("x-azure-functions-invocationid", "inv-7f3c")
        .body(alert("disk", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = client
        .post(format!("{base}{ALERT}"))
        .bearer_auth("icak_WrongKeyThatMustNotBeLogged")
        .header("content-type", "application/json")
        .body(alert("disk", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(format!("{base}/api/v1/azdev/run/run-404"))
        .basic_auth("icahub", Some(&key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    mm.wait_for(1).await;
    // The hub is another process: read its log until the last request's access line and both
    // failed deliveries (PagerDuty and the control plane are unreachable) are in it.
    support::wait::until(
        "the access line and the failed deliveries in the log",
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let done = text.contains(&generated) && text.matches("delivery failed").count() >= 2;
            async move { done }
        },
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
        .collect();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "icahub::access")
        .collect();
    let first = access
        .iter()
        .find(|l| l["request_id"] == "req-log-1")
        .unwrap_or_else(|| panic!("no access line for req-log-1: {text}"));
    assert_eq!(first["route"], ALERT);
    assert_eq!(first["method"], "POST");
    assert_eq!(first["status"], 202);
    assert_eq!(first["invocation_id"], "inv-7f3c");
    assert!(first["latency_ms"].as_f64().is_some_and(|l| l >= 0.0));
    assert_eq!(
        access
            .iter()
            .filter(|l| l["request_id"] == "req-log-1")
            .count(),
        1,
        "one line per request"
    );
    assert!(access
        .iter()
        .any(|l| l["status"] == 401 && l["route"] == ALERT));
    let third = access
        .iter()
        .find(|l| l["status"] == 404)
        .expect("the 404 is logged");
    assert_eq!(third["route"], "/api/v1/azdev/run/{run_id}");
    assert_eq!(
        third["request_id"],
        generated.as_str(),
        "the id the hub answered with"
    );

    for secret in [
        key.as_str(),
        &key[5..],
        "FunctionKeySecret555",
        "icak_WrongKeyThatMustNotBeLogged",
        hook_secret,
        whsec,
        &whsec[6..],
        action_secret,
        PD_KEY,
        "cp-token-do-not-log-123",
        "Q1BTaWduaW5nU2VjcmV0MTIzNDU2Nzg5MGFiY2RlZg==",
        "mm-token-do-not-log-456",
        "azdo-password-do-not-log-789",
        "azdo-secret-do-not-log-012",
    ] {
        assert!(
            !text.contains(secret),
            "the log shows a secret ({secret}):\n{text}"
        );
    }
}

/// The ids of the spans a JSON log line was emitted in (`spans`, outermost first).
fn span_request_ids(line: &Value) -> Vec<&str> {
    line["spans"]
        .as_array()
        .map(|spans| {
            spans
                .iter()
                .filter_map(|s| s["request_id"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// One span per request: a line logged deep inside a request (here the refusals service's
/// "refused", which is given no request id) carries the id the hub answered with, the caller's
/// or the one it made up, and the host's invocation id.
#[tokio::test]
async fn every_log_line_of_a_request_carries_its_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hub.log");
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_icahub"))
        .args(["serve", "--port", &port.to_string()])
        .env_remove("FUNCTIONS_CUSTOMHANDLER_PORT")
        .env_remove("AzureWebJobsStorage")
        .env_remove("ICAHUB_TABLES_CONNECTION_STRING")
        .env_remove("ICAHUB_AUTH")
        .env("ICAHUB_DATA_DIR", dir.path())
        .env("ICAHUB_STORAGE", "embedded")
        .env("ICAHUB_LOG", "info")
        .env("ICAHUB_LOG_FORMAT", "json")
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    support::wait::answers(&format!("{base}/")).await;

    let refused = |id: Option<&'static str>| {
        let mut req = client
            .post(format!("{base}{ALERT}"))
            .bearer_auth("icak_NotAKeyOfThisHub")
            .header("content-type", "application/json")
            .header("x-azure-functions-invocationid", "inv-span-1")
            .body(alert("disk", true));
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401);
            let header = r.headers()["x-request-id"].to_str().unwrap().to_string();
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["request_id"], header.as_str(), "one id per answer");
            header
        }
    };
    let given = refused(Some("req-span-1")).await;
    assert_eq!(given, "req-span-1", "the caller's id is kept");
    let generated = refused(None).await;
    // The lines are written before the answer is sent.
    let _ = child.kill();
    let _ = child.wait();

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
        .collect();
    for id in [given.as_str(), generated.as_str()] {
        let of_request: Vec<&Value> = lines
            .iter()
            .filter(|l| span_request_ids(l).contains(&id))
            .collect();
        let refusal = of_request
            .iter()
            .find(|l| l["target"] == "icahub::auth" && l["message"] == "refused")
            .unwrap_or_else(|| panic!("no refusal logged in the span of {id}: {text}"));
        let span = &refusal["spans"][0];
        assert_eq!(span["name"], "request", "{refusal}");
        assert_eq!(span["route"], ALERT, "{refusal}");
        assert_eq!(span["method"], "POST", "{refusal}");
        assert_eq!(span["invocation_id"], "inv-span-1", "{refusal}");
        let access = of_request
            .iter()
            .find(|l| l["target"] == "icahub::access")
            .unwrap_or_else(|| panic!("no access line in the span of {id}: {text}"));
        assert_eq!(access["request_id"], id, "{access}");
    }
}

/// `request`'s answer, failing the test if none comes within the hang guard: with storage in a
/// black hole, an answer at all shows the route did not wait on it.
async fn answered<T>(what: &str, request: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(support::wait::HANG_GUARD, request)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer while storage hangs"))
}
