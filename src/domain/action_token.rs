//! Signed tokens for the Mattermost approval buttons (docs/protocols.md §5.2). Mattermost does not sign
//! its button callbacks, so the token in each button's `integration.context` is what
//! authenticates a click: `<base64url payload>.<base64url HMAC-SHA256>`, the payload being the
//! JSON [`Claims`] (approval id, action, expiry in unix seconds, a random nonce that is the
//! token's id for replay refusal, and, for a rejection dialog's state, the Mattermost user it was
//! opened for). Pure: the caller passes the secrets, the clock and the randomness.
//!
//! The MAC covers a purpose label and the payload exactly as sent (its base64url text), so a
//! token cannot be re-encoded into another that verifies. Several secrets may be configured for
//! rotation: [`TokenKeys::sign`] uses the first, [`TokenKeys::verify`] accepts any, comparing in
//! constant time (`Mac::verify_slice`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Bound into every MAC, so these tokens are useless anywhere else the secret might be used.
const PURPOSE: &[u8] = b"icahub.mattermost.action.v1.";
/// Longer strings are refused before any work is done.
pub const MAX_TOKEN_CHARS: usize = 2048;
/// Secrets shorter than this are refused by the configuration.
pub const MIN_SECRET_CHARS: usize = 32;

/// What a button does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    ApproveTechnical,
    ApproveBusiness,
    Reject,
}

impl Action {
    pub const ALL: [Action; 3] = [
        Action::ApproveTechnical,
        Action::ApproveBusiness,
        Action::Reject,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::ApproveTechnical => "approve_technical",
            Action::ApproveBusiness => "approve_business",
            Action::Reject => "reject",
        }
    }

    /// The button's label.
    pub fn label(self) -> &'static str {
        match self {
            Action::ApproveTechnical => "Approve (technical)",
            Action::ApproveBusiness => "Approve (business)",
            Action::Reject => "Reject",
        }
    }

    /// The button's id: letters and digits only (Mattermost's action route accepts nothing else).
    pub fn button_id(self) -> &'static str {
        match self {
            Action::ApproveTechnical => "approvetechnical",
            Action::ApproveBusiness => "approvebusiness",
            Action::Reject => "reject",
        }
    }
}

/// What a token says. Only a verified token yields one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(rename = "apr")]
    pub approval_id: String,
    #[serde(rename = "act")]
    pub action: Action,
    /// Unix seconds; the token is refused at and after this instant.
    #[serde(rename = "exp")]
    pub expires: i64,
    /// Random; the token's id (each token works once).
    pub nonce: String,
    /// A rejection dialog's state is bound to the Mattermost user it was opened for (the dialog
    /// shows its state to that user's client, so it must not work for anyone else).
    #[serde(rename = "uid", default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Set by earlier versions on a dialog's state (the name Mattermost sent with the click);
    /// read but never trusted or set now: only the user id identifies a user.
    #[serde(rename = "uname", default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// The message's group: every button token of one posted message carries the same `grp`,
    /// and each one's nonce is [`group_nonce`]`(grp, action)`, so the post's update after a click
    /// re-derives exactly the tokens that message was posted with (never new ones). Tokens of
    /// earlier versions have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grp: Option<String>,
}

impl Claims {
    /// A button token's claims (not bound to a user).
    pub fn button(approval_id: &str, action: Action, expires: i64, nonce: String) -> Claims {
        Claims {
            approval_id: approval_id.to_string(),
            action,
            expires,
            nonce,
            user_id: None,
            user_name: None,
            grp: None,
        }
    }

    /// The token of `action` in message group `grp` (nonce [`group_nonce`]).
    pub fn grouped(approval_id: &str, action: Action, expires: i64, grp: &str) -> Claims {
        Claims {
            grp: Some(grp.to_string()),
            ..Claims::button(approval_id, action, expires, group_nonce(grp, action))
        }
    }

    /// The id recorded when the token is used (replays are refused by it).
    pub fn token_id(&self) -> String {
        format!("mm-{}", self.nonce)
    }
}

/// Why a token was refused. Carries nothing secret; `Expired` carries the (authentic) claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not shaped like one of our tokens (wrong parts, not base64url, too long).
    #[error("the token is malformed")]
    Malformed,
    /// Well formed, but no configured secret produced its signature: forged or altered.
    #[error("the token's signature does not match")]
    BadSignature,
    #[error("the token expired")]
    Expired(Box<Claims>),
}

/// A token's nonce from 16 random bytes.
pub fn nonce(random: [u8; 16]) -> String {
    B64.encode(random)
}

/// A nonce derived from `parts` (for tokens that must render the same every time, such as a
/// message that may be sent again after a retry).
pub fn derived_nonce(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    B64.encode(&h.finalize()[..16])
}

