//! The periodic work, written once: [`tick`] writes a due audit checkpoint and the refusal
//! summaries, sweeps the approvals (expiry, escalation, reminders) and drains the outbox. Under
//! the Functions host the `dispatch` timer function calls it ([`crate::http::timer`]); a hub
//! serving alone calls it from [`run_every`]. New periodic work goes into [`tick`], so both
//! get it.

use crate::app::App;
use crate::approvals::SweepReport;
use crate::dispatcher::DrainReport;
use crate::storage::StoreError;

use std::sync::Arc;
use std::time::Duration;

/// A drain stops taking new rows after this, well inside the timer's one-minute schedule.
pub const DRAIN_BUDGET: Duration = Duration::from_secs(45);

/// How often a hub serving alone looks for a refusal window that has ended (whatever the
/// dispatch settings: the summaries are written within this of their minute's end).
pub const REFUSALS_FLUSH_EVERY: Duration = Duration::from_secs(10);

/// What one [`tick`] did.
#[derive(Debug)]
pub struct TickReport {
    /// The key of the audit checkpoint written, when one was due.
    pub checkpoint: Option<String>,
    /// The approval sweep; a failure is logged by [`tick`] and retried on the next one.
    pub sweep: Result<SweepReport, StoreError>,
    /// The outbox drain; what a failure means is the caller's (the timer answers it as an error
    /// so the host logs the invocation as failed).
    pub drain: Result<DrainReport, StoreError>,
}

/// One round of the periodic work: a due audit checkpoint, the refusal summaries whose minute
/// has ended, the approval sweep, then an outbox drain of at most [`DRAIN_BUDGET`]. The sweep
/// reads the app's clock when it starts, after the checkpoint, so a slow checkpoint does not
/// delay an expiry.
pub async fn tick(app: &App) -> TickReport {
    let checkpoint = crate::audit::periodic_checkpoint(app).await;
    crate::refusals::flush_due(app).await;
    // Approvals first: expiries and reminders write outbox rows this drain then delivers.
    let sweep = app.approvals.sweep(app.clock.now()).await;
    if let Err(e) = &sweep {
        tracing::warn!(error = %e, "approval sweep failed; the next tick retries");
    }
    let drain = app.dispatcher.drain(DRAIN_BUDGET).await;
    TickReport {
        checkpoint,
        sweep,
        drain,
    }
}

/// [`tick`] every `every`, forever (`serve` outside the Functions host, where no timer function
/// calls it). A failed drain is logged and retried on the next tick.
pub async fn run_every(app: Arc<App>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(e) = tick(&app).await.drain {
            tracing::warn!(error = %e, "periodic outbox drain failed; will retry");
        }
    }
}

/// Write the refusal summaries whose minute has ended, every [`REFUSALS_FLUSH_EVERY`], forever
/// (beside the server, whatever the dispatch settings).
pub async fn flush_refusals_every(app: Arc<App>) {
    let mut interval = tokio::time::interval(REFUSALS_FLUSH_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        crate::refusals::flush_due(&app).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    /// One tick does each part on the app's store and clock: a checkpoint when one is due (and
    /// not again within its period), a sweep and a drain that find nothing to do on a new store.
    #[tokio::test]
    async fn a_tick_checkpoints_when_due_sweeps_and_drains() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = crate::config::Config::embedded(dir.path());
        config.audit_checkpoint_every = Some(Duration::from_secs(3600));
        let t0 = "2026-01-01T00:00:00Z".parse().expect("a date");
        let clock = Arc::new(ManualClock::new(t0));
        let app = App::build_with(config, crate::sinks::Sinks::default(), clock.clone())
            .await
            .expect("the app");

        let first = tick(&app).await;
        let key = first
            .checkpoint
            .expect("a checkpoint is due on a new store");
        assert!(key.starts_with("cp|"), "{key}");
        let sweep = first.sweep.expect("the sweep");
        assert_eq!((sweep.checked, sweep.expired, sweep.reminded), (0, 0, 0));
        assert_eq!(first.drain.expect("the drain"), DrainReport::default());

        clock.advance(chrono::Duration::minutes(59));
        let second = tick(&app).await;
        assert_eq!(second.checkpoint, None, "not due within the period");
        clock.advance(chrono::Duration::minutes(1));
        let third = tick(&app).await;
        assert!(third.checkpoint.is_some(), "due again after the period");
    }
}
