//! Integration tests of the Azure Table Storage backend ([`icahub::storage::tables::TableStore`])
//! against a real Azurite started by `support::azurite` (one per test binary, one table prefix
//! per test, so tests run in parallel). Deliveries are built by hand from `NormalizedAlert`s.

mod support;

use chrono::{Duration as ChronoDuration, Utc};
use icahub::domain::alert::{incident_fingerprint, Condition, NormalizedAlert, Severity, Source};
use icahub::domain::incident::{stream_key, IncidentAction, IncidentStatus};
use icahub::domain::routing::{OutboxDraft, Routing, Sink};
use icahub::storage::prelude::*;
use icahub::storage::tables::TableStore;
use icahub::storage::{
    new_event_id, Delivery, DeliveryAlert, DocCommit, DocWrite, Expect, IncidentFilter,
    OutboxStatus, Settle, Store, StoreError,
};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use support::azurite;

async fn store(test: &str) -> TableStore {
    TableStore::connect(&azurite::connection_string(), &azurite::unique_prefix(test))
        .await
        .expect("connect to Azurite")
}

fn alert(rule: &str, cond: Condition, sev: Severity, dedup: &str) -> NormalizedAlert {
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
        condition: cond,
        severity: sev,
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

fn raw_of(a: &NormalizedAlert) -> String {
    serde_json::to_string(a).unwrap()
}

/// A delivery as the ingress builds it: one alert is the whole body, several carry their own JSON.
fn delivery(alerts: Vec<NormalizedAlert>) -> Delivery {
    let now = Utc::now();
    let single = alerts.len() == 1;
    let raw_body = serde_json::to_string(&alerts).unwrap();
    Delivery {
        request_id: uuid::Uuid::new_v4().to_string(),
        invocation_id: Some("inv-1".into()),
        source: Source::AzureMonitor,
        received_at: now,
        raw_body: if single { raw_of(&alerts[0]) } else { raw_body },
        alerts: alerts
            .into_iter()
            .map(|a| DeliveryAlert {
                event_id: new_event_id(stream_key(&a), now),
                raw_alert: (!single).then(|| raw_of(&a)),
                alert: a,
            })
            .collect(),
    }
}

fn all_incidents() -> IncidentFilter {
    IncidentFilter {
        limit: 1000,
        ..IncidentFilter::default()
    }
}

fn all_sinks() -> Routing {
    icahub::storage::conformance::all_sinks()
}

#[tokio::test]
async fn new_alert_opens_an_incident_and_stores_the_event() {
    let s = store("open").await;
    let d = delivery(vec![alert("cpu", Condition::Fired, Severity::High, "k1")]);
    let out = s.ingest(&d, &Routing::default()).await.unwrap();
    assert_eq!(out.len(), 1);
    let o = &out[0];
    assert!(!o.duplicate);
    assert_eq!(o.action, IncidentAction::Opened);
    assert_eq!(o.event_id, d.alerts[0].event_id);
    let inc_id = o.incident_id.clone().unwrap();
    assert!(inc_id.ends_with("-1"));

    let inc = s.incident(&inc_id).await.unwrap().unwrap();
    assert_eq!(inc.status, IncidentStatus::Open);
    assert_eq!(inc.event_count, 1);
    assert_eq!(inc.title, "cpu");
    assert_eq!(inc.targets, d.alerts[0].alert.targets);
    assert_eq!(inc.description.as_deref(), Some("CPU above 90%"));
    assert_eq!(inc.first_event_id, o.event_id);

    let ev = s.event(&o.event_id).await.unwrap().unwrap();
    assert_eq!(ev.raw, d.raw_body);
    assert_eq!(ev.incident_id.as_deref(), Some(inc_id.as_str()));
    assert_eq!(ev.request_id, d.request_id);
    assert_eq!(ev.invocation_id.as_deref(), Some("inv-1"));
    assert_eq!(ev.condition, Condition::Fired);
    assert_eq!(ev.dedup_key, "k1");
    assert_eq!(ev.received_at, d.received_at);
    assert_eq!(s.count_events().await.unwrap(), 1);
    // Single-alert deliveries keep their body in the event, not in the requests table.
    assert!(s.raw_request(&d.request_id).await.unwrap().is_none());
    // Unknown or malformed ids are simply absent.
    assert!(s
        .incident("INC-0123456789abcdef-9")
        .await
        .unwrap()
        .is_none());
    assert!(s.event("EVT-0123456789abcdef-x'y").await.unwrap().is_none());
    assert!(s.incident("garbage").await.unwrap().is_none());
    s.ping().await.unwrap();
    assert_eq!(s.backend(), "azure_tables");
    assert!(!s.location().contains(azurite::ACCOUNT_KEY));
}

#[tokio::test]
async fn same_dedup_key_is_a_duplicate() {
    let s = store("dup").await;
    let first = delivery(vec![alert("disk", Condition::Fired, Severity::Low, "same")]);
    let again = delivery(vec![alert("disk", Condition::Fired, Severity::Low, "same")]);
    let o1 = s
        .ingest(&first, &Routing::default())
        .await
        .unwrap()
        .remove(0);
    let o2 = s
        .ingest(&again, &Routing::default())
        .await
        .unwrap()
        .remove(0);
    assert!(!o1.duplicate);
    assert!(o2.duplicate);
    assert_eq!(o2.event_id, o1.event_id);
    assert_eq!(o2.incident_id, o1.incident_id);
    assert_eq!(o2.action, IncidentAction::None);
    let stream = stream_key(&first.alerts[0].alert).to_string();
    assert_eq!(s.stream_events(&stream).await.unwrap().len(), 1);
    assert_eq!(s.count_events().await.unwrap(), 1);
    let inc = s
        .incident(o1.incident_id.as_ref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inc.event_count, 1);
}

#[tokio::test]
async fn fired_then_resolved_resolves() {
    let s = store("resolve").await;
    let fired = delivery(vec![alert("mem", Condition::Fired, Severity::Medium, "f")]);
    let resolved = delivery(vec![alert(
        "mem",
        Condition::Resolved,
        Severity::Medium,
        "r",
    )]);
    let o1 = s
        .ingest(&fired, &Routing::default())
        .await
        .unwrap()
        .remove(0);
    let o2 = s
        .ingest(&resolved, &Routing::default())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(o2.action, IncidentAction::Resolved);
    assert_eq!(o2.incident_id, o1.incident_id);
    let inc = s
        .incident(o1.incident_id.as_ref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inc.status, IncidentStatus::Resolved);
    assert!(inc.resolved_at.is_some());
    assert_eq!(inc.event_count, 2);
    assert_eq!(inc.last_event_id, o2.event_id);
    let stream = stream_key(&fired.alerts[0].alert).to_string();
    let evs = s.stream_events(&stream).await.unwrap();
    let ids: Vec<_> = evs.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, vec![o1.event_id.clone(), o2.event_id.clone()]);
    // A new firing opens incident 2 of the stream.
    let again = delivery(vec![alert("mem", Condition::Fired, Severity::Medium, "f2")]);
    let o3 = s
        .ingest(&again, &Routing::default())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(o3.action, IncidentAction::Opened);
    assert!(o3.incident_id.unwrap().ends_with("-2"));
    // A resolve with nothing open changes nothing.
    let stray = delivery(vec![alert(
        "other",
        Condition::Resolved,
        Severity::Low,
        "z",
    )]);
    let o4 = s
        .ingest(&stray, &Routing::default())
        .await
        .unwrap()
        .remove(0);
    assert_eq!((o4.action, o4.incident_id), (IncidentAction::None, None));
}

