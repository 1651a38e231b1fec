//! The accept loop: warp's routes served by hyper directly, so that no connection can be held
//! hostage. warp's own server has no header, body or idle timeout and no connection cap; 600 idle
//! half-open connections once stopped a hub with 512 file descriptors from answering `healthz`.
//!
//! - **Connection cap** (`ICAHUB_MAX_CONNECTIONS`): a connection is accepted only with a permit;
//!   over the cap, new connections wait in the kernel's backlog until one closes.
//! - **Header read timeout** (`ICAHUB_HEADER_TIMEOUT_SECS`): hyper closes a connection whose
//!   request head has not arrived in time (a slowloris sending a byte a second).
//! - **Body read timeout** (`ICAHUB_BODY_TIMEOUT_SECS`): each request carries a [`BodyDeadline`]
//!   that the body filters ([`crate::http::body_filter`]) enforce with a 408 JSON error.
//! - **Idle timeout** (`ICAHUB_IDLE_TIMEOUT_SECS`): a connection with no request in flight and no
//!   bytes either way for that long is closed (a keep-alive connection left open, or one that
//!   never sends anything).

use crate::config::ConnectionLimits;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// When a request's body must have been read by (a request extension set per request).
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline {
    pub at: tokio::time::Instant,
    /// The timeout it came from, for the 408's message.
    pub secs: u64,
}

/// What a connection did last, for the idle timeout.
struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last byte read or written.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A TCP stream that records when it last moved bytes.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The routes as a hyper service that counts requests in flight and stamps each with its
/// [`BodyDeadline`].
#[derive(Clone)]
struct Service<S> {
    /// `warp::service(routes)`.
    routes: S,
    activity: Arc<Activity>,
    body_timeout: Duration,
}

/// Decrements the in-flight count when the response is ready (or the request is dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

impl<S> hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Service<S>
where
    S: tower_service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Self::Error>> + Send>>;

    fn call(&self, mut req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        self.activity.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self.activity.clone());
        req.extensions_mut().insert(BodyDeadline {
            at: tokio::time::Instant::now() + self.body_timeout,
            secs: self.body_timeout.as_secs_f64().ceil() as u64,
        });
        let mut routes = self.routes.clone();
        // One request id and one span per request (crate::http::RequestScope).
        let scope =
            crate::http::RequestScope::of(req.method().as_str(), req.uri().path(), req.headers());
        Box::pin(scope.run(async move {
            let r = tower_service::Service::call(&mut routes, req).await;
            drop(guard);
            r
        }))
    }
}

/// Resolves once the connection has had no request in flight and no traffic for `idle`.
async fn idle(activity: Arc<Activity>, idle: Duration) {
    loop {
        let quiet = activity.quiet_for();
        if quiet >= idle && activity.in_flight.load(Ordering::SeqCst) == 0 {
            return;
        }
        tokio::time::sleep(idle.saturating_sub(quiet).max(Duration::from_millis(10))).await;
    }
}

/// Serve `routes` on `listener` within `limits` until `shutdown` resolves, then let the
/// connections finish their requests in flight (graceful, like warp's server).
pub async fn run(
    routes: BoxedFilter<(Response,)>,
    listener: TcpListener,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let routes = warp::service(routes);
    loop {
        // Over the cap, stop accepting: new connections wait in the backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors (EMFILE) and the like: back off a little, never spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let io = hyper_util::rt::TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
        });
        let service = Service {
            routes: routes.clone(),
            activity: activity.clone(),
            body_timeout: limits.body_timeout,
        };
        let watcher = graceful.watcher();
        let (header_timeout, idle_timeout) = (limits.header_timeout, limits.idle_timeout);
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = watcher.watch(
                builder
                    .serve_connection_with_upgrades(io, service)
                    .into_owned(),
            );
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                () = idle(activity, idle_timeout) => {
                    tracing::debug!("idle connection closed");
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
