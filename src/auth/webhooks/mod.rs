//! Standard Webhooks signatures on inbound requests: senders that sign instead of presenting a
//! key (the svix bridge's receivers do the same). The HMAC itself is
//! [`crate::sinks::signature`], the code that signs our outbound deliveries.
//!
//! A request is signed when it carries `webhook-id`, `webhook-timestamp` (unix seconds) and
//! `webhook-signature` (space-separated `v1,<base64>` entries). It is accepted when the timestamp
//! is within [`TOLERANCE`] of the hub's clock, one entry is the HMAC-SHA256 of
//! `{webhook-id}.{webhook-timestamp}.{raw body}` under one of a configured sender's secrets
//! (compared in constant time), and that sender's `webhook-id` was not accepted before
//! ([`ReplayCache`]). The sender's name becomes the caller, `webhook:<name>`.
//!
//! Everything here but [`ReplayCache`]'s lock is pure: headers, body and clock are passed in.

mod replay;

pub use crate::config::webhooks::{Sender, WebhookSenders, CALLER_PREFIX, DEFAULT_ROLES};
pub use replay::{ReplayCache, REPLAY_CAPACITY};

use crate::domain::standard_webhooks::{self as signature, VerifyError};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How far `webhook-timestamp` may be from the hub's clock, either way (the spec's 5 minutes).
pub const TOLERANCE: Duration = signature::DEFAULT_TOLERANCE;
/// Longest accepted `webhook-id`.
pub const MAX_ID_LEN: usize = 256;

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";
pub const HEADERS: [&str; 3] = [ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER];

/// Why a signed request was refused. Each is a 401 but [`SignatureRefusal::CacheFull`] (503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureRefusal {
    #[error("signed requests are not accepted here: ICAHUB_WEBHOOK_SECRETS is not set")]
    NotConfigured,
    #[error(
        "a signed request needs webhook-id, webhook-timestamp and webhook-signature; missing: {0}"
    )]
    MissingHeaders(String),
    #[error("webhook-id must be 1 to 256 printable ASCII characters, without '.'")]
    BadId,
    #[error("webhook-timestamp must be an integer (unix seconds)")]
    BadTimestamp,
    #[error("webhook-timestamp is {0} s behind the hub's clock; at most 300 s are accepted (replay protection, or a skewed clock)")]
    TooOld(i64),
    #[error("webhook-timestamp is {0} s ahead of the hub's clock; at most 300 s are accepted (a skewed clock?)")]
    TooNew(i64),
    #[error(
        "webhook-signature carries no v1 signature (v1,<base64 HMAC-SHA256>, space-separated)"
    )]
    NoSignature,
    #[error("no v1 signature matches a configured secret")]
    Mismatch,
    #[error("webhook-id {0:?} was already accepted from this sender (replay); a new message needs a new id")]
    Replayed(String),
    #[error("too many signed requests in the replay window to check for replays; retry later")]
    CacheFull,
}

impl SignatureRefusal {
    /// The `kind` of the security audit entry.
    pub fn kind(&self) -> &'static str {
        match self {
            SignatureRefusal::NotConfigured => "webhook_not_configured",
            SignatureRefusal::MissingHeaders(_) => "webhook_headers_missing",
            SignatureRefusal::BadId => "webhook_id_invalid",
            SignatureRefusal::BadTimestamp
            | SignatureRefusal::TooOld(_)
            | SignatureRefusal::TooNew(_) => "webhook_timestamp",
            SignatureRefusal::NoSignature => "webhook_signature_malformed",
            SignatureRefusal::Mismatch => "webhook_signature_mismatch",
            SignatureRefusal::Replayed(_) => "webhook_replayed",
            SignatureRefusal::CacheFull => "webhook_replay_cache_full",
        }
    }
}

/// The three headers of a signed request, checked for shape and time before the body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    ts: i64,
}

/// Whether a request carries any Standard Webhooks header (and so asks to be verified).
pub fn is_signed(headers: &warp::http::HeaderMap) -> bool {
    HEADERS.iter().any(|h| headers.contains_key(*h))
}

