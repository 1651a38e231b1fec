//! `icahub serve`: load the configuration, open storage, listen, and stop gracefully on SIGTERM.

use crate::config::Config;
use crate::startup::{bind, serve, shutdown_signal, App};
use clap::Args;

#[derive(Debug, Args)]
#[command(
    after_help = "Storage: the embedded store in ICAHUB_DATA_DIR (default ./data) unless \
ICAHUB_TABLES_CONNECTION_STRING or AzureWebJobsStorage is set, then Azure Table Storage. Under the \
Functions host (FUNCTIONS_CUSTOMHANDLER_PORT set) Table Storage is required and that port is used."
)]
pub struct ServeArgs {
    /// Port to listen on when FUNCTIONS_CUSTOMHANDLER_PORT is not set.
    #[arg(long, default_value_t = crate::config::DEFAULT_PORT)]
    pub port: u16,
    /// Address to listen on (use 0.0.0.0 in a container).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::from_env(Some(args.port))?;
    let storage_desc = config.storage.backend();
    let listener = bind(&args.host, config.port).await?;
    let app = App::build(config).await?;
    let addr = listener.local_addr()?;
    tracing::info!(
        address = %addr,
        storage = storage_desc,
        location = %app.store.location(),
        under_functions_host = app.config.under_functions_host,
        "icahub listening on {addr}, storage {storage_desc} at {}",
        app.store.location()
    );
    if !app.config.auth_required {
        tracing::warn!(
            auth = "off",
            "ICAHUB_AUTH=off: authentication is OFF. Every /api/v1 request is accepted as \
             `anonymous` with every role (admin included); no API key, token or webhook signature \
             is checked. For local development only: never expose this hub."
        );
    }
    // Under the host the `dispatch` timer function drains the outbox; alone, we do it ourselves.
    if let (false, Some(every)) = (
        app.config.under_functions_host,
        app.config.dispatch_interval,
    ) {
        tokio::spawn(crate::jobs::run_every(app.clone(), every));
    }
    // Run the accept loop on a runtime worker, not on the main thread's `block_on`.
    tokio::spawn(serve(app, listener, shutdown_signal())).await?;
    tracing::info!("icahub stopped");
    Ok(())
}