#[tokio::test]
async fn events_outbox_and_incident_are_written_together() {
    let s = store("outbox").await;
    let fired = delivery(vec![alert(
        "net",
        Condition::Fired,
        Severity::Critical,
        "a",
    )]);
    let attach = delivery(vec![alert(
        "net",
        Condition::Fired,
        Severity::Critical,
        "b",
    )]);
    let resolved = delivery(vec![alert(
        "net",
        Condition::Resolved,
        Severity::Critical,
        "c",
    )]);
    for d in [&fired, &attach, &resolved] {
        s.ingest(d, &all_sinks()).await.unwrap();
    }
    let stream = stream_key(&fired.alerts[0].alert).to_string();
    let rows = s.stream_outbox(&stream).await.unwrap();
    // opened: cp alert + cp incident + mattermost + pagerduty; attached: cp alert + cp
    // incident; resolved: 4 again.
    assert_eq!(rows.len(), 10, "{rows:#?}");
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    assert!(rows
        .iter()
        .all(|r| r.status == OutboxStatus::Pending && r.attempts == 0));
    // Drafts come grouped by route (see `Routing::drafts`), so seq 1 need not be the control
    // plane's; its first row is the alert record of the first event.
    let cp = rows
        .iter()
        .find(|r| r.sink == Sink::ControlPlane)
        .expect("a control-plane row");
    assert_eq!(cp.kind, "alert.received");
    assert_eq!(cp.event_id, fired.alerts[0].event_id);
    assert_eq!(cp.payload["event_id"], fired.alerts[0].event_id.as_str());
    let kinds: Vec<(Sink, &str)> = rows.iter().map(|r| (r.sink, r.kind.as_str())).collect();
    assert!(kinds.contains(&(Sink::Pagerduty, "incident.resolved")));
    assert!(kinds.contains(&(Sink::Mattermost, "incident.opened")));
    let keys: HashSet<_> = rows.iter().map(|r| r.idempotency_key.clone()).collect();
    assert_eq!(keys.len(), 10);
    assert_eq!(s.stream_events(&stream).await.unwrap().len(), 3);
    let incs = s.incidents(&all_incidents()).await.unwrap();
    assert_eq!(incs.len(), 1);
    assert_eq!(incs[0].event_count, 3);
    assert_eq!(incs[0].status, IncidentStatus::Resolved);
}

