//! HTTP ingress: one module per route, each exporting its warp filter, composed in [`routes`].
//! Paths are the public ones the Functions host forwards (`/api/...`). Handlers take the raw body
//! bytes, decode them ([`body::decode_json`]), call a service ([`crate::services`]) with the
//! parsed request ([`crate::domain`] parses) and build the JSON answer from what it returns.

pub mod access;
pub mod alertmanager;
pub mod alerts;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod azdo;
pub mod azdo_check;
pub mod body;
pub mod health;
pub mod incidents;
pub mod mattermost;
pub mod runs;
pub mod timer;
/// Standard Webhooks verification, now in [`crate::auth::webhooks`].
pub use crate::auth::webhooks as verify;

use crate::auth_methods::RouteGroup;
use crate::error::ApiError;
use crate::functions_host::INVOCATION_ID_HEADER;
use crate::startup::App;
use body::RequestCtx;
use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use tokio::task::futures::TaskLocalFuture;
use tracing::instrument::Instrumented;
use tracing::Instrument;
use warp::filters::BoxedFilter;
use warp::http::HeaderMap;
use warp::reply::Response;
use warp::{Filter, Rejection};

/// Every route of the hub, with the JSON error mapping and the access log.
pub fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    // Each route is boxed: one long chain of concrete filter types overflows the compiler's
    // trait resolution in release builds, and boxing keeps compile times down.
    let all: Vec<BoxedFilter<(Response,)>> = vec![
        health::readiness().boxed(),
        health::healthz(app.clone()).boxed(),
        health::readyz(app.clone()).boxed(),
        health::metrics(app.clone()).boxed(),
        alerts::route(app.clone()).boxed(),
        alertmanager::route(app.clone()).boxed(),
        incidents::get_one(app.clone()).boxed(),
        incidents::list(app.clone()).boxed(),
        runs::start(app.clone()).boxed(),
        runs::event(app.clone()).boxed(),
        runs::finish(app.clone()).boxed(),
        runs::get(app.clone()).boxed(),
        approvals::create(app.clone()).boxed(),
        approvals::get(app.clone()).boxed(),
        approvals::sign(app.clone()).boxed(),
        approvals::emergency_override(app.clone()).boxed(),
        azdo::route(app.clone()).boxed(),
        azdo_check::route(app.clone()).boxed(),
        mattermost::actions(app.clone()).boxed(),
        audit::query(app.clone()).boxed(),
        timer::route(app.clone()).boxed(),
    ];
    let routes = all
        .into_iter()
        .reduce(|a, b| a.or(b).unify().boxed())
        .expect("at least one route")
        .recover(crate::error::recover)
        .unify();
    // A signed message the hub failed (5xx) is forgotten by the replay cache, so the sender's
    // retry, which keeps its webhook-id, is not refused as a replay.
    warp::any()
        .map(std::time::Instant::now)
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(routes)
        .map(
            move |started: std::time::Instant,
                  method: warp::http::Method,
                  path: warp::path::FullPath,
                  headers: warp::http::HeaderMap,
                  resp: Response| {
                if resp.status().is_server_error() {
                    verify::release_failed(&app.replay, &headers);
                }
                let elapsed = started.elapsed();
                let route = access::route_of(path.as_str());
                let status = resp.status().as_u16();
                app.metrics.http(route, method.as_str(), status, elapsed);
                access::log(
                    method.as_str(),
                    route,
                    status,
                    elapsed,
                    &headers,
                    resp.headers(),
                );
                resp
            },
        )
        .boxed()
}

pub fn with_app(app: Arc<App>) -> impl Filter<Extract = (Arc<App>,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

tokio::task_local! {
    /// The request being answered on this task: set once per request by [`RequestScope::run`].
    static REQUEST: RequestCtx;
}

/// The request id (the caller's `x-request-id` when it is sane, else a new UUID) and the host's
/// invocation id, read from a request's headers. Made once per request, by [`RequestScope::of`].
pub fn request_ctx_of(h: &HeaderMap) -> RequestCtx {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let sane = |s: &String| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    };
    RequestCtx {
        request_id: get("x-request-id")
            .filter(sane)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        invocation_id: get(INVOCATION_ID_HEADER).filter(sane),
    }
}

