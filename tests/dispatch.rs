//! The outbox dispatcher end to end: alerts through the real server, deliveries to local
//! receivers that check what Mattermost, PagerDuty and the control plane check. Time is simulated
//! (a manual clock) where the test needs hours to pass.

mod support;

use chrono::{Duration as Days, Utc};
use icahub::clock::{Clock, ManualClock};
use icahub::config::Config;
use icahub::sinks::Sinks;
use icahub::storage::{OutboxFilter, OutboxStatus};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use support::hub::TestHub;
use support::receiver::{Receiver, Reply};

const ALERT: &str = "/api/v1/azdev/alert";
const PD_KEY: &str = "0123456789abcdef0123456789abcdef";

/// Environment for a hub on `dir` whose Mattermost (and optionally PagerDuty / control plane)
/// point at the given receivers.
fn env(dir: &std::path::Path, mm: &Receiver, extra: &[(&str, String)]) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = [
        ("ICAHUB_STORAGE", "embedded".to_string()),
        ("ICAHUB_DATA_DIR", dir.display().to_string()),
        ("ICAHUB_MATTERMOST_WEBHOOK_URL", mm.url("/hooks/abc123")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        m.insert(k.to_string(), v.clone());
    }
    m
}

async fn hub_for(env: &HashMap<String, String>, clock: Arc<dyn Clock>) -> TestHub {
    let config = Config::from_lookup(|k| env.get(k).cloned(), Some(0)).expect("config");
    let sinks = Sinks::from_lookup(&|k| env.get(k).cloned()).expect("sinks");
    TestHub::start_with(config, sinks, clock).await
}

/// A common-schema alert for rule `rule`, fired or resolved.
fn alert(rule: &str, fired: bool) -> String {
    let mut v = support::fixture_json("azmon-common-metric-static-fired.json");
    let e = &mut v["data"]["essentials"];
    e["alertRule"] = json!(rule);
    e["alertId"] = json!(format!("/alerts/{rule}"));
    e["severity"] = json!("Sev1");
    e["monitorCondition"] = json!(if fired { "Fired" } else { "Resolved" });
    v.to_string()
}

