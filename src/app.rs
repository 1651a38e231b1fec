//! The [`App`]: everything a request handler and the periodic job need, and the one place the
//! store and the sinks are opened from a [`Config`]. Binding and serving live in
//! [`crate::startup`]; the periodic work in [`crate::jobs`].

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, StorageConfig};
use crate::dispatcher::Dispatcher;
use crate::sinks::Sinks;
use crate::storage::{self, OpenMode, Store};
use std::sync::Arc;

/// Everything a request handler needs.
pub struct App {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub dispatcher: Arc<Dispatcher>,
    pub clock: Arc<dyn Clock>,
    pub authenticator: crate::identity::Authenticator,
    /// The approval service (create, sign, override, sweep).
    pub approvals: crate::services::approvals::Approvals,
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
    /// The app `config` describes: its store, and its sinks (`config.sinks`), on the real clock.
    pub async fn build(config: Config) -> anyhow::Result<Arc<App>> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let sinks = Sinks::from_config(&config, clock.clone());
        App::build_with(config, sinks, clock).await
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
        let approvals = crate::services::approvals::Approvals::new(
            crate::services::Deps {
                store: store.clone(),
                clock: clock.clone(),
                notify: Arc::new(dispatcher.clone()),
                metrics: metrics.clone(),
            },
            config.approvals.clone(),
            config.routing.clone(),
        );
        Ok(Arc::new(App {
            config,
            store,
            dispatcher,
            clock,
            authenticator: Default::default(),
            approvals,
            entra,
            replay: Default::default(),
            metrics,
            mattermost_api,
            clickers: Default::default(),
            refusals: Default::default(),
        }))
    }

    /// The narrow dependencies the services take ([`crate::services::Deps`]).
    pub fn deps(&self) -> crate::services::Deps {
        crate::services::Deps {
            store: self.store.clone(),
            clock: self.clock.clone(),
            notify: Arc::new(self.dispatcher.clone()),
            metrics: self.metrics.clone(),
        }
    }
}
