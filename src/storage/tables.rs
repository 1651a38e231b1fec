//! Azure Table Storage backend (being written on the `tables` branch).
use super::StoreError;

pub struct TableStore;

impl TableStore {
    pub async fn connect(
        _conn: &str,
        _prefix: &str,
    ) -> Result<super::sqlite::SqliteStore, StoreError> {
        Err(StoreError::Config(
            "Table Storage backend not built yet".into(),
        ))
    }
}
