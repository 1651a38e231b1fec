//! Prometheus Alertmanager webhook payloads.
use super::alert::{NormalizedAlert, PayloadError};

pub fn parse(_body: &serde_json::Value) -> Result<Vec<(NormalizedAlert, String)>, PayloadError> {
    Err(PayloadError::new("$", "not implemented"))
}
