//! The outbox: due rows, leases, outcomes, dead letters, redrive, figures.

use super::*;

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

fn kinds(rows: &[crate::storage::OutboxRow]) -> Vec<(Sink, String)> {
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
                .outbox_settle(&leased, &crate::storage::Settle::Delivered { at: now })
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
        .outbox_settle(&a, &crate::storage::Settle::Delivered { at: later })
        .await
        .unwrap());
    let r = s.outbox_get(&stream, row.seq).await.unwrap().unwrap();
    assert_eq!(r.status, OutboxStatus::Pending);
    assert_eq!(r.lease_owner.as_deref(), Some("b"));
    assert!(s
        .outbox_settle(&b, &crate::storage::Settle::Delivered { at: later })
        .await
        .unwrap());
}

pub async fn retry_dead_letter_and_redrive(s: Shared) {
    let stream = fired_and_resolved(&s, &unique("dead")).await;
    let now = Utc::now() + Duration::seconds(1);
    let lease = |row: crate::storage::OutboxRow, at: chrono::DateTime<Utc>| {
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
            &crate::storage::Settle::Retry {
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
            &crate::storage::Settle::Defer {
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
            &crate::storage::Settle::Dead {
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
        .outbox_list(&crate::storage::OutboxFilter {
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
        .outbox_list(&crate::storage::OutboxFilter {
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

/// `outbox_stats` (which a backend may compute its own way) agrees with the rows `outbox_list`
/// shows: per sink, pending, due at the time asked, oldest pending and dead.
pub async fn outbox_stats_match_the_rows(s: Shared) {
    let stream = fired_and_resolved(&s, &unique("stats")).await;
    fired_and_resolved(&s, &unique("stats")).await;
    let now = Utc::now() + Duration::seconds(1);
    let row = s
        .outbox_due(now, 100, Some(&stream))
        .await
        .unwrap()
        .remove(0);
    let leased = s
        .outbox_lease(&row, "a", now, now + Duration::seconds(60))
        .await
        .unwrap()
        .expect("leased");
    let dead = crate::storage::Settle::Dead {
        error: "gone".into(),
    };
    assert!(s.outbox_settle(&leased, &dead).await.unwrap());
    let all = |status| crate::storage::OutboxFilter {
        status: Some(status),
        sink: None,
        limit: 100_000,
    };
    let pending = s.outbox_list(&all(OutboxStatus::Pending)).await.unwrap();
    let dead = s.outbox_list(&all(OutboxStatus::Dead)).await.unwrap();
    assert!(!pending.is_empty() && dead.len() == 1);
    for at in [now - Duration::hours(1), now + Duration::hours(1)] {
        let mut want = crate::storage::OutboxStats::empty_per_sink();
        for r in &pending {
            want.get_mut(r.sink.as_str())
                .unwrap()
                .add_pending(r.next_attempt_at <= at, r.created_at);
        }
        for r in &dead {
            want.get_mut(r.sink.as_str()).unwrap().dead += 1;
        }
        assert_eq!(s.outbox_stats(at).await.unwrap(), want, "at {at}");
    }
}
