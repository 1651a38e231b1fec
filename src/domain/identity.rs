//! Identities, roles and API keys: who is calling, and what they may do. Pure: key generation
//! takes its randomness from the caller, and storage lives in [`crate::identity`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Devops,
    TechnicalApprover,
    BusinessApprover,
    Finance,
    Auditor,
    Admin,
    /// Sends alerts only (the Azure Monitor secure webhook's app role maps here by default);
    /// reads nothing.
    AlertSender,
    /// Reads runs, approvals and incidents, and changes nothing.
    Reader,
    /// The second, exceptional signature an emergency override needs (the product
    /// requirements' "CEO signature"): an admin asks, a different person holding this confirms.
    OverrideApprover,
}

impl Role {
    pub const ALL: [Role; 9] = [
        Role::Devops,
        Role::TechnicalApprover,
        Role::BusinessApprover,
        Role::Finance,
        Role::Auditor,
        Role::Admin,
        Role::AlertSender,
        Role::Reader,
        Role::OverrideApprover,
    ];

    /// The roles that may read runs, approvals and incidents (`GET` under `/api/v1`): every
    /// role but [`Role::AlertSender`], whose credential sits in action groups' webhook URLs.
    pub const READERS: [Role; 8] = [
        Role::Reader,
        Role::Auditor,
        Role::TechnicalApprover,
        Role::BusinessApprover,
        Role::Finance,
        Role::Devops,
        Role::Admin,
        Role::OverrideApprover,
    ];

    /// The roles that may send alerts (open incidents, page on-call).
    pub const ALERT_SENDERS: [Role; 2] = [Role::AlertSender, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Devops => "devops",
            Role::TechnicalApprover => "technical_approver",
            Role::BusinessApprover => "business_approver",
            Role::Finance => "finance",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::AlertSender => "alert_sender",
            Role::Reader => "reader",
            Role::OverrideApprover => "override_approver",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        let s = s.trim().to_ascii_lowercase().replace('-', "_");
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// An identity's record: its roles, and the Mattermost user that maps to it (`icahub roles
/// link-mattermost`), by the user's immutable id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub name: String,
    pub roles: Vec<Role>,
    /// A link by user name from an earlier version. User names can be changed by their owners,
    /// so such a link grants nothing any more: `icahub roles list` flags it, and linking again
    /// (which resolves the name to its id) replaces it.
    #[serde(default)]
    pub mattermost_user: Option<String>,
    /// The linked Mattermost user's id: the only thing a callback is matched on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mattermost_user_id: Option<String>,
    /// That user's name when the link was made, for display only (it may have changed since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mattermost_username: Option<String>,
}

impl IdentityRecord {
    /// A link by name only, from an earlier version (grants nothing).
    pub fn legacy_mattermost_name(&self) -> Option<&str> {
        self.mattermost_user.as_deref()
    }
}

/// A Mattermost user id: 26 lowercase letters and digits (Mattermost's `NewId`). Nothing else
/// is looked up, linked or put into a URL.
pub fn valid_mattermost_id(s: &str) -> bool {
    s.len() == 26
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The index document that maps a Mattermost user id to an identity (one read per lookup).
pub fn mattermost_index_key(user_id: &str) -> String {
    format!("mm|id|{user_id}")
}

/// The index document of a legacy link by name (cleared when the identity is linked again).
pub fn legacy_mattermost_name_key(name: &str) -> String {
    format!("mm|name|{name}")
}

/// A Mattermost user as an operator names one: by user name (resolved to its id through the
/// API) or by user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MattermostUser {
    /// A user name: lowercase letters, digits, `.`, `_`, `-` (Mattermost's own rule), 1-64.
    Name(String),
    /// A user id ([`valid_mattermost_id`]).
    Id(String),
}

impl MattermostUser {
    /// A user name as typed (`@Alice.Smith` works); `None` when it cannot be one.
    pub fn name(s: &str) -> Option<MattermostUser> {
        let s = s.trim().trim_start_matches('@').to_ascii_lowercase();
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        ok.then_some(MattermostUser::Name(s))
    }

    /// A user id as typed (case is ignored); `None` when it cannot be one.
    pub fn id(s: &str) -> Option<MattermostUser> {
        let s = s.trim().to_ascii_lowercase();
        valid_mattermost_id(&s).then_some(MattermostUser::Id(s))
    }

    pub fn value(&self) -> &str {
        match self {
            MattermostUser::Name(v) | MattermostUser::Id(v) => v,
        }
    }

    /// `user name alice` / `user id rd49…`, for messages.
    pub fn describe(&self) -> String {
        match self {
            MattermostUser::Name(n) => format!("Mattermost user name {n}"),
            MattermostUser::Id(i) => format!("Mattermost user id {i}"),
        }
    }
}

/// Identity names: what people and pipelines are called in approvals and the audit trail.
pub fn valid_identity(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
}

/// API keys look like `icak_<40 hex>`; only their SHA-256 is stored.
pub const KEY_PREFIX: &str = "icak_";

/// A new key from 20 random bytes.
pub fn new_api_key(random: [u8; 20]) -> String {
    format!("{KEY_PREFIX}{}", hex::encode(random))
}

/// What is stored for a key: its SHA-256, hex.
pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The short, non-secret id operators use to name a key (`icahub keys revoke ID`).
pub fn key_id(hash: &str) -> String {
    format!("key-{}", &hash[..12.min(hash.len())])
}

/// A stored API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub identity: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_leniently_and_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(
            Role::parse("Technical-Approver"),
            Some(Role::TechnicalApprover)
        );
        assert_eq!(Role::parse("boss"), None);
    }

    #[test]
    fn keys_are_hashed_and_named_without_the_secret() {
        let k = new_api_key([7; 20]);
        assert!(k.starts_with("icak_"));
        assert_eq!(k.len(), 5 + 40);
        let h = key_hash(&k);
        assert_eq!(h.len(), 64);
        assert!(!key_id(&h).contains(&k[5..]));
    }

    #[test]
    fn mattermost_users() {
        assert_eq!(
            MattermostUser::name("@Alice.Smith"),
            Some(MattermostUser::Name("alice.smith".into()))
        );
        assert_eq!(MattermostUser::name("bob smith"), None);
        assert_eq!(MattermostUser::name("<username>"), None);
        assert_eq!(MattermostUser::name("a|b"), None);
        assert_eq!(
            MattermostUser::id("RD49ehbqyjytddasoownkuqrxe"),
            Some(MattermostUser::Id("rd49ehbqyjytddasoownkuqrxe".into()))
        );
        assert_eq!(MattermostUser::id("rd49-x"), None);
        assert_eq!(MattermostUser::id("rd49ehbqyjytddasoownkuqrx"), None);
        assert_eq!(
            mattermost_index_key("rd49ehbqyjytddasoownkuqrxe"),
            "mm|id|rd49ehbqyjytddasoownkuqrxe"
        );
        assert!(valid_mattermost_id("rd49ehbqyjytddasoownkuqrxe"));
        assert!(!valid_mattermost_id("../../api/v4/users/me000000"));
    }

    #[test]
    fn identity_names() {
        assert!(valid_identity("alice@contoso.com"));
        assert!(valid_identity("pipeline-prod_1"));
        assert!(!valid_identity(""));
        assert!(!valid_identity("bob smith"));
    }
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub roles: Vec<Role>,
}

impl Caller {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}
