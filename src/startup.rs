//! Build the app from a [`Config`] and serve it on a listener it is given (port 0 in tests).

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, StorageConfig};
use crate::dispatcher::Dispatcher;
use crate::sinks::Sinks;
use crate::storage::{self, OpenMode, Store};
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Everything a request handler needs.
pub struct App {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub dispatcher: Arc<Dispatcher>,
    pub clock: Arc<dyn Clock>,
    pub authenticator: crate::identity::Authenticator,
    pub approval_ids: crate::approvals::IdAllocator,
    /// Verifies Entra ID tokens when `config.entra` is set.
    pub entra: Option<crate::entra::EntraVerifier>,
    /// The `webhook-id`s of signed requests accepted lately (replay protection, this process).
    pub replay: crate::http::verify::ReplayCache,
    /// Counters and the sinks' last results (`GET /api/metrics`, `GET /api/readyz`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The Mattermost API, when `ICAHUB_MATTERMOST_URL` and `ICAHUB_MATTERMOST_TOKEN` are set.
    pub mattermost_api: Option<crate::mattermost::api::MattermostApi>,
    /// Recent answers of the check of whoever clicks an approval button.
    pub clickers: crate::mattermost::clicker::ClickerCache,
    /// Refused requests of the current minute, summarized onto the security audit trail.
    pub refusals: crate::refusals::Refusals,
}

/// Open the configured store (creating tables or the database file).
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    storage::open(&store_settings(&config.storage), OpenMode::Create).await
}

/// Open the configured store only if it exists (creating nothing): for `doctor` and `backup`.
pub async fn open_existing_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    storage::open(&store_settings(&config.storage), OpenMode::Existing).await
}

/// The storage settings as storage takes them (storage imports no configuration).
pub fn store_settings(c: &StorageConfig) -> storage::Settings {
    match c.clone() {
        StorageConfig::Embedded { dir } => storage::Settings::Embedded { dir },
        StorageConfig::Tables {
            connection_string,
            table_prefix,
        } => storage::Settings::Tables {
            connection_string,
            table_prefix,
        },
        StorageConfig::TablesIdentity {
            endpoint,
            client_id,
            azure_cli,
            table_prefix,
        } => storage::Settings::TablesIdentity {
            endpoint,
            client_id,
            azure_cli,
            table_prefix,
        },
    }
}

impl App {
    /// The app with sinks configured from the environment and the real clock.
    pub async fn build(config: Config) -> anyhow::Result<Arc<App>> {
        let sinks = Sinks::from_config(&config);
        App::build_with(config, sinks, Arc::new(SystemClock)).await
    }

    /// The app with the given sinks and clock (tests point sinks at local receivers).
    pub async fn build_with(
        config: Config,
        sinks: Sinks,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Arc<App>> {
        let store = open_store(&config).await?;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let dispatcher = Arc::new(Dispatcher::new(
            store.clone(),
            sinks,
            config.retry.clone(),
            clock.clone(),
            config.lease,
            metrics.clone(),
        ));
        let entra = config.entra.clone().map(crate::entra::EntraVerifier::new);
        let mattermost_api = crate::mattermost::api::MattermostApi::from_config(&config.mattermost);
        Ok(Arc::new(App {
            config,
            store,
            dispatcher,
            clock,
            authenticator: Default::default(),
            approval_ids: Default::default(),
            entra,
            replay: Default::default(),
            metrics,
            mattermost_api,
            clickers: Default::default(),
            refusals: Default::default(),
        }))
    }
}

/// Drain the outbox every `every` until `stop` resolves (`serve` outside the Functions host).
pub async fn drain_periodically(app: Arc<App>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        crate::audit::periodic_checkpoint(&app).await;
        crate::refusals::flush_due(&app).await;
        if let Err(e) = crate::approvals::sweep(&app, app.clock.now()).await {
            tracing::warn!(error = %e, "approval sweep failed; will retry");
        }
        if let Err(e) = app.dispatcher.drain(crate::http::timer::DRAIN_BUDGET).await {
            tracing::warn!(error = %e, "periodic outbox drain failed; will retry");
        }
    }
}

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
    let ticker = tokio::spawn(flush_refusals_periodically(app.clone()));
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

/// How often the server looks for a refusal window that has ended (whatever the dispatch
/// settings: the summaries are written within this of their minute's end).
const REFUSALS_FLUSH_EVERY: Duration = Duration::from_secs(10);

async fn flush_refusals_periodically(app: Arc<App>) {
    let mut tick = tokio::time::interval(REFUSALS_FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        crate::refusals::flush_due(&app).await;
    }
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