/// One request as a unit: its [`RequestCtx`], made once, and its span. The ctx is the one every
/// handler ([`ctx`]), every error answer ([`crate::error::recover`]) and the access log use; the
/// span `request` (request id, invocation id, route template, method) encloses the whole answer,
/// so every log line of the request, in services and storage too, carries its ids.
/// [`crate::server`] answers each request through [`RequestScope::run`].
pub struct RequestScope {
    ctx: RequestCtx,
    span: tracing::Span,
}

impl RequestScope {
    /// The scope of a request with this method, path and headers.
    pub fn of(method: &str, path: &str, headers: &HeaderMap) -> RequestScope {
        let ctx = request_ctx_of(headers);
        let span = tracing::info_span!(
            "request",
            request_id = %ctx.request_id,
            invocation_id = ctx.invocation_id.as_deref(),
            route = access::route_of(path),
            method,
        );
        RequestScope { ctx, span }
    }

    /// `answer` (the routes' future for this request) run inside the scope.
    pub fn run<F: Future>(self, answer: F) -> TaskLocalFuture<RequestCtx, Instrumented<F>> {
        REQUEST.scope(self.ctx, answer.instrument(self.span))
    }
}

/// The ids of the request this task is answering, when it runs inside a [`RequestScope`].
pub fn current_request() -> Option<RequestCtx> {
    REQUEST.try_with(RequestCtx::clone).ok()
}

/// The request's [`RequestCtx`]: the one its [`RequestScope`] made, or (for routes served without
/// it) one read from the headers.
pub fn ctx() -> impl Filter<Extract = (RequestCtx,), Error = Infallible> + Clone {
    warp::header::headers_cloned()
        .map(|h: HeaderMap| current_request().unwrap_or_else(|| request_ctx_of(&h)))
}

/// A path parameter, percent-decoded: `warp::path!` hands a segment over exactly as it was sent,
/// so without this `GET run/a%20b` would look for the run `a%20b`, not the run `a b` that
/// `POST run/start` stored. Bytes that are not UTF-8 once decoded become U+FFFD (and so name
/// nothing: a 404 from the handler, not a `no_route`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment(pub String);

impl std::str::FromStr for Segment {
    type Err = Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Segment(percent_decode(s)))
    }
}

/// `%XX` escapes to bytes, then UTF-8 (lossy); a `%` not followed by two hex digits stays as it is.
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let (b, mut out, mut i) = (s.as_bytes(), Vec::with_capacity(s.len()), 0);
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_json_content_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The raw body of a JSON request: 415 unless the content type is JSON, 413 past `limit` (checked
/// on `Content-Length` before reading, and again while reading a chunked body).
pub fn json_body(limit: usize) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    body_filter(limit, Accept::Json)
}

/// Like [`json_body`], but a request without `Content-Type` is accepted too (the Azure DevOps
/// check may send no body at all); one that names another type is still 415.
pub fn optional_json_body(
    limit: usize,
) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    body_filter(limit, Accept::JsonOrNone)
}

/// The raw body whatever its content type, 413 past `limit` like [`json_body`] (for the
/// Functions host's timer invocations, which are not a client's API calls).
pub fn any_body(limit: usize) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    body_filter(limit, Accept::Any)
}

/// Which `Content-Type` a body filter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accept {
    Json,
    JsonOrNone,
    Any,
}

