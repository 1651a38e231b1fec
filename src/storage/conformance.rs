//! The storage conformance suite: every backend must pass every check here.
//!
//! A backend's test file calls [`crate::store_conformance_tests!`] with an async function that
//! returns two store handles on the same fresh storage (two "hub instances"); the macro expands to
//! one `#[tokio::test]` per check. Checks build alerts by hand, so they test storage, not parsers.

use super::{new_event_id, Delivery, DeliveryAlert, IncidentFilter, OutboxStatus, Store};
use crate::domain::alert::{
    incident_fingerprint, Condition, NormalizedAlert, Severity, Source, UNRECOGNIZED_SCHEMA,
};
use crate::domain::incident::{stream_key, IncidentAction, IncidentStatus};
use crate::domain::routing::{Routing, Sink};
use chrono::{Duration, Utc};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

pub type Shared = Arc<dyn Store>;

/// A common-schema-like alert for rule `rule` on `resource`.
pub fn alert(rule: &str, resource: &str, alert_id: &str, condition: Condition) -> NormalizedAlert {
    let targets = vec![format!(
        "/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachines/{resource}"
    )];
    NormalizedAlert {
        source: Source::AzureMonitor,
        schema: "azureMonitorCommonAlertSchema".into(),
        kind: "Platform".into(),
        alert_id: alert_id.into(),
        rule: rule.into(),
        rule_id: None,
        condition,
        severity: Severity::High,
        fired_at: Some(Utc::now() - Duration::minutes(1)),
        resolved_at: None,
        description: Some("conformance".into()),
        resource_group: Some("rg".into()),
        link: None,
        details: BTreeMap::new(),
        dedup_key: format!("azmon|{alert_id}|{}", condition.as_str()),
        fingerprint: incident_fingerprint(Source::AzureMonitor, rule, &targets),
        targets,
    }
}

/// A one-alert delivery whose raw body is a small JSON document naming the alert.
pub fn delivery(a: NormalizedAlert) -> Delivery {
    let now = Utc::now();
    Delivery {
        request_id: uuid::Uuid::new_v4().to_string(),
        invocation_id: None,
        source: a.source,
        received_at: now,
        raw_body: serde_json::json!({"alertId": a.alert_id, "condition": a.condition}).to_string(),
        alerts: vec![DeliveryAlert {
            event_id: new_event_id(stream_key(&a), now),
            alert: a,
            raw_alert: None,
        }],
    }
}