#[tokio::test]
async fn hundred_concurrent_copies_store_one_event_and_one_incident() {
    let s = Arc::new(store("hundred").await);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let d = delivery(vec![alert(
                "storm",
                Condition::Fired,
                Severity::High,
                "one",
            )]);
            s.ingest(&d, &all_sinks()).await.map(|mut o| o.remove(0))
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap().expect("ingest"));
    }
    let new: Vec<_> = outcomes.iter().filter(|o| !o.duplicate).collect();
    assert_eq!(new.len(), 1, "exactly one copy is new");
    assert!(outcomes.iter().all(|o| o.event_id == new[0].event_id));
    assert!(outcomes.iter().all(|o| o.incident_id == new[0].incident_id));
    assert_eq!(s.count_events().await.unwrap(), 1);
    let incs = s.incidents(&all_incidents()).await.unwrap();
    assert_eq!(incs.len(), 1);
    assert_eq!(incs[0].event_count, 1);
    assert_eq!(s.stream_outbox(&incs[0].stream).await.unwrap().len(), 4);
}

#[tokio::test]
async fn two_hub_instances_lose_no_update() {
    let prefix = azurite::unique_prefix("twohubs");
    let cs = azurite::connection_string();
    let a = Arc::new(TableStore::connect(&cs, &prefix).await.unwrap());
    let b = Arc::new(TableStore::connect(&cs, &prefix).await.unwrap());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let d = delivery(vec![alert(
                "busy",
                Condition::Fired,
                Severity::Medium,
                &format!("k{i}"),
            )]);
            // A sender whose request got 503 (contention) retries it: so do we.
            let mut contention = 0;
            loop {
                match s.ingest(&d, &all_sinks()).await {
                    Ok(mut o) => return (o.remove(0), contention),
                    Err(StoreError::Contention(_)) => contention += 1,
                    Err(e) => panic!("ingest: {e}"),
                }
            }
        }));
    }
    let mut outcomes = Vec::new();
    let mut contention = 0;
    for t in tasks {
        let (o, c) = t.await.unwrap();
        outcomes.push(o);
        contention += c;
    }
    eprintln!(
        "two instances, 50 concurrent alerts on one stream: {:?}, {contention} Contention errors",
        started.elapsed()
    );
    assert!(outcomes.iter().all(|o| !o.duplicate));
    let opened = outcomes
        .iter()
        .filter(|o| o.action == IncidentAction::Opened)
        .count();
    let attached = outcomes
        .iter()
        .filter(|o| o.action == IncidentAction::Attached)
        .count();
    assert_eq!((opened, attached), (1, 49));
    let incs = a.incidents(&all_incidents()).await.unwrap();
    assert_eq!(incs.len(), 1);
    assert_eq!(incs[0].event_count, 50);
    let events = b.stream_events(&incs[0].stream).await.unwrap();
    assert_eq!(events.len(), 50);
    let ids: HashSet<_> = events.iter().map(|e| e.id.clone()).collect();
    assert!(outcomes.iter().all(|o| ids.contains(&o.event_id)));
    // 1 opening (3 rows: medium severity pages nobody) + 49 attachments (2 rows each),
    // numbered without gaps.
    let seqs: Vec<u64> = a
        .stream_outbox(&incs[0].stream)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, (1..=3 + 49 * 2).collect::<Vec<_>>());
}

#[tokio::test]
async fn large_raw_bodies_round_trip_byte_exact() {
    let s = store("raw").await;
    // ~300 KB with multi-byte characters straddling the 64 KiB chunk boundaries.
    let filler: String = "é€😀abc\u{0}\"\\\n".chars().cycle().take(130_000).collect();
    let mut a = alert("big", Condition::Fired, Severity::Low, "big");
    a.description = Some("x".repeat(40_000));
    let mut d = delivery(vec![a]);
    d.raw_body = serde_json::json!({ "data": filler }).to_string();
    assert!(d.raw_body.len() > 300_000, "{}", d.raw_body.len());
    let o = s.ingest(&d, &Routing::default()).await.unwrap().remove(0);
    let ev = s.event(&o.event_id).await.unwrap().unwrap();
    assert_eq!(ev.raw.as_bytes(), d.raw_body.as_bytes());
    let inc = s
        .incident(o.incident_id.as_ref().unwrap())
        .await
        .unwrap()
        .unwrap();
    // Incidents keep a bounded description; the raw body above keeps it whole.
    let desc = inc.description.unwrap();
    assert_eq!(
        desc.chars().count(),
        icahub::domain::alert::MAX_DESCRIPTION_CHARS
    );
    assert!(desc.ends_with('…'));

    // The same size as a multi-alert request body, kept in the requests table.
    let mut m = delivery(vec![
        alert("m1", Condition::Fired, Severity::Low, "m1"),
        alert("m2", Condition::Fired, Severity::Low, "m2"),
    ]);
    m.raw_body = d.raw_body.clone();
    s.ingest(&m, &Routing::default()).await.unwrap();
    let req = s.raw_request(&m.request_id).await.unwrap().unwrap();
    assert_eq!(req.body.as_bytes(), d.raw_body.as_bytes());
    assert_eq!(req.received_at, m.received_at);
    assert_eq!(req.source, Source::AzureMonitor);
}

