//! `icahub backup --out FILE` and `icahub restore --from FILE`: a copy of the whole store, and
//! putting one back into an empty store of the same kind (docs/operations.md).
//!
//! - Embedded store: a consistent SQLite snapshot (`VACUUM INTO`), safe while the hub runs.
//! - Table Storage: every entity of the hub's two tables as NDJSON with a trailer (see
//!   [`crate::storage::tables::backup`]); per-entity consistent, so take it while the hub is
//!   quiet and check the restored store with `icahub audit verify`.

use crate::config::Config;
use crate::storage::Restored;
use anyhow::{bail, Context};
use clap::Args;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
#[command(
    after_help = "The store is the one the environment configures (as for `serve`). \
Examples:\n  icahub backup --out backups/icahub-$(date +%F).db          # embedded\n  \
ICAHUB_TABLES_ENDPOINT=https://<account>.table.core.windows.net ICAHUB_TABLES_CREDENTIAL=azure_cli \\\n    \
icahub backup --out icahub-tables-$(date +%F).ndjson"
)]
pub struct BackupArgs {
    /// The file to write (refused if it exists).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
#[command(
    after_help = "The target must be empty: a fresh ICAHUB_DATA_DIR, or a new \
ICAHUB_TABLE_PREFIX / account. Afterwards run `icahub audit verify` on it."
)]
pub struct RestoreArgs {
    /// A file written by `icahub backup`.
    #[arg(long)]
    pub from: PathBuf,
}

const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";

pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    if args.out.exists() {
        bail!("{} exists: choose a new file", args.out.display());
    }
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let config = Config::from_env(None)?;
    let tmp = PathBuf::from(format!(
        "{}.partial-{}",
        args.out.display(),
        std::process::id()
    ));
    let result = write_backup(&config, &tmp).await;
    let what = match result {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // A link never replaces: a file that appeared at --out meanwhile is kept.
    let linked = std::fs::hard_link(&tmp, &args.out);
    let _ = std::fs::remove_file(&tmp);
    linked.with_context(|| format!("writing {}", args.out.display()))?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    let size = std::fs::metadata(&args.out)?.len();
    println!(
        "wrote {} ({what}, {:.1} MB)\nsha256 {}",
        args.out.display(),
        size as f64 / 1e6,
        super::audit::sha256_file(&args.out)?
    );
    Ok(())
}

/// Write the configured store's backup to `tmp` (created new); what it holds, in words.
async fn write_backup(config: &Config, tmp: &Path) -> anyhow::Result<String> {
    // An existing store only: a mistyped directory or prefix is an error, not an empty backup.
    let store = crate::startup::open_existing_store(config).await?;
    let bar = super::audit::counter("{spinner} backup: {pos} entities read ({per_sec})");
    let written = store.backup(tmp, &|n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    if written.entities == Some(0) {
        eprintln!("warning: the tables exist but hold nothing: is this the store you meant?");
    }
    Ok(written.describe())
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let mut magic = [0u8; 16];
    let mut f = std::fs::File::open(&args.from)
        .with_context(|| format!("opening {}", args.from.display()))?;
    let n = f.read(&mut magic)?;
    drop(f);
    let sqlite = n == 16 && magic == SQLITE_MAGIC;
    let config = Config::from_env(None)?;
    let settings = crate::app::store_settings(&config.storage);
    let bar = super::audit::counter("{spinner} restore: {pos} entities written ({per_sec})");
    let restored =
        crate::storage::restore(&settings, &args.from, sqlite, &|n| bar.set_position(n)).await;
    bar.finish_and_clear();
    match restored? {
        Restored::Embedded { dir, audit_entries } => println!(
            "restored {} into {} ({audit_entries} audit entries); check it with `icahub audit verify`",
            args.from.display(),
            dir.display()
        ),
        Restored::Tables { entities } => println!(
            "restored {entities} entities from {}; check them with `icahub audit verify`",
            args.from.display()
        ),
    }
    Ok(())
}
