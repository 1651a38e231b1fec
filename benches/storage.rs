//! How long one alert's atomic write (`Store::ingest`) takes on each backend: the embedded
//! SQLite store in a temporary directory, and Azure Table Storage as Azurite serves it (started
//! by the test support, as the integration tests do). Three cases: an alert opening a new
//! stream, one more alert on an existing stream, and a duplicate (found and skipped). Prints
//! the median and the 95th percentile per backend and case; then the dispatcher's three outbox
//! calls for one delivery (find the stream's due row, lease it, settle it delivered). Figures,
//! not assertions: this
//! machine is shared, so compare backends and cases with each other, not with a fixed number.
//! Run with `cargo bench --bench storage`; `cargo test --all-targets` runs it a few rounds as a
//! smoke test.

#[path = "../tests/support/mod.rs"]
mod support;

use chrono::Utc;
use icahub::domain::alert::{incident_fingerprint, Condition, NormalizedAlert, Severity, Source};
use icahub::domain::incident::stream_key;
use icahub::domain::routing::Routing;
use icahub::storage::sqlite::SqliteStore;
use icahub::storage::tables::TableStore;
use icahub::storage::{new_event_id, Delivery, DeliveryAlert, Settle, Store};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// An Azure Monitor alert of rule `rule`, deduplicated by `dedup`.
fn alert(rule: &str, dedup: &str) -> NormalizedAlert {
    let targets = vec![format!(
        "/subscriptions/s/resourcegroups/rg/providers/x/vm-{rule}"
    )];
    NormalizedAlert {
        source: Source::AzureMonitor,
        schema: "azureMonitorCommonAlertSchema".into(),
        kind: "Platform".into(),
        alert_id: format!("alert-{dedup}"),
        rule: rule.into(),
        rule_id: Some(format!("/rules/{rule}")),
        targets: targets.clone(),
        condition: Condition::Fired,
        severity: Severity::Low,
        fired_at: None,
        resolved_at: None,
        description: Some("CPU above 90%".into()),
        resource_group: Some("rg".into()),
        link: Some("https://portal.azure.com/#x".into()),
        details: BTreeMap::from([("metric".to_string(), "cpu".to_string())]),
        dedup_key: dedup.into(),
        fingerprint: incident_fingerprint(Source::AzureMonitor, rule, &targets),
    }
}

/// A one-alert delivery, as the ingress builds it.
fn delivery(a: NormalizedAlert) -> Delivery {
    let now = Utc::now();
    Delivery {
        request_id: uuid::Uuid::new_v4().to_string(),
        invocation_id: Some("inv-bench".into()),
        source: Source::AzureMonitor,
        received_at: now,
        raw_body: serde_json::to_string(&a).expect("an alert serializes"),
        alerts: vec![DeliveryAlert {
            event_id: new_event_id(stream_key(&a), now),
            raw_alert: None,
            alert: a,
        }],
    }
}

/// Every sink configured: each alert also writes its outbox rows, as in production.
fn all_sinks() -> Routing {
    Routing {
        mattermost: true,
        pagerduty: true,
        control_plane: true,
        ..Routing::default()
    }
}

/// The time of one ingest of `d`.
async fn time(store: &dyn Store, d: &Delivery) -> Duration {
    let t = Instant::now();
    store.ingest(d, &all_sinks()).await.expect("ingest");
    t.elapsed()
}

/// Median and 95th percentile of `v`.
fn figures(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let p95 = (v.len() * 95).div_ceil(100).max(1) - 1;
    (v[v.len() / 2], v[p95])
}

async fn bench(backend: &str, store: &dyn Store, rounds: usize) {
    let (mut new_stream, mut same_stream, mut duplicate) = (vec![], vec![], vec![]);
    // The stream the "existing stream" case adds to, opened before timing it.
    time(store, &delivery(alert("bench", "first"))).await;
    for i in 0..rounds {
        new_stream.push(time(store, &delivery(alert(&format!("bench{i}"), "x"))).await);
        same_stream.push(time(store, &delivery(alert("bench", &format!("y{i}")))).await);
        duplicate.push(time(store, &delivery(alert("bench", "y0"))).await);
    }
    for (case, v) in [
        ("new stream", new_stream),
        ("existing stream", same_stream),
        ("duplicate", duplicate),
    ] {
        let (median, p95) = figures(v);
        println!(
            "{backend:<14} {case:<16} {:>10.2} {:>10.2}",
            median.as_secs_f64() * 1e3,
            p95.as_secs_f64() * 1e3
        );
    }
}

/// The dispatcher's calls for one delivery, `rounds` times, each on a fresh stream's first row:
/// `outbox_due` for the stream, `outbox_lease`, `outbox_settle` (delivered).
async fn bench_outbox(backend: &str, store: &dyn Store, rounds: usize) {
    let (mut due, mut lease, mut settle) = (vec![], vec![], vec![]);
    for i in 0..rounds {
        let d = delivery(alert(&format!("obx{i}"), "o"));
        store.ingest(&d, &all_sinks()).await.expect("ingest");
        let stream = stream_key(&d.alerts[0].alert).to_string();
        let now = Utc::now() + chrono::Duration::seconds(1);
        let t = Instant::now();
        let row = store
            .outbox_due(now, 10, Some(&stream))
            .await
            .expect("outbox_due")
            .into_iter()
            .next()
            .expect("the alert wrote outbox rows");
        due.push(t.elapsed());
        let t = Instant::now();
        let leased = store
            .outbox_lease(&row, "bench", now, now + chrono::Duration::seconds(60))
            .await
            .expect("outbox_lease")
            .expect("nobody else holds the lease");
        lease.push(t.elapsed());
        let t = Instant::now();
        assert!(store
            .outbox_settle(&leased, &Settle::Delivered { at: now })
            .await
            .expect("outbox_settle"));
        settle.push(t.elapsed());
    }
    for (case, v) in [("due", due), ("lease", lease), ("settle", settle)] {
        let (median, p95) = figures(v);
        println!(
            "{backend:<14} {:<16} {:>10.2} {:>10.2}",
            format!("outbox {case}"),
            median.as_secs_f64() * 1e3,
            p95.as_secs_f64() * 1e3
        );
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this briefly as a smoke test.
    let rounds = if std::env::args().any(|a| a == "--bench") {
        200
    } else {
        3
    };
    println!(
        "{:<14} {:<16} {:>10} {:>10}   ({rounds} rounds)",
        "backend", "ingest", "median ms", "p95 ms"
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let sqlite = SqliteStore::open(dir.path()).expect("the embedded store opens");
    bench("embedded", &sqlite, rounds).await;
    bench_outbox("embedded", &sqlite, rounds).await;
    let tables = TableStore::connect(
        &support::azurite::connection_string(),
        &support::azurite::unique_prefix("bench"),
    )
    .await
    .expect("connect to Azurite");
    bench("azure_tables", &tables, rounds).await;
    bench_outbox("azure_tables", &tables, rounds).await;
}
