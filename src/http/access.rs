//! The access log and the HTTP metrics: one JSON line (under the host) per request with its
//! route template, method, status, latency, request id and the host's invocation id, never a
//! header value or a query string (`?code=` carries the function key). Also the route templates,
//! so metrics are labelled by route, not by raw path (one series per run id would not do).

use crate::functions_host::INVOCATION_ID_HEADER;
use std::time::Duration;
use warp::http::HeaderMap;

/// Every path the hub answers, as a template: `{x}` matches one segment.
pub const ROUTES: &[&str] = &[
    "/",
    "/dispatch",
    "/api/healthz",
    "/api/readyz",
    "/api/metrics",
    "/api/v1/azdev/alert",
    "/api/v1/alertmanager",
    "/api/v1/azdev/incident/{id}",
    "/api/v1/azdev/incidents",
    "/api/v1/azdev/run/start",
    "/api/v1/azdev/run/event",
    "/api/v1/azdev/run/finish",
    "/api/v1/azdev/run/{run_id}",
    "/api/v1/azdev/approval",
    "/api/v1/azdev/approval/{id}",
    "/api/v1/azdev/approval/{id}/sign",
    "/api/v1/azdev/approval/{id}/override",
    "/api/v1/azdev/audit/query",
    "/api/v1/azdo/hooks",
    "/api/v1/azdo/check",
    "/api/v1/mattermost/actions",
];

/// The label of paths no route matches.
pub const UNMATCHED: &str = "unmatched";

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// The template `path` matches; literal segments win over `{param}` ones (so `run/start` is not
/// `run/{run_id}`). Runs on every request: no allocation, one pass over the segments per template.
pub fn route_of(path: &str) -> &'static str {
    let mut best: Option<(&'static str, usize)> = None;
    for t in ROUTES {
        let (mut ts, mut ps) = (segments(t), segments(path));
        let mut literal = 0;
        let fits = loop {
            match (ts.next(), ps.next()) {
                (None, None) => break true,
                (Some(t), Some(_)) if t.starts_with('{') => {}
                (Some(t), Some(p)) if t == p => literal += 1,
                _ => break false,
            }
        };
        if fits && best.is_none_or(|(_, l)| literal > l) {
            best = Some((t, literal));
        }
    }
    best.map_or(UNMATCHED, |(t, _)| t)
}

/// A header's value when it is short and plain (ids only; anything else is dropped, not logged).
fn id_header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .unwrap_or("")
        .to_string()
}

/// Log one answered request. `response` carries the request id the hub answered with (the
/// caller's when sane, else the one it made up); an answer without one (health, metrics) is
/// logged with the request's ([`crate::http::RequestScope`]).
pub fn log(
    method: &str,
    route: &str,
    status: u16,
    elapsed: Duration,
    request: &HeaderMap,
    response: &HeaderMap,
) {
    let mut request_id = id_header(response, "x-request-id");
    if request_id.is_empty() {
        request_id = match crate::http::current_request() {
            Some(ctx) => ctx.request_id,
            None => id_header(request, "x-request-id"),
        };
    }
    tracing::info!(
        target: "icahub::access",
        method,
        route,
        status,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        request_id,
        invocation_id = id_header(request, INVOCATION_ID_HEADER),
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_templates() {
        assert_eq!(
            route_of("/api/v1/azdev/run/start"),
            "/api/v1/azdev/run/start"
        );
        assert_eq!(
            route_of("/api/v1/azdev/run/abc"),
            "/api/v1/azdev/run/{run_id}"
        );
        assert_eq!(
            route_of("/api/v1/azdev/approval/APR-2026-000001/sign"),
            "/api/v1/azdev/approval/{id}/sign"
        );
        assert_eq!(route_of("/"), "/");
        assert_eq!(route_of("/api/v1/nope"), UNMATCHED);
        assert_eq!(route_of("/api/metrics/"), "/api/metrics");
    }
}
