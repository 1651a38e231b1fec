//! Identities, API keys and roles, kept in the document store: issue, revoke and list keys; grant,
//! revoke and list roles; link Mattermost users. Checking a presented key is
//! [`crate::auth::api_keys`]. Every change writes an audit entry in the same
//! atomic commit as the change itself.

use crate::domain::identity::{
    key_hash, key_id, legacy_mattermost_name_key, mattermost_index_key, new_api_key,
    valid_identity, valid_mattermost_id, ApiKeyRecord, IdentityRecord, MattermostUser, Role,
};
use crate::storage::{DocCommit, DocWrite, Expect, Store, StoreError};
use chrono::{DateTime, Utc};
use serde_json::json;

/// Partition of API keys (one document per key hash) and their audit entries.
pub const KEYS: &str = "apikeys";
/// Partition of identities (one document per name) and their audit entries.
pub const IDENTITIES: &str = "identities";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub use crate::domain::identity::Caller;

fn commit(partition: &str, writes: Vec<DocWrite>, now: DateTime<Utc>) -> DocCommit {
    DocCommit {
        partition: partition.into(),
        writes,
        outbox: Vec::new(),
        record_id: format!("{partition}-change"),
        now,
    }
}

/// Issue a key for `identity`. Returns the key (shown once, never stored) and its record.
pub async fn issue_key(
    store: &dyn Store,
    identity: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<(String, ApiKeyRecord), IdentityError> {
    if !valid_identity(identity) {
        return Err(IdentityError::Invalid(format!(
            "identity {identity:?} must be 1-128 letters, digits, '.', '_', '@' or '-'"
        )));
    }
    let mut random = [0u8; 20];
    random[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    random[16..].copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..4]);
    let key = new_api_key(random);
    let hash = key_hash(&key);
    let record = ApiKeyRecord {
        id: key_id(&hash),
        identity: identity.into(),
        created_at: now,
        revoked_at: None,
    };
    let writes = vec![
        DocWrite {
            key: hash,
            value: serde_json::to_value(&record).unwrap_or_default(),
            expect: Expect::Absent,
        },
        crate::audit::note(
            now,
            json!({"action": "key.issued", "key_id": record.id, "identity": identity, "by": by, "at": now}),
        ),
    ];
    if !store.doc_commit(&commit(KEYS, writes, now)).await? {
        return Err(IdentityError::Invalid("key collision; try again".into()));
    }
    Ok((key, record))
}

pub async fn list_keys(store: &dyn Store) -> Result<Vec<(String, ApiKeyRecord)>, IdentityError> {
    let mut out = Vec::new();
    for d in store.doc_list(KEYS, "").await? {
        if d.key.starts_with("audit|") {
            continue;
        }
        let r: ApiKeyRecord = serde_json::from_value(d.value)
            .map_err(|e| StoreError::Corrupt(format!("api key record: {e}")))?;
        out.push((d.key, r));
    }
    out.sort_by_key(|(_, r)| r.created_at);
    Ok(out)
}

