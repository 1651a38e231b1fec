//! Caller-sized text made small enough to log, audit or echo: a refused request may carry a
//! 300 KB `kid`, a megabyte of `webhook-id` or a key the size of the body limit, and none of that
//! may grow the permanent trail, the logs or an error message by more than a few dozen bytes.

use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// How many characters of a refusal's detail are kept (before the digest of the rest).
pub const DETAIL_CHARS: usize = 64;

/// `s` when it has at most `max` characters and no control characters; else its first `max`
/// characters (controls replaced by `?`), then `…` and the length and the first 16 hex digits of
/// the SHA-256 of the whole text, so two long details can still be told apart and matched with the
/// original. At most about `max + 40` bytes of ASCII, or `4 * max + 40` of other UTF-8.
pub fn bound(s: &str, max: usize) -> Cow<'_, str> {
    let clean = |c: char| if c.is_control() { '?' } else { c };
    let mut chars = s.char_indices();
    let cut = chars.nth(max).map(|(i, _)| i);
    match cut {
        None if !s.chars().any(char::is_control) => Cow::Borrowed(s),
        None => Cow::Owned(s.chars().map(clean).collect()),
        Some(i) => {
            let digest = Sha256::digest(s.as_bytes());
            let head: String = s[..i].chars().map(clean).collect();
            Cow::Owned(format!(
                "{head}… ({} bytes, sha256 {})",
                s.len(),
                hex::encode(&digest[..8])
            ))
        }
    }
}

/// Like [`bound`] without the digest: the first `max` characters (controls replaced by `?`), then
/// `… (N bytes)`. Cheap (no hash of a caller-sized text), for what is produced on every request:
/// log lines and error messages.
pub fn truncate(s: &str, max: usize) -> Cow<'_, str> {
    let clean = |c: char| if c.is_control() { '?' } else { c };
    match s.char_indices().nth(max).map(|(i, _)| i) {
        None if !s.chars().any(char::is_control) => Cow::Borrowed(s),
        None => Cow::Owned(s.chars().map(clean).collect()),
        Some(i) => {
            let head: String = s[..i].chars().map(clean).collect();
            Cow::Owned(format!("{head}… ({} bytes)", s.len()))
        }
    }
}

/// [`bound`] with the refusal-detail length.
pub fn detail(s: &str) -> Cow<'_, str> {
    bound(s, DETAIL_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_long_text_is_cut_and_digested() {
        assert_eq!(bound("kid abc", 16), "kid abc");
        assert!(matches!(bound("kid abc", 16), Cow::Borrowed(_)));
        assert_eq!(bound("a\nb\u{1b}", 16), "a?b?");
        let long = "k".repeat(300_000);
        let b = bound(&long, 16);
        assert!(b.starts_with(&"k".repeat(16)), "{b}");
        assert!(b.contains("300000 bytes, sha256 "), "{b}");
        assert!(b.len() < 80, "{}", b.len());
        // Different long texts differ in their digests.
        let other = format!("{}x", "k".repeat(299_999));
        assert_ne!(bound(&other, 16), b);
        // Multi-byte characters are cut on a boundary.
        let wide = "é".repeat(100);
        let w = bound(&wide, 10);
        assert!(w.starts_with(&"é".repeat(10)) && !w.starts_with(&"é".repeat(11)));
        // Truncation keeps the head and the length only.
        assert_eq!(truncate(&long, 4), "kkkk… (300000 bytes)");
        assert_eq!(truncate("a\tb", 4), "a?b");
        // Exactly max characters is kept.
        assert_eq!(bound(&"a".repeat(16), 16), "a".repeat(16));
    }
}
