//! Sink clients against local receivers that check requests the way Mattermost, PagerDuty and
//! the control plane do (tests/support/receiver.rs). Incidents come from real Azure Monitor
//! captures run through the real parser and `incident::plan`. Rendered bodies are compared with
//! snapshots in tests/snapshots/ (`UPDATE_SNAPSHOTS=1` writes them; a missing one fails).

mod support;

use chrono::{DateTime, TimeZone, Utc};
use icahub::domain::action_token::{Action, TokenKeys};
use icahub::domain::approval::{
    self, approval_id, parse_request, Approval, ApprovalType, Budget, Decision, Policy, SignIn,
};
use icahub::domain::azure_monitor;
use icahub::domain::identity::Role;
use icahub::domain::incident::{plan, Plan, StreamState};
use icahub::domain::routing::{OutboxDraft, Routing, Sink};
use icahub::sinks::mattermost::RenderOptions;
use icahub::sinks::mattermost_approval::ButtonConfig;
use icahub::sinks::signature::SigningKey;
use icahub::sinks::{
    classify_at, mattermost, pagerduty, Delivered, SendError, SinkClient, Sinks, MAX_RETRY_AFTER,
};
use icahub::storage::{OutboxRow, OutboxStatus};
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use support::receiver::{Receiver, Reply};

/// A real-looking integration key (the one in PagerDuty's own example event).
const PD_KEY: &str = "e93facc04764012d7bfb002500d5d1a6";
const PD_KEY_2: &str = "0123456789abcdef0123456789abcdef";
const CP_TOKEN: &str = "cp-token-SECRET";
const WHSEC_1: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const WHSEC_2: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

// ---------------------------------------------------------------------------------------------
// Building rows

/// The one place an `OutboxRow` is built: only the fields sinks rely on are meaningful
/// (`seq` 1, `event_id` from the payload, created at [`t0`]; callers adjust the rest).
fn outbox_row(
    stream: &str,
    sink: Sink,
    kind: &str,
    idempotency_key: &str,
    payload: Value,
) -> OutboxRow {
    let event_id = payload["event_id"]
        .as_str()
        .map_or_else(|| format!("EVT-{stream}-test"), str::to_string);
    OutboxRow {
        stream: stream.into(),
        seq: 1,
        sink,
        kind: kind.into(),
        idempotency_key: idempotency_key.into(),
        event_id,
        payload,
        status: OutboxStatus::Pending,
        attempts: 0,
        next_attempt_at: t0(),
        created_at: t0(),
        last_error: None,
        lease_owner: None,
        lease_until: None,
        delivered_at: None,
        version: None,
    }
}

fn row_from_draft(stream: &str, d: &OutboxDraft) -> OutboxRow {
    outbox_row(
        stream,
        d.sink,
        &d.kind,
        &d.idempotency_key,
        d.payload.clone(),
    )
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 4, 15, 18, 17, 30).unwrap()
}

fn all_sinks() -> Routing {
    // The capture is Sev4 (info); page on everything so PagerDuty rows exist.
    let rules = Routing::parse_rules(
        r#"[{"name": "all", "sinks": ["mattermost", "pagerduty", "control_plane"]}]"#,
    )
    .expect("rules parse");
    Routing {
        rules,
        ..icahub::storage::conformance::all_sinks()
    }
}

/// The static-threshold metric capture, fired, then the same alert resolved 17 minutes later
/// (Azure sends the same body with `monitorCondition: Resolved` and `resolvedDateTime`).
fn fired_then_resolved() -> (Plan, Plan) {
    let fired_json = support::fixture_json("azmon-common-metric-static-fired.json");
    let fired = azure_monitor::parse(
        &fired_json,
        &support::fixture("azmon-common-metric-static-fired.json"),
    )
    .expect("fixture parses");
    let stream = icahub::domain::incident::stream_key(&fired).to_string();
    let p1 = plan(
        &all_sinks(),
        &StreamState::default(),
        &fired,
        &format!("EVT-{stream}-20250415181730000000aaaa0001"),
        t0(),
    );
    let mut resolved_json = fired_json.clone();
    let ess = &mut resolved_json["data"]["essentials"];
    ess["monitorCondition"] = json!("Resolved");
    ess["resolvedDateTime"] = json!("2025-04-15T18:34:42.123Z");
    let raw = serde_json::to_vec(&resolved_json).unwrap();
    let resolved = azure_monitor::parse(&resolved_json, &raw).expect("resolved parses");
    let p2 = plan(
        &all_sinks(),
        &p1.next,
        &resolved,
        &format!("EVT-{stream}-20250415183445000000aaaa0002"),
        t0() + chrono::Duration::minutes(17),
    );
    (p1, p2)
}

fn row_of(p: &Plan, sink: Sink, kind: &str) -> OutboxRow {
    let d = p
        .outbox
        .iter()
        .find(|d| d.sink == sink && d.kind == kind)
        .unwrap_or_else(|| panic!("plan has no {sink:?} {kind} draft"));
    let stream = &p.incident.as_ref().expect("incident").stream;
    row_from_draft(stream, d)
}

fn opened(sink: Sink) -> OutboxRow {
    row_of(&fired_then_resolved().0, sink, "incident.opened")
}

fn resolved(sink: Sink) -> OutboxRow {
    row_of(&fired_then_resolved().1, sink, "incident.resolved")
}

fn with_route(mut row: OutboxRow, route: Value) -> OutboxRow {
    row.payload["route"] = route;
    row
}

fn sinks(vars: &[(&str, String)]) -> Result<Sinks, String> {
    let m: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Sinks::from_lookup(&|k| m.get(k).cloned())
}

fn mm_client(rx: &Receiver, extra: &[(&str, String)]) -> Arc<dyn SinkClient> {
    let mut vars = vec![(
        "ICAHUB_MATTERMOST_WEBHOOK_URL",
        rx.url("/hooks/defaulthookkey123"),
    )];
    vars.extend(extra.iter().cloned());
    sinks(&vars)
        .unwrap()
        .get(Sink::Mattermost)
        .expect("mattermost configured")
}

