//! Refused requests on the permanent trail, aggregated. Each refusal (a bad key, token or
//! signature, a forged button) is logged at once, with a bounded detail, but the `security` audit
//! partition gets ONE note per kind, source (route group) and minute:
//! `{"action": "auth.refused.summary", "kind", "group", "minute", "count", "examples"}` with at
//! most [`EXAMPLES`] bounded details. Before this, every refusal was chained forever with its
//! caller-sized detail (a 300 KB Entra `kid` × 100 requests added 80 MB in 4 s).
//!
//! A window's notes are written when a refusal arrives in a later minute, by [`flush_due`] (the
//! periodic drain, the `dispatch` timer, and a ticker beside the server), and by [`flush_all`] at
//! shutdown. So a process killed hard loses at most the current minute's counts (they are in the
//! logs). New callers (Mattermost callbacks, approvals) call [`record`].

use crate::domain::bounded;
use crate::startup::App;
use chrono::{DateTime, TimeZone, Utc};
use std::collections::HashMap;
use std::sync::Mutex;

/// Bounded details kept per summary.
pub const EXAMPLES: usize = 3;

/// How many of a window's first refusals of a kind and source may give an example.
const EXAMPLE_CANDIDATES: u64 = 16;

/// The most characters of a source (route group) kept.
pub const SOURCE_CHARS: usize = 32;

/// The most (kind, source) pairs counted per minute; past it, refusals count under source
/// `other` (so a caller varying the source cannot grow one window without bound).
pub const MAX_BUCKETS: usize = 256;

/// Partition of the summaries (with the other security audit entries).
pub const PARTITION: &str = "security";

/// The refusals of the current minute, not yet written.
#[derive(Default)]
pub struct Refusals {
    state: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    /// Unix minute (seconds / 60) the buckets belong to.
    minute: i64,
    buckets: HashMap<(&'static str, String), Bucket>,
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Bucket {
    count: u64,
    examples: Vec<String>,
}

/// One summary to write: what [`Window`] turns into at the end of its minute.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub kind: &'static str,
    pub group: String,
    pub minute: i64,
    pub count: u64,
    pub examples: Vec<String>,
}

impl Summary {
    /// The audit note's body.
    pub fn to_json(&self) -> serde_json::Value {
        let minute = Utc
            .timestamp_opt(self.minute * 60, 0)
            .single()
            .unwrap_or_default();
        serde_json::json!({
            "action": "auth.refused.summary",
            "kind": self.kind,
            "group": self.group,
            "minute": minute,
            "count": self.count,
            "examples": self.examples,
        })
    }
}

fn minute_of(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(60)
}

impl Refusals {
    /// Count one refusal at `now`; the summaries of an earlier window, now closed, to write.
    /// Pure apart from the lock, so it is tested without a store.
    pub fn count(
        &self,
        now: DateTime<Utc>,
        kind: &'static str,
        source: &str,
        detail: &str,
    ) -> Vec<Summary> {
        let minute = minute_of(now);
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let closed = if w.minute != minute {
            let old = std::mem::take(&mut w.buckets);
            let old_minute = std::mem::replace(&mut w.minute, minute);
            summaries(old_minute, old)
        } else {
            Vec::new()
        };
        let mut source = bounded::truncate(source, SOURCE_CHARS).into_owned();
        if w.buckets.len() >= MAX_BUCKETS && !w.buckets.contains_key(&(kind, source.clone())) {
            source = "other".into();
        }
        let b = w.buckets.entry((kind, source)).or_default();
        b.count += 1;
        // Examples come from a window's first few refusals of a kind: no hashing of a
        // caller-sized detail on every request of a flood that repeats one.
        if b.examples.len() < EXAMPLES && b.count <= EXAMPLE_CANDIDATES {
            let d = bounded::detail(detail);
            if !b.examples.iter().any(|e| e.as_str() == d) {
                b.examples.push(d.into_owned());
            }
        }
        closed
    }