/// A message group id derived from `parts` (the outbox row's idempotency key when a message is
/// rendered), so a retried delivery renders the same tokens.
pub fn group_id(parts: &[&str]) -> String {
    let mut all = vec!["icahub.mattermost.grp"];
    all.extend_from_slice(parts);
    derived_nonce(&all)
}

/// The nonce of `action`'s button in message group `grp`.
pub fn group_nonce(grp: &str, action: Action) -> String {
    derived_nonce(&[grp, action.as_str()])
}

/// The signing secrets: the first signs, any verifies. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKeys(Vec<Vec<u8>>);

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenKeys({} secrets, ***)", self.0.len())
    }
}

impl TokenKeys {
    /// `None` when there is no secret.
    pub fn new<S: AsRef<[u8]>>(secrets: impl IntoIterator<Item = S>) -> Option<TokenKeys> {
        let keys: Vec<Vec<u8>> = secrets.into_iter().map(|s| s.as_ref().to_vec()).collect();
        (!keys.is_empty()).then_some(TokenKeys(keys))
    }

    fn mac(key: &[u8], payload: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
        mac.update(PURPOSE);
        mac.update(payload.as_bytes());
        mac
    }

    /// `<base64url JSON claims>.<base64url HMAC-SHA256>`, signed with the first secret.
    pub fn sign(&self, claims: &Claims) -> String {
        let json = serde_json::to_vec(claims).expect("claims serialize");
        let payload = B64.encode(json);
        let sig = Self::mac(&self.0[0], &payload).finalize().into_bytes();
        format!("{payload}.{}", B64.encode(sig))
    }

    /// The claims of an authentic token that has not expired at `now` (unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed);
        }
        let (payload, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
        if payload.is_empty() || sig.contains('.') {
            return Err(TokenError::Malformed);
        }
        let sig_bytes = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
        // Only the canonical encoding of the signature is accepted (one token, one spelling).
        if sig_bytes.len() != 32 || B64.encode(&sig_bytes) != sig {
            return Err(TokenError::Malformed);
        }
        let authentic = self.0.iter().fold(false, |ok, k| {
            ok | Self::mac(k, payload).verify_slice(&sig_bytes).is_ok()
        });
        if !authentic {
            return Err(TokenError::BadSignature);
        }
        let json = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if now >= claims.expires {
            return Err(TokenError::Expired(Box::new(claims)));
        }
        Ok(claims)
    }
}

/// What can be read from a token without trusting it: the claimed approval id, for the audit
/// entry of a refused token. Never use it for a decision.
pub fn unverified_approval_id(token: &str) -> Option<String> {
    let (payload, _) = token.split_once('.')?;
    let json = B64
        .decode(payload.get(..payload.len().min(MAX_TOKEN_CHARS))?)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&json).ok()?;
    v.get("apr")?
        .as_str()
        .filter(|s| s.len() <= 64)
        .map(str::to_string)
}

