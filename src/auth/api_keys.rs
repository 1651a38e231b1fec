//! API keys presented by callers (`Authorization: Bearer icak_…`, or the password of Basic auth):
//! looked up by hash in the identities kept by [`crate::services::identities`].

use crate::domain::identity::{key_hash, ApiKeyRecord, Caller};
use crate::services::identities::{identity, IdentityError, KEYS};
use crate::storage::{Store, StoreError};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Looks presented keys up, remembering answers for a few seconds (a revocation takes effect
/// within [`Authenticator::TTL`]).
#[derive(Default)]
pub struct Authenticator {
    cache: Mutex<HashMap<String, (Option<Caller>, Instant)>>,
}

impl Authenticator {
    pub const TTL: Duration = Duration::from_secs(10);

    pub async fn authenticate(
        &self,
        store: &dyn Store,
        key: &str,
    ) -> Result<Option<Caller>, IdentityError> {
        if !key.starts_with(crate::domain::identity::KEY_PREFIX) || key.len() > 100 {
            return Ok(None);
        }
        let hash = key_hash(key);
        if let Ok(cache) = self.cache.lock() {
            if let Some((caller, at)) = cache.get(&hash) {
                if at.elapsed() < Self::TTL {
                    return Ok(caller.clone());
                }
            }
        }
        let caller = match store.doc_get(KEYS, &hash).await? {
            None => None,
            Some(d) => {
                let rec: ApiKeyRecord = serde_json::from_value(d.value)
                    .map_err(|e| StoreError::Corrupt(format!("api key record: {e}")))?;
                if rec.revoked_at.is_some() {
                    None
                } else {
                    let roles = identity(store, &rec.identity)
                        .await?
                        .map(|i| i.roles)
                        .unwrap_or_default();
                    Some(Caller {
                        name: rec.identity,
                        roles,
                    })
                }
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(hash, (caller.clone(), Instant::now()));
        }
        Ok(caller)
    }
}
