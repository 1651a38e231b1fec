//! icahub: a webhook gateway and notification hub that runs as an Azure Functions custom handler.
//!
//! - [`config`]: typed configuration from the environment, validated at start; a leaf that
//!   imports only [`domain`] and [`secret`].
//! - [`app`]: the [`app::App`] and the one place its store and sinks are opened from a
//!   [`config::Config`]; [`startup`]: serve it on a given listener and stop gracefully;
//!   [`server`]: the accept loop, with header, body and idle timeouts and a connection cap;
//!   [`jobs`]: the periodic tick (audit checkpoint, approval sweep, outbox drain).
//! - [`functions_host`]: the only Azure Functions-specific code (port, envelopes).
//! - [`http`]: one module per ingress route, each exporting its warp filter; [`error`] maps
//!   failures to status codes and JSON bodies.
//! - [`domain`]: pure logic: payload parsers, incidents, routing, the approval state machine, the
//!   audit chain's primitives.
//! - [`storage`]: the `Store` trait over capability traits, the ingest plan, [`storage::open()`],
//!   and the backends (embedded SQLite, Azure Table Storage); imports only [`domain`].
//! - [`audit`]: the audit trail's verifier, checkpoints and export filters.
//! - [`dispatcher`]: drains the outbox through the sinks (retries, dead letters, leases);
//!   [`clock`] is passed in so tests can move time.
//! - [`sinks`]: the outbound clients (Mattermost, PagerDuty, control plane) and their shared
//!   retry classification.
//! - [`services`]: what the hub does, over narrow [`services::Deps`], answering domain types or
//!   [`services::ServiceError`] (`http/` builds the JSON): [`services::ingest`], the path every
//!   alert takes (parse, store durably, count, wake the dispatcher); [`services::runs`], the run
//!   ledger (start, events, finish) with its per-run hash chain; [`services::approvals`]: approval
//!   gates (create, sign, override), budgets, deployment locks and the sweep, split by concern;
//!   [`services::identities`]: API keys, roles, Mattermost links. [`ingest`], [`runs`] and
//!   [`approvals`] are their old paths.
//! - [`auth`]: who is calling (API keys, Entra ID tokens, Standard Webhooks signatures);
//!   [`config::auth_methods`]: which methods each route group accepts; [`refusals`]: refused
//!   requests, bounded and summarized per minute.
//! - [`mattermost`]: the approval buttons' callbacks and the rejection dialog, over narrow
//!   [`mattermost::Actions`]; `http/mattermost.rs` writes their answers.
//! - [`cli`]: operator commands (`serve`, `bench`, `outbox`).
#![forbid(unsafe_code)]

pub mod app;
/// Approval gates, budgets and deployment locks: [`services::approvals`].
pub use services::approvals;
pub mod audit;
pub mod auth;
/// Which methods each route group accepts: [`config::auth_methods`].
pub use config::auth_methods;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dispatcher;
pub mod domain;
pub use auth::entra;
pub mod error;
pub mod functions_host;
pub mod http;
/// Identities, keys and roles ([`services::identities`]) and the key check ([`auth::api_keys`]).
pub mod identity {
    pub use crate::auth::api_keys::Authenticator;
    pub use crate::services::identities::*;
}
/// The alert path's old home: the service is [`services::ingest`], request decoding and the 202
/// body are in [`http::body`], each route's decoder in [`http::alerts`] and [`http::alertmanager`].
pub mod ingest {
    pub use crate::http::alertmanager::delivery as alertmanager_delivery;
    pub use crate::http::alerts::delivery as azure_monitor_delivery;
    pub use crate::http::body::{accepted_body, decode_json, RequestCtx};
    pub use crate::services::ingest::*;
}
pub mod jobs;
pub mod mattermost;
pub mod metrics;
pub mod refusals;
/// The run ledger: [`services::runs`].
pub use services::runs;
pub mod secret;
pub mod server;
pub mod services;
pub mod sinks;
pub mod startup;
pub mod storage;