/// (incident id, "opened"/"resolved") of a Mattermost message.
fn mm_message(r: &support::receiver::Recorded) -> (String, String) {
    let text = String::from_utf8_lossy(&r.body).to_string();
    let i = text.find("INC-").expect("message names its incident");
    let id: String = text[i..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let kind = if text.contains("esolved") {
        "resolved"
    } else {
        "opened"
    };
    (id, kind.to_string())
}

async fn drain(hub: &TestHub) -> icahub::dispatcher::DrainReport {
    hub.app
        .dispatcher
        .drain(Duration::from_secs(30))
        .await
        .expect("drain")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthy_sinks_get_each_message_once_via_the_fast_path() {
    let dir = tempfile::tempdir().unwrap();
    let mm = Receiver::mattermost().await;
    let pd = Receiver::pagerduty().await;
    let e = env(
        dir.path(),
        &mm,
        &[
            ("ICAHUB_PAGERDUTY_ROUTING_KEY", PD_KEY.to_string()),
            ("ICAHUB_PAGERDUTY_EVENTS_URL", pd.url("/v2/enqueue")),
        ],
    );
    let hub = hub_for(&e, Arc::new(icahub::clock::SystemClock)).await;
    assert_eq!(
        hub.post_json(ALERT, alert("disk-full", true)).await.status,
        202
    );
    assert_eq!(
        hub.post_json(ALERT, alert("disk-full", false)).await.status,
        202
    );
    hub.idle().await;
    mm.assert_no_rejections();
    pd.assert_no_rejections();
    let msgs: Vec<_> = mm.requests().iter().map(mm_message).collect();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].1, "opened");
    assert_eq!(msgs[1].1, "resolved");
    assert_eq!(msgs[0].0, msgs[1].0);
    let pd_bodies: Vec<Value> = pd.requests().iter().map(|r| r.json()).collect();
    assert_eq!(pd_bodies[0]["event_action"], "trigger");
    assert_eq!(pd_bodies[1]["event_action"], "resolve");
    assert_eq!(pd_bodies[0]["dedup_key"], pd_bodies[1]["dedup_key"]);
    assert_eq!(pd_bodies[0]["payload"]["severity"], "error"); // Sev1 → high → error
                                                              // Nothing left to do.
    assert_eq!(drain(&hub).await.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sink_down_for_twelve_hours_loses_nothing_and_delivers_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mm = Receiver::mattermost().await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let hub = hub_for(&env(dir.path(), &mm, &[]), clock.clone()).await;
    mm.down(Reply::new(503, "maintenance"));

    // 20 incidents opened, 10 of them resolved, while Mattermost is down.
    for i in 0..20 {
        assert_eq!(
            hub.post_json(ALERT, alert(&format!("r{i}"), true))
                .await
                .status,
            202
        );
    }
    for i in 0..10 {
        assert_eq!(
            hub.post_json(ALERT, alert(&format!("r{i}"), false))
                .await
                .status,
            202
        );
    }
    hub.idle().await;
    // Twelve hours of drains every 30 minutes: the backlog waits, nothing is lost or dead.
    for _ in 0..24 {
        clock.advance(Days::minutes(30));
        drain(&hub).await;
    }
    let pending = hub
        .app
        .store
        .outbox_list(&OutboxFilter {
            status: Some(OutboxStatus::Pending),
            sink: None,
            limit: 1000,
        })
        .await
        .unwrap();
    assert_eq!(pending.len(), 30, "every message still pending");
    for r in &pending {
        if r.kind == "incident.opened" {
            assert!(r.attempts > 3, "{r:?}");
            assert!(
                r.last_error.as_deref().is_some_and(|e| e.contains("503")),
                "{r:?}"
            );
        } else {
            // Queued behind its incident's opening: never attempted out of order.
            assert_eq!(r.attempts, 0, "{r:?}");
        }
    }
    let attempts_while_down = mm.requests().len();

    // Mattermost comes back: everything arrives, once, opened before resolved.
    mm.up();
    for _ in 0..6 {
        clock.advance(Days::hours(1));
        drain(&hub).await;
    }
    mm.assert_no_rejections();
    let delivered: Vec<(String, String)> = mm.requests()[attempts_while_down..]
        .iter()
        .map(mm_message)
        .collect();
    assert_eq!(delivered.len(), 30, "each message exactly once");
    let mut seen = std::collections::HashSet::new();
    for (id, kind) in &delivered {
        assert!(
            seen.insert((id.clone(), kind.clone())),
            "duplicate {id} {kind}"
        );
        if kind == "resolved" {
            let opened_at = delivered.iter().position(|(i, k)| i == id && k == "opened");
            let resolved_at = delivered
                .iter()
                .position(|(i, k)| i == id && k == "resolved");
            assert!(
                opened_at < resolved_at,
                "{id}: resolve overtook its opening"
            );
        }
    }
    let dead = hub
        .app
        .store
        .outbox_list(&OutboxFilter {
            status: Some(OutboxStatus::Dead),
            sink: None,
            limit: 1000,
        })
        .await
        .unwrap();
    assert!(dead.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_waits_for_retry_after_and_a_500_retries_soon() {
    let dir = tempfile::tempdir().unwrap();
    let mm = Receiver::mattermost().await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let hub = hub_for(&env(dir.path(), &mm, &[]), clock.clone()).await;
    mm.script([
        Reply::new(429, "slow down").header("Retry-After", "120"),
        Reply::new(500, "oops"),
    ]);
    assert_eq!(hub.post_json(ALERT, alert("cpu", true)).await.status, 202);
    hub.idle().await; // fast path: the 429
    assert_eq!(mm.requests().len(), 1);
    clock.advance(Days::seconds(60));
    drain(&hub).await;
    assert_eq!(mm.requests().len(), 1, "not before Retry-After");
    clock.advance(Days::seconds(61));
    drain(&hub).await; // the 500
    assert_eq!(mm.requests().len(), 2);
    clock.advance(Days::seconds(13)); // second failure: 10 s ± 20%
    drain(&hub).await; // now 200
    assert_eq!(mm.requests().len(), 3);
    let rows = hub
        .app
        .store
        .outbox_list(&OutboxFilter {
            status: Some(OutboxStatus::Delivered),
            sink: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].attempts, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_400_is_a_dead_letter_and_redrive_delivers_it_once_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let mm = Receiver::mattermost().await;
    let e = env(dir.path(), &mm, &[]);
    let hub = hub_for(&e, Arc::new(icahub::clock::SystemClock)).await;
    mm.script([Reply::new(
        400,
        "{\"id\":\"web.incoming_webhook.invalid.app_error\"}",
    )]);
    assert_eq!(hub.post_json(ALERT, alert("mem", true)).await.status, 202);
    hub.idle().await;
    drain(&hub).await;
    assert_eq!(mm.requests().len(), 1, "a permanent error is not retried");

    // The operator looks with the CLI, then redrives with it.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_icahub"))
            .args(args)
            .env_clear()
            .envs(&e)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let dead: Value = serde_json::from_str(&cli(&["outbox", "list", "--dead", "--json"])).unwrap();
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0]["last_error"].as_str().unwrap().contains("400"));
    let id = dead[0]["id"].as_str().unwrap().to_string();
    let stats: Value = serde_json::from_str(&cli(&["outbox", "stats", "--json"])).unwrap();
    assert_eq!(stats["mattermost"]["dead"], 1);
    let shown: Value = serde_json::from_str(&cli(&["outbox", "show", &id, "--json"])).unwrap();
    assert_eq!(shown["status"], "dead");
    assert!(cli(&["outbox", "list", "--dead"]).contains(&id));

    let out: Value = serde_json::from_str(&cli(&["outbox", "redrive", &id, "--json"])).unwrap();
    assert_eq!(out["redriven"][0], id.as_str());
    drain(&hub).await; // the receiver is fine now
    assert_eq!(mm.requests().len(), 2);
    mm.assert_no_rejections();
    let stats: Value = serde_json::from_str(&cli(&["outbox", "stats", "--json"])).unwrap();
    assert_eq!(stats["mattermost"]["dead"], 0);
    assert_eq!(stats["mattermost"]["pending"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_timer_envelope_drains_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let mm = Receiver::mattermost().await;
    let e = env(dir.path(), &mm, &[("ICAHUB_RETRY_FIRST_SECS", "1".into())]);
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let hub = hub_for(&e, clock.clone()).await;
    mm.script([Reply::new(503, "down")]);
    assert_eq!(hub.post_json(ALERT, alert("net", true)).await.status, 202);
    hub.idle().await;
    assert_eq!(mm.requests().len(), 1);
    // Make the retry due now.
    let row = hub
        .app
        .store
        .outbox_list(&OutboxFilter {
            status: Some(OutboxStatus::Pending),
            sink: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(row.len(), 1);
    clock.advance(Days::seconds(2)); // the first retry: 1 s ± 20%

    let sample = support::fixture("functions-host-timer-invocation.json");
    let r = hub.post_json("/dispatch", sample).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json["Outputs"].is_object());
    // Logs: the approval sweep's line, then the drain's.
    let drained = |r: &support::hub::Reply| {
        r.json["Logs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|l| l.starts_with("outbox drain"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(drained(&r).contains("delivered 1"), "{}", r.text);
    assert!(r.json["ReturnValue"].is_null());
    assert_eq!(mm.requests().len(), 2);

    let mut nulled = support::fixture_json("functions-host-timer-invocation.json");
    nulled["Data"]["myTimer"]["ScheduleStatus"] = Value::Null;
    let r = hub.post_json("/dispatch", nulled.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(drained(&r).contains("delivered 0"), "{}", r.text);
    let r = hub.post_json("/dispatch", "not json").await;
    assert_eq!(r.status, 400);
}
