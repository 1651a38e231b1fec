//! Bind a port given to it (port 0 in tests), serve the app until shutdown, and stop
//! gracefully. The app itself is built in [`crate::app`]; the periodic work is [`crate::jobs`].

/// The app and how its store is opened, now in [`crate::app`].
pub use crate::app::{open_existing_store, open_store, store_settings, App};
/// The serve loop's periodic job, now in [`crate::jobs`].
pub use crate::jobs::run_every as drain_periodically;

use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Bind `host:port`. A clear error when the port is taken.
pub async fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .with_context(|| format!("{host}:{port} is not a valid address"))?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Serve until `shutdown` resolves, then finish the requests in flight, write the refusals
/// counted so far ([`crate::refusals::flush_all`]) and return.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let ticker = tokio::spawn(crate::jobs::flush_refusals_every(app.clone()));
    crate::server::run(
        crate::http::routes(app.clone()),
        listener,
        app.config.connections,
        shutdown,
    )
    .await;
    ticker.abort();
    crate::refusals::flush_all(&app).await;
}

/// Resolves on SIGTERM (what the Functions host and container runtimes send) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; finishing requests in flight");
}
