//! A small client of the Mattermost REST API (v4) for the calls icahub makes with
//! `ICAHUB_MATTERMOST_URL` and `ICAHUB_MATTERMOST_TOKEN` (docs/mattermost.md lists them):
//! who the token is (`GET /api/v4/users/me`, for `icahub doctor`), a user by name (`GET
//! /api/v4/users/username/{name}`, for `icahub roles link-mattermost`), a user by id (`GET
//! /api/v4/users/{id}`), a channel membership (`GET /api/v4/channels/{channel}/members/{user}`),
//! both for the check of whoever clicks an approval button, and opening the rejection dialog
//! (`POST /api/v4/actions/dialogs/open`). Every call sends `Authorization: Bearer <token>`,
//! follows no redirect and is bounded by [`TIMEOUT`]; errors never carry the token or a URL.

use crate::config::Secret;
use serde_json::Value;
use std::time::Duration;

/// Every call is bounded by this (Mattermost waits 30 s for a callback's answer, and a click
/// makes two calls concurrently).
pub const TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What a call can end in, besides an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MmError {
    /// No answer: connection refused, DNS, TLS, timeout.
    #[error("cannot reach Mattermost ({0})")]
    Unreachable(String),
    /// 401/403: the token is refused, or lacks the permission.
    #[error("Mattermost refused icahub's token (HTTP {0}): check ICAHUB_MATTERMOST_TOKEN and its permissions")]
    Refused(u16),
    /// 5xx (or another status the call does not expect).
    #[error("Mattermost answered HTTP {0}")]
    Status(u16),
    /// 2xx with a body that is not what the API documents.
    #[error("Mattermost's answer could not be read: {0}")]
    BadAnswer(String),
}

impl MmError {
    /// The server could not give an answer (as opposed to refusing icahub's token).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            MmError::Unreachable(_) | MmError::Status(_) | MmError::BadAnswer(_)
        )
    }
}

/// The fields of a Mattermost `User` icahub reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub username: String,
    /// Milliseconds since the epoch the account was deactivated; 0 while it is active.
    pub delete_at: i64,
}

impl User {
    pub fn active(&self) -> bool {
        self.delete_at == 0
    }

    fn from_value(v: &Value) -> Result<User, MmError> {
        let id = v
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| valid_id(s))
            .ok_or_else(|| MmError::BadAnswer("a user without a valid id".into()))?;
        Ok(User {
            id: id.to_string(),
            username: v
                .get("username")
                .and_then(Value::as_str)
                .unwrap_or("")
                .chars()
                .take(64)
                .collect(),
            delete_at: v.get("delete_at").and_then(Value::as_i64).unwrap_or(0),
        })
    }
}

/// Mattermost ids (users, channels): 26 lowercase letters and digits. Anything else is never
/// put into a URL.
pub use crate::domain::identity::valid_mattermost_id as valid_id;

/// A Mattermost server and the token icahub calls it with.
#[derive(Clone)]
pub struct MattermostApi {
    base: String,
    token: Secret,
    http: reqwest::Client,
}

impl std::fmt::Debug for MattermostApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MattermostApi({}, token ***)", self.base)
    }
}

impl MattermostApi {
    /// `base` without a trailing slash (as `ICAHUB_MATTERMOST_URL` is stored).
    pub fn new(base: &str, token: Secret) -> MattermostApi {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("icahub/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the TLS backend initializes");
        MattermostApi {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        }
    }