pub fn all_sinks() -> Routing {
    Routing {
        mattermost: true,
        pagerduty: true,
        control_plane: true,
        ..Routing::default()
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

pub async fn open_attach_resolve(s: Shared) {
    let rule = unique("rule");
    let r = Routing::default();
    let o1 = s
        .ingest(&delivery(alert(&rule, "vm1", "a1", Condition::Fired)), &r)
        .await
        .unwrap();
    assert_eq!(o1[0].action, IncidentAction::Opened);
    let id = o1[0].incident_id.clone().expect("incident opened");
    let o2 = s
        .ingest(&delivery(alert(&rule, "vm1", "a2", Condition::Fired)), &r)
        .await
        .unwrap();
    assert_eq!(o2[0].action, IncidentAction::Attached);
    assert_eq!(o2[0].incident_id.as_deref(), Some(id.as_str()));
    let o3 = s
        .ingest(
            &delivery(alert(&rule, "vm1", "a1", Condition::Resolved)),
            &r,
        )
        .await
        .unwrap();
    assert_eq!(o3[0].action, IncidentAction::Resolved);
    let inc = s.incident(&id).await.unwrap().expect("incident readable");
    assert_eq!(inc.status, IncidentStatus::Resolved);
    assert_eq!(inc.event_count, 3);
    assert!(inc.resolved_at.is_some());
    // Same rule, other resource: another stream, another incident.
    let o4 = s
        .ingest(&delivery(alert(&rule, "vm2", "a3", Condition::Fired)), &r)
        .await
        .unwrap();
    assert_ne!(o4[0].incident_id.as_deref(), Some(id.as_str()));
    // After a resolve, a new fire opens a new incident on the same stream.
    let o5 = s
        .ingest(&delivery(alert(&rule, "vm1", "a4", Condition::Fired)), &r)
        .await
        .unwrap();
    assert_eq!(o5[0].action, IncidentAction::Opened);
    assert_ne!(o5[0].incident_id.as_deref(), Some(id.as_str()));
}

pub async fn duplicate_is_stored_once(s: Shared) {
    let rule = unique("dup");
    let a = alert(&rule, "vm1", "same", Condition::Fired);
    let first = s
        .ingest(&delivery(a.clone()), &Routing::default())
        .await
        .unwrap();
    let again = s
        .ingest(&delivery(a.clone()), &Routing::default())
        .await
        .unwrap();
    assert!(!first[0].duplicate);
    assert!(again[0].duplicate);
    assert_eq!(again[0].event_id, first[0].event_id);
    assert_eq!(again[0].incident_id, first[0].incident_id);
    let events = s.stream_events(stream_key(&a)).await.unwrap();
    assert_eq!(events.len(), 1);
    let inc = s
        .incident(first[0].incident_id.as_deref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inc.event_count, 1);
}

pub async fn concurrent_repeats_store_one(s: Shared) {
    let rule = unique("burst");
    let a = alert(&rule, "vm1", "burst-1", Condition::Fired);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (s, d) = (s.clone(), delivery(a.clone()));
        tasks.push(tokio::spawn(async move {
            s.ingest(&d, &Routing::default()).await.unwrap()
        }));
    }
    let mut new = 0;
    let mut ids = HashSet::new();
    for t in tasks {
        let o = t.await.unwrap();
        if !o[0].duplicate {
            new += 1;
        }
        ids.insert(o[0].event_id.clone());
    }
    assert_eq!(new, 1, "exactly one of 100 identical deliveries is new");
    assert_eq!(ids.len(), 1, "every repeat points at the one stored event");
    assert_eq!(s.stream_events(stream_key(&a)).await.unwrap().len(), 1);
    let open = s
        .incidents(&IncidentFilter {
            status: Some(IncidentStatus::Open),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(open.iter().filter(|i| i.title == rule).count(), 1);
}

pub async fn event_incident_and_outbox_written_together(s: Shared) {
    let rule = unique("outbox");
    let a = alert(&rule, "vm1", "o1", Condition::Fired);
    let d = delivery(a.clone());
    let o = s.ingest(&d, &all_sinks()).await.unwrap();
    let ev = s
        .event(&o[0].event_id)
        .await
        .unwrap()
        .expect("event stored");
    assert_eq!(ev.raw, d.raw_body, "the raw body is kept byte for byte");
    assert_eq!(ev.request_id, d.request_id);
    assert_eq!(ev.dedup_key, a.dedup_key);
    assert_eq!(ev.incident_id, o[0].incident_id);
    let rows = s.stream_outbox(stream_key(&a)).await.unwrap();
    let sinks: Vec<(Sink, &str)> = rows.iter().map(|r| (r.sink, r.kind.as_str())).collect();
    assert!(sinks.contains(&(Sink::ControlPlane, "alert.received")));
    assert!(sinks.contains(&(Sink::ControlPlane, "incident.opened")));
    assert!(sinks.contains(&(Sink::Mattermost, "incident.opened")));
    assert!(
        sinks.contains(&(Sink::Pagerduty, "incident.opened")),
        "high severity pages"
    );
    assert!(rows
        .iter()
        .all(|r| r.status == OutboxStatus::Pending && r.attempts == 0));
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=rows.len() as u64).collect::<Vec<_>>());
    // The resolve's rows come after the open's, in the same stream.
    s.ingest(
        &delivery(alert(&rule, "vm1", "o1", Condition::Resolved)),
        &all_sinks(),
    )
    .await
    .unwrap();
    let rows2 = s.stream_outbox(stream_key(&a)).await.unwrap();
    assert!(rows2.len() > rows.len());
    assert!(rows2[rows.len()..]
        .iter()
        .any(|r| r.kind == "incident.resolved"));
    let keys: HashSet<_> = rows2.iter().map(|r| r.idempotency_key.clone()).collect();
    assert_eq!(keys.len(), rows2.len(), "idempotency keys are unique");
}

pub async fn multi_alert_delivery_keeps_raw_request(s: Shared) {
    let rule = unique("multi");
    let now = Utc::now();
    let alerts: Vec<NormalizedAlert> = (0..3)
        .map(|i| {
            let mut a = alert(&rule, &format!("vm{i}"), &format!("m{i}"), Condition::Fired);
            a.source = Source::Alertmanager;
            a
        })
        .collect();
    let d = Delivery {
        request_id: unique("req"),
        invocation_id: Some("inv-1".into()),
        source: Source::Alertmanager,
        received_at: now,
        raw_body: "{\"alerts\":[1,2,3]}".into(),
        alerts: alerts
            .iter()
            .enumerate()
            .map(|(i, a)| DeliveryAlert {
                event_id: new_event_id(stream_key(a), now),
                alert: a.clone(),
                raw_alert: Some(format!("{{\"n\":{i}}}")),
            })
            .collect(),
    };
    let o = s.ingest(&d, &Routing::default()).await.unwrap();
    assert_eq!(o.len(), 3);
    for (i, out) in o.iter().enumerate() {
        let ev = s.event(&out.event_id).await.unwrap().unwrap();
        assert_eq!(ev.raw, format!("{{\"n\":{i}}}"));
        assert_eq!(ev.invocation_id.as_deref(), Some("inv-1"));
    }
    let raw = s
        .raw_request(&d.request_id)
        .await
        .unwrap()
        .expect("raw request kept");
    assert_eq!(raw.body, d.raw_body);
    assert_eq!(raw.source, Source::Alertmanager);
}

pub async fn large_raw_body_round_trips(s: Shared) {
    let rule = unique("big");
    let mut d = delivery(alert(&rule, "vm1", "big", Condition::Fired));
    // 300 KB with multi-byte characters, so byte and character counts differ.
    let filler: String = "é€x".repeat(300_000 / 6);
    d.raw_body = serde_json::json!({ "filler": filler }).to_string();
    let o = s.ingest(&d, &Routing::default()).await.unwrap();
    let ev = s.event(&o[0].event_id).await.unwrap().unwrap();
    assert_eq!(ev.raw.len(), d.raw_body.len());
    assert!(
        ev.raw == d.raw_body,
        "raw body differs after the round trip"
    );
}

pub async fn unrecognized_payload_is_kept_without_incident(s: Shared) {
    let mut a = alert(&unique("unk"), "vm1", "u1", Condition::Fired);
    a.schema = UNRECOGNIZED_SCHEMA.into();
    let o = s.ingest(&delivery(a), &Routing::default()).await.unwrap();
    assert_eq!(o[0].action, IncidentAction::None);
    assert!(o[0].incident_id.is_none());
    assert!(s.event(&o[0].event_id).await.unwrap().is_some());
}

pub async fn incident_filters(s: Shared) {
    let tag = unique("filt");
    let mut crit = alert(
        &format!("{tag}-a"),
        "vm1",
        &format!("{tag}-1"),
        Condition::Fired,
    );
    crit.severity = Severity::Critical;
    let mut low = alert(
        &format!("{tag}-b"),
        "vm1",
        &format!("{tag}-2"),
        Condition::Fired,
    );
    low.severity = Severity::Low;
    let before = Utc::now() - Duration::hours(1);
    low.fired_at = Some(before - Duration::hours(1)); // opened two hours ago
    let r = Routing::default();
    s.ingest(&delivery(crit.clone()), &r).await.unwrap();
    s.ingest(&delivery(low.clone()), &r).await.unwrap();
    let mut low_res = low.clone();
    low_res.condition = Condition::Resolved;
    low_res.dedup_key = format!("azmon|{tag}-2|resolved");
    s.ingest(&delivery(low_res), &r).await.unwrap();

    let mine = |v: Vec<crate::domain::incident::Incident>| -> Vec<String> {
        v.into_iter()
            .filter(|i| i.title.starts_with(&tag))
            .map(|i| i.title)
            .collect()
    };
    let q = |f: IncidentFilter| {
        let s = s.clone();
        async move { s.incidents(&f).await.unwrap() }
    };
    let all = mine(
        q(IncidentFilter {
            limit: 1000,
            ..Default::default()
        })
        .await,
    );
    assert_eq!(
        all,
        vec![format!("{tag}-a"), format!("{tag}-b")],
        "newest first"
    );
    let critical = mine(
        q(IncidentFilter {
            severity: Some(Severity::Critical),
            limit: 1000,
            ..Default::default()
        })
        .await,
    );
    assert_eq!(critical, vec![format!("{tag}-a")]);
    let resolved = mine(
        q(IncidentFilter {
            status: Some(IncidentStatus::Resolved),
            limit: 1000,
            ..Default::default()
        })
        .await,
    );
    assert_eq!(resolved, vec![format!("{tag}-b")]);
    let recent = mine(
        q(IncidentFilter {
            since: Some(before),
            limit: 1000,
            ..Default::default()
        })
        .await,
    );
    assert_eq!(recent, vec![format!("{tag}-a")]);
    let one = q(IncidentFilter {
        limit: 1,
        ..Default::default()
    })
    .await;
    assert_eq!(one.len(), 1);
}

pub async fn unknown_ids_are_none(s: Shared) {
    assert!(s
        .incident("INC-0000000000000000-1")
        .await
        .unwrap()
        .is_none());
    assert!(s.incident("not-an-id").await.unwrap().is_none());
    assert!(s.event("EVT-0000000000000000-x").await.unwrap().is_none());
    assert!(s.raw_request("nope").await.unwrap().is_none());
    s.ping().await.unwrap();
}

/// Two instances, one stream: 50 distinct alerts at once, none lost, one incident.
pub async fn two_instances_never_lose_updates(a: Shared, b: Shared) {
    let rule = unique("pair");
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let d = delivery(alert(&rule, "vm1", &format!("p{i}"), Condition::Fired));
        tasks.push(tokio::spawn(async move {
            s.ingest(&d, &Routing::default()).await.unwrap()
        }));
    }
    let mut incidents = HashSet::new();
    let mut opened = 0;
    for t in tasks {
        let o = t.await.unwrap();
        assert!(!o[0].duplicate);
        if o[0].action == IncidentAction::Opened {
            opened += 1;
        }
        incidents.insert(o[0].incident_id.clone().unwrap());
    }
    assert_eq!(opened, 1, "exactly one instance opened the incident");
    assert_eq!(incidents.len(), 1);
    let id = incidents.into_iter().next().unwrap();
    for s in [&a, &b] {
        let inc = s.incident(&id).await.unwrap().unwrap();
        assert_eq!(inc.event_count, 50, "no lost update");
    }
    let stream = stream_key(&alert(&rule, "vm1", "x", Condition::Fired)).to_string();
    assert_eq!(a.stream_events(&stream).await.unwrap().len(), 50);
}

