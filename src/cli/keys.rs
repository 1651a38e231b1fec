//! `icahub keys issue|revoke|list`: API keys for pipelines, people and senders. A key is shown
//! once at issue; only its hash is stored. Every change is recorded with who made it.

use crate::config::Config;
use crate::identity;
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Who is making the change, for the record (default: $USER).
    #[arg(long, global = true)]
    pub by: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a new key for an identity (shown once: store it in your secret store).
    Issue {
        #[arg(long)]
        identity: String,
    },
    /// Revoke a key by its id (`key-…`, as `list` shows it).
    ///
    /// Running hubs refuse the key within 10 seconds: each instance caches a key's answer (and
    /// its identity's roles) that long.
    Revoke { id: String },
    /// List keys (ids, identities, dates; never the keys themselves).
    List,
}

pub fn operator(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "cli".into())
}

pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    let config = Config::from_env(None)?;
    let store = crate::startup::open_store(&config).await?;
    let by = operator(args.by);
    let now = chrono::Utc::now();
    match args.command {
        KeysCommand::Issue { identity } => {
            let (key, rec) = identity::issue_key(store.as_ref(), &identity, &by, now).await?;
            if args.json {
                println!(
                    "{}",
                    json!({"key": key, "id": rec.id, "identity": rec.identity})
                );
            } else {
                println!("{key}");
                eprintln!(
                    "issued {} for {}: this is the only time the key is shown. Send it as \
                     `Authorization: Bearer <key>`.",
                    rec.id, rec.identity
                );
            }
        }
        KeysCommand::Revoke { id } => {
            let changed = identity::revoke_key(store.as_ref(), &id, &by, now).await?;
            if args.json {
                println!("{}", json!({"id": id, "revoked": changed}));
            } else if changed {
                println!("revoked {id}");
                eprintln!(
                    "running hubs refuse it within {} seconds: each instance remembers a key's answer that long",
                    identity::Authenticator::TTL.as_secs()
                );
            } else {
                println!("{id} was already revoked");
            }
        }
        KeysCommand::List => {
            let keys = identity::list_keys(store.as_ref()).await?;
            if args.json {
                let v: Vec<_> = keys
                    .iter()
                    .map(|(_, r)| json!({"id": r.id, "identity": r.identity, "created_at": r.created_at, "revoked_at": r.revoked_at}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if keys.is_empty() {
                println!("no API keys; issue one with `icahub keys issue --identity NAME`");
            } else {
                println!("{:<18} {:<32} {:<22} REVOKED", "ID", "IDENTITY", "CREATED");
                for (_, r) in keys {
                    println!(
                        "{:<18} {:<32} {:<22} {}",
                        r.id,
                        r.identity,
                        r.created_at.format("%Y-%m-%d %H:%M:%S"),
                        r.revoked_at
                            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                            .unwrap_or_else(|| "-".into())
                    );
                }
            }
        }
    }
    Ok(())
}
