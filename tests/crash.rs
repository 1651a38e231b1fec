//! Crash safety on the embedded store and on Azurite: SIGKILL the server in the middle of a load of concurrent
//! alerts, restart it, and check that every alert that got a 202 is in the store.

mod support;

use icahub::storage::{sqlite::SqliteStore, tables::TableStore, Store};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::hub::ChildHub;

/// How many acknowledged alerts the server is killed after.
const ENOUGH: usize = 80;

/// The longest the load may take to get [`ENOUGH`] alerts acknowledged. A hang guard: a busy
/// machine makes the load slower, and only a hub that stops acknowledging fails here.
const LOAD_BOUND: Duration = Duration::from_secs(120);

/// Post distinct alerts from `workers` tasks until the server dies (it is killed once
/// [`ENOUGH`] are acknowledged); return the acknowledged event ids.
pub async fn load_until_killed(hub: &mut ChildHub, workers: usize) -> Vec<String> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    // How many are acknowledged, for the killer to wait on.
    let (count_tx, mut count) = tokio::sync::watch::channel(0usize);
    let count_tx = Arc::new(count_tx);
    let url = hub.url("/api/v1/azdev/alert");
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, url, acked, count_tx) =
            (client.clone(), url.clone(), acked.clone(), count_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = (w as u64) << 32;
            loop {
                n += 1;
                let body = icahub::cli::bench::azure_alert(n, 500, true).to_string();
                match client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().as_u16() == 202 => {
                        let v: serde_json::Value = match r.json().await {
                            Ok(v) => v,
                            Err(_) => return, // connection cut mid-body: not acknowledged
                        };
                        let id = v["events"][0]["event_id"].as_str().unwrap().to_string();
                        let total = {
                            let mut acked = acked.lock().unwrap();
                            acked.push(id);
                            acked.len()
                        };
                        count_tx.send_replace(total);
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    // Only the workers hold the sender now: if they all stop, the wait below ends at once.
    drop(count_tx);
    // Kill once enough alerts are acknowledged (an event, not a fixed time: a busy machine only
    // makes this take longer), with requests still in flight.
    // (`wait_for` hands back a read guard of the count: drop it at once, or the workers'
    // next `send_replace` would wait for it forever.)
    let enough = tokio::time::timeout(LOAD_BOUND, count.wait_for(|n| *n >= ENOUGH))
        .await
        .is_ok_and(|r| r.is_ok());
    let got = acked.lock().unwrap().len();
    assert!(
        enough,
        "only {got} of {ENOUGH} alerts acknowledged in {LOAD_BOUND:?}: the hub stopped acknowledging"
    );
    hub.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let v = acked.lock().unwrap().clone();
    v
}

/// Load, SIGKILL, restart on the same storage, then check every acknowledged id in `store`.
async fn crash_and_check(env: &[(&str, String)], store: &dyn Store) {
    let mut hub = ChildHub::spawn(env).await;
    let acked = load_until_killed(&mut hub, 16).await;
    assert!(
        acked.len() >= ENOUGH,
        "too few alerts before the kill: {}",
        acked.len()
    );

    // Restart on the same data: it must come up and accept more.
    let hub2 = ChildHub::spawn(env).await;
    let r = reqwest::Client::new()
        .post(hub2.url("/api/v1/azdev/alert"))
        .header("content-type", "application/json")
        .body(icahub::cli::bench::azure_alert(u64::MAX - 1, 10, true).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let mut missing = Vec::new();
    for id in &acked {
        if store.event(id).await.unwrap().is_none() {
            missing.push(id.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged alerts lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(store.count_events().await.unwrap() > acked.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_alert_survives_sigkill_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("ICAHUB_STORAGE", "embedded".to_string()),
        ("ICAHUB_DATA_DIR", dir.path().display().to_string()),
    ];
    let store = SqliteStore::open(dir.path()).unwrap();
    crash_and_check(&env, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_alert_survives_sigkill_azurite() {
    let cs = support::azurite::connection_string();
    let prefix = support::azurite::unique_prefix("crash");
    let env = [
        ("ICAHUB_STORAGE", "tables".to_string()),
        ("ICAHUB_TABLES_CONNECTION_STRING", cs.clone()),
        ("ICAHUB_TABLE_PREFIX", prefix.clone()),
    ];
    let store = TableStore::connect(&cs, &prefix).await.unwrap();
    crash_and_check(&env, &store).await;
}