/// The headers of a signed request, or why they cannot be one: all three present, a sane id, an
/// integer timestamp within [`TOLERANCE`] of `now` (unix seconds).
pub fn check_headers(
    headers: &warp::http::HeaderMap,
    now: i64,
) -> Result<Signed, SignatureRefusal> {
    let get = |name: &str| headers.get(name).map(|v| header_text(v));
    let missing: Vec<&str> = HEADERS
        .into_iter()
        .filter(|h| !headers.contains_key(*h))
        .collect();
    if !missing.is_empty() {
        return Err(SignatureRefusal::MissingHeaders(missing.join(", ")));
    }
    let id = match get(ID_HEADER) {
        Some(Ok(id))
            if !id.is_empty()
                && id.len() <= MAX_ID_LEN
                && id.bytes().all(|b| b.is_ascii_graphic() && b != b'.') =>
        {
            id.to_string()
        }
        _ => return Err(SignatureRefusal::BadId),
    };
    let timestamp = match get(TIMESTAMP_HEADER) {
        Some(Ok(t)) => t.to_string(),
        _ => return Err(SignatureRefusal::BadTimestamp),
    };
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| SignatureRefusal::BadTimestamp)?;
    let tol = TOLERANCE.as_secs() as i64;
    if now.saturating_sub(ts) > tol {
        return Err(SignatureRefusal::TooOld(now.saturating_sub(ts)));
    }
    if ts.saturating_sub(now) > tol {
        return Err(SignatureRefusal::TooNew(ts.saturating_sub(now)));
    }
    let signature = match get(SIGNATURE_HEADER) {
        Some(Ok(s)) => s.to_string(),
        _ => return Err(SignatureRefusal::NoSignature),
    };
    Ok(Signed {
        id,
        timestamp,
        signature,
        ts,
    })
}

fn header_text(v: &warp::http::HeaderValue) -> Result<&str, warp::http::header::ToStrError> {
    v.to_str().map(str::trim)
}

/// After the hub answered a signed request with a 5xx: forget its id (only if this exact message
/// claimed it), so the sender's retry is not refused as a replay.
pub fn release_failed(cache: &ReplayCache, headers: &warp::http::HeaderMap) {
    let get = |name: &str| headers.get(name).and_then(|v| header_text(v).ok());
    if let (Some(id), Some(ts), Some(sig)) =
        (get(ID_HEADER), get(TIMESTAMP_HEADER), get(SIGNATURE_HEADER))
    {
        cache.release(id, &fingerprint(id, ts, sig));
    }
}

impl Signed {
    /// Identifies this exact signed message (a replayed copy has the same one).
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.id, &self.timestamp, &self.signature)
    }

    /// When a copy of this message can no longer pass the timestamp check.
    fn expires(&self, now: i64) -> i64 {
        self.ts.max(now) + TOLERANCE.as_secs() as i64
    }
}

pub fn fingerprint(id: &str, timestamp: &str, signature: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [id, timestamp, signature] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.finalize().into()
}