fn pd_client(rx: &Receiver, rate: u32) -> Arc<dyn SinkClient> {
    sinks(&[
        ("ICAHUB_PAGERDUTY_ROUTING_KEY", PD_KEY.into()),
        (
            "ICAHUB_PAGERDUTY_ROUTING_KEYS",
            json!({ "db-team": PD_KEY_2 }).to_string(),
        ),
        ("ICAHUB_PAGERDUTY_EVENTS_URL", rx.url("/v2/enqueue")),
        ("ICAHUB_PAGERDUTY_RATE_PER_MINUTE", rate.to_string()),
    ])
    .unwrap()
    .get(Sink::Pagerduty)
    .expect("pagerduty configured")
}

fn cp_client(base: &str, token: bool, secrets: &str) -> Arc<dyn SinkClient> {
    let mut vars = vec![("ICAHUB_CONTROL_PLANE_URL", base.to_string())];
    if token {
        vars.push(("ICAHUB_CONTROL_PLANE_TOKEN", CP_TOKEN.into()));
    }
    if !secrets.is_empty() {
        vars.push(("ICAHUB_CONTROL_PLANE_SIGNING_SECRETS", secrets.into()));
    }
    sinks(&vars)
        .unwrap()
        .get(Sink::ControlPlane)
        .expect("control plane configured")
}

fn retry_after_of(e: &SendError) -> Option<Duration> {
    match e {
        SendError::Retry { retry_after, .. } => *retry_after,
        other => panic!("expected Retry, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshots

fn assert_snapshot(name: &str, value: &Value) {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.json"));
    if std::env::var("UPDATE_SNAPSHOTS").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_string_pretty(value).unwrap() + "\n").unwrap();
        return;
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "snapshot {} is missing ({e}); run with UPDATE_SNAPSHOTS=1, review it and commit it",
            path.display()
        )
    });
    let stored: Value = serde_json::from_str(&stored).expect("snapshot is JSON");
    assert_eq!(
        &stored,
        value,
        "{name} differs from its snapshot; if the change is intended, run with UPDATE_SNAPSHOTS=1\nnew:\n{}",
        serde_json::to_string_pretty(value).unwrap()
    );
}

#[test]
fn snapshot_mattermost_opened() {
    let body = mattermost::render(&opened(Sink::Mattermost), &Default::default()).unwrap();
    assert_snapshot("mattermost-incident-opened", &body);
}

#[test]
fn snapshot_mattermost_resolved() {
    let body = mattermost::render(&resolved(Sink::Mattermost), &Default::default()).unwrap();
    assert_snapshot("mattermost-incident-resolved", &body);
}

#[test]
fn snapshot_pagerduty_trigger() {
    let body = pagerduty::render(&opened(Sink::Pagerduty), PD_KEY)
        .unwrap()
        .unwrap();
    assert_snapshot("pagerduty-incident-opened", &body);
}

#[test]
fn snapshot_pagerduty_resolve() {
    let body = pagerduty::render(&resolved(Sink::Pagerduty), PD_KEY)
        .unwrap()
        .unwrap();
    assert_snapshot("pagerduty-incident-resolved", &body);
}

// ---------------------------------------------------------------------------------------------
// Classification

#[test]
fn classification_table() {
    let now = t0();
    let none = HeaderMap::new();
    for s in [200, 201, 202, 204] {
        assert!(classify_at(s, &none, "", now).is_ok(), "{s}");
    }
    for s in [408, 429, 500, 502, 503, 504] {
        let e = classify_at(s, &none, "busy", now).unwrap_err();
        assert_eq!(retry_after_of(&e), None, "{s}");
        assert!(e.to_string().contains(&format!("HTTP {s}: busy")), "{e}");
    }
    for s in [100, 301, 302, 400, 401, 403, 404, 410, 413, 422] {
        let e = classify_at(s, &none, "no", now).unwrap_err();
        assert!(matches!(e, SendError::Permanent { .. }), "{s}: {e:?}");
    }
    // Retry-After in seconds, as an HTTP-date, capped at an hour; garbage ignored.
    let mut h = HeaderMap::new();
    h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
    assert_eq!(
        retry_after_of(&classify_at(429, &h, "", now).unwrap_err()),
        Some(Duration::from_secs(2))
    );
    h.insert(
        RETRY_AFTER,
        HeaderValue::from_static("Tue, 15 Apr 2025 18:19:00 GMT"),
    );
    assert_eq!(
        retry_after_of(&classify_at(503, &h, "", now).unwrap_err()),
        Some(Duration::from_secs(90))
    );
    h.insert(
        RETRY_AFTER,
        HeaderValue::from_static("Tue, 15 Apr 2025 18:00:00 GMT"),
    );
    assert_eq!(
        retry_after_of(&classify_at(503, &h, "", now).unwrap_err()),
        Some(Duration::ZERO)
    );
    h.insert(RETRY_AFTER, HeaderValue::from_static("86400"));
    assert_eq!(
        retry_after_of(&classify_at(429, &h, "", now).unwrap_err()),
        Some(MAX_RETRY_AFTER)
    );
    h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
    assert_eq!(
        retry_after_of(&classify_at(429, &h, "", now).unwrap_err()),
        None
    );
    // A permanent error keeps the status and the first 300 characters of the body.
    let long = "x".repeat(1000);
    let SendError::Permanent { error } = classify_at(400, &none, &long, now).unwrap_err() else {
        panic!()
    };
    assert!(error.starts_with("HTTP 400: xxx"));
    assert_eq!(error.chars().filter(|c| *c == 'x').count(), 299, "{error}");
}