/// Ingest a fired and a resolved alert with every sink on; returns the stream key.
async fn fired_and_resolved(s: &Shared, rule: &str) -> String {
    let r = all_sinks();
    s.ingest(&delivery(alert(rule, "vm1", "x1", Condition::Fired)), &r)
        .await
        .unwrap();
    s.ingest(&delivery(alert(rule, "vm1", "x1", Condition::Resolved)), &r)
        .await
        .unwrap();
    stream_key(&alert(rule, "vm1", "x1", Condition::Fired)).to_string()
}

fn kinds(rows: &[super::OutboxRow]) -> Vec<(Sink, String)> {
    let mut v: Vec<(Sink, String)> = rows.iter().map(|r| (r.sink, r.kind.clone())).collect();
    v.sort();
    v
}

pub async fn outbox_due_is_in_order_per_stream_and_sink(s: Shared) {
    let stream = fired_and_resolved(&s, &unique("order")).await;
    let now = Utc::now() + Duration::seconds(1);
    let due = s.outbox_due(now, 100, Some(&stream)).await.unwrap();
    // Only each sink's first row: the control plane's alert record, the openings for people.
    assert_eq!(
        kinds(&due),
        vec![
            (Sink::Mattermost, "incident.opened".to_string()),
            (Sink::Pagerduty, "incident.opened".to_string()),
            (Sink::ControlPlane, "alert.received".to_string()),
        ]
    );
    // Deliver everything due, repeatedly: each sink sees its rows in seq order.
    let mut seen: Vec<(Sink, u64)> = Vec::new();
    for _ in 0..20 {
        let due = s.outbox_due(now, 100, Some(&stream)).await.unwrap();
        if due.is_empty() {
            break;
        }
        for row in due {
            let leased = s
                .outbox_lease(&row, "t", now, now + Duration::seconds(60))
                .await
                .unwrap()
                .expect("free row leases");
            assert_eq!(leased.lease_owner.as_deref(), Some("t"));
            assert!(s
                .outbox_settle(&leased, &super::Settle::Delivered { at: now })
                .await
                .unwrap());
            seen.push((row.sink, row.seq));
        }
    }
    let all = s.stream_outbox(&stream).await.unwrap();
    assert_eq!(seen.len(), all.len(), "every row delivered once");
    for sink in Sink::ALL {
        let seqs: Vec<u64> = seen
            .iter()
            .filter(|(k, _)| *k == sink)
            .map(|(_, q)| *q)
            .collect();
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted, "{sink:?} rows went out in order");
    }
    assert!(all.iter().all(|r| r.status == OutboxStatus::Delivered
        && r.delivered_at.is_some()
        && r.attempts == 1));
    // The global query sees the same stream's rows too, and none are left.
    let left = s.outbox_due(now, 1000, None).await.unwrap();
    assert!(left.iter().all(|r| r.stream != stream));
}

