//! Prometheus metrics (`GET /api/metrics`) and the sinks' last results (`GET /api/readyz`).
//!
//! Counters live in this process (one registry per [`crate::startup::App`], so tests that run
//! several hubs in one process see their own): sum them across instances in PromQL. The outbox
//! gauges are read from the store at scrape time, at most every [`OUTBOX_REFRESH`]; a scrape
//! waits for the read at most [`OUTBOX_READ_BUDGET`]: a slow store never makes a scrape hang, it
//! serves the last reading and says how old it is (`icahub_outbox_snapshot_age_seconds`) while
//! the read finishes in the background.

use crate::clock::Clock;
use crate::domain::routing::Sink;
use crate::storage::Store;
use chrono::{DateTime, Utc};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How long an outbox reading is reused before a scrape reads the store again.
pub const OUTBOX_REFRESH: Duration = Duration::from_secs(15);
/// The longest a scrape waits for the store before serving the last reading.
pub const OUTBOX_READ_BUDGET: Duration = Duration::from_secs(2);
/// A background outbox read is given up after this long.
const OUTBOX_READ_LIMIT: Duration = Duration::from_secs(60);
/// Content type of the Prometheus text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The last delivery outcome of one sink in this process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SinkResult {
    /// `delivered`, `retry`, `dead` or `deferred`.
    pub outcome: &'static str,
    pub at: DateTime<Utc>,
    /// The sink's error, for anything but `delivered` and `deferred`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_latency: HistogramVec,
    events_ingested: IntCounterVec,
    incidents_opened: IntCounterVec,
    incidents_resolved: IntCounterVec,
    deliveries: IntCounterVec,
    delivery_failures: IntCounterVec,
    dead_letters: IntCounterVec,
    approvals: IntCounterVec,
    outbox_pending: IntGaugeVec,
    outbox_due: IntGaugeVec,
    outbox_oldest: IntGaugeVec,
    outbox_dead: IntGaugeVec,
    outbox_snapshot_age: IntGauge,
    outbox_read_errors: IntCounter,
    last_results: Mutex<BTreeMap<&'static str, SinkResult>>,
    /// Held while the outbox is read: one read at a time.
    reading: tokio::sync::Mutex<()>,
    /// When the gauges were last read (outside the read's lock, for the age gauge).
    last_read: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    registry.register(Box::new(c.clone())).expect("unique name");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    registry.register(Box::new(g.clone())).expect("unique name");
    g
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let http_latency = HistogramVec::new(
            HistogramOpts::new(
                "icahub_http_request_duration_seconds",
                "Time from request to response, by route template and status",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route", "status"],
        )
        .expect("valid histogram");
        r.register(Box::new(http_latency.clone()))
            .expect("unique name");
        let m = Metrics {
            http_requests: counter(
                &r,
                "icahub_http_requests_total",
                "HTTP requests answered, by route template, method and status",
                &["route", "method", "status"],
            ),
            http_latency,
            events_ingested: counter(
                &r,
                "icahub_events_ingested_total",
                "Events stored durably (duplicates not counted), by source",
                &["source"],
            ),
            incidents_opened: counter(
                &r,
                "icahub_incidents_opened_total",
                "Incidents opened, by source",
                &["source"],
            ),
            incidents_resolved: counter(
                &r,
                "icahub_incidents_resolved_total",
                "Incidents resolved, by source",
                &["source"],
            ),
            deliveries: counter(
                &r,
                "icahub_deliveries_total",
                "Delivery attempts settled, by sink and outcome (delivered, retry, dead, deferred)",
                &["sink", "outcome"],
            ),
            delivery_failures: counter(
                &r,
                "icahub_delivery_failures_total",
                "Delivery attempts that failed (retry or dead), by sink",
                &["sink"],
            ),
            dead_letters: counter(
                &r,
                "icahub_dead_letters_total",
                "Deliveries that became dead letters in this process, by sink",
                &["sink"],
            ),
            approvals: counter(
                &r,
                "icahub_approvals_total",
                "Approval state changes written, by the status reached",
                &["status"],
            ),
            outbox_pending: gauge(
                &r,
                "icahub_outbox_depth",
                "Outbox rows not yet delivered (pending), by sink",
                &["sink"],
            ),
            outbox_due: gauge(
                &r,
                "icahub_outbox_due",
                "Pending outbox rows whose next attempt is due now, by sink",
                &["sink"],
            ),
            outbox_oldest: gauge(
                &r,
                "icahub_outbox_oldest_age_seconds",
                "Age of the oldest pending outbox row, by sink (0 when none)",
                &["sink"],
            ),
            outbox_dead: gauge(
                &r,
                "icahub_outbox_dead_letters",
                "Dead letters waiting in the outbox (all instances), by sink",
                &["sink"],
            ),
            outbox_snapshot_age: {
                let g = IntGauge::new(
                    "icahub_outbox_snapshot_age_seconds",
                    "Age of the outbox reading the icahub_outbox_* gauges show (-1: never read)",
                )
                .expect("valid gauge");
                r.register(Box::new(g.clone())).expect("unique name");
                g
            },
            outbox_read_errors: {
                let c = IntCounter::new(
                    "icahub_outbox_read_errors_total",
                    "Scrapes whose outbox reading failed or took too long",
                )
                .expect("valid counter");
                r.register(Box::new(c.clone())).expect("unique name");
                c
            },
            registry: r,
            last_results: Mutex::new(BTreeMap::new()),
            reading: tokio::sync::Mutex::new(()),
            last_read: Mutex::new(None),
        };
        // The outbox gauges have no series until the first reading: an alert on
        // `icahub_outbox_dead_letters > 0` must not read "all clear" before anything was read.
        m
    }

    /// One answered request. `route` is a template (bounded cardinality), never a raw path.
    pub fn http(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        // Any token is a method to HTTP: keep the label to the ones the API knows.
        let method = match method {
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => method,
            _ => "other",
        };
        let status = status.to_string();
        self.http_requests
            .with_label_values(&[route, method, &status])
            .inc();
        self.http_latency
            .with_label_values(&[route, &status])
            .observe(elapsed.as_secs_f64());
    }

    /// An event stored durably: an alert, a run-ledger record, a service hook.
    pub fn event_ingested(&self, source: &str) {
        self.events_ingested.with_label_values(&[source]).inc();
    }

    pub fn incident_opened(&self, source: &str) {
        self.incidents_opened.with_label_values(&[source]).inc();
    }

    pub fn incident_resolved(&self, source: &str) {
        self.incidents_resolved.with_label_values(&[source]).inc();
    }

    /// An approval written in `status`.
    pub fn approval(&self, status: &str) {
        self.approvals.with_label_values(&[status]).inc();
    }

    /// A delivery settled: `outcome` is `delivered`, `retry`, `dead` or `deferred`.
    pub fn delivery(
        &self,
        sink: Sink,
        outcome: &'static str,
        error: Option<&str>,
        at: DateTime<Utc>,
    ) {
        let s = sink.as_str();
        self.deliveries.with_label_values(&[s, outcome]).inc();
        if matches!(outcome, "retry" | "dead") {
            self.delivery_failures.with_label_values(&[s]).inc();
        }
        if outcome == "dead" {
            self.dead_letters.with_label_values(&[s]).inc();
        }
        let result = SinkResult {
            outcome,
            at,
            error: error.map(|e| e.chars().take(300).collect()),
        };
        if let Ok(mut last) = self.last_results.lock() {
            last.insert(s, result);
        }
    }

    /// Each sink's last delivery outcome in this process (sinks not used yet are absent).
    pub fn last_results(&self) -> BTreeMap<&'static str, SinkResult> {
        self.last_results
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// The text exposition, with the outbox gauges refreshed from `store` when stale. The read
    /// runs in its own task: a scrape waits for it at most [`OUTBOX_READ_BUDGET`], and a slow
    /// read still lands for the next scrape instead of being cut off each time. The outbox's ages
    /// are measured on `clock`.
    pub async fn render(self: &Arc<Self>, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> String {
        // A read in progress (another scrape's) will land by itself: do not queue another.
        if self.outbox_is_stale() && self.reading.try_lock().is_ok() {
            let me = self.clone();
            // In the scrape's span, so a slow or failed read is logged with its request.
            let read = async move { me.refresh_outbox(store.as_ref(), clock.as_ref()).await };
            let read = tokio::spawn(read.in_current_span());
            if tokio::time::timeout(OUTBOX_READ_BUDGET, read)
                .await
                .is_err()
            {
                self.outbox_read_errors.inc();
                tracing::warn!(
                    budget_ms = OUTBOX_READ_BUDGET.as_millis() as u64,
                    "metrics: the outbox read is slow; serving the last reading"
                );
            }
        }
        self.outbox_snapshot_age.set(
            self.last_read()
                .map_or(-1, |t| t.elapsed().as_secs() as i64),
        );
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Resolves once no outbox read is running (one a scrape stopped waiting for may still be),
    /// so the next stale scrape starts a fresh one. For tests, which await this instead of
    /// polling the scrape on a timer.
    pub async fn outbox_read_idle(&self) {
        let _reading = self.reading.lock().await;
    }

    /// Read the outbox once (one read at a time) and set the gauges.
    fn last_read(&self) -> Option<Instant> {
        self.last_read.lock().ok().and_then(|t| *t)
    }

    fn outbox_is_stale(&self) -> bool {
        self.last_read()
            .is_none_or(|t| t.elapsed() >= OUTBOX_REFRESH)
    }

    async fn refresh_outbox(&self, store: &dyn Store, clock: &dyn Clock) {
        let _reading = self.reading.lock().await;
        if !self.outbox_is_stale() {
            return; // another read finished while this one waited
        }
        let now = clock.now();
        match tokio::time::timeout(OUTBOX_READ_LIMIT, store.outbox_stats(now)).await {
            Ok(Ok(by_sink)) => {
                for (sink, o) in &by_sink {
                    let gauge =
                        |g: &IntGaugeVec, v: u64| g.with_label_values(&[sink]).set(v as i64);
                    gauge(&self.outbox_pending, o.pending);
                    gauge(&self.outbox_due, o.due);
                    gauge(&self.outbox_oldest, o.oldest_age_secs(now).unwrap_or(0));
                    gauge(&self.outbox_dead, o.dead);
                }
                if let Ok(mut t) = self.last_read.lock() {
                    *t = Some(Instant::now());
                }
            }
            Ok(Err(e)) => {
                self.outbox_read_errors.inc();
                tracing::warn!(error = %e, "metrics: reading the outbox failed");
            }
            Err(_) => {
                self.outbox_read_errors.inc();
                tracing::warn!("metrics: reading the outbox did not finish in a minute");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_text_format() {
        let m = Metrics::new();
        m.http("/api/v1/azdev/alert", "POST", 202, Duration::from_millis(3));
        m.event_ingested("azure_monitor");
        let at = "2026-01-01T00:00:00Z".parse().unwrap();
        m.delivery(Sink::Pagerduty, "dead", Some("400 Bad Request"), at);
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&m.registry.gather(), &mut buf)
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains(
            "icahub_http_requests_total{method=\"POST\",route=\"/api/v1/azdev/alert\",status=\"202\"} 1"
        ));
        assert!(text.contains("icahub_events_ingested_total{source=\"azure_monitor\"} 1"));
        assert!(text.contains("icahub_dead_letters_total{sink=\"pagerduty\"} 1"));
        assert!(text.contains("icahub_delivery_failures_total{sink=\"pagerduty\"} 1"));
        assert_eq!(m.last_results()["pagerduty"].outcome, "dead");
    }
}
