//! Azure Monitor action-group payloads.
use super::alert::{NormalizedAlert, PayloadError};

pub fn parse(_body: &serde_json::Value, _raw_body: &[u8]) -> Result<NormalizedAlert, PayloadError> {
    Err(PayloadError::new("$", "not implemented"))
}