pub async fn a_lease_excludes_others_until_it_expires(s: Shared) {
    let stream = fired_and_resolved(&s, &unique("lease")).await;
    let now = Utc::now() + Duration::seconds(1);
    let row = s
        .outbox_due(now, 100, Some(&stream))
        .await
        .unwrap()
        .remove(0);
    let a = s
        .outbox_lease(&row, "a", now, now + Duration::seconds(60))
        .await
        .unwrap()
        .expect("a leases");
    assert!(s
        .outbox_lease(&row, "b", now, now + Duration::seconds(60))
        .await
        .unwrap()
        .is_none());
    let due = s.outbox_due(now, 100, Some(&stream)).await.unwrap();
    assert!(
        due.iter()
            .all(|r| !(r.sink == row.sink && r.seq == row.seq)),
        "leased row not due"
    );
    // a crashed: after expiry b takes over, and a's late settle changes nothing.
    let later = now + Duration::seconds(61);
    let fresh = s
        .outbox_due(later, 100, Some(&stream))
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.sink == row.sink)
        .expect("expired lease is due again");
    let b = s
        .outbox_lease(&fresh, "b", later, later + Duration::seconds(60))
        .await
        .unwrap()
        .expect("b leases after expiry");
    assert!(!s
        .outbox_settle(&a, &super::Settle::Delivered { at: later })
        .await
        .unwrap());
    let r = s.outbox_get(&stream, row.seq).await.unwrap().unwrap();
    assert_eq!(r.status, OutboxStatus::Pending);
    assert_eq!(r.lease_owner.as_deref(), Some("b"));
    assert!(s
        .outbox_settle(&b, &super::Settle::Delivered { at: later })
        .await
        .unwrap());
}