pub(crate) fn body_filter(
    limit: usize,
    accept: Accept,
) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and(warp::header::optional::<String>("content-length"))
        .and(warp::ext::optional::<crate::server::BodyDeadline>())
        .and(warp::body::stream())
        .and_then(
            move |ct: Option<String>,
                  cl: Option<String>,
                  deadline: Option<crate::server::BodyDeadline>,
                  body| async move {
                match ct.as_deref() {
                    _ if accept == Accept::Any => {}
                    Some(ct) if is_json_content_type(ct) => {}
                    Some(ct) => {
                        return Err(warp::reject::custom(ApiError::UnsupportedMediaType(
                            format!("Content-Type must be application/json, got {ct:?}"),
                        )))
                    }
                    None if accept == Accept::JsonOrNone => {}
                    None => {
                        return Err(warp::reject::custom(ApiError::UnsupportedMediaType(
                            "Content-Type must be application/json, and none was sent".into(),
                        )))
                    }
                }
                if let Some(cl) = cl {
                    match cl.trim().parse::<u64>() {
                        Ok(n) if n > limit as u64 => {
                            return Err(warp::reject::custom(ApiError::PayloadTooLarge { limit }))
                        }
                        Ok(_) => {}
                        Err(_) => {
                            return Err(warp::reject::custom(ApiError::bad_request(
                                Some("header:content-length".into()),
                                "Content-Length is not a number",
                            )))
                        }
                    }
                }
                // The body must arrive by the connection's deadline (crate::server): a sender
                // trickling it cannot hold the request open.
                match deadline {
                    Some(crate::server::BodyDeadline { at, secs }) => {
                        tokio::time::timeout_at(at, collect_body(body, limit))
                            .await
                            .unwrap_or_else(|_| {
                                Err(warp::reject::custom(ApiError::RequestTimeout { secs }))
                            })
                    }
                    None => collect_body(body, limit).await,
                }
            },
        )
}

async fn collect_body<S, B>(body: S, limit: usize) -> Result<Bytes, Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| {
            warp::reject::custom(ApiError::bad_request(
                None,
                format!("could not read the request body: {e}"),
            ))
        })?;
        if buf.len() + chunk.remaining() > limit {
            return Err(warp::reject::custom(ApiError::PayloadTooLarge { limit }));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            buf.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

/// Parses a body into a delivery of the alerts it carries.
pub type ParseDelivery = fn(
    &RequestCtx,
    &[u8],
    chrono::DateTime<chrono::Utc>,
) -> Result<crate::storage::Delivery, ApiError>;

/// An alert ingress route: `POST path`, authenticated (the `alerts` group), JSON body, parsed by
/// `parse`, stored, 202.
pub fn ingest_route(
    app: Arc<App>,
    path: BoxedFilter<()>,
    name: &'static str,
    parse: ParseDelivery,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    path.and(warp::post())
        .and(auth::caller_and_body(
            app.clone(),
            RouteGroup::Alerts,
            auth::Body::Json,
        ))
        .and(ctx())
        .and(with_app(app))
        .then(move |caller, body, ctx, app| accept(caller, name, ctx, body, app, parse))
}

/// The shared alert-ingress handler: parse, store durably, then 202.
#[tracing::instrument(skip_all, fields(route = route, request_id = %ctx.request_id, caller = %caller.name))]
pub async fn accept(
    caller: crate::identity::Caller,
    route: &'static str,
    ctx: RequestCtx,
    body: Bytes,
    app: Arc<App>,
    parse: ParseDelivery,
) -> Response {
    let result = async {
        let delivery = parse(&ctx, &body, app.clock.now())?;
        // Fast path: the service wakes the dispatcher for this event's outbox rows; the 202
        // does not wait for the delivery.
        let outcomes = crate::services::ingest::store(
            &app.deps(),
            &app.config.routing,
            app.config.store_timeout,
            &delivery,
        )
        .await?;
        Ok::<_, ApiError>(body::accepted_body(&ctx, &delivery, &outcomes))
    }
    .await;
    match result {
        Ok(body) => {
            crate::error::json_response(warp::http::StatusCode::ACCEPTED, &body, &ctx.request_id)
        }
        Err(e) => {
            tracing::info!(status = e.status().as_u16(), error = %e, "refused");
            e.into_response(&ctx.request_id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{is_json_content_type, percent_decode};

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decode("APR-2026-000001"), "APR-2026-000001");
        assert_eq!(percent_decode("a%20b%2F%C3%A9"), "a b/é");
        assert_eq!(percent_decode("a%2fb"), "a/b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%FF"), "\u{fffd}");
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("application/json; charset=utf-8"));
        assert!(is_json_content_type("Application/JSON"));
        assert!(is_json_content_type("application/vnd.api+json"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("application/x-www-form-urlencoded"));
    }
}
