//! Two dispatchers (two hub instances) draining the same Azurite tables at once: every delivery
//! reaches the control plane exactly once by idempotency key, signed and authenticated.

mod support;

use chrono::{Duration as Days, Utc};
use icahub::clock::ManualClock;
use icahub::config::Config;
use icahub::sinks::signature::SigningKey;
use icahub::sinks::Sinks;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use support::hub::TestHub;
use support::receiver::{Receiver, Reply};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN: &str = "cp-token-123";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_dispatchers_deliver_each_row_exactly_once() {
    let cp = Receiver::control_plane(Some(TOKEN), vec![SigningKey::parse(SECRET).unwrap()]).await;
    let env: HashMap<String, String> = [
        ("ICAHUB_STORAGE", "tables".to_string()),
        (
            "ICAHUB_TABLES_CONNECTION_STRING",
            support::azurite::connection_string(),
        ),
        (
            "ICAHUB_TABLE_PREFIX",
            support::azurite::unique_prefix("disp"),
        ),
        ("ICAHUB_CONTROL_PLANE_URL", cp.base.clone()),
        ("ICAHUB_CONTROL_PLANE_TOKEN", TOKEN.to_string()),
        ("ICAHUB_CONTROL_PLANE_SIGNING_SECRETS", SECRET.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let hub = |clock: Arc<ManualClock>| {
        let env = env.clone();
        async move {
            let config = Config::from_lookup(|k| env.get(k).cloned(), Some(0)).unwrap();
            let sinks = Sinks::from_lookup(&|k| env.get(k).cloned()).unwrap();
            TestHub::start_with(config, sinks, clock).await
        }
    };
    let a = hub(clock.clone()).await;
    let b = hub(clock.clone()).await;

    // 20 alerts while the control plane is down: the fast path fails, rows wait.
    cp.down(Reply::new(503, "down"));
    for i in 0..20 {
        let body = icahub::cli::bench::azure_alert(i, 7, true).to_string();
        assert_eq!(a.post_json("/api/v1/azdev/alert", body).await.status, 202);
    }
    a.idle().await;
    let failed_attempts = cp.requests().len();

    // Back up, but slow; both instances drain at once.
    cp.up();
    cp.slow(Duration::from_millis(30));
    clock.advance(Days::minutes(10));
    let (ra, rb) = tokio::join!(
        a.app.dispatcher.drain(Duration::from_secs(60)),
        b.app.dispatcher.drain(Duration::from_secs(60))
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    cp.assert_no_rejections();
    let delivered = &cp.requests()[failed_attempts..];
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for r in delivered {
        assert_eq!(r.header("authorization"), Some(&*format!("Bearer {TOKEN}")));
        let key = r
            .header("idempotency-key")
            .expect("Idempotency-Key")
            .to_string();
        assert_eq!(r.header("webhook-id"), Some(key.as_str()));
        *by_key.entry(key).or_default() += 1;
    }
    // Each alert: its alert record and its incident change (opened or updated).
    assert_eq!(by_key.len(), 40, "every delivery arrived");
    assert!(
        by_key.values().all(|&n| n == 1),
        "exactly once each: {by_key:?}"
    );
    assert_eq!(ra.delivered + rb.delivered, 40);
    assert_eq!(
        ra.lost_leases + rb.lost_leases,
        0,
        "no lease was lost while held"
    );
    // They really competed: one found rows the other had leased, or both delivered some.
    assert!(
        ra.skipped + rb.skipped > 0 || (ra.delivered > 0 && rb.delivered > 0),
        "the two dispatchers did not overlap: {ra:?} {rb:?}"
    );
    // The paths follow the ICA REST API.
    assert!(delivered.iter().any(|r| r.path == "/api/v1/azdev/alert"));
    assert!(delivered.iter().any(|r| r.path == "/api/v1/azdev/incident"));
}