#[tokio::test]
async fn mattermost_answers_are_classified() {
    let rx = Receiver::mattermost().await;
    let client = mm_client(&rx, &[]);
    let row = opened(Sink::Mattermost);
    rx.script([
        Reply::new(429, "slow down").header("Retry-After", "2"),
        Reply::new(500, "boom"),
        Reply::new(408, ""),
        Reply::json(400, &json!({"id": "x", "message": "bad"})),
    ]);
    let e = client.send(&row).await.unwrap_err();
    assert_eq!(retry_after_of(&e), Some(Duration::from_secs(2)));
    assert!(e.to_string().contains("mattermost: HTTP 429"), "{e}");
    let e = client.send(&row).await.unwrap_err();
    assert_eq!(retry_after_of(&e), None);
    assert!(matches!(
        client.send(&row).await,
        Err(SendError::Retry { .. })
    ));
    let e = client.send(&row).await.unwrap_err();
    assert!(
        matches!(&e, SendError::Permanent { error } if error.contains("HTTP 400") && error.contains("bad")),
        "{e:?}"
    );
    // Script exhausted: Mattermost's own answer.
    assert_eq!(client.send(&row).await.unwrap(), Delivered { status: 200 });
    assert_eq!(rx.requests().len(), 5);
    rx.assert_no_rejections();
}

#[tokio::test]
async fn connection_refused_is_retried_and_hides_the_hook_key() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let s = sinks(&[(
        "ICAHUB_MATTERMOST_WEBHOOK_URL",
        format!("http://{addr}/hooks/SECRETHOOKKEY"),
    )])
    .unwrap();
    let e = s
        .get(Sink::Mattermost)
        .unwrap()
        .send(&opened(Sink::Mattermost))
        .await
        .unwrap_err();
    assert_eq!(retry_after_of(&e), None);
    assert!(e.to_string().contains("connect"), "{e}");
    assert!(!e.to_string().contains("SECRETHOOKKEY"), "{e}");
    assert!(!format!("{s:?}").contains("SECRETHOOKKEY"));
}

// ---------------------------------------------------------------------------------------------
// Mattermost