pub async fn retry_dead_letter_and_redrive(s: Shared) {
    let stream = fired_and_resolved(&s, &unique("dead")).await;
    let now = Utc::now() + Duration::seconds(1);
    let lease = |row: super::OutboxRow, at: chrono::DateTime<Utc>| {
        let s = s.clone();
        async move {
            s.outbox_lease(&row, "d", at, at + Duration::seconds(60))
                .await
                .unwrap()
                .expect("leases")
        }
    };
    let head = |at| {
        let (s, stream) = (s.clone(), stream.clone());
        async move {
            s.outbox_due(at, 100, Some(&stream))
                .await
                .unwrap()
                .into_iter()
                .find(|r| r.sink == Sink::Mattermost)
        }
    };
    let row = head(now).await.expect("mattermost head");
    let l = lease(row.clone(), now).await;
    let retry_at = now + Duration::seconds(30);
    assert!(s
        .outbox_settle(
            &l,
            &super::Settle::Retry {
                next_attempt_at: retry_at,
                error: "HTTP 500".into()
            }
        )
        .await
        .unwrap());
    assert!(head(now).await.is_none(), "not due before its retry time");
    let again = head(retry_at).await.expect("due at its retry time");
    assert_eq!(again.seq, row.seq);
    assert_eq!(again.attempts, 1);
    assert_eq!(again.last_error.as_deref(), Some("HTTP 500"));
    // A deferral (our own rate limit) is not an attempt.
    let l = lease(again, retry_at).await;
    assert!(s
        .outbox_settle(
            &l,
            &super::Settle::Defer {
                next_attempt_at: retry_at
            }
        )
        .await
        .unwrap());
    let again = head(retry_at).await.unwrap();
    assert_eq!(again.attempts, 1);
    // Permanent failure: a dead letter with its error; the next row of that sink goes on.
    let l = lease(again, retry_at).await;
    assert!(s
        .outbox_settle(
            &l,
            &super::Settle::Dead {
                error: "HTTP 400: bad".into()
            }
        )
        .await
        .unwrap());
    let dead = s.outbox_get(&stream, row.seq).await.unwrap().unwrap();
    assert_eq!(dead.status, OutboxStatus::Dead);
    assert_eq!(dead.attempts, 2);
    assert_eq!(dead.last_error.as_deref(), Some("HTTP 400: bad"));
    let next = head(retry_at).await.expect("the next row is not blocked");
    assert!(next.seq > row.seq);
    let listed = s
        .outbox_list(&super::OutboxFilter {
            status: Some(OutboxStatus::Dead),
            sink: Some(Sink::Mattermost),
            limit: 1000,
        })
        .await
        .unwrap();
    assert!(listed
        .iter()
        .any(|r| r.stream == stream && r.seq == row.seq));
    let not_dead = s
        .outbox_list(&super::OutboxFilter {
            status: Some(OutboxStatus::Dead),
            sink: Some(Sink::ControlPlane),
            limit: 1000,
        })
        .await
        .unwrap();
    assert!(not_dead.iter().all(|r| r.stream != stream));
    // The per-sink figures count it (other tests may share the store: at least this one).
    let stats = s.outbox_stats(retry_at).await.unwrap();
    assert_eq!(stats.len(), Sink::ALL.len(), "every sink is present");
    assert!(stats["mattermost"].dead >= 1, "{stats:?}");
    assert!(
        stats["mattermost"].pending >= 1,
        "the row after it: {stats:?}"
    );
    assert!(stats["mattermost"]
        .oldest_pending
        .is_some_and(|t| t <= retry_at));
    // Redrive: pending again, due now, attempts reset; redriving a live row does nothing.
    assert!(s.outbox_redrive(&stream, row.seq, retry_at).await.unwrap());
    assert!(!s.outbox_redrive(&stream, row.seq, retry_at).await.unwrap());
    assert!(!s.outbox_redrive(&stream, 9999, retry_at).await.unwrap());
    let back = s.outbox_get(&stream, row.seq).await.unwrap().unwrap();
    assert_eq!(back.status, OutboxStatus::Pending);
    assert_eq!(back.attempts, 0);
    assert_eq!(
        head(retry_at).await.unwrap().seq,
        row.seq,
        "redriven row is the head again"
    );
}

