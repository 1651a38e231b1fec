//! The Azure DevOps check's job token (`AuthToken`): never part of the approval, its audit
//! entries or its outbox rows. The approval keeps the token's SHA-256 and the key of the secret
//! that holds it (`Store::secret_put`) until the callback is made.

use crate::domain::approval::Approval;
use crate::storage::{Store, StoreError};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// Move the token of an approval's check out of the approval (as earlier versions kept it
/// inline): the check keeps `auth_token_sha256`, and with `keep` the token goes to the secret
/// store under [`crate::domain::check::secret_key`] (named in the check's `auth_token_secret`),
/// for the callback still to be made. `Ok(Some(sha256))` when there was a token.
pub async fn detach_token(
    store: &dyn Store,
    a: &mut Approval,
    keep: bool,
    now: DateTime<Utc>,
) -> Result<Option<String>, StoreError> {
    use crate::domain::check::{secret_key, strip_token, token_sha256, SECRET_FIELD};
    let Some(check) = a.check.as_mut() else {
        return Ok(None);
    };
    let task = check
        .get("task_instance_id")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let Some(token) = strip_token(check) else {
        return Ok(None);
    };
    if keep {
        let key = secret_key(&a.id, &task);
        store.secret_put(&key, &token, now).await?;
        check[SECRET_FIELD] = json!(key);
    }
    Ok(Some(token_sha256(&token)))
}

/// The secret holding the token of a stored check, if it names one.
pub fn secret_of(check: Option<&Value>) -> Option<String> {
    check?
        .get(crate::domain::check::SECRET_FIELD)?
        .as_str()
        .map(str::to_string)
}

/// A check's callback without its token, for audit entries.
pub(super) fn check_for_audit(check: Option<&Value>) -> Value {
    let mut c = check.cloned().unwrap_or(Value::Null);
    if let Some(o) = c.as_object_mut() {
        o.remove("auth_token");
    }
    c
}