    /// The windows before `now`'s minute (`all`: the current one too), taken out to write.
    pub fn take(&self, now: DateTime<Utc>, all: bool) -> Vec<Summary> {
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if w.buckets.is_empty() || (!all && w.minute >= minute_of(now)) {
            return Vec::new();
        }
        let buckets = std::mem::take(&mut w.buckets);
        summaries(w.minute, buckets)
    }
}

fn summaries(minute: i64, buckets: HashMap<(&'static str, String), Bucket>) -> Vec<Summary> {
    let mut out: Vec<Summary> = buckets
        .into_iter()
        .map(|((kind, group), b)| Summary {
            kind,
            group,
            minute,
            count: b.count,
            examples: b.examples,
        })
        .collect();
    out.sort_by(|a, b| (a.kind, &a.group).cmp(&(b.kind, &b.group)));
    out
}

/// Log a refused request (bounded) and count it in this minute's summary of its kind and
/// source. Never waits for the store: a flood of refusals must not slow the refusals down.
pub fn record(app: &App, kind: &'static str, source: &str, detail: &str) {
    record_in(
        &app.refusals,
        &app.store,
        app.clock.now(),
        kind,
        source,
        detail,
    );
}

/// [`record`] with narrow dependencies (the services): the counter, the store a closed window's
/// summaries go to, and the time.
pub fn record_in(
    refusals: &Refusals,
    store: &std::sync::Arc<dyn crate::storage::Store>,
    now: DateTime<Utc>,
    kind: &'static str,
    source: &str,
    detail: &str,
) {
    let shown = bounded::truncate(detail, bounded::DETAIL_CHARS);
    let source_shown = bounded::truncate(source, SOURCE_CHARS);
    tracing::info!(target: "icahub::auth", kind, source = %source_shown, detail = %shown, "refused");
    let closed = refusals.count(now, kind, source, detail);
    if !closed.is_empty() {
        let store = store.clone();
        tokio::spawn(async move { write(store.as_ref(), now, closed).await });
    }
}

/// Write the summaries of windows that have ended (periodic: the drain, the timer, the ticker).
pub async fn flush_due(app: &App) {
    let now = app.clock.now();
    write(app.store.as_ref(), now, app.refusals.take(now, false)).await;
}

/// Write every summary, the current minute's too (shutdown; tests).
pub async fn flush_all(app: &App) {
    let now = app.clock.now();
    write(app.store.as_ref(), now, app.refusals.take(now, true)).await;
}

async fn write(store: &dyn crate::storage::Store, now: DateTime<Utc>, summaries: Vec<Summary>) {
    for s in summaries {
        let c = crate::storage::DocCommit {
            partition: PARTITION.into(),
            writes: vec![crate::audit::note(now, s.to_json())],
            outbox: Vec::new(),
            record_id: PARTITION.into(),
            now,
        };
        if let Err(e) = store.doc_commit(&c).await {
            tracing::warn!(error = %e, kind = s.kind, count = s.count, "could not audit a refusal summary");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn one_summary_per_kind_source_and_minute_with_bounded_examples() {
        let r = Refusals::default();
        // 1_800_000_000 is a multiple of 60: second 0 of a minute.
        let big = "k".repeat(300_000);
        for i in 0..1000 {
            let d = if i % 2 == 0 {
                big.clone()
            } else {
                format!("id {i}")
            };
            assert!(r
                .count(at(i % 60), "token_unknown_key", "alerts", &d)
                .is_empty());
        }
        assert!(r.count(at(5), "unknown_key", "read", "").is_empty());
        assert!(r.take(at(59), false).is_empty(), "the window is still open");
        let closed = r.count(at(60), "unknown_key", "read", "");
        assert_eq!(closed.len(), 2, "{closed:?}");
        let s = closed
            .iter()
            .find(|s| s.kind == "token_unknown_key")
            .unwrap();
        assert_eq!((s.count, s.group.as_str()), (1000, "alerts"));
        assert_eq!(s.examples.len(), EXAMPLES);
        assert!(s.examples.iter().all(|e| e.len() < 120), "{:?}", s.examples);
        assert!(s.to_json().to_string().len() < 600);
        assert_eq!(s.to_json()["minute"], "2027-01-15T08:00:00Z");
        // The next window is flushed by time alone.
        assert_eq!(r.take(at(120), false)[0].count, 1);
        assert!(r.take(at(120), true).is_empty());
    }

    #[test]
    fn sources_are_bounded_in_length_and_number() {
        let r = Refusals::default();
        for i in 0..10_000 {
            r.count(
                at(0),
                "no_credentials",
                &format!("{i}{}", "g".repeat(1000)),
                "",
            );
        }
        let all = r.take(at(0), true);
        assert_eq!(all.len(), MAX_BUCKETS + 1);
        assert!(all.iter().all(|s| s.group.len() < 100));
        let other = all.iter().find(|s| s.group == "other").unwrap();
        assert_eq!(other.count, 10_000 - MAX_BUCKETS as u64);
    }
}
