//! The storage conformance suite: every backend must pass every check here.
//!
//! A backend's test file calls [`crate::store_conformance_tests!`] with an async function that
//! returns two store handles on the same fresh storage (two "hub instances"); the macro expands to
//! one `#[tokio::test]` per check. Checks build alerts by hand, so they test storage, not parsers.
//! One file per capability; together they call every [`Store`] method.
//!
//! Built only for tests: `#[cfg(test)]` for the library's own unit tests, and the `conformance`
//! feature, which the crate's dev-dependency on itself turns on for `tests/` (never in a
//! release build).

mod audit;
mod docs;
mod incidents;
mod operations;
mod outbox;
mod secrets;

pub use audit::*;
pub use docs::*;
pub use incidents::*;
pub use operations::*;
pub use outbox::*;
pub use secrets::*;

use super::{new_event_id, Delivery, DeliveryAlert, IncidentFilter, OutboxStatus, Store};
use crate::domain::alert::{Condition, NormalizedAlert, Severity, Source, UNRECOGNIZED_SCHEMA};
use crate::domain::incident::{stream_key, IncidentAction, IncidentStatus};
use crate::domain::routing::{Routing, Sink};
use chrono::{Duration, Utc};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

pub type Shared = Arc<dyn Store>;

/// An Azure Monitor alert of `rule` on `resource` ([`crate::domain::alert::sample`]).
pub use crate::domain::alert::sample as alert;

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
        $crate::store_conformance_tests!(@one $make, audit_chains_link_and_read_back);
        $crate::store_conformance_tests!(@one $make, identity_ping_count_and_backup);
        $crate::store_conformance_tests!(@one $make, outbox_stats_match_the_rows);
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
