//! Standard Webhooks symmetric signatures (standard-webhooks/standard-webhooks
//! `spec/standard-webhooks.md`): HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`, sent
//! as `v1,<base64>` in `webhook-signature`, one space-separated entry per active secret so secrets
//! can rotate without downtime. [`sign`] is used by the control-plane sink; [`verify`] is for
//! receivers (and the tests' fake control plane).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

/// The `whsec_` prefix of serialized symmetric secrets.
pub const SECRET_PREFIX: &str = "whsec_";
/// The spec's recommended replay window.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// A signing key: the base64-decoded part of a `whsec_...` secret. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// Parse `whsec_<base64>`. The spec asks for 24 to 64 random bytes.
    pub fn parse(secret: &str) -> Result<SigningKey, KeyError> {
        let b64 = secret
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(KeyError::MissingPrefix)?;
        let key = B64.decode(b64).map_err(|_| KeyError::NotBase64)?;
        if !(24..=64).contains(&key.len()) {
            return Err(KeyError::Length(key.len()));
        }
        Ok(SigningKey(key))
    }

    /// A key from raw bytes (no length rule: for receivers holding keys in other forms).
    pub fn from_bytes(key: impl Into<Vec<u8>>) -> SigningKey {
        SigningKey(key.into())
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

/// Why a `whsec_` secret was refused. Carries no part of the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("does not start with whsec_")]
    MissingPrefix,
    #[error("the part after whsec_ is not base64")]
    NotBase64,
    #[error("decodes to {0} bytes; 24 to 64 are required")]
    Length(usize),
}

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no signing keys configured")]
    NoKeys,
    #[error("webhook-timestamp is not an integer")]
    InvalidTimestamp,
    #[error("webhook-timestamp is too old")]
    TooOld,
    #[error("webhook-timestamp is too far in the future")]
    TooNew,
    #[error("webhook-signature has no v1 signature")]
    NoSignature,
    #[error("no signature matches")]
    Mismatch,
}

/// The `webhook-signature` header value: `v1,<base64>` per key, space-separated, in key order.
pub fn sign(keys: &[SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    keys.iter()
        .map(|k| {
            format!(
                "v1,{}",
                B64.encode(k.mac(id, &ts, body).finalize().into_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Check a request's `webhook-id`, `webhook-timestamp` and `webhook-signature` header values
/// against `body` (the raw bytes, before any parsing). Succeeds when the timestamp is within
/// `tolerance` of `now` (unix seconds) and any `v1` signature matches any key; comparison is
/// constant-time (`Mac::verify_slice`). Other versions (`v1a`, ...) are skipped.
pub fn verify(
    keys: &[SigningKey],
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    if keys.is_empty() {
        return Err(VerifyError::NoKeys);
    }
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::InvalidTimestamp)?;
    let tol = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.saturating_sub(ts) > tol {
        return Err(VerifyError::TooOld);
    }
    if ts.saturating_sub(now) > tol {
        return Err(VerifyError::TooNew);
    }
    let candidates: Vec<Vec<u8>> = signatures
        .split(' ')
        .filter_map(|s| s.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, sig)| B64.decode(sig).ok())
        .collect();
    if candidates.is_empty() {
        return Err(VerifyError::NoSignature);
    }
    let ts = timestamp.trim();
    // The body is hashed once per key, not once per candidate: a header of thousands of bogus
    // `v1,` entries must not make one unauthenticated request cost thousands of body hashes.
    let ok = keys.iter().any(|k| {
        let mac = k.mac(id, ts, body);
        candidates
            .iter()
            .any(|c| mac.clone().verify_slice(c).is_ok())
    });
    if ok {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vector of the spec's reference Rust library (standard-webhooks/standard-webhooks
    // `libraries/rust/src/lib.rs`, `test_sign`); re-checked with Python's hmac module.
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1649367553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    #[test]
    fn signs_the_published_vector() {
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(sign(&[key], ID, TS, BODY), SIG);
    }

    #[test]
    fn verifies_the_published_vector() {
        let key = SigningKey::parse(SECRET).unwrap();
        let ts = TS.to_string();
        verify(&[key], ID, &ts, SIG, BODY, TS + 10, DEFAULT_TOLERANCE).unwrap();
    }

    #[test]
    fn verify_accepts_any_of_several_signatures_and_keys() {
        let key = SigningKey::parse(SECRET).unwrap();
        let other = SigningKey::from_bytes(vec![7u8; 32]);
        let ts = TS.to_string();
        let header = format!("v1a,AAAA v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q= {SIG}");
        verify(
            &[other.clone(), key.clone()],
            ID,
            &ts,
            &header,
            BODY,
            TS,
            DEFAULT_TOLERANCE,
        )
        .unwrap();
        // Both keys sign: the header carries two signatures, either verifies alone.
        let both = sign(&[other.clone(), key.clone()], ID, TS, BODY);
        assert_eq!(both.split(' ').count(), 2);
        verify(&[key], ID, &ts, &both, BODY, TS, DEFAULT_TOLERANCE).unwrap();
        verify(&[other], ID, &ts, &both, BODY, TS, DEFAULT_TOLERANCE).unwrap();
    }

    #[test]
    fn verify_refuses_tampering_and_replays() {
        let key = SigningKey::parse(SECRET).unwrap();
        let ts = TS.to_string();
        let v = |id: &str, ts: &str, sig: &str, body: &[u8], now: i64| {
            verify(
                std::slice::from_ref(&key),
                id,
                ts,
                sig,
                body,
                now,
                DEFAULT_TOLERANCE,
            )
        };
        assert_eq!(v(ID, &ts, SIG, b"{}", TS), Err(VerifyError::Mismatch));
        assert_eq!(
            v("msg_other", &ts, SIG, BODY, TS),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            v(ID, &(TS + 1).to_string(), SIG, BODY, TS),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(v(ID, &ts, SIG, BODY, TS + 301), Err(VerifyError::TooOld));
        assert_eq!(v(ID, &ts, SIG, BODY, TS - 301), Err(VerifyError::TooNew));
        assert!(v(ID, &ts, SIG, BODY, TS + 300).is_ok());
        assert_eq!(
            v(ID, "soon", SIG, BODY, TS),
            Err(VerifyError::InvalidTimestamp)
        );
        assert_eq!(
            v(
                ID,
                &ts,
                "v1a,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
                BODY,
                TS
            ),
            Err(VerifyError::NoSignature)
        );
        assert_eq!(
            verify(&[], ID, &ts, SIG, BODY, TS, DEFAULT_TOLERANCE),
            Err(VerifyError::NoKeys)
        );
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        assert_eq!(
            SigningKey::parse("C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
            Err(KeyError::MissingPrefix)
        );
        assert_eq!(
            SigningKey::parse("whsec_not base64!"),
            Err(KeyError::NotBase64)
        );
        assert_eq!(
            SigningKey::parse("whsec_c2hvcnQ="),
            Err(KeyError::Length(5))
        );
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey(***)");
    }
}