/// The sender (its index in `senders`) whose secret signed `body`: any `v1` entry against any of
/// a sender's active secrets, in constant time ([`signature::verify`]).
pub fn verify(
    senders: &WebhookSenders,
    signed: &Signed,
    body: &[u8],
    now: i64,
) -> Result<usize, SignatureRefusal> {
    if !senders.configured() {
        return Err(SignatureRefusal::NotConfigured);
    }
    for (i, s) in senders.senders.iter().enumerate() {
        match signature::verify(
            &s.keys,
            &signed.id,
            &signed.timestamp,
            &signed.signature,
            body,
            now,
            TOLERANCE,
        ) {
            Ok(()) => return Ok(i),
            Err(VerifyError::Mismatch | VerifyError::NoKeys) => continue,
            Err(VerifyError::NoSignature) => return Err(SignatureRefusal::NoSignature),
            Err(VerifyError::InvalidTimestamp) => return Err(SignatureRefusal::BadTimestamp),
            Err(VerifyError::TooOld) => return Err(SignatureRefusal::TooOld(now - signed.ts)),
            Err(VerifyError::TooNew) => return Err(SignatureRefusal::TooNew(signed.ts - now)),
        }
    }
    Err(SignatureRefusal::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::identity::Role;
    use crate::sinks::signature::{sign, SigningKey};
    use std::collections::HashMap;
    use warp::http::{HeaderMap, HeaderValue};

    // The spec's test vector (see `sinks::signature`).
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const OTHER: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1649367553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn senders(vars: &[(&str, &str)]) -> Result<WebhookSenders, String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        WebhookSenders::from_lookup(&|k| m.get(k).cloned())
    }

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            (ID_HEADER, id),
            (TIMESTAMP_HEADER, ts),
            (SIGNATURE_HEADER, sig),
        ] {
            h.insert(k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_spec_vector_verifies_and_names_the_sender() {
        let s = senders(&[(
            "ICAHUB_WEBHOOK_SECRETS",
            &format!("other={OTHER}, monitoring={SECRET}"),
        )])
        .unwrap();
        let signed = check_headers(&headers(ID, &TS.to_string(), SIG), TS + 5).unwrap();
        let i = verify(&s, &signed, BODY, TS + 5).unwrap();
        let c = s.senders[i].caller();
        assert_eq!(c.name, "webhook:monitoring");
        assert_eq!(c.roles, [Role::AlertSender]);
        assert_eq!(
            verify(&s, &signed, b"{}", TS),
            Err(SignatureRefusal::Mismatch)
        );
        assert_eq!(
            verify(&WebhookSenders::default(), &signed, BODY, TS),
            Err(SignatureRefusal::NotConfigured)
        );
    }

    #[test]
    fn rotation_keeps_old_and_new_secrets_active() {
        let s = senders(&[(
            "ICAHUB_WEBHOOK_SECRETS",
            &format!("ci={OTHER},ci={SECRET},ci={SECRET},"),
        )])
        .unwrap();
        assert_eq!(s.senders.len(), 1);
        assert_eq!(s.senders[0].keys.len(), 2);
        for secret in [SECRET, OTHER] {
            let key = SigningKey::parse(secret).unwrap();
            let sig = sign(&[key], ID, TS, BODY);
            let signed = check_headers(&headers(ID, &TS.to_string(), &sig), TS).unwrap();
            assert_eq!(verify(&s, &signed, BODY, TS), Ok(0));
        }
    }

    #[test]
    fn headers_are_checked_before_the_body() {
        let ts = TS.to_string();
        let check = |h: &HeaderMap, now| check_headers(h, now);
        let mut h = headers(ID, &ts, SIG);
        h.remove(SIGNATURE_HEADER);
        h.remove(ID_HEADER);
        assert_eq!(
            check(&h, TS),
            Err(SignatureRefusal::MissingHeaders(
                "webhook-id, webhook-signature".into()
            ))
        );
        assert_eq!(
            check(&headers("a.b", &ts, SIG), TS),
            Err(SignatureRefusal::BadId)
        );
        assert_eq!(
            check(&headers(&"x".repeat(257), &ts, SIG), TS),
            Err(SignatureRefusal::BadId)
        );
        assert_eq!(
            check(&headers(ID, "soon", SIG), TS),
            Err(SignatureRefusal::BadTimestamp)
        );
        assert_eq!(
            check(&headers(ID, &ts, SIG), TS + 360),
            Err(SignatureRefusal::TooOld(360))
        );
        assert_eq!(
            check(&headers(ID, &ts, SIG), TS - 360),
            Err(SignatureRefusal::TooNew(360))
        );
        assert!(check(&headers(ID, &ts, SIG), TS + 300).is_ok());
        assert!(check(&headers(ID, &ts, SIG), TS - 300).is_ok());
        let s = senders(&[("ICAHUB_WEBHOOK_SECRETS", &format!("m={SECRET}"))]).unwrap();
        let garbage = check(&headers(ID, &ts, "v1,@@not-base64@@"), TS).unwrap();
        assert_eq!(
            verify(&s, &garbage, BODY, TS),
            Err(SignatureRefusal::NoSignature)
        );
        let v2 = check(
            &headers(ID, &ts, "v2,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="),
            TS,
        )
        .unwrap();
        assert_eq!(
            verify(&s, &v2, BODY, TS),
            Err(SignatureRefusal::NoSignature)
        );
    }
}