#[tokio::test]
async fn multi_alert_deliveries_keep_the_request_body_when_something_is_new() {
    let s = store("multi").await;
    let alerts = vec![
        alert("r1", Condition::Fired, Severity::High, "x1"),
        alert("r2", Condition::Fired, Severity::High, "x2"),
        alert("r1", Condition::Fired, Severity::High, "x3"),
    ];
    let d = delivery(alerts.clone());
    let out = s.ingest(&d, &Routing::default()).await.unwrap();
    let actions: Vec<_> = out.iter().map(|o| o.action).collect();
    assert_eq!(
        actions,
        vec![
            IncidentAction::Opened,
            IncidentAction::Opened,
            IncidentAction::Attached
        ]
    );
    for (o, da) in out.iter().zip(&d.alerts) {
        assert_eq!(o.event_id, da.event_id);
        let ev = s.event(&o.event_id).await.unwrap().unwrap();
        assert_eq!(Some(ev.raw), da.raw_alert.clone());
    }
    assert_eq!(
        s.raw_request(&d.request_id).await.unwrap().unwrap().body,
        d.raw_body
    );

    // Redelivered in full: all duplicates, so no second copy of the body.
    let again = delivery(alerts);
    let out = s.ingest(&again, &Routing::default()).await.unwrap();
    assert!(out.iter().all(|o| o.duplicate));
    assert!(s.raw_request(&again.request_id).await.unwrap().is_none());

    // Zero alerts: the body is all there is, keep it.
    let mut empty = delivery(vec![]);
    empty.raw_body = r#"{"alerts":[]}"#.into();
    assert!(s
        .ingest(&empty, &Routing::default())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.raw_request(&empty.request_id)
            .await
            .unwrap()
            .unwrap()
            .body,
        empty.raw_body
    );
    assert_eq!(s.count_events().await.unwrap(), 3);
}

#[tokio::test]
async fn incident_filters() {
    let s = store("filters").await;
    let cases = [
        ("f-crit", Severity::Critical, false),
        ("f-high", Severity::High, false),
        ("f-high2", Severity::High, true),
        ("f-low", Severity::Low, false),
    ];
    // Fired a minute apart, so "newest first" is given, not left to the clock's resolution.
    let first_fired = Utc::now() - ChronoDuration::hours(1);
    for (minute, (rule, sev, resolve)) in (0..).zip(cases) {
        let mut fired = alert(rule, Condition::Fired, sev, rule);
        fired.fired_at = Some(first_fired + ChronoDuration::minutes(minute));
        s.ingest(&delivery(vec![fired]), &Routing::default())
            .await
            .unwrap();
        if resolve {
            let d = delivery(vec![alert(
                rule,
                Condition::Resolved,
                sev,
                &format!("{rule}-r"),
            )]);
            s.ingest(&d, &Routing::default()).await.unwrap();
        }
    }
    let all = s.incidents(&all_incidents()).await.unwrap();
    let titles: Vec<_> = all.iter().map(|i| i.title.as_str()).collect();
    assert_eq!(
        titles,
        vec!["f-low", "f-high2", "f-high", "f-crit"],
        "newest first"
    );

    let f = |status, severity, limit| IncidentFilter {
        status,
        severity,
        since: None,
        limit,
    };
    let open = s
        .incidents(&f(Some(IncidentStatus::Open), None, 9))
        .await
        .unwrap();
    assert_eq!(open.len(), 3);
    let resolved = s
        .incidents(&f(Some(IncidentStatus::Resolved), None, 9))
        .await
        .unwrap();
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].title, "f-high2");
    let high = s
        .incidents(&f(None, Some(Severity::High), 9))
        .await
        .unwrap();
    assert_eq!(high.len(), 2);
    let open_high = s
        .incidents(&f(Some(IncidentStatus::Open), Some(Severity::High), 9))
        .await
        .unwrap();
    assert_eq!(open_high.len(), 1);
    assert_eq!(open_high[0].title, "f-high");
    assert!(s.incidents(&f(None, None, 0)).await.unwrap().is_empty());
    let two = s.incidents(&f(None, None, 2)).await.unwrap();
    assert_eq!(
        two.iter().map(|i| i.title.as_str()).collect::<Vec<_>>(),
        vec!["f-low", "f-high2"]
    );

    let since = IncidentFilter {
        since: Some(all[1].opened_at),
        ..all_incidents()
    };
    let recent = s.incidents(&since).await.unwrap();
    assert_eq!(recent.len(), 2);
    let future = IncidentFilter {
        since: Some(Utc::now() + ChronoDuration::hours(1)),
        ..all_incidents()
    };
    assert!(s.incidents(&future).await.unwrap().is_empty());
}

