//! Pure domain logic: no I/O, no warp, no reqwest. Payload parsers turn untrusted JSON into
//! [`alert::NormalizedAlert`]; [`incident::plan`] decides what an alert does to its incident stream;
//! [`routing`] decides who hears about it. New state machines (runs, approvals) go here too;
//! [`check`] reads the Azure DevOps check's callback headers; [`audit_chain`] holds the audit
//! trail's hash-chain primitives that the storage backends write with every record.

pub mod action_token;
pub mod alert;
pub mod alertmanager;
pub mod approval;
pub mod audit_chain;
pub mod azdo;
pub mod azure_monitor;
pub mod bounded;
pub mod check;
pub mod event;
pub mod identity;
pub mod incident;
pub mod json;
pub mod routing;
pub mod run;
pub mod standard_webhooks;