/// Revoke a key by its id (`key-…`). `false` when it was already revoked.
pub async fn revoke_key(
    store: &dyn Store,
    id: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<bool, IdentityError> {
    for _ in 0..10 {
        let Some((hash, mut rec)) = list_keys(store)
            .await?
            .into_iter()
            .find(|(_, r)| r.id == id)
        else {
            return Err(IdentityError::NotFound(format!("no API key with id {id}")));
        };
        if rec.revoked_at.is_some() {
            return Ok(false);
        }
        let Some(doc) = store.doc_get(KEYS, &hash).await? else {
            continue;
        };
        rec.revoked_at = Some(now);
        let writes = vec![
            DocWrite {
                key: hash,
                value: serde_json::to_value(&rec).unwrap_or_default(),
                expect: Expect::Version(doc.version),
            },
            crate::audit::note(
                now,
                json!({"action": "key.revoked", "key_id": id, "identity": rec.identity, "by": by, "at": now}),
            ),
        ];
        if store.doc_commit(&commit(KEYS, writes, now)).await? {
            return Ok(true);
        }
    }
    Err(StoreError::Contention("key changed concurrently".into()).into())
}

pub async fn identity(
    store: &dyn Store,
    name: &str,
) -> Result<Option<IdentityRecord>, IdentityError> {
    Ok(
        match store.doc_get(IDENTITIES, &format!("id|{name}")).await? {
            Some(d) => Some(
                serde_json::from_value(d.value)
                    .map_err(|e| StoreError::Corrupt(format!("identity {name}: {e}")))?,
            ),
            None => None,
        },
    )
}

pub async fn list_identities(store: &dyn Store) -> Result<Vec<IdentityRecord>, IdentityError> {
    store
        .doc_list(IDENTITIES, "id|")
        .await?
        .into_iter()
        .map(|d| {
            serde_json::from_value(d.value)
                .map_err(|e| IdentityError::Store(StoreError::Corrupt(format!("identity: {e}"))))
        })
        .collect()
}

/// Grant (`grant = true`) or revoke a role. Returns whether anything changed.
pub async fn set_role(
    store: &dyn Store,
    name: &str,
    role: Role,
    grant: bool,
    by: &str,
    now: DateTime<Utc>,
) -> Result<bool, IdentityError> {
    if !valid_identity(name) {
        return Err(IdentityError::Invalid(format!(
            "identity {name:?} is not a valid name"
        )));
    }
    let key = format!("id|{name}");
    for _ in 0..10 {
        let doc = store.doc_get(IDENTITIES, &key).await?;
        let (mut rec, expect) = read_identity(&doc, name)?;
        let had = rec.roles.contains(&role);
        if had == grant {
            return Ok(false);
        }
        if grant {
            rec.roles.push(role);
            rec.roles.sort();
        } else {
            rec.roles.retain(|r| *r != role);
        }
        let action = if grant {
            "role.granted"
        } else {
            "role.revoked"
        };
        let writes = vec![
            DocWrite {
                key: key.clone(),
                value: serde_json::to_value(&rec).unwrap_or_default(),
                expect,
            },
            crate::audit::note(
                now,
                json!({"action": action, "identity": name, "role": role, "by": by, "at": now}),
            ),
        ];
        if store.doc_commit(&commit(IDENTITIES, writes, now)).await? {
            return Ok(true);
        }
    }
    Err(StoreError::Contention("identity changed concurrently".into()).into())
}

// ---------------------------------------------------------------------------------------------
// Mattermost users

/// The identity record in `doc` and the expectation to write it back, or a new record.
fn read_identity(
    doc: &Option<crate::storage::Doc>,
    name: &str,
) -> Result<(IdentityRecord, Expect), IdentityError> {
    Ok(match doc {
        Some(d) => (
            serde_json::from_value::<IdentityRecord>(d.value.clone())
                .map_err(|e| StoreError::Corrupt(format!("identity {name}: {e}")))?,
            Expect::Version(d.version.clone()),
        ),
        None => (
            IdentityRecord {
                name: name.into(),
                roles: Vec::new(),
                mattermost_user: None,
                mattermost_user_id: None,
                mattermost_username: None,
            },
            Expect::Absent,
        ),
    })
}

fn linked_identity(doc: &Option<crate::storage::Doc>) -> Option<String> {
    doc.as_ref()?
        .value
        .get("identity")?
        .as_str()
        .map(str::to_string)
}

/// Link the Mattermost user with this id (`user_id`, [`valid_mattermost_id`]) to `name`,
/// replacing the identity's earlier link, and a legacy link by name; `username` is kept as a
/// display label only. A user already linked to another identity is refused: unlink it there
/// first. Returns whether anything changed. The identity record and the index document the
/// lookup reads are written together, with an audit entry.
pub async fn link_mattermost(
    store: &dyn Store,
    name: &str,
    user_id: &str,
    username: Option<&str>,
    by: &str,
    now: DateTime<Utc>,
) -> Result<bool, IdentityError> {
    if !valid_identity(name) {
        return Err(IdentityError::Invalid(format!(
            "identity {name:?} is not a valid name"
        )));
    }
    if !valid_mattermost_id(user_id) {
        return Err(IdentityError::Invalid(format!(
            "{user_id:?} is not a Mattermost user id (26 lowercase letters and digits)"
        )));
    }
    let username = username
        .and_then(MattermostUser::name)
        .map(|u| u.value().to_string());
    let key = format!("id|{name}");
    let index_key = mattermost_index_key(user_id);
    for _ in 0..10 {
        let doc = store.doc_get(IDENTITIES, &key).await?;
        let (mut rec, expect) = read_identity(&doc, name)?;
        let index = store.doc_get(IDENTITIES, &index_key).await?;
        let previous = rec.mattermost_user_id.clone();
        match linked_identity(&index) {
            Some(other) if other != name => {
                // Only a link the other record agrees with binds (both are written together).
                let holds = identity(store, &other)
                    .await?
                    .is_some_and(|r| r.mattermost_user_id.as_deref() == Some(user_id));
                if holds {
                    return Err(IdentityError::Invalid(format!(
                        "Mattermost user id {user_id} is already linked to {other}; run `icahub roles unlink-mattermost {other}` first"
                    )));
                }
            }
            Some(_)
                if previous.as_deref() == Some(user_id)
                    && rec.mattermost_username == username
                    && rec.mattermost_user.is_none() =>
            {
                return Ok(false)
            }
            _ => {}
        }
        let mut writes = vec![DocWrite {
            key: index_key.clone(),
            value: json!({"identity": name, "linked_at": now, "by": by}),
            expect: expect_of(&index),
        }];
        let mut stale = Vec::new();
        if let Some(old) = previous.as_deref().filter(|p| *p != user_id) {
            stale.push(mattermost_index_key(old));
        }
        if let Some(legacy) = rec.legacy_mattermost_name() {
            stale.push(legacy_mattermost_name_key(legacy));
        }
        for k in stale {
            let d = store.doc_get(IDENTITIES, &k).await?;
            if linked_identity(&d).as_deref() == Some(name) {
                writes.push(DocWrite {
                    key: k,
                    value: json!({"identity": null, "unlinked_at": now, "by": by}),
                    expect: expect_of(&d),
                });
            }
        }
        let legacy = rec.mattermost_user.take();
        rec.mattermost_user_id = Some(user_id.to_string());
        rec.mattermost_username = username.clone();
        writes.push(DocWrite {
            key: key.clone(),
            value: serde_json::to_value(&rec).unwrap_or_default(),
            expect,
        });
        writes.push(crate::audit::note(
            now,
            json!({"action": "mattermost.linked", "identity": name, "mattermost_user_id": user_id,
                   "mattermost_username": username, "previous_user_id": previous,
                   "replaced_legacy_name_link": legacy, "by": by, "at": now}),
        ));
        if store.doc_commit(&commit(IDENTITIES, writes, now)).await? {
            return Ok(true);
        }
    }
    Err(StoreError::Contention("identity changed concurrently".into()).into())
}

/// Remove every Mattermost link of `name` (a legacy name link too). Returns whether anything
/// changed.
pub async fn unlink_mattermost(
    store: &dyn Store,
    name: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<bool, IdentityError> {
    let key = format!("id|{name}");
    for _ in 0..10 {
        let Some(doc) = store.doc_get(IDENTITIES, &key).await? else {
            return Ok(false);
        };
        let (mut rec, expect) = read_identity(&Some(doc), name)?;
        if rec.mattermost_user.is_none() && rec.mattermost_user_id.is_none() {
            return Ok(false);
        }
        let keys: Vec<String> = [
            rec.mattermost_user_id.as_deref().map(mattermost_index_key),
            rec.legacy_mattermost_name()
                .and_then(MattermostUser::name)
                .map(|n| legacy_mattermost_name_key(n.value())),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut writes = Vec::new();
        for k in keys {
            let d = store.doc_get(IDENTITIES, &k).await?;
            if linked_identity(&d).as_deref() == Some(name) {
                writes.push(DocWrite {
                    key: k,
                    value: json!({"identity": null, "unlinked_at": now, "by": by}),
                    expect: expect_of(&d),
                });
            }
        }
        let (old_id, old_name) = (rec.mattermost_user_id.take(), rec.mattermost_user.take());
        rec.mattermost_username = None;
        writes.push(DocWrite {
            key: key.clone(),
            value: serde_json::to_value(&rec).unwrap_or_default(),
            expect,
        });
        writes.push(crate::audit::note(
            now,
            json!({"action": "mattermost.unlinked", "identity": name,
                   "mattermost_user_id": old_id, "legacy_name_link": old_name, "by": by, "at": now}),
        ));
        if store.doc_commit(&commit(IDENTITIES, writes, now)).await? {
            return Ok(true);
        }
    }
    Err(StoreError::Contention("identity changed concurrently".into()).into())
}

/// The identity the Mattermost user with this id maps to. Only the immutable user id is ever
/// matched (user names can be changed by their owners, so a name proves nothing); ids that
/// cannot be Mattermost's are never looked up.
pub async fn by_mattermost(
    store: &dyn Store,
    user_id: &str,
) -> Result<Option<IdentityRecord>, IdentityError> {
    if !valid_mattermost_id(user_id) {
        return Ok(None);
    }
    let index = store
        .doc_get(IDENTITIES, &mattermost_index_key(user_id))
        .await?;
    let Some(name) = linked_identity(&index) else {
        return Ok(None);
    };
    // The record must still agree (a link is written to both in one commit).
    Ok(identity(store, &name)
        .await?
        .filter(|rec| rec.mattermost_user_id.as_deref() == Some(user_id)))
}

fn expect_of(doc: &Option<crate::storage::Doc>) -> Expect {
    match doc {
        Some(d) => Expect::Version(d.version.clone()),
        None => Expect::Absent,
    }
}
