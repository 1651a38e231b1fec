//! The outbox dispatcher: takes due outbox rows, leases them, sends them through their sink, and
//! records the outcome (delivered, retry later, dead letter, or deferred by our own rate limit).
//!
//! Two ways in, one mechanism: the fast path ([`Dispatcher::kick`]) right after an event's durable
//! write, in the background so the sender's 2xx never waits; and [`Dispatcher::drain`], run by the
//! timer function every minute under the Functions host, or on an interval by `icahub serve`.
//! Leases make several dispatchers (instances) safe; taking only each (stream, sink)'s lowest
//! pending row keeps a stream's deliveries to one sink in order.

pub mod policy;

use crate::clock::Clock;
use crate::sinks::{SendError, Sinks};
use crate::storage::{OutboxRow, Settle, Store, StoreError};
use futures::StreamExt;
use policy::RetryPolicy;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rows fetched per round of a drain.
const BATCH: usize = 64;
/// Deliveries in flight at once within a drain (each to a different stream and sink).
const CONCURRENCY: usize = 16;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    pub delivered: u64,
    pub retried: u64,
    pub dead: u64,
    pub deferred: u64,
    /// Rows another dispatcher leased first.
    pub skipped: u64,
    /// Rows whose lease expired before the outcome could be recorded (another dispatcher has them).
    pub lost_leases: u64,
}

impl DrainReport {
    fn add(&mut self, o: &DrainReport) {
        self.delivered += o.delivered;
        self.retried += o.retried;
        self.dead += o.dead;
        self.deferred += o.deferred;
        self.skipped += o.skipped;
        self.lost_leases += o.lost_leases;
    }

    pub fn total(&self) -> u64 {
        self.delivered + self.retried + self.dead + self.deferred
    }
}

pub struct Dispatcher {
    store: Arc<dyn Store>,
    sinks: Sinks,
    policy: RetryPolicy,
    clock: Arc<dyn Clock>,
    /// This dispatcher's name in leases.
    owner: String,
    lease: Duration,
    metrics: Arc<crate::metrics::Metrics>,
    /// The fast-path deliveries [`Dispatcher::kick`] started that have not finished.
    in_flight: InFlight,
}

/// A count of background tasks, and a way to wait until it is zero.
#[derive(Debug)]
struct InFlight(tokio::sync::watch::Sender<usize>);