/// A short, non-reversible fingerprint of a token, for audit entries (never the token itself).
pub fn fingerprint(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S1: &str = "0123456789abcdef0123456789abcdef-first";
    const S2: &str = "fedcba9876543210fedcba9876543210-second";

    fn keys() -> TokenKeys {
        TokenKeys::new([S1]).unwrap()
    }

    fn claims() -> Claims {
        Claims::button(
            "APR-2026-000001",
            Action::ApproveTechnical,
            2_000_000_000,
            nonce([7; 16]),
        )
    }

    #[test]
    fn round_trip() {
        let t = keys().sign(&claims());
        assert_eq!(t.matches('.').count(), 1);
        assert_eq!(keys().verify(&t, 1_900_000_000), Ok(claims()));
        assert_eq!(claims().token_id(), format!("mm-{}", nonce([7; 16])));
    }

    #[test]
    fn expired_at_the_instant() {
        let t = keys().sign(&claims());
        assert!(keys().verify(&t, 1_999_999_999).is_ok());
        assert_eq!(
            keys().verify(&t, 2_000_000_000),
            Err(TokenError::Expired(Box::new(claims())))
        );
    }

    #[test]
    fn rotation_signs_with_the_first_and_accepts_any() {
        let old = TokenKeys::new([S1]).unwrap();
        let both = TokenKeys::new([S2, S1]).unwrap();
        let new_only = TokenKeys::new([S2]).unwrap();
        let t_old = old.sign(&claims());
        assert!(both.verify(&t_old, 0).is_ok());
        let t_new = both.sign(&claims());
        assert!(new_only.verify(&t_new, 0).is_ok());
        assert_eq!(old.verify(&t_new, 0), Err(TokenError::BadSignature));
        assert_eq!(new_only.verify(&t_old, 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn forged_payloads_are_refused() {
        let t = keys().sign(&claims());
        let (_, sig) = t.split_once('.').unwrap();
        let mut other = claims();
        other.action = Action::ApproveBusiness;
        let forged = format!("{}.{sig}", B64.encode(serde_json::to_vec(&other).unwrap()));
        assert_eq!(keys().verify(&forged, 0), Err(TokenError::BadSignature));
        // Signed with a secret we do not hold.
        let stranger = TokenKeys::new([S2]).unwrap().sign(&claims());
        assert_eq!(keys().verify(&stranger, 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for t in [
            "",
            ".",
            "abc",
            "abc.",
            ".abc",
            "a.b.c",
            "somerandomlygeneratedsecret",
            "eyJ9.!!!!",
        ] {
            assert_eq!(keys().verify(t, 0), Err(TokenError::Malformed), "{t:?}");
        }
        let long = "a".repeat(MAX_TOKEN_CHARS + 1);
        assert_eq!(keys().verify(&long, 0), Err(TokenError::Malformed));
        // A padded signature is another spelling of the same bytes: refused.
        let t = keys().sign(&claims());
        assert_eq!(
            keys().verify(&format!("{t}="), 0),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn user_binding_round_trips_and_is_covered() {
        let mut c = claims();
        c.action = Action::Reject;
        c.user_id = Some("rd49ehbqyjytddasoownkuqrxe".into());
        c.user_name = Some("bob".into());
        let t = keys().sign(&c);
        assert_eq!(keys().verify(&t, 0).unwrap(), c);
        // Button tokens carry no binding at all.
        let plain = keys().sign(&claims());
        let json = B64.decode(plain.split_once('.').unwrap().0).unwrap();
        assert!(!String::from_utf8(json).unwrap().contains("uid"));
    }

    #[test]
    fn grouped_tokens_rederive_exactly() {
        let grp = group_id(&["row-key-1"]);
        assert_ne!(grp, group_id(&["row-key-2"]));
        let t = keys().sign(&Claims::grouped(
            "APR-2026-000001",
            Action::ApproveTechnical,
            2_000_000_000,
            &grp,
        ));
        let c = keys().verify(&t, 0).unwrap();
        assert_eq!(c.grp.as_deref(), Some(grp.as_str()));
        assert_eq!(c.nonce, group_nonce(&grp, Action::ApproveTechnical));
        // The same claims sign to the same string: the update can hand out the posted token.
        let again = keys().sign(&Claims::grouped(
            "APR-2026-000001",
            Action::ApproveTechnical,
            c.expires,
            &grp,
        ));
        assert_eq!(t, again);
        assert_ne!(group_nonce(&grp, Action::ApproveBusiness), c.nonce);
        // Older tokens carry no group.
        let old = keys().sign(&claims());
        assert_eq!(keys().verify(&old, 0).unwrap().grp, None);
    }

    #[test]
    fn audit_helpers_never_need_the_secret() {
        let t = keys().sign(&claims());
        assert_eq!(
            unverified_approval_id(&t).as_deref(),
            Some("APR-2026-000001")
        );
        assert_eq!(unverified_approval_id("nonsense"), None);
        assert_eq!(fingerprint(&t).len(), 16);
        assert!(!t.contains(&fingerprint(&t)));
        assert_eq!(derived_nonce(&["a", "bc"]), derived_nonce(&["a", "bc"]));
        assert_ne!(derived_nonce(&["a", "bc"]), derived_nonce(&["ab", "c"]));
    }

    proptest! {
        #[test]
        fn any_bit_flip_is_refused(
            id in 1u64..1_000_000,
            act in 0usize..3,
            exp in 1i64..4_000_000_000,
            n in any::<[u8; 16]>(),
            bit in any::<prop::sample::Index>(),
        ) {
            let k = keys();
            let c = Claims::button(&format!("APR-2026-{id:06}"), Action::ALL[act], exp, nonce(n));
            let t = k.sign(&c);
            prop_assert_eq!(k.verify(&t, 0), Ok(c));
            let mut bytes = t.into_bytes();
            let i = bit.index(bytes.len() * 8);
            bytes[i / 8] ^= 1 << (i % 8);
            if let Ok(flipped) = String::from_utf8(bytes) {
                prop_assert!(k.verify(&flipped, 0).is_err(), "accepted {}", flipped);
            }
        }

        #[test]
        fn arbitrary_strings_never_verify_or_panic(s in ".{0,300}") {
            prop_assert!(keys().verify(&s, 0).is_err());
            let _ = unverified_approval_id(&s);
        }
    }
}