#[tokio::test]
async fn configuration_errors_are_clear_and_keep_the_key_secret() {
    let key = azurite::ACCOUNT_KEY;
    for (cs, prefix) in [
        (format!("AccountName=a;AccountKey={key};Nonsense=1"), "p"),
        ("no equals sign".to_string(), "p"),
        (format!("AccountKey={key}"), "p"),
        (azurite::connection_string(), "1bad"),
        (azurite::connection_string(), "bad-prefix"),
    ] {
        match TableStore::connect(&cs, prefix).await {
            Err(StoreError::Config(msg)) => assert!(!msg.contains(key), "{msg}"),
            Err(e) => panic!("{cs}: expected Config, got {e}"),
            Ok(_) => panic!("{cs}: accepted"),
        }
    }
    // Nothing listens there: unavailable, quickly.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cs = format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};\
         TableEndpoint=http://127.0.0.1:{closed}/devstoreaccount1"
    );
    match tokio::time::timeout(support::wait::HANG_GUARD, TableStore::connect(&cs, "p")).await {
        Err(_) => panic!("connecting to a closed port did not give up"),
        Ok(Err(StoreError::Unavailable(msg))) => assert!(!msg.contains(key), "{msg}"),
        Ok(Err(e)) => panic!("expected Unavailable, got {e}"),
        Ok(Ok(_)) => panic!("connected to a closed port"),
    }
    // A wrong key is a configuration problem.
    let wrong = azurite::connection_string().replace(key, &"A".repeat(88));
    assert!(matches!(
        TableStore::connect(&wrong, "p").await,
        Err(StoreError::Config(_))
    ));
}

/// Outbox rows on one fresh stream of `s`, due a second from now; returns (stream, now).
async fn outbox_stream(s: &TableStore, rule: &str) -> (String, chrono::DateTime<Utc>) {
    let d = delivery(vec![alert(rule, Condition::Fired, Severity::Critical, "o")]);
    s.ingest(&d, &all_sinks()).await.unwrap();
    let stream = stream_key(&d.alerts[0].alert).to_string();
    (stream, Utc::now() + ChronoDuration::seconds(1))
}