/// Two instances race for the same rows: each row is leased by exactly one.
pub async fn two_instances_never_both_hold_a_lease(a: Shared, b: Shared) {
    let stream = fired_and_resolved(&a, &unique("race")).await;
    let now = Utc::now() + Duration::seconds(1);
    let rows = a.outbox_due(now, 100, Some(&stream)).await.unwrap();
    assert!(!rows.is_empty());
    let mut tasks = Vec::new();
    for (i, row) in rows.iter().cycle().take(rows.len() * 8).enumerate() {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let row = row.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("o{i}");
            s.outbox_lease(&row, &owner, now, now + Duration::seconds(60))
                .await
                .unwrap()
                .map(|r| (r.sink, r.seq))
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        if let Some(k) = t.await.unwrap() {
            won.push(k);
        }
    }
    won.sort();
    let mut expected: Vec<(Sink, u64)> = rows.iter().map(|r| (r.sink, r.seq)).collect();
    expected.sort();
    assert_eq!(won, expected, "each row leased exactly once");
}

fn doc_commit(partition: &str, writes: Vec<super::DocWrite>) -> super::DocCommit {
    super::DocCommit {
        partition: partition.into(),
        writes,
        outbox: Vec::new(),
        record_id: "REC-test".into(),
        now: Utc::now(),
    }
}

fn write(key: &str, value: serde_json::Value, expect: super::Expect) -> super::DocWrite {
    super::DocWrite {
        key: key.into(),
        value,
        expect,
    }
}