#[tokio::test]
async fn mattermost_opened_message_has_the_documented_fields() {
    let rx = Receiver::mattermost().await;
    let client = mm_client(&rx, &[]);
    let row = opened(Sink::Mattermost);
    assert_eq!(client.sink(), Sink::Mattermost);
    assert_eq!(client.send(&row).await.unwrap(), Delivered { status: 200 });
    rx.assert_no_rejections();
    let req = rx.last();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/hooks/defaulthookkey123");
    assert_eq!(req.header("content-type"), Some("application/json"));
    let b = req.json();
    assert_eq!(b["username"], "icahub");
    assert!(b.get("icon_url").is_none() && b.get("channel").is_none());
    let text = b["text"].as_str().unwrap();
    assert!(
        text.starts_with("Incident opened: [INFO] test-metricAlertRule"),
        "{text}"
    );
    let a = &b["attachments"][0];
    assert!(a.get("ts").is_none());
    assert_eq!(a["fallback"], b["text"]);
    assert_eq!(a["title"], "[INFO] test-metricAlertRule");
    assert_eq!(
        a["color"],
        mattermost::color(icahub::domain::alert::Severity::Info)
    );
    let inc_id = row.payload["incident"]["id"].as_str().unwrap();
    assert_eq!(a["footer"], format!("icahub · {inc_id}"));
    let field = |t: &str| {
        a["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["title"] == t)
            .map(|f| f["value"].as_str().unwrap().to_string())
    };
    assert_eq!(field("Severity").as_deref(), Some("Info"));
    assert_eq!(field("Status").as_deref(), Some("Open"));
    assert_eq!(field("Resource").as_deref(), Some("test-storageaccount"));
    assert_eq!(field("Resource group").as_deref(), Some("test-RG"));
    assert_eq!(field("Monitoring service").as_deref(), Some("Platform"));
    assert_eq!(field("Fired").as_deref(), Some("2025-04-15 18:17:12 UTC"));
    assert_eq!(field("Incident").as_deref(), Some(inc_id));
    assert!(field("Resolved").is_none());
}

#[tokio::test]
async fn mattermost_resolved_message_is_green_with_duration() {
    let rx = Receiver::mattermost().await;
    let client = mm_client(&rx, &[]);
    client.send(&resolved(Sink::Mattermost)).await.unwrap();
    rx.assert_no_rejections();
    let b = rx.last().json();
    let a = &b["attachments"][0];
    assert_eq!(a["color"], mattermost::GREEN);
    assert_eq!(a["title"], "Resolved: [INFO] test-metricAlertRule");
    assert!(
        b["text"]
            .as_str()
            .unwrap()
            .starts_with("Resolved after 17m 29s:"),
        "{}",
        b["text"]
    );
    let titles: Vec<&str> = a["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["title"].as_str().unwrap())
        .collect();
    assert!(
        titles.contains(&"Resolved") && titles.contains(&"Duration"),
        "{titles:?}"
    );
    assert!(a["fields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["value"] == "Resolved"));
}

#[tokio::test]
async fn mattermost_routes_to_named_webhooks_and_channels() {
    let rx = Receiver::mattermost().await;
    let client = mm_client(
        &rx,
        &[
            (
                "ICAHUB_MATTERMOST_WEBHOOKS",
                json!({ "ops": rx.url("/hooks/opshookkey") }).to_string(),
            ),
            ("ICAHUB_MATTERMOST_USERNAME", "Alerts".into()),
            (
                "ICAHUB_MATTERMOST_ICON_URL",
                "https://example.com/icon.png".into(),
            ),
        ],
    );
    let row = with_route(
        opened(Sink::Mattermost),
        json!({ "mattermost_webhook": "ops", "mattermost_channel": "town-square" }),
    );
    client.send(&row).await.unwrap();
    let req = rx.last();
    assert_eq!(req.path, "/hooks/opshookkey");
    let b = req.json();
    assert_eq!(b["channel"], "town-square");
    assert_eq!(b["username"], "Alerts");
    assert_eq!(b["icon_url"], "https://example.com/icon.png");
    // A null channel and missing webhook name mean the default webhook, no override.
    let row = with_route(
        opened(Sink::Mattermost),
        json!({ "mattermost_channel": null }),
    );
    client.send(&row).await.unwrap();
    assert_eq!(rx.last().path, "/hooks/defaulthookkey123");
    assert!(rx.last().json().get("channel").is_none());
    // A webhook name nobody configured is permanent, and nothing is sent.
    let row = with_route(
        opened(Sink::Mattermost),
        json!({ "mattermost_webhook": "nope" }),
    );
    let e = client.send(&row).await.unwrap_err();
    assert!(
        matches!(&e, SendError::Permanent { error } if error.contains("\"nope\"")),
        "{e:?}"
    );
    assert_eq!(rx.requests().len(), 2);
    rx.assert_no_rejections();
}

#[tokio::test]
async fn mattermost_refuses_unknown_kinds() {
    let rx = Receiver::mattermost().await;
    let client = mm_client(&rx, &[]);
    let mut row = opened(Sink::Mattermost);
    row.kind = "run.start".into();
    let e = client.send(&row).await.unwrap_err();
    assert!(
        matches!(&e, SendError::Permanent { error } if error.contains("run.start")),
        "{e:?}"
    );
    assert!(rx.requests().is_empty());
}

#[tokio::test]
async fn mattermost_keeps_within_post_limits_and_links_only_http() {
    let rx = Receiver::mattermost().await;
    let client = mm_client(&rx, &[]);
    let mut row = opened(Sink::Mattermost);
    let inc = &mut row.payload["incident"];
    inc["description"] = json!("d".repeat(50_000));
    inc["title"] = json!("t".repeat(20_000));
    inc["id"] = json!(format!("INC-{}", "i".repeat(1000)));
    inc["link"] = json!("javascript:alert(1)");
    row.payload["alert"]["link"] = json!("https://portal.azure.com/#blade/x");
    let details: serde_json::Map<String, Value> = (0..20)
        .map(|i| {
            (
                format!("detail {i} {}", "k".repeat(100)),
                json!("v".repeat(5000)),
            )
        })
        .collect();
    row.payload["alert"]["details"] = Value::Object(details);
    client.send(&row).await.unwrap();
    rx.assert_no_rejections();
    let b = rx.last().json();
    let a = &b["attachments"][0];
    fn chars(v: &Value) -> usize {
        match v {
            Value::String(s) => s.chars().count(),
            Value::Array(a) => a.iter().map(chars).sum(),
            Value::Object(o) => o.values().map(chars).sum(),
            _ => 0,
        }
    }
    let total = chars(&b["text"]) + chars(a);
    assert!(total < mattermost::MAX_POST_CHARS, "{total}");
    assert!(a["footer"].as_str().unwrap().chars().count() <= 300);
    assert!(a["text"].as_str().unwrap().ends_with('…'));
    assert_eq!(a["title_link"], "https://portal.azure.com/#blade/x");
}

// ---------------------------------------------------------------------------------------------
// Mattermost: approvals

const ACTION_SECRET: &str = "snapshot-action-secret-0123456789abcdef";

fn action_keys() -> TokenKeys {
    TokenKeys::new([ACTION_SECRET]).unwrap()
}

fn with_buttons() -> RenderOptions {
    RenderOptions {
        buttons: Some(ButtonConfig {
            url: "https://icahub.example.net/api/v1/mattermost/actions".into(),
            keys: action_keys(),
        }),
        ..Default::default()
    }
}

/// A production request of 7,500 USD/month (above the finance threshold) with a budget check,
/// made at [`t0`] by `pipeline-prod` for a run triggered by dev@contoso.com.
fn approval_at_t0() -> Approval {
    let policy = Policy::default();
    let req = parse_request(
        &json!({"run_id": "4711", "deployment_target": "production", "estimated_cost": 7500,
                "project": "payments", "description": "Release 4.2 of the payments API",
                "checklist": [{"item": "tests green", "done": true}, {"item": "load test", "done": false}, "rollback plan"]}),
        &policy,
    )
    .unwrap();
    let budget = Budget {
        project: "payments".into(),
        monthly_budget: 20_000.0,
        current_spend: 9_000.0,
        updated_at: t0(),
        updated_by: "finops".into(),
        committed: Default::default(),
    };
    Approval::new(
        approval_id(2025, 17),
        req,
        "payments".into(),
        "pipeline-prod".into(),
        Some("dev@contoso.com".into()),
        Some(budget.check(7500.0, None, t0())),
        &policy,
        t0(),
    )
}

fn approval_row(kind: &str, a: &Approval, record_id: &str) -> OutboxRow {
    let key = format!("{kind}-{record_id}");
    outbox_row(
        "apr2025000017",
        Sink::Mattermost,
        kind,
        &key,
        json!({"approval_id": a.id, "record_id": record_id, "approval": icahub::approvals::view(a, t0()),
               "route": {"mattermost_webhook": "default", "mattermost_channel": "deployments"}}),
    )
}

fn decided() -> Approval {
    let a = approval_at_t0();
    let tech = SignIn {
        approval_type: ApprovalType::Technical,
        decision: Decision::Approved,
        comments: None,
    };
    let (a, _) = approval::sign(
        &a,
        "alice",
        &[Role::TechnicalApprover],
        &tech,
        "mattermost",
        t0() + chrono::Duration::minutes(20),
    )
    .unwrap();
    let biz = SignIn {
        approval_type: ApprovalType::Business,
        decision: Decision::Approved,
        comments: Some("within budget".into()),
    };
    let (a, _) = approval::sign(
        &a,
        "fiona",
        &[Role::Finance],
        &biz,
        "api",
        t0() + chrono::Duration::minutes(45),
    )
    .unwrap();
    a
}

#[test]
fn snapshot_mattermost_approval_requested() {
    let a = approval_at_t0();
    let row = approval_row("approval.requested", &a, "APR-2025-000017-created");
    let body = mattermost::render(&row, &with_buttons()).unwrap();
    assert_snapshot("mattermost-approval-requested", &body);
    // Rendering again gives the same message (a retried delivery posts the same tokens).
    assert_eq!(mattermost::render(&row, &with_buttons()).unwrap(), body);
    // Each button's token is authentic, names its action, and expires with the approval.
    let actions = body["attachments"][0]["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 3);
    for (b, action) in actions.iter().zip(Action::ALL) {
        assert_eq!(b["id"], action.button_id());
        let token = b["integration"]["context"]["token"].as_str().unwrap();
        let claims = action_keys().verify(token, t0().timestamp()).unwrap();
        assert_eq!(claims.approval_id, a.id);
        assert_eq!(claims.action, action);
        assert_eq!(claims.expires, a.expires_at.timestamp());
        assert_eq!(claims.user_id, None);
    }
    // A reminder carries fresh tokens.
    let reminder = mattermost::render(
        &approval_row("approval.reminder", &a, "APR-2025-000017-R1"),
        &with_buttons(),
    )
    .unwrap();
    let tokens = |b: &Value| -> Vec<String> {
        b["attachments"][0]["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                x["integration"]["context"]["token"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(tokens(&reminder).len(), 3);
    assert!(tokens(&reminder).iter().all(|t| !tokens(&body).contains(t)));
}

#[test]
fn snapshot_mattermost_approval_decided() {
    let a = decided();
    let body = mattermost::render(
        &approval_row("approval.decided", &a, "APR-2025-000017-S2"),
        &with_buttons(),
    )
    .unwrap();
    assert_snapshot("mattermost-approval-decided", &body);
    assert!(body["attachments"][0].get("actions").is_none());
}

#[test]
fn approval_messages_of_every_kind() {
    let a = approval_at_t0();
    for (kind, color, needle) in [
        (
            "approval.finance_review",
            "#8e44ad",
            "Finance review needed",
        ),
        ("approval.escalated", "#d00000", "Escalated"),
        ("approval.reminder", "#f2c744", "Reminder"),
    ] {
        let body = mattermost::render(&approval_row(kind, &a, "r"), &with_buttons()).unwrap();
        assert!(
            body["text"].as_str().unwrap().starts_with(needle),
            "{kind}: {body}"
        );
        assert_eq!(body["attachments"][0]["color"], color, "{kind}");
        assert_eq!(body["channel"], "deployments");
        let has_buttons = body["attachments"][0].get("actions").is_some();
        assert_eq!(has_buttons, kind == "approval.reminder", "{kind}");
    }
    // Without the button configuration, the request says how to sign instead.
    let body = mattermost::render(
        &approval_row("approval.requested", &a, "c"),
        &RenderOptions::default(),
    )
    .unwrap();
    let att = &body["attachments"][0];
    assert!(att.get("actions").is_none());
    assert!(att["text"].as_str().unwrap().contains("ICAHUB_PUBLIC_URL"));
    // A payload that is not an approval is a permanent failure, not a panic.
    let mut bad = approval_row("approval.requested", &a, "x");
    bad.payload["approval"] = json!({"id": 5});
    assert!(matches!(
        mattermost::render(&bad, &with_buttons()),
        Err(SendError::Permanent { .. })
    ));
}

#[tokio::test]
async fn approval_messages_keep_within_post_limits() {
    let rx = Receiver::mattermost().await;
    let secret = (
        "ICAHUB_MATTERMOST_ACTION_SECRETS",
        ACTION_SECRET.to_string(),
    );
    let public = (
        "ICAHUB_PUBLIC_URL",
        "https://icahub.example.net".to_string(),
    );
    let client = mm_client(&rx, &[secret, public]);
    let mut a = approval_at_t0();
    a.description = Some("d".repeat(50_000));
    a.checklist = json!((0..2000)
        .map(|i| format!("item {i} {}", "x".repeat(50)))
        .collect::<Vec<_>>());
    a.run_id = "r".repeat(256);
    a.deployment_target = "t".repeat(128);
    a.project = "p".repeat(128);
    client
        .send(&approval_row("approval.requested", &a, "big"))
        .await
        .unwrap();
    rx.assert_no_rejections();
    let mut b = rx.last().json();
    let actions = b["attachments"][0]
        .as_object_mut()
        .unwrap()
        .remove("actions")
        .expect("buttons");
    assert_eq!(actions.as_array().unwrap().len(), 3);
    fn chars(v: &Value) -> usize {
        match v {
            Value::String(s) => s.chars().count(),
            Value::Array(a) => a.iter().map(chars).sum(),
            Value::Object(o) => o.values().map(chars).sum(),
            _ => 0,
        }
    }
    let total = chars(&b["text"]) + chars(&b["attachments"]);
    assert!(total < mattermost::MAX_POST_CHARS, "{total}");
    assert!(
        b["attachments"][0]["footer"]
            .as_str()
            .unwrap()
            .chars()
            .count()
            <= 300
    );
}

// ---------------------------------------------------------------------------------------------
// PagerDuty

#[tokio::test]
async fn pagerduty_trigger_then_resolve_share_dedup_and_routing_key() {
    let rx = Receiver::pagerduty().await;
    let client = pd_client(&rx, 100);
    let open_row = opened(Sink::Pagerduty);
    assert_eq!(
        client.send(&open_row).await.unwrap(),
        Delivered { status: 202 }
    );
    assert_eq!(
        client.send(&resolved(Sink::Pagerduty)).await.unwrap(),
        Delivered { status: 202 }
    );
    rx.assert_no_rejections();
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2);
    let (t, r) = (reqs[0].json(), reqs[1].json());
    assert_eq!(reqs[0].path, "/v2/enqueue");
    assert_eq!(reqs[0].header("content-type"), Some("application/json"));
    assert_eq!(t["event_action"], "trigger");
    assert_eq!(r["event_action"], "resolve");
    assert_eq!(t["dedup_key"], open_row.payload["incident"]["id"]);
    assert_eq!(t["dedup_key"], r["dedup_key"]);
    assert_eq!(t["routing_key"], PD_KEY);
    assert_eq!(r["routing_key"], PD_KEY);
    // The documented trigger fields.
    let p = &t["payload"];
    assert_eq!(p["severity"], "info"); // Sev4
    assert_eq!(
        p["source"],
        "/subscriptions/aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e/resourcegroups/test-rg/providers/microsoft.storage/storageaccounts/test-storageaccount"
    );
    assert_eq!(p["timestamp"], "2025-04-15T18:17:12.851Z");
    assert_eq!(p["component"], "test-storageaccount");
    assert_eq!(p["group"], "test-RG");
    assert_eq!(p["class"], "Platform");
    assert_eq!(p["custom_details"]["incident"], t["dedup_key"]);
    assert_eq!(t["client"], "icahub");
    assert!(r.get("payload").is_none() && r.get("client_url").is_none());
}

#[tokio::test]
async fn pagerduty_routes_to_named_keys_and_links_https() {
    let rx = Receiver::pagerduty().await;
    let client = pd_client(&rx, 100);
    let mut row = with_route(
        opened(Sink::Pagerduty),
        json!({ "pagerduty_key": "db-team" }),
    );
    row.payload["incident"]["link"] = json!("https://portal.azure.com/#view/alert");
    client.send(&row).await.unwrap();
    rx.assert_no_rejections();
    let b = rx.last().json();
    assert_eq!(b["routing_key"], PD_KEY_2);
    assert_eq!(b["client_url"], "https://portal.azure.com/#view/alert");
    assert_eq!(
        b["links"][0]["href"],
        "https://portal.azure.com/#view/alert"
    );
    let row = with_route(opened(Sink::Pagerduty), json!({ "pagerduty_key": "nope" }));
    assert!(matches!(
        client.send(&row).await,
        Err(SendError::Permanent { .. })
    ));
    assert_eq!(rx.requests().len(), 1);
}

#[tokio::test]
async fn pagerduty_does_not_send_updates_and_refuses_unknown_kinds() {
    let rx = Receiver::pagerduty().await;
    let client = pd_client(&rx, 100);
    let mut row = opened(Sink::Pagerduty);
    row.kind = "incident.updated".into();
    assert_eq!(
        client.send(&row).await.unwrap(),
        Delivered {
            status: Delivered::NOT_SENT
        }
    );
    row.kind = "alert.received".into();
    let e = client.send(&row).await.unwrap_err();
    assert!(matches!(&e, SendError::Permanent { error } if error.contains("alert.received")));
    assert!(rx.requests().is_empty());
}

#[tokio::test]
async fn pagerduty_summary_is_cut_at_1024_characters() {
    let rx = Receiver::pagerduty().await;
    let client = pd_client(&rx, 100);
    let mut row = opened(Sink::Pagerduty);
    row.payload["incident"]["title"] = json!("é".repeat(3000));
    client.send(&row).await.unwrap();
    rx.assert_no_rejections();
    let summary = rx.last().json()["payload"]["summary"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(summary.chars().count(), 1024);
    assert!(summary.starts_with("[INFO] éé") && summary.ends_with('…'));
}

#[tokio::test]
async fn pagerduty_rate_limiter_throttles_before_sending() {
    let rx = Receiver::pagerduty().await;
    let client = pd_client(&rx, 5);
    let row = opened(Sink::Pagerduty);
    for _ in 0..5 {
        client.send(&row).await.unwrap();
    }
    let e = client.send(&row).await.unwrap_err();
    let SendError::Throttled { wait } = e else {
        panic!("expected Throttled, got {e:?}")
    };
    assert!(
        wait > Duration::from_secs(10) && wait <= Duration::from_secs(12),
        "{wait:?}"
    );
    assert_eq!(rx.requests().len(), 5, "a throttled event is not sent");
    // Another routing key has its own budget.
    let other = with_route(row, json!({ "pagerduty_key": "db-team" }));
    client.send(&other).await.unwrap();
    rx.assert_no_rejections();
}

#[tokio::test]
async fn pagerduty_default_rate_throttles_the_101st_event() {
    let rx = Receiver::pagerduty().await;
    let client = sinks(&[
        ("ICAHUB_PAGERDUTY_ROUTING_KEY", PD_KEY.into()),
        ("ICAHUB_PAGERDUTY_EVENTS_URL", rx.url("/v2/enqueue")),
    ])
    .unwrap()
    .get(Sink::Pagerduty)
    .unwrap();
    let row = opened(Sink::Pagerduty);
    for i in 0..100 {
        client
            .send(&row)
            .await
            .unwrap_or_else(|e| panic!("event {i}: {e}"));
    }
    assert!(matches!(
        client.send(&row).await,
        Err(SendError::Throttled { .. })
    ));
    assert_eq!(rx.requests().len(), 100);
}

#[tokio::test]
async fn pagerduty_errors_are_classified() {
    let rx = Receiver::pagerduty().await;
    let client = pd_client(&rx, 100);
    let row = opened(Sink::Pagerduty);
    let invalid = String::from_utf8(support::fixture("pagerduty-response-400.json")).unwrap();
    let error = String::from_utf8(support::fixture("pagerduty-response-error.json")).unwrap();
    rx.script([
        Reply::new(400, invalid).header("content-type", "application/json"),
        Reply::new(429, "Request Limit Exceeded"),
        Reply::new(429, "").header("Retry-After", "2"),
        Reply::new(500, error).header("content-type", "application/json"),
    ]);
    let e = client.send(&row).await.unwrap_err();
    let SendError::Permanent { error } = &e else {
        panic!("{e:?}")
    };
    assert!(
        error.contains("Length of 'routing_key' is incorrect"),
        "{error}"
    );
    let e = client.send(&row).await.unwrap_err();
    assert_eq!(
        retry_after_of(&e),
        Some(Duration::from_secs(30)),
        "PagerDuty's advice"
    );
    let e = client.send(&row).await.unwrap_err();
    assert_eq!(retry_after_of(&e), Some(Duration::from_secs(2)));
    let e = client.send(&row).await.unwrap_err();
    assert_eq!(retry_after_of(&e), None);
    assert!(e.to_string().contains("JSON parse error"), "{e}");
}

#[tokio::test]
async fn pagerduty_receiver_refuses_what_pagerduty_refuses() {
    // The receiver itself, against PagerDuty's own example bodies and broken ones.
    let rx = Receiver::pagerduty().await;
    let http = reqwest::Client::new();
    let post = |body: Value| http.post(rx.url("/v2/enqueue")).json(&body).send();
    let ok = post(support::fixture_json("pagerduty-enqueue-trigger.json"))
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    assert_eq!(
        ok.json::<Value>().await.unwrap()["dedup_key"],
        "srv01/mysql"
    );
    let bad = post(support::fixture_json("pagerduty-enqueue-resolve.json"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "routingkeyhere is not 32 characters");
    let v: Value = bad.json().await.unwrap();
    assert_eq!(v["status"], "invalid event");
    let mut no_dedup = support::fixture_json("pagerduty-enqueue-trigger.json");
    no_dedup["event_action"] = json!("resolve");
    no_dedup.as_object_mut().unwrap().remove("dedup_key");
    no_dedup.as_object_mut().unwrap().remove("client_url");
    assert_eq!(post(no_dedup).await.unwrap().status(), 400);
    assert_eq!(rx.rejections().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Control plane

#[tokio::test]
async fn control_plane_posts_signed_records_on_ica_paths() {
    let keys = vec![SigningKey::parse(WHSEC_2).unwrap()];
    let rx = Receiver::control_plane(Some(CP_TOKEN), keys).await;
    // Two secrets during a rotation: the receiver knows only the second.
    let client = cp_client(
        &format!("{}/ica/", rx.base),
        true,
        &format!("{WHSEC_1}, {WHSEC_2}"),
    );
    assert_eq!(client.sink(), Sink::ControlPlane);
    let (p1, p2) = fired_then_resolved();
    let received = row_of(&p1, Sink::ControlPlane, "alert.received");
    assert_eq!(
        client.send(&received).await.unwrap(),
        Delivered { status: 202 }
    );
    client
        .send(&row_of(&p1, Sink::ControlPlane, "incident.opened"))
        .await
        .unwrap();
    client
        .send(&row_of(&p2, Sink::ControlPlane, "incident.resolved"))
        .await
        .unwrap();
    rx.assert_no_rejections();
    let reqs = rx.requests();
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/ica/api/v1/azdev/alert",
            "/ica/api/v1/azdev/incident",
            "/ica/api/v1/azdev/incident"
        ]
    );
    let r = &reqs[0];
    assert_eq!(
        r.header("authorization"),
        Some(&*format!("Bearer {CP_TOKEN}"))
    );
    assert_eq!(
        r.header("idempotency-key"),
        Some(received.idempotency_key.as_str())
    );
    assert_eq!(
        r.header("webhook-id"),
        Some(received.idempotency_key.as_str())
    );
    assert_eq!(r.header("webhook-signature").unwrap().split(' ').count(), 2);
    let b = r.json();
    assert_eq!(b["kind"], "alert.received");
    assert_eq!(b["idempotency_key"], received.idempotency_key);
    assert_eq!(b["event_id"], received.event_id);
    assert_eq!(b["stream"], received.stream);
    assert_eq!(b["seq"], 1);
    assert_eq!(b["occurred_at"], "2025-04-15T18:17:30Z");
    assert_eq!(b["data"], received.payload);
}

#[tokio::test]
async fn control_plane_maps_later_kinds() {
    let rx = Receiver::control_plane(None, vec![]).await;
    let client = cp_client(&rx.base, false, "");
    let base = opened(Sink::ControlPlane);
    let mut sent = Vec::new();
    for (kind, payload, path) in [
        ("run.start", json!({}), "/api/v1/azdev/run/start"),
        ("run.event", json!({}), "/api/v1/azdev/run/event"),
        ("run.finish", json!({}), "/api/v1/azdev/run/finish"),
        ("approval.created", json!({}), "/api/v1/azdev/approval"),
        (
            "approval.signed",
            json!({ "approval_id": "APR 1/x" }),
            "/api/v1/azdev/approval/APR%201%2Fx/sign",
        ),
    ] {
        let row = outbox_row(&base.stream, Sink::ControlPlane, kind, "k1", payload);
        client
            .send(&row)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        sent.push(path);
    }
    let paths: Vec<String> = rx.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, sent);
    // Unsigned without secrets.
    assert!(rx.last().header("webhook-signature").is_none());
    assert!(rx.last().header("webhook-id").is_none());
    assert!(rx.last().header("authorization").is_none());
    for (kind, payload) in [("approval.signed", json!({})), ("mystery.kind", json!({}))] {
        let row = outbox_row(&base.stream, Sink::ControlPlane, kind, "k1", payload);
        let e = client.send(&row).await.unwrap_err();
        assert!(matches!(&e, SendError::Permanent { .. }), "{kind}: {e:?}");
    }
    assert_eq!(rx.requests().len(), 5);
    rx.assert_no_rejections();
}

#[tokio::test]
async fn control_plane_refusals_are_permanent() {
    let keys = vec![SigningKey::parse(WHSEC_2).unwrap()];
    let rx = Receiver::control_plane(Some("another-token"), keys.clone()).await;
    let e = cp_client(&rx.base, true, WHSEC_2)
        .send(&opened(Sink::ControlPlane))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, SendError::Permanent { error } if error.contains("HTTP 401")),
        "{e:?}"
    );
    assert!(!e.to_string().contains(CP_TOKEN));
    // Right token, wrong secret.
    let rx = Receiver::control_plane(Some(CP_TOKEN), keys).await;
    let e = cp_client(&rx.base, true, WHSEC_1)
        .send(&opened(Sink::ControlPlane))
        .await
        .unwrap_err();
    assert!(matches!(&e, SendError::Permanent { .. }));
    assert_eq!(rx.rejections(), ["signature: no signature matches"]);
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[test]
fn sinks_are_present_only_when_configured() {
    let s = sinks(&[]).unwrap();
    assert!(s.mattermost.is_none() && s.pagerduty.is_none() && s.control_plane.is_none());
    let s = sinks(&[
        (
            "ICAHUB_MATTERMOST_WEBHOOK_URL",
            "https://mm.example.com/hooks/abc".into(),
        ),
        ("ICAHUB_PAGERDUTY_ROUTING_KEY", PD_KEY.into()),
        ("ICAHUB_CONTROL_PLANE_URL", "https://ica.example.com".into()),
        ("ICAHUB_PAGERDUTY_EVENTS_URL", "  ".into()),
    ])
    .unwrap();
    for sink in [Sink::Mattermost, Sink::Pagerduty, Sink::ControlPlane] {
        assert_eq!(s.get(sink).expect("configured").sink(), sink);
    }
}

#[test]
fn bad_configuration_is_named_without_secrets() {
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![("ICAHUB_MATTERMOST_WEBHOOK_URL", "ftp://SECRETVALUE".into())],
            "ICAHUB_MATTERMOST_WEBHOOK_URL",
        ),
        (
            vec![("ICAHUB_MATTERMOST_WEBHOOKS", "[\"SECRETVALUE\"]".into())],
            "ICAHUB_MATTERMOST_WEBHOOKS",
        ),
        (
            vec![(
                "ICAHUB_MATTERMOST_WEBHOOKS",
                r#"{"ops":"not a url SECRETVALUE"}"#.into(),
            )],
            "ICAHUB_MATTERMOST_WEBHOOKS",
        ),
        (
            vec![("ICAHUB_PAGERDUTY_ROUTING_KEY", "SECRETVALUE".into())],
            "ICAHUB_PAGERDUTY_ROUTING_KEY",
        ),
        (
            vec![(
                "ICAHUB_PAGERDUTY_ROUTING_KEYS",
                r#"{"db":"SECRETVALUE"}"#.into(),
            )],
            "ICAHUB_PAGERDUTY_ROUTING_KEYS",
        ),
        (
            vec![
                ("ICAHUB_PAGERDUTY_ROUTING_KEY", PD_KEY.into()),
                ("ICAHUB_PAGERDUTY_RATE_PER_MINUTE", "0".into()),
            ],
            "ICAHUB_PAGERDUTY_RATE_PER_MINUTE",
        ),
        (
            vec![
                ("ICAHUB_PAGERDUTY_ROUTING_KEY", PD_KEY.into()),
                ("ICAHUB_PAGERDUTY_EVENTS_URL", "nope".into()),
            ],
            "ICAHUB_PAGERDUTY_EVENTS_URL",
        ),
        (
            vec![("ICAHUB_CONTROL_PLANE_URL", "mailto:SECRETVALUE".into())],
            "ICAHUB_CONTROL_PLANE_URL",
        ),
        (
            vec![
                ("ICAHUB_CONTROL_PLANE_URL", "https://ica.example.com".into()),
                (
                    "ICAHUB_CONTROL_PLANE_SIGNING_SECRETS",
                    format!("{WHSEC_1},SECRETVALUE"),
                ),
            ],
            "ICAHUB_CONTROL_PLANE_SIGNING_SECRETS",
        ),
    ];
    for (vars, name) in cases {
        let e = sinks(&vars).unwrap_err();
        assert!(e.contains(name), "{e}");
        assert!(!e.contains("SECRETVALUE"), "{e}");
    }
    // Debug output of configured clients shows no secrets either.
    let s = sinks(&[("ICAHUB_PAGERDUTY_ROUTING_KEY", PD_KEY.into())]).unwrap();
    assert!(!format!("{s:?}").contains(PD_KEY));
}

/// The sinks tell time by the clock they are given: the control plane's signature is dated by
/// it, and an HTTP-date `Retry-After` counts from it.
#[tokio::test]
async fn sinks_tell_time_by_the_injected_clock() {
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let clock = Arc::new(icahub::clock::ManualClock::new(t0));
    // The receiver checks no signature: the timestamp is a year off the real time.
    let rx = Receiver::control_plane(None, vec![]).await;
    let vars: HashMap<&str, String> = HashMap::from([
        ("ICAHUB_CONTROL_PLANE_URL", rx.base.clone()),
        ("ICAHUB_CONTROL_PLANE_SIGNING_SECRETS", WHSEC_2.to_string()),
    ]);
    let get = |k: &str| vars.get(k).cloned();
    let settings = icahub::config::sinks::SinkSettings::from_lookup(&get).unwrap();
    let actions = icahub::config::MattermostActions::from_lookup(&get).unwrap();
    let hosts = icahub::config::plan_hosts(&get).unwrap();
    let sinks = Sinks::from_settings(&settings, &actions, &hosts, clock.clone());
    let client = sinks
        .get(Sink::ControlPlane)
        .expect("control plane configured");

    let row = opened(Sink::ControlPlane);
    client.send(&row).await.unwrap();
    let stamped = t0.timestamp().to_string();
    assert_eq!(
        rx.last().header("webhook-timestamp"),
        Some(stamped.as_str())
    );

    let until = (t0 + chrono::Duration::seconds(90)).to_rfc2822();
    rx.script([Reply::new(503, "busy").header("Retry-After", &until)]);
    clock.advance(chrono::Duration::seconds(30));
    let e = client.send(&row).await.unwrap_err();
    assert_eq!(retry_after_of(&e), Some(Duration::from_secs(60)));
}