#[tokio::test]
async fn outbox_lease_fields_and_etags_round_trip() {
    let s = store("obx").await;
    let (stream, now) = outbox_stream(&s, "obx").await;
    let row = s
        .outbox_due(now, 10, Some(&stream))
        .await
        .unwrap()
        .remove(0);
    assert!(row.version.is_some(), "due rows carry their ETag");
    let until = now + ChronoDuration::seconds(60);
    let leased = s
        .outbox_lease(&row, "me", now, until)
        .await
        .unwrap()
        .expect("leases");
    assert_ne!(leased.version, row.version, "the lease changes the ETag");
    let stored = s.outbox_get(&stream, row.seq).await.unwrap().unwrap();
    assert_eq!(
        stored, leased,
        "the returned row is the stored one, ETag included"
    );
    assert_eq!(stored.lease_owner.as_deref(), Some("me"));
    assert_eq!(stored.lease_until, Some(until));
    // A retry records the error and releases the lease.
    let retry_at = now + ChronoDuration::seconds(5);
    assert!(s
        .outbox_settle(
            &leased,
            &Settle::Retry {
                next_attempt_at: retry_at,
                error: "HTTP 503".into()
            }
        )
        .await
        .unwrap());
    let r = s.outbox_get(&stream, row.seq).await.unwrap().unwrap();
    assert_eq!((r.lease_owner.as_deref(), r.lease_until), (None, None));
    assert_eq!(r.last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(r.next_attempt_at, retry_at);
    assert_eq!(r.attempts, 1);
    // Settling the same lease again: the ETag moved on, nothing is written.
    assert!(!s
        .outbox_settle(&leased, &Settle::Delivered { at: now })
        .await
        .unwrap());
    // Delivered clears the error and records when.
    let l = s
        .outbox_lease(&r, "me", retry_at, retry_at + ChronoDuration::seconds(60))
        .await
        .unwrap()
        .unwrap();
    assert!(s
        .outbox_settle(&l, &Settle::Delivered { at: retry_at })
        .await
        .unwrap());
    let r = s.outbox_get(&stream, row.seq).await.unwrap().unwrap();
    assert_eq!(r.status, OutboxStatus::Delivered);
    assert_eq!(r.delivered_at, Some(retry_at));
    assert_eq!(r.last_error, None);
    assert_eq!(r.attempts, 2);
    // Delivered rows can be neither leased nor redriven.
    assert!(s
        .outbox_lease(&r, "me", retry_at, retry_at)
        .await
        .unwrap()
        .is_none());
    assert!(!s.outbox_redrive(&stream, row.seq, now).await.unwrap());
    // Unknown or unusable keys are simply absent.
    assert!(s.outbox_get(&stream, 9999).await.unwrap().is_none());
    assert!(s.outbox_get("no/such", 1).await.unwrap().is_none());
    assert!(s
        .outbox_due(now, 10, Some("no/such"))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn outbox_rows_without_a_version_are_read_first() {
    let s = store("obxnov").await;
    let (stream, now) = outbox_stream(&s, "obxnov").await;
    let mut row = s
        .outbox_due(now, 10, Some(&stream))
        .await
        .unwrap()
        .remove(0);
    row.version = None;
    let mut a = s
        .outbox_lease(&row, "a", now, now + ChronoDuration::seconds(60))
        .await
        .unwrap()
        .expect("leases after reading the row");
    assert!(s
        .outbox_lease(&row, "b", now, now + ChronoDuration::seconds(60))
        .await
        .unwrap()
        .is_none());
    // a's lease expires, b takes the row; a's settle without an ETag compares the lease.
    let later = now + ChronoDuration::seconds(61);
    let b = s
        .outbox_lease(&row, "b", later, later + ChronoDuration::seconds(60))
        .await
        .unwrap()
        .expect("b leases after expiry");
    a.version = None;
    assert!(!s
        .outbox_settle(&a, &Settle::Delivered { at: later })
        .await
        .unwrap());
    let mut b2 = b.clone();
    b2.version = None;
    assert!(s
        .outbox_settle(
            &b2,
            &Settle::Dead {
                error: "gone".into()
            }
        )
        .await
        .unwrap());
    let dead = s.outbox_get(&stream, row.seq).await.unwrap().unwrap();
    assert_eq!(dead.status, OutboxStatus::Dead);
    assert_eq!(dead.lease_owner, None);
}

fn doc_write(key: &str, value: serde_json::Value, expect: Expect) -> DocWrite {
    DocWrite {
        key: key.into(),
        value,
        expect,
    }
}

fn doc_commit(partition: &str, writes: Vec<DocWrite>) -> DocCommit {
    DocCommit {
        partition: partition.into(),
        writes,
        outbox: Vec::new(),
        record_id: "REC-tables".into(),
        now: Utc::now(),
    }
}

fn draft(key: &str) -> OutboxDraft {
    OutboxDraft {
        sink: Sink::ControlPlane,
        kind: "run.start".into(),
        idempotency_key: key.into(),
        payload: serde_json::json!({"k": key}),
    }
}

#[tokio::test]
async fn document_versions_are_etags_from_reads_and_lists_alike() {
    let s = store("docetag").await;
    let p = "docs1";
    assert!(s
        .doc_commit(&doc_commit(
            p,
            vec![doc_write("x", serde_json::json!(1), Expect::Absent)]
        ))
        .await
        .unwrap());
    let got = s.doc_get(p, "x").await.unwrap().unwrap();
    let listed = s.doc_list(p, "").await.unwrap().remove(0);
    assert_eq!(got, listed, "point read and list agree, version included");
    assert!(got.version.contains("datetime"), "an ETag: {}", got.version);
    // The listed version is good for an update.
    assert!(s
        .doc_commit(&doc_commit(
            p,
            vec![doc_write(
                "x",
                serde_json::json!(2),
                Expect::Version(listed.version.clone())
            )]
        ))
        .await
        .unwrap());
    // A version that is no ETag of this store (the embedded store's counter, a wildcard, nothing)
    // never matches, and writes nothing.
    for v in ["1", "*", "", "\"1\"", "W/\"1\""] {
        assert!(
            !s.doc_commit(&doc_commit(
                p,
                vec![doc_write(
                    "x",
                    serde_json::json!(3),
                    Expect::Version(v.into())
                )]
            ))
            .await
            .unwrap(),
            "{v:?}"
        );
    }
    // Updating a document that does not exist fails too (404), writing nothing.
    assert!(!s
        .doc_commit(&doc_commit(
            p,
            vec![
                doc_write("y", serde_json::json!(1), Expect::Absent),
                doc_write("gone", serde_json::json!(1), Expect::Version(got.version)),
            ]
        ))
        .await
        .unwrap());
    assert!(s.doc_get(p, "y").await.unwrap().is_none());
    assert_eq!(
        s.doc_get(p, "x").await.unwrap().unwrap().value,
        serde_json::json!(2)
    );
}

#[tokio::test]
async fn document_keys_round_trip_and_bad_names_are_refused() {
    let s = store("dockeys").await;
    let p = "keys1";
    let keys = [
        "run|it's|1",
        "run|a b",
        "run|100%+x&y=z",
        "run|ü€😀",
        "run|~",
        "run|(x)'",
        "runs",
    ];
    let writes = keys
        .iter()
        .map(|k| doc_write(k, serde_json::json!({ "k": k }), Expect::Absent))
        .collect();
    assert!(s.doc_commit(&doc_commit(p, writes)).await.unwrap());
    for k in keys {
        let d = s
            .doc_get(p, k)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{k}"));
        assert_eq!(d.key, k);
        assert_eq!(d.value["k"], k);
        // And updates by key work (the key is in the URL of an update).
        assert!(
            s.doc_commit(&doc_commit(
                p,
                vec![doc_write(
                    k,
                    serde_json::json!(0),
                    Expect::Version(d.version)
                )]
            ))
            .await
            .unwrap(),
            "{k}"
        );
    }
    let listed: Vec<String> = s
        .doc_list(p, "run|")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.key)
        .collect();
    let mut expected: Vec<String> = keys[..6].iter().map(|k| k.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(s.doc_list(p, "run|ü").await.unwrap().len(), 1);
    assert_eq!(s.doc_list(p, "run|~").await.unwrap().len(), 1);
    assert_eq!(s.doc_list(p, "run|a b").await.unwrap().len(), 1);
    assert_eq!(s.doc_list(p, "").await.unwrap().len(), keys.len());
    // Names Table Storage cannot hold: refused on write, simply absent on read.
    for bad in ["a/b", "a\\b", "a#b", "a?b", "a\nb"] {
        let r = s
            .doc_commit(&doc_commit(
                p,
                vec![doc_write(bad, serde_json::json!(1), Expect::Absent)],
            ))
            .await;
        assert!(
            matches!(&r, Err(StoreError::Corrupt(m)) if m.contains(&format!("{bad:?}"))),
            "{bad:?}: {r:?}"
        );
        assert!(s.doc_get(p, bad).await.unwrap().is_none());
        assert!(s.doc_list(p, bad).await.unwrap().is_empty());
    }
    for bad_partition in ["", "a-b", "a|b", &"x".repeat(64)] {
        let r = s
            .doc_commit(&doc_commit(
                bad_partition,
                vec![doc_write("k", serde_json::json!(1), Expect::Absent)],
            ))
            .await;
        assert!(
            matches!(r, Err(StoreError::Corrupt(_))),
            "{bad_partition:?}"
        );
        assert!(s.doc_get(bad_partition, "k").await.unwrap().is_none());
        assert!(s.doc_list(bad_partition, "").await.unwrap().is_empty());
    }
    // One key twice in a commit cannot be one transaction.
    let r = s
        .doc_commit(&doc_commit(
            p,
            vec![
                doc_write("twice", serde_json::json!(1), Expect::Absent),
                doc_write("twice", serde_json::json!(2), Expect::Absent),
            ],
        ))
        .await;
    assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");
}

#[tokio::test]
async fn document_commits_are_bounded_by_what_one_transaction_holds() {
    let s = store("doclimit").await;
    let p = "limit1";
    // 50 documents (each with its audit entry) + 1 outbox row + the head: 102 operations.
    let mut c = doc_commit(
        p,
        (0..50)
            .map(|i| doc_write(&format!("d{i:03}"), serde_json::json!(i), Expect::Absent))
            .collect(),
    );
    c.outbox = vec![draft("o1")];
    let r = s.doc_commit(&c).await;
    assert!(
        matches!(&r, Err(StoreError::Corrupt(m)) if m.contains("102 operations")),
        "{r:?}"
    );
    // 49 x 2 + 1 + head = 100: fine.
    c.writes.pop();
    assert!(s.doc_commit(&c).await.unwrap());
    assert_eq!(s.doc_list(p, "d").await.unwrap().len(), 49);
    assert_eq!(s.stream_outbox(p).await.unwrap().len(), 1);
    // A document over the per-entity limit, and a commit over the 4 MiB transaction limit.
    let huge = "x".repeat(1_000_000);
    let r = s
        .doc_commit(&doc_commit(
            p,
            vec![doc_write("huge", serde_json::json!(huge), Expect::Absent)],
        ))
        .await;
    assert!(
        matches!(&r, Err(StoreError::Corrupt(m)) if m.contains("huge")),
        "{r:?}"
    );
    let big = "x".repeat(800_000);
    let r = s
        .doc_commit(&doc_commit(
            p,
            (0..5)
                .map(|i| doc_write(&format!("big{i}"), serde_json::json!(big), Expect::Absent))
                .collect(),
        ))
        .await;
    assert!(
        matches!(&r, Err(StoreError::Corrupt(m)) if m.contains("4 MiB")),
        "{r:?}"
    );
    // A large document fits, with its audit entry (which repeats it).
    let docs: Vec<DocWrite> = (0..1)
        .map(|i| doc_write(&format!("big{i}"), serde_json::json!(big), Expect::Absent))
        .collect();
    assert!(s.doc_commit(&doc_commit(p, docs)).await.unwrap());
    assert_eq!(
        s.doc_list(p, "big").await.unwrap()[0].value,
        serde_json::json!(big)
    );
}

#[tokio::test]
async fn document_outbox_rows_share_the_stream_head_with_ingest() {
    let s = store("dochead").await;
    // An incident stream with an open incident and outbox rows 1..=4.
    let fired = delivery(vec![alert("dh", Condition::Fired, Severity::Critical, "1")]);
    let out = s.ingest(&fired, &all_sinks()).await.unwrap();
    let stream = stream_key(&fired.alerts[0].alert).to_string();
    let n0 = s.stream_outbox(&stream).await.unwrap().len() as u64;
    assert!(n0 > 0);
    let mut c = doc_commit(
        &stream,
        vec![doc_write("state", serde_json::json!("a"), Expect::Absent)],
    );
    c.outbox = vec![draft("h1"), draft("h2")];
    assert!(s.doc_commit(&c).await.unwrap());
    // The next alert attaches to the same open incident and numbers its rows after ours.
    let again = delivery(vec![alert("dh", Condition::Fired, Severity::Critical, "2")]);
    let out2 = s.ingest(&again, &all_sinks()).await.unwrap();
    assert_eq!(out2[0].action, IncidentAction::Attached);
    assert_eq!(out2[0].incident_id, out[0].incident_id);
    let rows = s.stream_outbox(&stream).await.unwrap();
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=rows.len() as u64).collect::<Vec<_>>());
    let ours: Vec<&icahub::storage::OutboxRow> =
        rows.iter().filter(|r| r.event_id == "REC-tables").collect();
    assert_eq!(ours.len(), 2);
    assert_eq!((ours[0].seq, ours[1].seq), (n0 + 1, n0 + 2));
    assert_eq!(ours[0].idempotency_key, "h1");
    assert_eq!(ours[0].status, OutboxStatus::Pending);
    assert_eq!(ours[0].created_at, c.now);
    assert_eq!(ours[0].next_attempt_at, c.now);
    // The incident count went on too (the head's IncidentSeq was kept): a resolve and a new
    // firing open incident 2.
    let resolved = delivery(vec![alert(
        "dh",
        Condition::Resolved,
        Severity::Critical,
        "3",
    )]);
    s.ingest(&resolved, &all_sinks()).await.unwrap();
    let refired = delivery(vec![alert("dh", Condition::Fired, Severity::Critical, "4")]);
    let out4 = s.ingest(&refired, &all_sinks()).await.unwrap();
    assert_eq!(out4[0].action, IncidentAction::Opened);
    assert!(out4[0].incident_id.as_deref().unwrap().ends_with("-2"));
    // The documents are not mistaken for stream rows.
    assert_eq!(s.stream_events(&stream).await.unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_document_commits_with_outbox_rows_number_them_without_gaps() {
    let a: Arc<dyn Store> = Arc::new(store("docrace").await);
    let p = "race1";
    let mut tasks = Vec::new();
    for i in 0..12 {
        let s = a.clone();
        tasks.push(tokio::spawn(async move {
            let mut attempts = 0;
            loop {
                attempts += 1;
                let mut c = doc_commit(
                    p,
                    vec![doc_write(
                        &format!("d{i:02}"),
                        serde_json::json!(i),
                        Expect::Absent,
                    )],
                );
                c.outbox = vec![draft(&format!("{i}a")), draft(&format!("{i}b"))];
                if s.doc_commit(&c).await.unwrap() {
                    return attempts;
                }
                assert!(attempts < 200, "task {i} never got through");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rows = a.stream_outbox(p).await.unwrap();
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=24).collect::<Vec<_>>());
    // Each commit's rows are consecutive.
    for pair in rows.chunks(2) {
        assert_eq!(
            pair[0].idempotency_key.trim_end_matches('a'),
            pair[1].idempotency_key.trim_end_matches('b')
        );
    }
    assert_eq!(a.doc_list(p, "d").await.unwrap().len(), 12);
}

mod conformance {
    use super::support;
    use icahub::storage::{tables::TableStore, Store};
    use std::sync::Arc;

    /// Two hub instances: two independent clients on the same tables.
    async fn two_stores() -> (Arc<dyn Store>, Arc<dyn Store>) {
        let cs = support::azurite::connection_string();
        let prefix = support::azurite::unique_prefix("conf");
        (
            Arc::new(TableStore::connect(&cs, &prefix).await.unwrap()),
            Arc::new(TableStore::connect(&cs, &prefix).await.unwrap()),
        )
    }

    icahub::store_conformance_tests!(two_stores);
}