/// Lowers the count when the task ends, however it ends (a panic too).
struct Running(tokio::sync::watch::Sender<usize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl InFlight {
    fn new() -> Self {
        InFlight(tokio::sync::watch::channel(0).0)
    }

    /// Count `task` from now (before it is even polled) until it ends, and run it in the
    /// caller's span (a fast-path delivery logs under the request that stored its rows).
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        use tracing::Instrument;
        self.0.send_modify(|n| *n += 1);
        let running = Running(self.0.clone());
        tokio::spawn(
            async move {
                let _running = running;
                task.await;
            }
            .in_current_span(),
        );
    }

    /// Resolves once no counted task is running (at once when none is). A task started while
    /// this waits is waited for too.
    async fn idle(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`: waiting cannot fail.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        sinks: Sinks,
        policy: RetryPolicy,
        clock: Arc<dyn Clock>,
        lease: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "icahub".into());
        Dispatcher {
            store,
            sinks,
            policy,
            clock,
            owner: format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            lease,
            metrics,
            in_flight: InFlight::new(),
        }
    }

    /// The sinks configured on this instance.
    pub fn configured_sinks(&self) -> Vec<crate::domain::routing::Sink> {
        crate::domain::routing::Sink::ALL
            .into_iter()
            .filter(|s| self.sinks.get(*s).is_some())
            .collect()
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Fast path: deliver what is due on `stream`, in the background. The delivery is counted
    /// from this call on, so [`Dispatcher::idle`] waits for it.
    pub fn kick(self: &Arc<Self>, stream: String) {
        let me = self.clone();
        self.in_flight.spawn(async move {
            if let Err(e) = me.deliver_stream(&stream).await {
                tracing::warn!(stream = %stream, error = %e, "fast-path delivery failed; the timer will retry");
            }
        });
    }

    /// Resolves once no fast-path delivery started by [`Dispatcher::kick`] is queued or in
    /// flight: at once when there is none, and a kick made while this waits is waited for too
    /// (quiescence, not "the kicks made before this call"). Deliveries run by
    /// [`Dispatcher::drain`] are not counted (their caller awaits them). Never waits for time:
    /// each kicked delivery ends after its sends and settles (a send is bounded by the sink's
    /// timeout). For tests and orderly shutdown: "the fast path has done what it would do".
    pub async fn idle(&self) {
        self.in_flight.idle().await;
    }

    /// Deliver one stream's due rows until none is due (each sink's rows in order).
    pub async fn deliver_stream(&self, stream: &str) -> Result<DrainReport, StoreError> {
        let mut report = DrainReport::default();
        for _ in 0..64 {
            let due = self
                .store
                .outbox_due(self.clock.now(), BATCH, Some(stream))
                .await?;
            if due.is_empty() {
                break;
            }
            let round = self.deliver_all(due).await;
            report.add(&round);
            if round.delivered == 0 {
                break; // what is left failed or is someone else's: it is not due now
            }
        }
        Ok(report)
    }

    /// Deliver everything due, for at most `budget`.
    pub async fn drain(&self, budget: Duration) -> Result<DrainReport, StoreError> {
        let started = Instant::now();
        let mut report = DrainReport::default();
        while started.elapsed() < budget {
            let due = self.store.outbox_due(self.clock.now(), BATCH, None).await?;
            if due.is_empty() {
                break;
            }
            let round = self.deliver_all(due).await;
            report.add(&round);
            if round.total() == 0 {
                break; // every row was leased by someone else
            }
        }
        if report.total() > 0 {
            tracing::info!(
                delivered = report.delivered,
                retried = report.retried,
                dead = report.dead,
                deferred = report.deferred,
                skipped = report.skipped,
                "outbox drained"
            );
        }
        Ok(report)
    }

    async fn deliver_all(&self, rows: Vec<OutboxRow>) -> DrainReport {
        let outcomes: Vec<DrainReport> = futures::stream::iter(rows)
            .map(|row| async move {
                match self.deliver_one(row).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox delivery could not be recorded");
                        DrainReport::default()
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut total = DrainReport::default();
        for o in &outcomes {
            total.add(o);
        }
        total
    }

    /// Lease, send, settle one row.
    #[tracing::instrument(skip_all, fields(outbox = %row.id(), sink = row.sink.as_str(), kind = %row.kind))]
    pub async fn deliver_one(&self, row: OutboxRow) -> Result<DrainReport, StoreError> {
        let mut report = DrainReport::default();
        let now = self.clock.now();
        let until =
            now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::minutes(1));
        let Some(leased) = self
            .store
            .outbox_lease(&row, &self.owner, now, until)
            .await?
        else {
            report.skipped = 1;
            return Ok(report);
        };
        // A row may name a secret (the Azure DevOps check's job token) instead of carrying it:
        // read it now, send a copy with it, and forget it once the row is settled for good.
        let secret = crate::sinks::azure_devops::secret_key_of(&leased);
        let result = match self.sinks.get(leased.sink) {
            Some(client) => match &secret {
                None => client.send(&leased).await.map(|_| ()),
                Some(key) => match self.store.secret_get(key).await {
                    Ok(Some(token)) => client
                        .send(&crate::sinks::azure_devops::with_token(&leased, &token))
                        .await
                        .map(|_| ()),
                    // The sink explains a row without its token (a permanent failure).
                    Ok(None) => client.send(&leased).await.map(|_| ()),
                    Err(e) => Err(SendError::retry(format!("reading the row's secret: {e}"))),
                },
            },
            None => Err(SendError::Retry {
                error: format!(
                    "the {} sink is not configured on this instance",
                    leased.sink.as_str()
                ),
                retry_after: None,
            }),
        };
        let now = self.clock.now();
        let settle = match result {
            Ok(()) => {
                report.delivered = 1;
                Settle::Delivered { at: now }
            }
            Err(SendError::Retry { error, retry_after }) => {
                let random = uuid::Uuid::new_v4().as_u128() as u64;
                let s = self
                    .policy
                    .after_failure(&leased, now, retry_after, error, random);
                match &s {
                    Settle::Dead { .. } => report.dead = 1,
                    _ => report.retried = 1,
                }
                s
            }
            Err(SendError::Permanent { error }) => {
                report.dead = 1;
                Settle::Dead { error }
            }
            Err(SendError::Throttled { wait }) => {
                report.deferred = 1;
                Settle::Defer {
                    next_attempt_at: now
                        + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(1)),
                }
            }
        };
        let (outcome, error) = match &settle {
            Settle::Delivered { .. } => ("delivered", None),
            Settle::Retry { error, .. } => ("retry", Some(error.as_str())),
            Settle::Dead { error } => ("dead", Some(error.as_str())),
            Settle::Defer { .. } => ("deferred", None),
        };
        match &settle {
            Settle::Dead { error } => {
                tracing::warn!(error = %error, attempts = leased.attempts + 1, "dead letter")
            }
            Settle::Retry {
                error,
                next_attempt_at,
            } => {
                tracing::info!(error = %error, retry_at = %next_attempt_at, "delivery failed; will retry")
            }
            _ => {}
        }
        if self.store.outbox_settle(&leased, &settle).await? {
            self.metrics.delivery(leased.sink, outcome, error, now);
            if let (Some(key), Settle::Delivered { .. } | Settle::Dead { .. }) = (&secret, &settle)
            {
                // Best effort: a secret left behind is never sent anywhere else (its row is
                // settled), and the next settle of a redriven row deletes it.
                if let Err(e) = self.store.secret_delete(key).await {
                    tracing::warn!(error = %e, "could not delete the settled row's secret");
                }
            }
        } else {
            tracing::warn!("lease expired before the outcome was recorded");
            report = DrainReport {
                lost_leases: 1,
                ..DrainReport::default()
            };
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::InFlight;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::oneshot;

    /// Whether `idle` has resolved, after letting every other task run as far as it can.
    async fn resolved(idle: &mut tokio::task::JoinHandle<()>) -> bool {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        idle.is_finished()
    }

    #[tokio::test]
    async fn idle_at_once_when_nothing_runs() {
        let f = InFlight::new();
        // Not a wait on time: the bound only turns a hang into a failure.
        tokio::time::timeout(Duration::from_secs(60), f.idle())
            .await
            .expect("idle with no task resolves");
    }

    #[tokio::test]
    async fn idle_waits_for_every_task_including_one_started_while_waiting() {
        let f = Arc::new(InFlight::new());
        let (release_a, a) = oneshot::channel::<()>();
        f.spawn(async move {
            let _ = a.await;
        });
        let waiter = f.clone();
        let mut idle = tokio::spawn(async move { waiter.idle().await });
        assert!(!resolved(&mut idle).await, "idle while task a runs");
        // A second task, started while idle() waits.
        let (release_b, b) = oneshot::channel::<()>();
        f.spawn(async move {
            let _ = b.await;
        });
        release_a.send(()).unwrap();
        assert!(!resolved(&mut idle).await, "idle while task b still runs");
        release_b.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(60), idle)
            .await
            .expect("idle once both ended")
            .unwrap();
    }

    #[tokio::test]
    async fn a_panicking_task_does_not_keep_idle_waiting() {
        let f = InFlight::new();
        f.spawn(async { panic!("delivery task panicked (expected by this test)") });
        tokio::time::timeout(Duration::from_secs(60), f.idle())
            .await
            .expect("idle after the panic");
    }
}
