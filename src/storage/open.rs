//! Choosing a backend: [`open`] is the one place that turns [`Settings`] into a store, and
//! [`restore`] the one place a backup is put back. Adding a backend means one arm in each
//! (and implementing the capability traits, see `docs/storage.md`).
//!
//! [`Settings`] is plain data owned by storage: `config` reads the environment into its own
//! `StorageConfig`, and the composition root (`startup`) hands the fields over, so storage
//! imports no configuration and configuration imports no storage.

use super::sqlite::SqliteStore;
use super::tables::TableStore;
use super::{BackupWritten, Store, StoreError};
use crate::secret::Secret;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which backend holds the data, and where.
#[derive(Debug, Clone)]
pub enum Settings {
    /// SQLite in `dir/icahub.db`.
    Embedded { dir: PathBuf },
    /// Azure Table Storage by connection string (account key or SAS).
    Tables {
        connection_string: Secret,
        table_prefix: String,
    },
    /// Azure Table Storage with tokens of a managed identity or of the Azure CLI user.
    TablesIdentity {
        /// The table service URL, `https://<account>.table.core.windows.net`.
        endpoint: String,
        /// A user-assigned identity's client id (`None`: the system-assigned identity).
        client_id: Option<String>,
        /// Tokens of the signed-in Azure CLI user instead.
        azure_cli: bool,
        table_prefix: String,
    },
}

/// Whether [`open`] may create the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the database file or the tables if missing (the hub, commands that write).
    Create,
    /// Open only a store that exists (`doctor`, `backup`): a mistyped directory or prefix is an
    /// error, not a new empty store, and a read-only role is enough.
    Existing,
}

/// Open the configured store. The only `match` over backends besides [`restore`].
pub async fn open(settings: &Settings, mode: OpenMode) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match settings {
        Settings::Embedded { dir } => {
            if mode == OpenMode::Existing && !dir.join(super::sqlite::DB_FILE).exists() {
                anyhow::bail!(
                    "no embedded store in {} (no icahub.db): set ICAHUB_DATA_DIR, or the Table \
                     Storage settings, to the store to use",
                    dir.display()
                );
            }
            Arc::new(
                SqliteStore::open(dir)
                    .with_context(|| format!("opening the embedded store in {}", dir.display()))?,
            )
        }
        other => Arc::new(
            TableStore::from_settings(other, mode == OpenMode::Create)
                .await
                .context(match mode {
                    OpenMode::Create => "connecting to Azure Table Storage",
                    OpenMode::Existing => "opening Azure Table Storage",
                })?,
        ),
    })
}

/// What [`restore`] put back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// An SQLite backup became the database of `dir`; it holds this many audit entries.
    Embedded { dir: PathBuf, audit_entries: u64 },
    /// This many Table Storage entities were written.
    Tables { entities: u64 },
}

/// Put the backup `from` back into the configured store, which must hold no data yet.
/// `sqlite` says whether `from` is an SQLite file (the embedded backend's backup format);
/// a backup of the other backend is refused. `progress` is told the entities written so far.
pub async fn restore(
    settings: &Settings,
    from: &Path,
    sqlite: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Restored> {
    match (settings, sqlite) {
        (Settings::Embedded { dir }, true) => Ok(Restored::Embedded {
            dir: dir.clone(),
            audit_entries: SqliteStore::restore_into(dir, from)?,
        }),
        (Settings::Embedded { .. }, false) => anyhow::bail!(
            "{} is not an SQLite database; a Table Storage backup needs Table Storage configured",
            from.display()
        ),
        (other, _) => {
            let store = TableStore::from_settings(other, true).await?;
            if sqlite {
                anyhow::bail!(
                    "{} is an embedded-store (SQLite) backup, but the configured store is Table \
                     Storage",
                    from.display()
                );
            }
            let file = std::fs::File::open(from)?;
            let mut r = std::io::BufReader::new(file);
            let entities = store.restore_from(&mut r, progress).await?;
            Ok(Restored::Tables { entities })
        }
    }
}

/// Refuse to write a backup over an existing file.
pub(crate) fn create_new(to: &Path) -> Result<std::fs::File, StoreError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| StoreError::Config(format!("creating {}: {e}", to.display())))
}

impl BackupWritten {
    /// What the backup holds, in words (`icahub backup` prints it).
    pub fn describe(&self) -> String {
        match self.entities {
            None => "an SQLite snapshot of the embedded store".to_string(),
            Some(n) => format!("{n} Table Storage entities"),
        }
    }
}
