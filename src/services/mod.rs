//! The services: what the hub does, independent of how it was asked. Each service takes the
//! narrow [`Deps`] it needs (a store, a clock, a way to wake the dispatcher, the counters), never
//! the whole app, and answers in domain types or a [`ServiceError`]; `http/` turns both into
//! statuses and JSON bodies ([`crate::error`]), the CLI into messages and exit codes.
//!
//! Data flows one way: `http/` and `cli/` → `services/` → `domain/` (pure) and `storage/`.

pub mod approvals;
pub mod identities;
pub mod ingest;
pub mod runs;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::storage::{Store, StoreError};
use std::sync::Arc;

/// Wakes the outbox dispatcher for a stream once its rows are durable (the fast path); the
/// timer's drain is the backstop, so a notifier that does nothing loses no delivery.
pub trait Notify: Send + Sync + 'static {
    fn kick(&self, stream: String);
}

impl Notify for Arc<crate::dispatcher::Dispatcher> {
    fn kick(&self, stream: String) {
        crate::dispatcher::Dispatcher::kick(self, stream)
    }
}

/// A notifier that wakes nobody (operator commands: the next drain sends the rows).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoNotify;

impl Notify for NoNotify {
    fn kick(&self, _stream: String) {}
}

/// What a service needs from the outside world, and nothing more.
#[derive(Clone)]
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub notify: Arc<dyn Notify>,
    pub metrics: Arc<Metrics>,
}

/// Why a service refused or failed. Messages are written for the caller: they say what is wrong
/// and, when there is one, what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request itself is wrong (400): `field` is the JSON path at fault, when there is one.
    #[error("{message}")]
    Invalid {
        code: &'static str,
        field: Option<String>,
        message: String,
    },
    /// The object named does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The caller may not do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The caller is not who the request needs (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The object's state does not allow it (409).
    #[error("{0}")]
    Conflict(String),
    /// Too many concurrent writers on one object: retrying soon will succeed (503).
    #[error("{message}")]
    Busy { message: String, retry_after: u32 },
    /// The storage failed or could not be reached (503); `what` says what was not done.
    #[error("{what}: {source}")]
    Storage {
        what: &'static str,
        #[source]
        source: StoreError,
    },
    /// A system the hub depends on failed (503).
    #[error("{message}")]
    Unavailable { message: String, retry_after: u32 },
}

impl ServiceError {
    /// What the caller is told: the message, except that a storage failure says only what was
    /// not done (its cause is for the log).
    pub fn caller_message(&self) -> String {
        match self {
            ServiceError::Storage { what, .. } => {
                format!("storage is unavailable; {what}, retry later")
            }
            other => other.to_string(),
        }
    }

    /// A 400 naming the field (`invalid_field`) or the request (`invalid_request`).
    pub fn invalid(field: Option<String>, message: impl Into<String>) -> Self {
        ServiceError::Invalid {
            code: if field.is_some() {
                "invalid_field"
            } else {
                "invalid_request"
            },
            field,
            message: message.into(),
        }
    }

    /// A storage failure, saying what was not done ("the event was not stored").
    pub fn storage(what: &'static str) -> impl Fn(StoreError) -> ServiceError {
        move |source| ServiceError::Storage { what, source }
    }

    /// Storage contention on `what` ("this approval"), as [`ServiceError::Busy`]; any other storage
    /// failure as [`ServiceError::Storage`].
    pub fn from_store(what: &'static str, busy_on: &'static str) -> impl Fn(StoreError) -> Self {
        move |source| match source {
            StoreError::Contention(_) => ServiceError::Busy {
                message: format!("too many concurrent updates of {busy_on}; retry"),
                retry_after: 1,
            },
            source => ServiceError::Storage { what, source },
        }
    }
}

impl From<crate::domain::alert::PayloadError> for ServiceError {
    fn from(e: crate::domain::alert::PayloadError) -> Self {
        ServiceError::Invalid {
            code: "invalid_field",
            message: if e.field.starts_with("header:") {
                e.problem
            } else {
                format!("{}: {}", e.field, e.problem)
            },
            field: Some(e.field),
        }
    }
}