pub async fn documents_commit_atomically_with_expectations(s: Shared) {
    use super::Expect;
    let p = unique("docs").replace('-', "");
    assert!(s.doc_get(&p, "a").await.unwrap().is_none());
    assert!(s
        .doc_commit(&doc_commit(
            &p,
            vec![
                write("a", serde_json::json!({"n": 1}), Expect::Absent),
                write("b|1", serde_json::json!("x"), Expect::Absent),
            ],
        ))
        .await
        .unwrap());
    let a = s.doc_get(&p, "a").await.unwrap().expect("a stored");
    assert_eq!(a.value["n"], 1);
    // A second create of `a` fails and writes nothing, not even its other document.
    assert!(!s
        .doc_commit(&doc_commit(
            &p,
            vec![
                write("c", serde_json::json!(3), Expect::Absent),
                write("a", serde_json::json!({"n": 9}), Expect::Absent),
            ],
        ))
        .await
        .unwrap());
    assert!(
        s.doc_get(&p, "c").await.unwrap().is_none(),
        "all or nothing"
    );
    // Update at the read version works once; the stale version then fails.
    assert!(s
        .doc_commit(&doc_commit(
            &p,
            vec![write(
                "a",
                serde_json::json!({"n": 2}),
                Expect::Version(a.version.clone())
            )],
        ))
        .await
        .unwrap());
    assert!(!s
        .doc_commit(&doc_commit(
            &p,
            vec![write(
                "a",
                serde_json::json!({"n": 3}),
                Expect::Version(a.version.clone())
            )],
        ))
        .await
        .unwrap());
    let a2 = s.doc_get(&p, "a").await.unwrap().unwrap();
    assert_eq!(a2.value["n"], 2);
    assert_ne!(a2.version, a.version);
    // Listing by prefix, in key order; other partitions are separate.
    assert!(s
        .doc_commit(&doc_commit(
            &p,
            vec![write("b|0", serde_json::json!("w"), Expect::Absent)],
        ))
        .await
        .unwrap());
    let keys: Vec<String> = s
        .doc_list(&p, "b|")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.key)
        .collect();
    assert_eq!(keys, vec!["b|0", "b|1"]);
    assert_eq!(s.doc_list(&p, "").await.unwrap().len(), 3);
    assert!(s.doc_list(&format!("{p}x"), "").await.unwrap().is_empty());
    // A large document round-trips.
    let big = "ü".repeat(150_000);
    assert!(s
        .doc_commit(&doc_commit(
            &p,
            vec![write("big", serde_json::json!(big), Expect::Absent)]
        ))
        .await
        .unwrap());
    assert_eq!(
        s.doc_get(&p, "big").await.unwrap().unwrap().value,
        serde_json::json!(big)
    );
}

pub async fn documents_carry_outbox_rows(s: Shared) {
    use super::Expect;
    let p = unique("docout").replace('-', "");
    let draft = |n: u32| crate::domain::routing::OutboxDraft {
        sink: Sink::ControlPlane,
        kind: "run.start".into(),
        idempotency_key: format!("{p}-{n}"),
        payload: serde_json::json!({"n": n}),
    };
    let mut c = doc_commit(
        &p,
        vec![write(
            "run",
            serde_json::json!({"state": 1}),
            Expect::Absent,
        )],
    );
    c.outbox = vec![draft(1), draft(2)];
    assert!(s.doc_commit(&c).await.unwrap());
    let run = s.doc_get(&p, "run").await.unwrap().unwrap();
    let mut c2 = doc_commit(
        &p,
        vec![write(
            "run",
            serde_json::json!({"state": 2}),
            Expect::Version(run.version),
        )],
    );
    c2.outbox = vec![draft(3)];
    assert!(s.doc_commit(&c2).await.unwrap());
    // A failed commit adds no rows.
    let mut c3 = doc_commit(
        &p,
        vec![write("run", serde_json::json!({}), Expect::Absent)],
    );
    c3.outbox = vec![draft(4)];
    assert!(!s.doc_commit(&c3).await.unwrap());
    let rows = s.stream_outbox(&p).await.unwrap();
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(rows[0].event_id, "REC-test");
    assert_eq!(rows[2].payload["n"], 3);
    let due = s
        .outbox_due(Utc::now() + Duration::seconds(5), 10, Some(&p))
        .await
        .unwrap();
    assert_eq!(due.len(), 1, "one head per sink");
    assert_eq!(due[0].seq, 1);
}

/// Two instances update one document at once: every successful update is based on the one
/// before it (no lost update).
pub async fn two_instances_never_lose_a_document_update(a: Shared, b: Shared) {
    use super::Expect;
    let p = unique("docrace").replace('-', "");
    assert!(a
        .doc_commit(&doc_commit(
            &p,
            vec![write("n", serde_json::json!(0), Expect::Absent)]
        ))
        .await
        .unwrap());
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let d = s.doc_get(&p, "n").await.unwrap().unwrap();
                let n = d.value.as_i64().unwrap();
                let c = doc_commit(
                    &p,
                    vec![write(
                        "n",
                        serde_json::json!(n + 1),
                        Expect::Version(d.version),
                    )],
                );
                if s.doc_commit(&c).await.unwrap() {
                    break;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        a.doc_get(&p, "n").await.unwrap().unwrap().value,
        serde_json::json!(20)
    );
}

