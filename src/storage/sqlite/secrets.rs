//! Secrets: their table, and scrubbing them from a backup copy.

use super::*;

/// Empty the `secrets` table of the database file at `path` (a backup copy) so that no page of
/// the file keeps a secret, and check that it is empty.
pub(super) fn scrub_secrets(path: &Path) -> Result<()> {
    let conn = open_conn(path, false).map_err(db_err)?;
    conn.pragma_update(None, "journal_mode", "MEMORY")
        .and_then(|_| conn.pragma_update(None, "secure_delete", "ON"))
        .and_then(|_| conn.execute_batch("DELETE FROM secrets; VACUUM;"))
        .map_err(db_err)?;
    let left: i64 = conn
        .query_row("SELECT count(*) FROM secrets", [], |r| r.get(0))
        .map_err(db_err)?;
    if left != 0 {
        return Err(StoreError::Unavailable(format!(
            "the backup copy still holds {left} secret(s) after scrubbing"
        )));
    }
    Ok(())
}

#[async_trait]
impl SecretStore for SqliteStore {
    async fn secret_put(&self, key: &str, value: &str, now: DateTime<Utc>) -> Result<()> {
        crate::storage::check_secret_key(key)?;
        let (key, value) = (key.to_string(), value.to_string());
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO secrets (key, value, created_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value, \
                 created_at = excluded.created_at",
            )
            .and_then(|mut s| s.execute(params![key, value, ts(now)]))
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn secret_get(&self, key: &str) -> Result<Option<String>> {
        if !crate::storage::valid_secret_key(key) {
            return Ok(None);
        }
        let key = key.to_string();
        self.read(move |c| {
            c.prepare_cached("SELECT value FROM secrets WHERE key = ?1")
                .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
                .map_err(db_err)
        })
        .await
    }

    async fn secret_delete(&self, key: &str) -> Result<bool> {
        if !crate::storage::valid_secret_key(key) {
            return Ok(false);
        }
        let key = key.to_string();
        self.write(move |c| {
            let n = c
                .prepare_cached("DELETE FROM secrets WHERE key = ?1")
                .and_then(|mut s| s.execute([key]))
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }
}
