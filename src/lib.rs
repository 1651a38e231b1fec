//! icahub: a webhook gateway and notification hub that runs as an Azure Functions custom handler.
//!
//! - [`config`]: typed configuration from the environment, validated at start; a leaf that
//!   imports only [`domain`] and [`secret`].
//! - [`startup`]: build the app from a [`config::Config`] and serve it on a given listener;
//!   [`server`]: the accept loop, with header, body and idle timeouts and a connection cap.
//! - [`functions_host`]: the only Azure Functions-specific code (port, envelopes).
//! - [`http`]: one module per ingress route, each exporting its warp filter; [`error`] maps
//!   failures to status codes and JSON bodies.
//! - [`domain`]: pure logic: payload parsers, incidents, routing, the audit chain's primitives.
//! - [`storage`]: the `Store` trait over capability traits, the ingest plan, [`storage::open()`],
//!   and the backends (embedded SQLite, Azure Table Storage); imports only [`domain`].
//! - [`audit`]: the audit trail's verifier, checkpoints and export filters.
//! - [`ingest`]: parse, store durably, answer: the path every alert takes.
//! - [`dispatcher`]: drains the outbox through the sinks (retries, dead letters, leases);
//!   [`clock`] is passed in so tests can move time.
//! - [`sinks`]: the outbound clients (Mattermost, PagerDuty, control plane) and their shared
//!   retry classification.
//! - [`runs`]: the run ledger (start, events, finish) with its per-run hash chain.
//! - [`services`]: what the hub does, over narrow [`services::Deps`], answering
//!   [`services::ServiceError`]; [`services::identities`]: API keys, roles, Mattermost links.
//! - [`auth`]: who is calling (API keys, Entra ID tokens, Standard Webhooks signatures);
//!   [`config::auth_methods`]: which methods each route group accepts; [`refusals`]: refused
//!   requests, bounded and summarized per minute.
//! - [`mattermost`]: the approval buttons' callbacks and the rejection dialog.
//! - [`cli`]: operator commands (`serve`, `bench`, `outbox`).
#![forbid(unsafe_code)]

pub mod approvals;
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
pub mod ingest;
pub mod mattermost;
pub mod metrics;
pub mod refusals;
pub mod runs;
pub mod secret;
pub mod server;
pub mod services;
pub mod sinks;
pub mod startup;
pub mod storage;
