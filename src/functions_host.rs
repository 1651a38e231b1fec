//! The only Azure Functions-specific code: how the host talks to a custom handler.
//!
//! HTTP-only functions are forwarded unchanged (host.json `enableForwardingHttpRequest` /
//! `enableProxyingHttpRequest`), so the handler sees the public path (`/api/...`), the raw body and
//! the original headers, plus the host's own headers below. Timer functions arrive as a JSON
//! envelope `{"Data": {...}, "Metadata": {...}}` on `POST /<FunctionName>` (docs/protocols.md §1.3).

/// Set by the host for the child process: the port to listen on (not the public port).
pub const PORT_VAR: &str = "FUNCTIONS_CUSTOMHANDLER_PORT";
/// Added by the host to every forwarded request; carried by the request's span
/// ([`crate::http::RequestScope`]) and its access log line.
pub const INVOCATION_ID_HEADER: &str = "x-azure-functions-invocationid";

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// What the host POSTs for a non-HTTP trigger: one `Data` entry per input binding, and trigger
/// `Metadata` (`sys` with MethodName, UtcNow, RandGuid). Parsed leniently: fields may be missing.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InvocationRequest {
    #[serde(rename = "Data", default)]
    pub data: BTreeMap<String, Value>,
    #[serde(rename = "Metadata", default)]
    pub metadata: BTreeMap<String, Value>,
}

/// The timer binding's value (`TimerInfo`). `ScheduleStatus` may be `null`, and `Last` may be
/// `0001-01-01T00:00:00` on the first run (docs/protocols.md §1.3), so it is kept as raw JSON.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TimerInfo {
    #[serde(rename = "IsPastDue", default)]
    pub is_past_due: bool,
    #[serde(rename = "ScheduleStatus", default)]
    pub schedule_status: Option<Value>,
}

impl InvocationRequest {
    /// Read the envelope the host POSTs: an empty (or whitespace) body is an envelope without
    /// bindings; anything else must be a JSON object of this shape.
    /// Duplicate keys are refused, as in every body the hub takes.
    pub fn from_body(body: &[u8]) -> Result<InvocationRequest, crate::domain::json::StrictError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(InvocationRequest::default());
        }
        let text = std::str::from_utf8(body).map_err(|_| {
            <serde_json::Error as serde::de::Error>::custom("the body is not valid UTF-8")
        })?;
        let v = crate::domain::json::parse_strict(text)?;
        Ok(serde_json::from_value(v)?)
    }

    /// The first input binding that looks like a timer, if any.
    pub fn timer(&self) -> Option<TimerInfo> {
        self.data.values().find_map(|v| {
            v.get("Schedule")
                .or_else(|| v.get("IsPastDue"))
                .and_then(|_| serde_json::from_value(v.clone()).ok())
        })
    }

    /// `Metadata.sys.MethodName`: the function the host invoked.
    pub fn method_name(&self) -> Option<&str> {
        self.metadata.get("sys")?.get("MethodName")?.as_str()
    }
}

/// The handler's answer to a non-HTTP invocation. The host requires a 2xx and this shape;
/// `Logs` lines go to the invocation log.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InvocationResponse {
    #[serde(rename = "Outputs")]
    pub outputs: BTreeMap<String, Value>,
    #[serde(rename = "Logs")]
    pub logs: Vec<String>,
    #[serde(rename = "ReturnValue")]
    pub return_value: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_envelope_from_the_sample_and_with_null_schedule_status() {
        let sample = include_str!("../tests/fixtures/functions-host-timer-invocation.json");
        let req: InvocationRequest = serde_json::from_str(sample).unwrap();
        let t = req.timer().expect("timer binding");
        assert!(!t.is_past_due);
        assert!(t.schedule_status.is_some());
        assert_eq!(req.method_name(), Some("uk-generation-mix"));
        let nulled = sample.replace(
            &sample
                [sample.find("\"ScheduleStatus\"").unwrap()..sample.find("\"IsPastDue\"").unwrap()],
            "\"ScheduleStatus\": null,\n            ",
        );
        let req: InvocationRequest = serde_json::from_str(&nulled).unwrap();
        let t = req.timer().expect("timer binding");
        assert!(t.schedule_status.is_none_or(|v| v.is_null()));
    }

    #[test]
    fn response_has_the_host_field_names() {
        let r = InvocationResponse {
            logs: vec!["x".into()],
            ..Default::default()
        };
        let v = serde_json::to_value(r).unwrap();
        assert_eq!(v["Outputs"], serde_json::json!({}));
        assert_eq!(v["Logs"][0], "x");
        assert!(v["ReturnValue"].is_null());
    }
}