    /// The configured server, when both settings are set.
    pub fn from_config(m: &crate::config::MattermostActions) -> Option<MattermostApi> {
        m.server
            .as_ref()
            .map(|(url, token)| MattermostApi::new(url, token.clone()))
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn net(e: reqwest::Error) -> MmError {
        let e = e.without_url();
        MmError::Unreachable(if e.is_timeout() {
            format!("no answer within {} s", TIMEOUT.as_secs())
        } else if e.is_connect() {
            "cannot connect".into()
        } else {
            e.to_string()
        })
    }

    /// GET `path`: `Ok(None)` on 404 (Mattermost's answer for an unknown user, a non-member).
    async fn get(&self, path: &str) -> Result<Option<Value>, MmError> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.token.expose())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(Self::net)?;
        let status = r.status().as_u16();
        match status {
            200..=299 => {
                let body = r.bytes().await.map_err(Self::net)?;
                serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|e| MmError::BadAnswer(e.to_string()))
            }
            404 => Ok(None),
            401 | 403 => Err(MmError::Refused(status)),
            other => Err(MmError::Status(other)),
        }
    }

    /// The token's own user.
    pub async fn me(&self) -> Result<User, MmError> {
        match self.get("/api/v4/users/me").await? {
            Some(v) => User::from_value(&v),
            None => Err(MmError::Status(404)),
        }
    }

    /// The user with this name, `None` when the server has none. `name` must be a valid
    /// Mattermost user name ([`crate::domain::identity::MattermostUser::name`]).
    pub async fn user_by_name(&self, name: &str) -> Result<Option<User>, MmError> {
        let name = crate::domain::identity::MattermostUser::name(name)
            .ok_or_else(|| MmError::BadAnswer(format!("{name:?} is not a user name")))?;
        match self
            .get(&format!("/api/v4/users/username/{}", name.value()))
            .await?
        {
            Some(v) => User::from_value(&v).map(Some),
            None => Ok(None),
        }
    }

    /// The user with this id, `None` when the server has none (or the id cannot be one).
    pub async fn user(&self, id: &str) -> Result<Option<User>, MmError> {
        if !valid_id(id) {
            return Ok(None);
        }
        match self.get(&format!("/api/v4/users/{id}")).await? {
            Some(v) => User::from_value(&v)
                .and_then(|u| {
                    if u.id == id {
                        Ok(u)
                    } else {
                        Err(MmError::BadAnswer("another user's record".into()))
                    }
                })
                .map(Some),
            None => Ok(None),
        }
    }

    /// Whether the user is a member of the channel (404 is "no").
    pub async fn is_member(&self, channel_id: &str, user_id: &str) -> Result<bool, MmError> {
        if !valid_id(channel_id) || !valid_id(user_id) {
            return Ok(false);
        }
        let v = self
            .get(&format!("/api/v4/channels/{channel_id}/members/{user_id}"))
            .await?;
        Ok(v.is_some_and(|m| {
            m.get("user_id").and_then(Value::as_str) == Some(user_id)
                && m.get("channel_id").and_then(Value::as_str) == Some(channel_id)
        }))
    }

    /// `POST /api/v4/actions/dialogs/open`: `Ok(())` on 2xx, else the status.
    pub async fn open_dialog(&self, body: &Value) -> Result<(), MmError> {
        let r = self
            .http
            .post(format!("{}/api/v4/actions/dialogs/open", self.base))
            .bearer_auth(self.token.expose())
            .json(body)
            .send()
            .await
            .map_err(Self::net)?;
        match r.status().as_u16() {
            200..=299 => Ok(()),
            s @ (401 | 403) => Err(MmError::Refused(s)),
            s => Err(MmError::Status(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_users() {
        assert!(valid_id("rd49ehbqyjytddasoownkuqrxe"));
        assert!(!valid_id("rd49ehbqyjytddasoownkuqrx"));
        assert!(!valid_id("../../api/v4/users/me000000"));
        assert!(!valid_id("RD49EHBQYJYTDDASOOWNKUQRXE"));
        let u = User::from_value(&serde_json::json!({"id": "rd49ehbqyjytddasoownkuqrxe",
            "username": "alice", "delete_at": 0}))
        .unwrap();
        assert!(u.active());
        assert!(User::from_value(&serde_json::json!({"id": "x"})).is_err());
        let gone = User::from_value(&serde_json::json!({"id": "rd49ehbqyjytddasoownkuqrxe",
            "delete_at": 1_700_000_000_000i64}))
        .unwrap();
        assert!(!gone.active());
    }
}
