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
    /// Sends alerts only (the Azure Monitor secure webhook's app role maps here by default).
    AlertSender,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Devops,
        Role::TechnicalApprover,
        Role::BusinessApprover,
        Role::Finance,
        Role::Auditor,
        Role::Admin,
        Role::AlertSender,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Devops => "devops",
            Role::TechnicalApprover => "technical_approver",
            Role::BusinessApprover => "business_approver",
            Role::Finance => "finance",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::AlertSender => "alert_sender",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        let s = s.trim().to_ascii_lowercase().replace('-', "_");
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// An identity's record: its roles, and the Mattermost user name that maps to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub name: String,
    pub roles: Vec<Role>,
    #[serde(default)]
    pub mattermost_user: Option<String>,
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
    fn identity_names() {
        assert!(valid_identity("alice@contoso.com"));
        assert!(valid_identity("pipeline-prod_1"));
        assert!(!valid_identity(""));
        assert!(!valid_identity("bob smith"));
    }
}
