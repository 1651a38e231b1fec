//! When to try a failed delivery again, and when to give up.
//!
//! Exponential backoff with jitter, like the well-known webhook services: the first retry comes
//! within seconds, delays double up to a cap, a sink's `Retry-After` is honoured when it asks for
//! longer, and a delivery still failing a day after it was created becomes a dead letter.
//!
//! The settings are [`RetryPolicy`], read by [`crate::config`]; this module computes with them.

use crate::storage::{OutboxRow, Settle};
use chrono::{DateTime, Utc};
use std::time::Duration;

pub use crate::config::retry::RetryPolicy;

impl RetryPolicy {
    /// The delay after `failures` failed attempts (1 = the first failure), before jitter.
    pub fn base_delay(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(30));
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// What to record after a retryable failure of `row` (whose `attempts` does not yet count it).
    pub fn after_failure(
        &self,
        row: &OutboxRow,
        now: DateTime<Utc>,
        retry_after: Option<Duration>,
        error: String,
        random: u64,
    ) -> Settle {
        let age = (now - row.created_at).to_std().unwrap_or_default();
        if age >= self.give_up_after {
            return Settle::Dead {
                error: format!(
                    "gave up after {} attempts over {}h: {error}",
                    row.attempts + 1,
                    age.as_secs() / 3600
                ),
            };
        }
        let base = self.base_delay(row.attempts + 1);
        // random in [0, 1) → a factor in [1 - jitter, 1 + jitter)
        let unit = (random >> 11) as f64 / (1u64 << 53) as f64;
        let factor = 1.0 + self.jitter * (2.0 * unit - 1.0);
        let mut delay = base.mul_f64(factor.max(0.0));
        if let Some(ra) = retry_after {
            delay = delay.max(ra);
        }
        let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(1));
        Settle::Retry {
            next_attempt_at: now + delay,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::domain::routing::Sink;
    use crate::storage::OutboxStatus;

    /// A clock at a fixed time: nothing here depends on when the tests run.
    fn clock() -> ManualClock {
        ManualClock::new("2026-01-31T12:00:00Z".parse().expect("a valid time"))
    }

    fn row(attempts: u32, created: DateTime<Utc>) -> OutboxRow {
        OutboxRow {
            stream: "s".into(),
            seq: 1,
            sink: Sink::Mattermost,
            kind: "incident.opened".into(),
            idempotency_key: "k".into(),
            event_id: "e".into(),
            payload: serde_json::json!({}),
            status: OutboxStatus::Pending,
            attempts,
            next_attempt_at: created,
            created_at: created,
            last_error: None,
            lease_owner: None,
            lease_until: None,
            delivered_at: None,
            version: None,
        }
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.base_delay(1), Duration::from_secs(5));
        assert_eq!(p.base_delay(2), Duration::from_secs(10));
        assert_eq!(p.base_delay(5), Duration::from_secs(80));
        assert_eq!(p.base_delay(20), Duration::from_secs(3600));
        assert_eq!(p.base_delay(u32::MAX), Duration::from_secs(3600));
    }

    #[test]
    fn jitter_stays_within_bounds_and_retry_after_wins() {
        let p = RetryPolicy::default();
        let now = clock().now();
        for random in [0, u64::MAX / 2, u64::MAX] {
            let Settle::Retry {
                next_attempt_at, ..
            } = p.after_failure(&row(0, now), now, None, "x".into(), random)
            else {
                panic!("expected retry")
            };
            let d = (next_attempt_at - now).num_milliseconds();
            assert!((4000..=6000).contains(&d), "{d}");
        }
        let Settle::Retry {
            next_attempt_at, ..
        } = p.after_failure(
            &row(0, now),
            now,
            Some(Duration::from_secs(120)),
            "429".into(),
            0,
        )
        else {
            panic!("expected retry")
        };
        assert_eq!((next_attempt_at - now).num_seconds(), 120);
    }

    #[test]
    fn gives_up_after_a_day() {
        let p = RetryPolicy::default();
        let clock = clock();
        let old = row(30, clock.now());
        clock.advance(chrono::Duration::hours(25));
        let now = clock.now();
        assert!(matches!(
            p.after_failure(&old, now, None, "HTTP 503".into(), 0),
            Settle::Dead { error } if error.contains("gave up") && error.contains("HTTP 503")
        ));
    }
}
