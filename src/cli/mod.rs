//! Operator commands, one file each. `main.rs` parses [`Cli`] and calls [`run`].

pub mod audit;
pub mod backup;
pub mod bench;
pub mod bench_audit;
pub mod bench_pipelines;
pub mod budget;
pub mod doctor;
pub mod keys;
pub mod outbox;
pub mod package;
pub mod roles;
pub mod serve;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "icahub",
    version,
    about = "Webhook gateway and notification hub for Azure Pipelines compliance",
    long_about = "icahub ingests Azure Monitor and Alertmanager alerts, stores every accepted event \
durably (Azure Table Storage, or an embedded SQLite store on one machine) before answering, and \
turns alerts into incidents.\n\nEnvironment variables are listed in docs/configuration.md; `icahub serve --help` \
shows the ones that choose storage.",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (what the Functions host starts, per host.json).
    Serve(serve::ServeArgs),
    /// Load-test a running hub and print accepted/s and latency; or time `serve` start-up.
    Bench(bench::BenchArgs),
    /// Inspect the outbox and redrive dead letters.
    Outbox(outbox::OutboxArgs),
    /// Issue, revoke and list API keys.
    Keys(keys::KeysArgs),
    /// Grant, revoke and list roles.
    Roles(roles::RolesArgs),
    /// Set and list projects' monthly budgets (approval cost governance).
    Budget(budget::BudgetArgs),
    /// Verify the hash-chained audit trail, export it with a manifest, check an export.
    Audit(audit::AuditArgs),
    /// Copy the whole store to a file (an SQLite snapshot, or Table Storage entities as NDJSON).
    Backup(backup::BackupArgs),
    /// Put a backup back into an empty store of the same kind.
    Restore(backup::RestoreArgs),
    /// Check the configuration, storage access and each sink's reachability; say what is wrong.
    Doctor(doctor::DoctorArgs),
    /// Build the zip the Azure Functions host runs (host.json, functions/, the binary).
    Package(package::PackageArgs),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Outbox(args) => outbox::run(args).await,
        Command::Keys(args) => keys::run(args).await,
        Command::Roles(args) => roles::run(args).await,
        Command::Budget(args) => budget::run(args).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Doctor(args) => doctor::run(args).await,
        Command::Backup(args) => backup::backup(args).await,
        Command::Restore(args) => backup::restore(args).await,
        Command::Package(args) => package::run(args).await,
    }
}
