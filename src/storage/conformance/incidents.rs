//! Incidents and events: the alert write path (`ingest`) and its reads.

use super::*;

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