/// Secrets: put, read, replace, delete; never a record, a chain entry or an audit partition.
pub async fn secrets_are_kept_apart(s: Shared) {
    let now = Utc::now();
    let key = format!("azdo|APR-2026-000001|{}", uuid::Uuid::new_v4().simple());
    let value = format!("tok-{}", uuid::Uuid::new_v4().simple());
    assert_eq!(s.secret_get(&key).await.unwrap(), None);
    assert!(
        !s.secret_delete(&key).await.unwrap(),
        "nothing to delete yet"
    );
    s.secret_put(&key, &value, now).await.unwrap();
    assert_eq!(
        s.secret_get(&key).await.unwrap().as_deref(),
        Some(value.as_str())
    );
    // Another key is another secret; a put replaces.
    let other = format!("{key}-2");
    s.secret_put(&other, "second", now).await.unwrap();
    s.secret_put(&key, "replaced", now).await.unwrap();
    assert_eq!(
        s.secret_get(&key).await.unwrap().as_deref(),
        Some("replaced")
    );
    assert_eq!(
        s.secret_get(&other).await.unwrap().as_deref(),
        Some("second")
    );
    // A long token (the check allows 16 KiB) round-trips.
    let long = "x".repeat(16_384);
    s.secret_put(&other, &long, now).await.unwrap();
    assert_eq!(s.secret_get(&other).await.unwrap(), Some(long));
    // Not a record: no chain, no partition, nothing the verifier or an export reads.
    assert!(s.audit_partitions().await.unwrap().is_empty());
    assert!(s.audit_page(None, 100).await.unwrap().is_empty());
    assert!(s.audit_heads().await.unwrap().is_empty());
    assert!(s.secret_delete(&key).await.unwrap());
    assert!(!s.secret_delete(&key).await.unwrap());
    assert_eq!(s.secret_get(&key).await.unwrap(), None);
    assert!(
        s.secret_get(&other).await.unwrap().is_some(),
        "only that key"
    );
    // Unusable keys are refused on put and unknown on read.
    for bad in ["", "a/b", "a#b", "a b", "a?b"] {
        assert!(
            matches!(
                s.secret_put(bad, "v", now).await,
                Err(super::StoreError::Config(_))
            ),
            "{bad:?}"
        );
        assert_eq!(s.secret_get(bad).await.unwrap(), None);
    }
}

/// Expands to one test per conformance check. `$make` is an async fn returning two store handles
/// (`Arc<dyn Store>`) on the same fresh storage.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:path) => {
        $crate::store_conformance_tests!(@one $make, open_attach_resolve);
        $crate::store_conformance_tests!(@one $make, duplicate_is_stored_once);
        $crate::store_conformance_tests!(@one $make, concurrent_repeats_store_one);
        $crate::store_conformance_tests!(@one $make, event_incident_and_outbox_written_together);
        $crate::store_conformance_tests!(@one $make, multi_alert_delivery_keeps_raw_request);
        $crate::store_conformance_tests!(@one $make, large_raw_body_round_trips);
        $crate::store_conformance_tests!(@one $make, unrecognized_payload_is_kept_without_incident);
        $crate::store_conformance_tests!(@one $make, incident_filters);
        $crate::store_conformance_tests!(@one $make, unknown_ids_are_none);
        $crate::store_conformance_tests!(@one $make, outbox_due_is_in_order_per_stream_and_sink);
        $crate::store_conformance_tests!(@one $make, a_lease_excludes_others_until_it_expires);
        $crate::store_conformance_tests!(@one $make, retry_dead_letter_and_redrive);
        $crate::store_conformance_tests!(@one $make, documents_commit_atomically_with_expectations);
        $crate::store_conformance_tests!(@one $make, documents_carry_outbox_rows);
        $crate::store_conformance_tests!(@one $make, secrets_are_kept_apart);
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn conformance_two_instances_never_lose_a_document_update() {
            let (a, b) = $make().await;
            $crate::storage::conformance::two_instances_never_lose_a_document_update(a, b).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn conformance_two_instances_never_both_hold_a_lease() {
            let (a, b) = $make().await;
            $crate::storage::conformance::two_instances_never_both_hold_a_lease(a, b).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn conformance_two_instances_never_lose_updates() {
            let (a, b) = $make().await;
            $crate::storage::conformance::two_instances_never_lose_updates(a, b).await;
        }
    };
    (@one $make:path, $check:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $check() {
            let (a, _b) = $make().await;
            $crate::storage::conformance::$check(a).await;
        }
    };
}
