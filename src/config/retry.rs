//! `ICAHUB_RETRY_FIRST_SECS`, `ICAHUB_RETRY_MAX_SECS`, `ICAHUB_GIVE_UP_AFTER_SECS`: when the
//! dispatcher tries a failed delivery again, and when it gives up. The backoff itself is computed
//! in [`crate::dispatcher::policy`].

use std::time::Duration;

/// The outbox's retry settings: exponential backoff with jitter, capped, and a dead letter after
/// `give_up_after`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the second attempt; doubles with each failure.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// A delivery older than this when it fails again is given up (dead letter).
    pub give_up_after: Duration,
    /// Fraction of the delay added or removed at random, so retries of many rows spread out.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(24 * 3600),
            jitter: 0.2,
        }
    }
}
